package reaper

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Child is a process started through [Reaper.Start].
type Child struct {
	Pid int
	// Done receives the child's status once, when the reaper reaps the
	// child. The reaper never closes it.
	Done <-chan Status

	handle *handle
}

// Signal sends sig, which must be a syscall.Signal, to the child. It goes
// through the child's pidfd when the kernel gave one (Linux 5.2 and later),
// so it cannot reach another process that reused the pid. Signalling a
// child that has already been reaped does nothing and returns nil.
func (c *Child) Signal(sig os.Signal) error {
	number, ok := sig.(syscall.Signal)
	if !ok {
		return fmt.Errorf("sending %v to pid %d: unsupported signal type %T", sig, c.Pid, sig)
	}
	return c.handle.signal(number)
}

// handle is the pidfd of a started child and whether the reaper has reaped
// it. Signal holds mu for reading while it uses pidfd, and the reaper holds
// it for writing while it closes pidfd, so a signal never goes through a
// descriptor number that was closed and reused for another file.
type handle struct {
	pid int

	mu     sync.RWMutex
	pidfd  int // -1 when the kernel gave no pidfd
	reaped bool
}

func (h *handle) signal(sig syscall.Signal) error {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.reaped {
		return nil
	}

	var err error
	if h.pidfd >= 0 {
		err = unix.PidfdSendSignal(h.pidfd, sig, nil, 0)
		if errors.Is(err, unix.ENOSYS) {
			// A seccomp filter can reject pidfd_send_signal even though
			// clone returned a pidfd.
			err = unix.Kill(h.pid, sig)
		}
	} else {
		// NOTE: without a pidfd, a signal sent after wait4 has reaped the
		// pid and before release marks the handle reaped can reach a new
		// process with the same pid. The kernel allocates pids cyclically,
		// so that needs the pid counter to wrap around within that window.
		err = unix.Kill(h.pid, sig)
	}
	if errors.Is(err, unix.ESRCH) {
		// The child is gone: wait4 has reaped it and release has not run yet.
		return nil
	}
	if err != nil {
		return fmt.Errorf("sending %s to pid %d: %w", unix.SignalName(sig), h.pid, err)
	}
	return nil
}

// release marks the child reaped and closes its pidfd.
func (h *handle) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reaped = true
	if h.pidfd >= 0 {
		_ = unix.Close(h.pidfd)
		h.pidfd = -1
	}
}

// Start starts the command that cmd describes and registers it. Start reads
// cmd's Path, Args, Env, Dir, Stdin, Stdout, Stderr, ExtraFiles, SysProcAttr
// and Err, and forks with syscall.ForkExec, so cmd.Process stays nil.
// exec.Cmd.Start is not used because os.StartProcess, once per process,
// probes pidfd support by forking and waiting for a throw-away child, which
// every vassal init would pay for. The stdio streams must be nil, which
// means /dev/null, or *os.File: other readers and writers are copied by
// goroutines that only exec.Cmd.Wait stops, and Wait is never called here.
func (r *Reaper) Start(cmd *exec.Cmd) (*Child, error) {
	attr, opened, err := procAttr(cmd)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, f := range opened {
			f.Close()
		}
	}()

	r.mu.Lock()
	defer r.mu.Unlock()

	pid, pidfd, err := forkExec(cmd.Path, argv(cmd), attr)
	// The files must stay open until the fork has duplicated them into the
	// child: a finalizer could otherwise close a descriptor first.
	runtime.KeepAlive(cmd)
	if err != nil {
		return nil, startError(cmd, err)
	}

	h := &handle{pid: pid, pidfd: pidfd}
	w := &waiter{done: make(chan Status, 1), handle: h}
	r.waiters[pid] = w
	return &Child{Pid: pid, Done: w.done, handle: h}, nil
}

// procAttr translates cmd into the attributes of syscall.ForkExec as
// exec.Cmd.Start does. It returns the /dev/null files it opened for nil
// stdio streams, which the caller closes after the fork.
func procAttr(cmd *exec.Cmd) (attr *syscall.ProcAttr, opened []*os.File, err error) {
	if cmd.Err != nil {
		return nil, nil, cmd.Err
	}
	if cmd.Path == "" {
		return nil, nil, errors.New("exec: no command")
	}
	if cmd.Cancel != nil {
		return nil, nil, fmt.Errorf("starting %q: a command made by exec.CommandContext is not supported, because the reaper never waits through exec.Cmd; stop the child with Child.Signal", cmd.Path)
	}
	if cmd.SysProcAttr != nil && cmd.SysProcAttr.PidFD != nil {
		return nil, nil, fmt.Errorf("starting %q: SysProcAttr.PidFD must be nil, because the reaper requests the child's pidfd itself", cmd.Path)
	}
	for _, entry := range cmd.Env {
		if strings.IndexByte(entry, 0) >= 0 {
			return nil, nil, fmt.Errorf("starting %q: environment variable %q contains NUL", cmd.Path, entry)
		}
	}

	files := make([]uintptr, 0, 3+len(cmd.ExtraFiles))
	var devNullRead, devNullWrite *os.File
	closeOpened := func() {
		for _, f := range opened {
			f.Close()
		}
	}
	for i, stream := range []any{cmd.Stdin, cmd.Stdout, cmd.Stderr} {
		if stream != nil {
			f, ok := stream.(*os.File)
			if !ok {
				closeOpened()
				return nil, nil, fmt.Errorf("starting %q: stdio must be *os.File, got %T", cmd.Path, stream)
			}
			files = append(files, f.Fd())
			continue
		}

		// A nil stream is /dev/null, read-only for stdin and write-only
		// for stdout and stderr, which share one descriptor as they do
		// in exec.Cmd.
		var f **os.File
		flag := os.O_WRONLY
		if i == 0 {
			f, flag = &devNullRead, os.O_RDONLY
		} else {
			f = &devNullWrite
		}
		if *f == nil {
			*f, err = os.OpenFile(os.DevNull, flag, 0)
			if err != nil {
				closeOpened()
				return nil, nil, fmt.Errorf("starting %q: opening %s for stdio: %w", cmd.Path, os.DevNull, err)
			}
			opened = append(opened, *f)
		}
		files = append(files, (*f).Fd())
	}
	for _, f := range cmd.ExtraFiles {
		// A nil entry is ^uintptr(0), which the child closes.
		files = append(files, f.Fd())
	}

	var sys syscall.SysProcAttr
	if cmd.SysProcAttr != nil {
		sys = *cmd.SysProcAttr
	}
	attr = &syscall.ProcAttr{Dir: cmd.Dir, Env: cmd.Environ(), Files: files, Sys: &sys}
	return attr, opened, nil
}

func argv(cmd *exec.Cmd) []string {
	if len(cmd.Args) > 0 {
		return cmd.Args
	}
	return []string{cmd.Path}
}

// Outcomes of clone(CLONE_PIDFD) in this process, the values of pidfdState.
const (
	pidfdUnknown int32 = iota // no fork has succeeded yet
	pidfdWorks                // the kernel returned a pidfd
	pidfdMissing              // the kernel returned no pidfd or rejected the flag
)

var pidfdState atomic.Int32

// forkExec forks and executes path, and returns the child's pid and its
// pidfd, or -1 when the kernel gives none. Kernels before 5.2 do not know
// CLONE_PIDFD: clone(2) ignores the unused bit, so the fork succeeds and the
// pidfd stays -1 (Linux commit 9014143bab2f, "fork: don't check parent_tidptr
// with CLONE_PIDFD", documents this as the way to detect support). A
// kernel or emulator that rejects the flag fails the fork with EINVAL. After
// either outcome every later fork in the process skips the flag.
func forkExec(path string, argv []string, attr *syscall.ProcAttr) (pid, pidfd int, err error) {
	if pidfdState.Load() != pidfdMissing {
		pidfd = -1
		attr.Sys.PidFD = &pidfd
		pid, err = syscall.ForkExec(path, argv, attr)
		attr.Sys.PidFD = nil
		switch {
		case err == nil && pidfd >= 0:
			pidfdState.Store(pidfdWorks)
			return pid, pidfd, nil
		case err == nil:
			pidfdState.Store(pidfdMissing)
			return pid, -1, nil
		case pidfdState.Load() == pidfdWorks || !errors.Is(err, unix.EINVAL):
			return 0, -1, err
		}
		// EINVAL before any fork gave a pidfd may come from CLONE_PIDFD.
		// The failed child never ran the program, so forking again
		// without the flag is safe.
	}

	pid, err = syscall.ForkExec(path, argv, attr)
	if err == nil {
		pidfdState.CompareAndSwap(pidfdUnknown, pidfdMissing)
	}
	return pid, -1, err
}

// startError wraps a failed fork as os.StartProcess does, so IsExecNotFound
// and the callers' messages see the same error as with exec.Cmd.Start. The
// child changes to cmd.Dir before it executes the program, so a missing
// directory fails with the same ENOENT as a missing program: that case is
// reported as a chdir error instead.
func startError(cmd *exec.Cmd, err error) error {
	var errno syscall.Errno
	chroot := cmd.SysProcAttr != nil && cmd.SysProcAttr.Chroot != ""
	if errors.As(err, &errno) && (errno == syscall.ENOENT || errno == syscall.ENOTDIR) && cmd.Dir != "" && !chroot {
		if _, statErr := os.Stat(cmd.Dir); statErr != nil {
			return &os.PathError{Op: "chdir", Path: cmd.Dir, Err: errno}
		}
	}
	return &os.PathError{Op: "fork/exec", Path: cmd.Path, Err: err}
}
