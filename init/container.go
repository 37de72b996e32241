package initd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"fief/reaper"
)

// ForwardedSignals are passed on to the command. SIGCHLD is the reaper's,
// and SIGURG is sent by the Go runtime to itself for preemption, so neither
// is ever forwarded.
var ForwardedSignals = []unix.Signal{
	unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT,
	unix.SIGUSR1, unix.SIGUSR2, unix.SIGWINCH,
}

// ContainerOptions configure [RunContainer].
type ContainerOptions struct {
	// Subreaper selects child subreaper mode explicitly, which silences the
	// notice printed when fief is not pid 1.
	Subreaper bool
	// Group forwards signals to the command's whole process group.
	Group bool
	// Grace is how long processes left behind by the command get between
	// SIGTERM and SIGKILL.
	Grace time.Duration
	// Remap maps the command's exit code to fief's, e.g. 143 to 0.
	Remap map[int]int
	// NoWaiter keeps fief as the init while the command runs, instead of
	// executing the waiter from a memory file. Some security monitors flag
	// the execution of a memory file, and vm.memfd_noexec can forbid it.
	NoWaiter bool
	// LogFormat and LogLevel are the log settings that the waiter passes
	// on when it runs fief again to stop the processes left behind.
	LogFormat, LogLevel string
}

// ParseRemap parses an exit code mapping such as "143:0".
func ParseRemap(text string, remap map[int]int) error {
	from, to, ok := strings.Cut(text, ":")
	if !ok {
		return fmt.Errorf("invalid exit code mapping %q: write FROM:TO, e.g. 143:0", text)
	}
	f, err1 := strconv.Atoi(from)
	t, err2 := strconv.Atoi(to)
	if err1 != nil || err2 != nil || f < 0 || f > 255 || t < 0 || t > 255 {
		return fmt.Errorf("invalid exit code mapping %q: both codes must be numbers from 0 to 255", text)
	}
	remap[f] = t
	return nil
}

// Exit codes for a command that could not be started, as shells use them.
const (
	ExitNotExecutable = 126
	ExitNotFound      = 127
)

// RunContainer runs argv as the main process of a container: it reaps every
// zombie, forwards signals, and when the command exits it stops what the
// command left behind and returns the command's exit code (128+N for death
// by signal N).
//
// Once the command runs, fief executes the waiter in its place (see
// execWaiter). execWaiter returns only when the waiter cannot run, and then
// fief waits for the command itself. Its main goroutine blocks in wait4
// through a driven reaper, so the command's exit reaches it without a
// signal or a goroutine switch. Meanwhile a signal handler (see forwarder)
// forwards signals without this goroutine.
func RunContainer(log *slog.Logger, argv []string, opts ContainerOptions) int {
	// The handlers come first, so that a signal that arrives while the
	// command starts is kept and sent once it runs.
	fwd, err := startForwarding(log, ForwardedSignals)
	if err != nil {
		log.Error("installing the signal handlers failed", "err", err)
		return 1
	}

	pid1 := os.Getpid() == 1
	if !pid1 {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			log.Warn("not pid 1 and becoming a child subreaper failed; zombies re-parented to pid 1 are not reaped by fief", "pid", os.Getpid(), "err", err)
		} else if !opts.Subreaper {
			log.Warn("not running as pid 1; registered as a child subreaper so zombies are still reaped (use -s to silence this)", "pid", os.Getpid())
		}
	}

	r := reaper.NewDriven(nil)

	child, code := startCommand(log, r, argv)
	if child == nil {
		fwd.stop()
		return remapExit(code, opts.Remap)
	}
	fwd.target(child.Pid, opts.Group)

	// From here on the waiter, a one-thread program about as small as
	// tini, waits for the command and forwards signals. The debug log
	// level keeps the Go loop below, which logs what it does.
	if !opts.NoWaiter && !log.Enabled(context.Background(), slog.LevelDebug) {
		if err := execWaiter(waiterSetup{
			pid:     child.Pid,
			pidfd:   fwd.pidfd,
			mode:    int(atomic.LoadInt32(&fwdMode)),
			pid1:    pid1,
			signals: ForwardedSignals,
			remap:   opts.Remap,
			rerun:   leftoverArgs(pid1, opts),
		}); !errors.Is(err, errNoWaiter) {
			log.Info("the waiter could not run, so fief waits for the command itself (--no-waiter skips the attempt)", "err", err)
		}
	}

	var status reaper.Status
	for {
		st, err := r.Wait()
		if err != nil {
			// The command is a child until this loop reaps it, so wait4
			// cannot fail with ECHILD. Any error would repeat, so give up
			// rather than spin.
			log.Error("waiting for the command failed", "pid", child.Pid, "err", err)
			fwd.stop()
			return 1
		}
		if st.Pid == child.Pid {
			status = st
			break
		}
	}
	fwd.stop()
	log.Debug("command exited", "pid", child.Pid, "status", status.String())

	stopLeftovers(log, r, pid1, opts.Grace)
	return remapExit(status.ExitCode(), opts.Remap)
}

// LeftoversArg0 is the argv[0] under which the waiter runs fief again when
// the command has left processes behind. main checks for it first.
const LeftoversArg0 = "fief-container-leftovers"

// errNoWaiter is the error of execWaiter on architectures without the
// waiter of waiter_amd64.s.
var errNoWaiter = errors.New("no waiter on this architecture")

// leftoverArgs returns the argv with which the waiter runs fief again.
func leftoverArgs(pid1 bool, opts ContainerOptions) []string {
	args := []string{LeftoversArg0, statusPlaceholder,
		"-pid1=" + strconv.FormatBool(pid1),
		"-grace=" + opts.Grace.String(),
		"-log-format=" + opts.LogFormat,
		"-log-level=" + opts.LogLevel,
	}
	for from, to := range opts.Remap {
		args = append(args, fmt.Sprintf("-remap-exit=%d:%d", from, to))
	}
	return args
}

// LeftoversMain stops the processes that the command left behind, as
// RunContainer does, and returns the command's exit code. The waiter runs
// fief again with LeftoversArg0 and these args after the command exited,
// with the command's wait status in the -status flag.
func LeftoversMain(args []string, newLogger func(format, level string) *slog.Logger) int {
	// From here on, the forwarded signals are dropped, as after the
	// command's exit in RunContainer.
	if fwd, err := startForwarding(slog.New(slog.DiscardHandler), ForwardedSignals); err == nil {
		fwd.stop()
	} else {
		fmt.Fprintf(os.Stderr, "%s: %v; SIGTERM or SIGQUIT may now end fief before it stops the processes left behind\n", LeftoversArg0, err)
	}

	fs := flag.NewFlagSet(LeftoversArg0, flag.ContinueOnError)
	status := fs.String("status", "", "the command's wait status, in hex")
	pid1 := fs.Bool("pid1", false, "fief is pid 1")
	grace := fs.Duration("grace", 5*time.Second, "time between SIGTERM and SIGKILL")
	logFormat := fs.String("log-format", "text", "log format")
	logLevel := fs.String("log-level", "info", "log level")
	remap := map[int]int{}
	fs.Func("remap-exit", "exit code mapping", func(text string) error { return ParseRemap(text, remap) })
	if err := fs.Parse(args); err != nil {
		// The flag package has printed the error and the usage.
		fmt.Fprintf(os.Stderr, "%s: only the waiter of the container init (fief -- CMD) runs fief under this name\n", LeftoversArg0)
		return 1
	}
	wait, err := strconv.ParseUint(*status, 16, 32)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: invalid -status %q: expected the command's wait status as 1 to 8 hex digits\n", LeftoversArg0, *status)
		return 1
	}
	log := newLogger(*logFormat, *logLevel)
	stopLeftovers(log, reaper.NewDriven(nil), *pid1, *grace)
	return remapExit(reaper.Status{Wait: unix.WaitStatus(wait)}.ExitCode(), remap)
}

// startCommand starts argv in its own process group, in the foreground of
// the terminal when stdin is one. It returns nil and the exit code to use
// when the command cannot be started.
func startCommand(log *slog.Logger, r *reaper.Reaper, argv []string) (*reaper.Child, int) {
	path, code := lookCommand(log, argv[0])
	if code != 0 {
		return nil, code
	}

	cmd := &exec.Cmd{
		Path:        path,
		Args:        argv,
		Stdin:       os.Stdin,
		Stdout:      os.Stdout,
		Stderr:      os.Stderr,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	if isTerminal(0) {
		// The command's process group takes the terminal, so Ctrl-C
		// reaches it as it would from a shell.
		cmd.SysProcAttr.Foreground = true
		cmd.SysProcAttr.Ctty = 0
	}

	child, err := r.Start(cmd)
	if err != nil {
		log.Error("starting the command failed", "command", path, "err", err)
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOENT) {
			return nil, ExitNotFound
		}
		return nil, ExitNotExecutable
	}
	return child, 0
}

// lookCommand finds name on PATH. When it cannot be run, it logs why and
// returns the exit code a shell would give: 127 when it is not found, 126
// when it is not executable.
func lookCommand(log *slog.Logger, name string) (string, int) {
	path, err := exec.LookPath(name)
	if err == nil {
		return path, 0
	}
	log.Error("the command cannot be run", "command", name, "err", err)
	if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
		return "", ExitNotFound
	}
	return "", ExitNotExecutable
}

func isTerminal(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return err == nil
}

func remapExit(code int, remap map[int]int) int {
	if to, ok := remap[code]; ok {
		return to
	}
	return code
}

// stopLeftovers sends SIGTERM to every process the command left behind,
// SIGKILL to those still there after grace, and waits until all are reaped.
// As pid 1 that is every other process; as a subreaper, every descendant.
func stopLeftovers(log *slog.Logger, r *reaper.Reaper, pid1 bool, grace time.Duration) {
	signalAll := func(sig unix.Signal) int {
		if pid1 {
			// kill(-1) reaches every process but pid 1.
			if err := unix.Kill(-1, sig); err != nil {
				return 0
			}
			return 1
		}
		pids := descendants(os.Getpid())
		for _, pid := range pids {
			_ = unix.Kill(pid, sig)
		}
		return len(pids)
	}

	if signalAll(unix.SIGTERM) == 0 {
		return
	}
	log.Debug("sent SIGTERM to the processes the command left behind", "grace", grace)
	if waitGone(r, signalAll, grace) {
		return
	}
	log.Warn("processes left behind by the command ignored SIGTERM; sending SIGKILL", "grace", grace)
	signalAll(unix.SIGKILL)
	waitGone(r, signalAll, 5*time.Second)
}

// waitGone reaps and polls until no process is left or timeout passes.
func waitGone(r *reaper.Reaper, signalAll func(unix.Signal) int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		r.Reap()
		if signalAll(0) == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// descendants returns the pids of every live process below pid, found by
// following parent pids in /proc. Zombies are left out: they are the
// reaper's.
func descendants(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := make(map[int][]int)
	for _, entry := range entries {
		p, err := strconv.Atoi(entry.Name())
		if err != nil {
			continue
		}
		ppid, state, ok := readStat(p)
		if !ok || state == 'Z' {
			continue
		}
		children[ppid] = append(children[ppid], p)
	}

	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		next := queue[0]
		queue = queue[1:]
		for _, c := range children[next] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// readStat returns the parent pid and state of pid from /proc/PID/stat.
func readStat(pid int) (int, byte, bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	// The command name in parentheses may contain spaces and parentheses,
	// so the fields start after the last ')'.
	end := strings.LastIndexByte(string(data), ')')
	if end < 0 || end+4 > len(data) {
		return 0, 0, false
	}
	fields := strings.Fields(string(data[end+2:]))
	if len(fields) < 2 {
		return 0, 0, false
	}
	ppid, err := strconv.Atoi(fields[1])
	if err != nil {
		return 0, 0, false
	}
	return ppid, fields[0][0], true
}
