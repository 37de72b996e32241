package vassal

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// InitArg0 is the argv[0] under which fief re-executes itself as a vassal
// init. main checks for it before anything else.
const InitArg0 = "fief-vassal-init"

// initGOMAXPROCSMarker marks for the vassal init that fief, not the user, set
// GOMAXPROCS in its environment.
const initGOMAXPROCSMarker = "_FIEF_INIT_GOMAXPROCS"

// Exit codes of a vassal init, which the emperor acts on.
const (
	// ExitStopped: the vassal was asked to stop and did.
	ExitStopped = 0
	// ExitFailed: the program, a FUSE mount or a start-up step failed; the
	// emperor respawns the vassal with backoff.
	ExitFailed = 1
	// ExitConfig: the vassal file is invalid; the emperor waits for the file
	// to change instead of respawning.
	ExitConfig = 2
)

// cloneNames are the namespace names of uWSGI's emperor-use-clone and
// unshare options with their clone flags, sorted by name. The list is
// static data searched in order, because a map built at first use took
// about 0.7 ms more of a booting VM's time to its first vassal under QEMU's
// software emulation (traced boots).
var cloneNames = []struct {
	name string
	flag uintptr
}{
	{"cgroup", unix.CLONE_NEWCGROUP},
	{"fs", unix.CLONE_NEWNS},
	{"ipc", unix.CLONE_NEWIPC},
	{"mnt", unix.CLONE_NEWNS},
	{"mount", unix.CLONE_NEWNS},
	{"net", unix.CLONE_NEWNET},
	{"ns", unix.CLONE_NEWNS},
	{"pid", unix.CLONE_NEWPID},
	{"uts", unix.CLONE_NEWUTS},
}

// RequiredCloneFlags are always set: the mount namespace keeps a vassal's
// mounts out of the host, and the pid namespace makes the vassal init pid 1
// there, so everything in it dies with the init.
const RequiredCloneFlags = unix.CLONE_NEWNS | unix.CLONE_NEWPID

// ParseCloneFlags turns a comma-separated list such as "fs,pid,net" into
// clone flags. An empty list means the required flags only.
func ParseCloneFlags(list string) (uintptr, error) {
	flags := uintptr(RequiredCloneFlags)
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		flag, ok := cloneFlag(name)
		if !ok {
			return 0, fmt.Errorf("unknown namespace %q in clone list %q; use a comma-separated list of %s", name, list, strings.Join(CloneNames(), ", "))
		}
		flags |= flag
	}
	return flags, nil
}

// cloneFlag returns the clone flag of one namespace name.
func cloneFlag(name string) (uintptr, bool) {
	for _, entry := range cloneNames {
		if entry.name == name {
			return entry.flag, true
		}
	}
	return 0, false
}

// CloneNames returns the accepted namespace names, sorted.
func CloneNames() []string {
	names := make([]string, 0, len(cloneNames))
	for _, entry := range cloneNames {
		names = append(names, entry.name)
	}
	return names
}

// SpawnOptions are the settings of a vassal init that [InitCommand] starts.
type SpawnOptions struct {
	// CloneFlags are the namespaces to create; RequiredCloneFlags are
	// added when missing.
	CloneFlags uintptr
	// LogFormat is "text" or "json"; LogLevel "debug", "info", "warn" or
	// "error".
	LogFormat, LogLevel string
	// Stdin is the init's standard input. When nil, reaper.Start opens
	// /dev/null.
	Stdin *os.File
	// Stdout and Stderr receive the init's log and the program's output.
	Stdout, Stderr *os.File
	// StatusPipe, when set, receives the health of the vassal's mount
	// checks, one line per change in the format of FormatMountStatus.
	StatusPipe *os.File
	// Tyrant, when set, is the owner of the vassal file; the vassal then
	// runs as that user.
	Tyrant *Owner
}

// InitCommand builds the command that re-executes this binary as the init of a
// new vassal for the file at path. Namespaces are created by clone(2) at
// spawn: a Go process cannot move itself into new namespaces because
// unshare(2) applies to one thread and Go runs many.
func InitCommand(path string, opts SpawnOptions) (*exec.Cmd, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("resolving vassal file %q: %w", path, err)
	}

	args := []string{InitArg0, "--file", abs}
	if (opts.CloneFlags|RequiredCloneFlags)&unix.CLONE_NEWNET != 0 {
		args = append(args, "--new-net")
	}
	if opts.LogFormat != "" {
		args = append(args, "--log-format", opts.LogFormat)
	}
	if opts.LogLevel != "" {
		args = append(args, "--log-level", opts.LogLevel)
	}
	if opts.Tyrant != nil {
		args = append(args, "--tyrant", opts.Tyrant.String())
	}
	var extra []*os.File
	if opts.StatusPipe != nil {
		// ExtraFiles[0] is descriptor 3 in the child.
		extra = append(extra, opts.StatusPipe)
		args = append(args, "--status-fd", "3")
	}

	env := os.Environ()
	if os.Getenv("GOMAXPROCS") == "" {
		// Read by the Go runtime before main: the init starts with one P
		// and fewer threads. The init removes both variables again, so
		// the vassal's programs never see them.
		env = append(env, "GOMAXPROCS=1", initGOMAXPROCSMarker+"=1")
	}

	cmd := &exec.Cmd{
		Path:       "/proc/self/exe",
		Args:       args,
		Env:        env,
		Dir:        filepath.Dir(abs),
		Stdout:     opts.Stdout,
		Stderr:     opts.Stderr,
		ExtraFiles: extra,
		SysProcAttr: &syscall.SysProcAttr{
			Cloneflags: opts.CloneFlags | RequiredCloneFlags,
			// Its own session keeps terminal job-control signals of the
			// emperor's console away from the vassal.
			Setsid: true,
			// If the emperor dies, the vassal init dies, and the kernel
			// kills everything in its pid namespace. The signal fires when
			// the thread that forked exits, so spawns come from one locked
			// thread in the emperor.
			Pdeathsig: unix.SIGKILL,
		},
	}
	if opts.Stdin != nil {
		// Assigned unconditionally, a nil *os.File would make cmd.Stdin a
		// non-nil io.Reader, and the child would start with descriptor 0
		// closed instead of on /dev/null.
		cmd.Stdin = opts.Stdin
	}
	return cmd, nil
}
