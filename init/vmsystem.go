package initd

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"fief/mount"
	"fief/rawfile"
)

// leaveInitramfs moves pid 1 off the initramfs root. That root has no
// parent mount, and pivot_root(2) fails with EINVAL for a root without one,
// so no vassal could pivot. Binding the root onto a directory in itself,
// moving that mount onto / and chrooting into it gives a root whose parent
// is the initramfs.
func leaveInitramfs() error {
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return fmt.Errorf("checking the root filesystem: %w", err)
	}
	if st.Type != unix.RAMFS_MAGIC && st.Type != unix.TMPFS_MAGIC {
		return nil
	}

	const newRoot = "/.fief-root"
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		return fmt.Errorf("creating %q to leave the initramfs: %w", newRoot, err)
	}
	if err := mount.Mount("/", newRoot, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("leaving the initramfs: %w", err)
	}
	if err := unix.Chdir(newRoot); err != nil {
		return fmt.Errorf("leaving the initramfs: changing to %q: %w", newRoot, err)
	}
	if err := mount.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("leaving the initramfs: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("leaving the initramfs: chroot: %w", err)
	}
	return unix.Chdir("/")
}

// earlyMount is one filesystem every VM needs.
type earlyMount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
	mode                   os.FileMode
}

// earlyMounts are mounted in order. devtmpfs comes right after /proc and
// /sys so that /dev/console and /dev/kmsg exist for logging.
var earlyMounts = []earlyMount{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755", 0o755},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620", 0o755},
	{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755", 0o755},
}

// mountEarly mounts the early filesystems that are not mounted yet.
func mountEarly(log *slog.Logger) error {
	var errs []error
	for _, m := range earlyMounts {
		if err := os.MkdirAll(m.target, m.mode); err != nil {
			errs = append(errs, fmt.Errorf("creating %q: %w", m.target, err))
			continue
		}
		if isMountPoint(m.target) {
			continue
		}
		if err := mount.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil {
			errs = append(errs, err)
		}
	}

	// /dev/ptmx must lead to the devpts instance mounted above.
	_ = os.Remove("/dev/ptmx")
	if err := os.Symlink("pts/ptmx", "/dev/ptmx"); err != nil {
		log.Warn("linking /dev/ptmx to /dev/pts/ptmx failed", "err", err)
	}
	return errors.Join(errs...)
}

// isMountPoint reports whether path is a mount point, comparing its device
// with its parent's.
func isMountPoint(path string) bool {
	var st, parent unix.Stat_t
	if unix.Stat(path, &st) != nil || unix.Stat(path+"/..", &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}

// mountFUSEControl mounts the FUSE control filesystem and opens /dev/fuse to
// every user, as udev does, since devtmpfs creates it with mode 0600.
func mountFUSEControl(log *slog.Logger) {
	const dir = "/sys/fs/fuse/connections"
	if _, err := os.Stat(dir); err == nil && !isMountPoint(dir) {
		if err := mount.Mount("fusectl", dir, "fusectl", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			log.Warn("mounting the FUSE control filesystem failed; hung FUSE daemons cannot be aborted", "err", err)
		}
	}
	if _, err := os.Stat("/dev/fuse"); err == nil {
		if err := os.Chmod("/dev/fuse", 0o666); err != nil {
			log.Warn("opening /dev/fuse to every user failed", "err", err)
		}
	}
}

// ensureConsole makes sure descriptors 0 to 2 are open, on /dev/console
// when possible.
func ensureConsole() {
	for fd := 0; fd <= 2; fd++ {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
			continue
		}
		console, err := unix.Open("/dev/console", unix.O_RDWR|unix.O_NOCTTY, 0)
		if err != nil {
			console, err = unix.Open("/dev/null", unix.O_RDWR, 0)
			if err != nil {
				continue
			}
		}
		if console != fd {
			_ = unix.Dup2(console, fd)
			unix.Close(console)
		}
	}
}

// bootParams are fief's settings from the kernel command line. The kernel
// passes dotted parameters to no process, so they are read from
// /proc/cmdline.
type bootParams struct {
	modules  []string
	exec     string
	onExit   string // poweroff, reboot or halt
	exitPort int64  // I/O port for the exit status, 0 for none
}

func readBootParams(path string) (bootParams, error) {
	// An os.File would set up the runtime's poller, which the boot does
	// not need before its first vassal.
	data, err := rawfile.ReadFile(path)
	if err != nil {
		return bootParams{}, fmt.Errorf("reading the kernel command line: %w", err)
	}
	return parseBootParams(string(data))
}

// parseBootParams parses a kernel command line. Values may be quoted with
// double quotes, as the kernel allows.
func parseBootParams(cmdline string) (bootParams, error) {
	params := bootParams{onExit: "poweroff"}
	for _, word := range splitCmdline(cmdline) {
		key, value, _ := strings.Cut(word, "=")
		value = strings.Trim(value, `"`)
		switch key {
		case "fief.modules":
			for _, name := range strings.Split(value, ",") {
				if name = strings.TrimSpace(name); name != "" {
					params.modules = append(params.modules, name)
				}
			}
		case "fief.exec":
			params.exec = value
		case "fief.on-exit":
			switch value {
			case "poweroff", "reboot", "halt":
				params.onExit = value
			default:
				return params, fmt.Errorf("invalid fief.on-exit=%q on the kernel command line: use poweroff, reboot or halt", value)
			}
		case "fief.exit-port":
			port, err := strconv.ParseInt(value, 0, 32)
			if err != nil || port <= 0 || port > 0xffff {
				return params, fmt.Errorf("invalid fief.exit-port=%q on the kernel command line: give an I/O port such as 0xf4", value)
			}
			params.exitPort = port
		}
	}
	return params, nil
}

// splitCmdline splits a kernel command line at blanks outside double quotes.
func splitCmdline(cmdline string) []string {
	var words []string
	var word strings.Builder
	quoted := false
	for _, r := range cmdline {
		switch {
		case r == '"':
			quoted = !quoted
			word.WriteRune(r)
		case (r == ' ' || r == '\n' || r == '\t') && !quoted:
			if word.Len() > 0 {
				words = append(words, word.String())
				word.Reset()
			}
		default:
			word.WriteRune(r)
		}
	}
	if word.Len() > 0 {
		words = append(words, word.String())
	}
	return words
}

// shutdown stops every process, syncs, unmounts, reports the status and
// ends the VM. It never returns.
func (vm *vmInit) shutdown(status int) {
	defer func() {
		// Nothing may end pid 1, not even a panic here.
		if r := recover(); r != nil {
			vm.log.Error("shutdown panicked", "panic", fmt.Sprint(r))
		}
		for {
			time.Sleep(time.Hour)
		}
	}()
	// Here too, for a VM whose emperor failed before its first vassals started.
	vm.catchFatalSignals()

	vm.log.Info("shutting down", "status", status, "action", vm.params.onExit)
	vm.stopEverything()
	unix.Sync()
	unmountAll(vm.log)
	unix.Sync()

	if !vm.workloadEnd.IsZero() {
		vm.log.Info("powering off", "since_workload_end", time.Since(vm.workloadEnd).Round(time.Microsecond))
	}
	fmt.Fprintf(os.Stderr, "fief: exit status %d\n", status)
	if vm.params.exitPort != 0 {
		// A byte written to QEMU's isa-debug-exit port ends QEMU with
		// status 2N+1. /dev/port gives access to I/O ports without
		// assembly.
		if err := writePort(vm.params.exitPort, byte(status)); err != nil {
			vm.log.Error("writing the exit status to the I/O port failed", "port", vm.params.exitPort, "err", err)
		}
	}

	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	switch vm.params.onExit {
	case "reboot":
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	case "halt":
		cmd = unix.LINUX_REBOOT_CMD_HALT
	}
	if err := unix.Reboot(cmd); err != nil {
		vm.log.Error("powering off failed; halting here", "err", err)
	}
}

// stopEverything sends SIGTERM to every process, SIGKILL to those still
// there after shutdownGrace, and reaps them.
func (vm *vmInit) stopEverything() {
	if vm.reaper == nil {
		return
	}
	// kill(-1, 0) would succeed as long as kernel threads exist, so the
	// processes left are counted in /proc instead.
	alive := func() bool {
		vm.reaper.Reap()
		return userProcessesLeft()
	}
	if unix.Kill(-1, unix.SIGTERM) != nil {
		return
	}
	if waitUntil(shutdownGrace, func() bool { return !alive() }) {
		return
	}
	vm.log.Warn("processes ignored SIGTERM; sending SIGKILL", "grace", shutdownGrace)
	_ = unix.Kill(-1, unix.SIGKILL)
	waitUntil(5*time.Second, func() bool { return !alive() })
}

// pfKthread is the PF_KTHREAD bit of the flags field of /proc/PID/stat.
const pfKthread = 0x00200000

// userProcessesLeft reports whether any process other than pid 1 and the
// kernel's threads is still there, zombies included.
func userProcessesLeft() bool {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	for _, entry := range entries {
		pid, err := strconv.Atoi(entry.Name())
		if err != nil || pid == 1 {
			continue
		}
		data, err := os.ReadFile("/proc/" + entry.Name() + "/stat")
		if err != nil {
			continue
		}
		// Fields after the command name, which may contain blanks, start
		// after the last ')': state is the first, flags the seventh.
		end := strings.LastIndexByte(string(data), ')')
		if end < 0 {
			continue
		}
		fields := strings.Fields(string(data[end+1:]))
		if len(fields) < 7 {
			continue
		}
		flags, err := strconv.ParseUint(fields[6], 10, 64)
		if err == nil && flags&pfKthread != 0 {
			continue
		}
		return true
	}
	return false
}

func waitUntil(timeout time.Duration, done func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !done() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// unmountAll unmounts every filesystem but /, /proc, /sys and /dev, deepest
// first, detaching what is busy. Those four stay for the last console line
// and the exit port.
func unmountAll(log *slog.Logger) {
	infos, err := mount.ReadMountinfo("/proc/self/mountinfo")
	if err != nil {
		log.Warn("reading the mount table for the shutdown failed", "err", err)
		return
	}
	keep := map[string]bool{"/": true, "/proc": true, "/sys": true, "/dev": true}
	var targets []string
	for _, info := range infos {
		if !keep[info.MountPoint] {
			targets = append(targets, info.MountPoint)
		}
	}
	sort.Slice(targets, func(i, j int) bool { return len(targets[i]) > len(targets[j]) })
	for _, target := range targets {
		if err := unix.Unmount(target, 0); err != nil {
			_ = unix.Unmount(target, unix.MNT_DETACH)
		}
	}
}

// writePort writes value to the I/O port through /dev/port.
func writePort(port int64, value byte) error {
	file, err := os.OpenFile("/dev/port", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer file.Close()
	_, err = file.WriteAt([]byte{value}, port)
	return err
}
