// Package reaper is the only code in fief that waits for child processes.
//
// In the reaper made by [New], one goroutine drains wait4(-1, WNOHANG) every
// time SIGCHLD arrives and sends each status to the caller that started that
// pid through [Reaper.Start]. A status for a pid that no caller registered
// belongs to an orphan that was re-parented to this process, because fief
// is pid 1 or a child subreaper. The orphan is reaped and reported through
// the function given to [New]. [NewWoken] makes the same reaper, woken
// through a channel that its caller feeds on SIGCHLD. The reaper made by [NewDriven] has no
// goroutine and does not handle SIGCHLD. Its owner blocks in [Reaper.Wait],
// which hands out statuses the same way.
//
// Nothing else may call exec.Cmd.Wait, exec.Cmd.Run, os.Process.Wait or
// wait4. Since Go 1.23 os.Process.Wait uses waitid(P_PIDFD), and a wait4(-1)
// running at the same time steals the status and leaves Wait with ECHILD.
package reaper

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Status is the wait status and resource usage of a child that ended.
type Status struct {
	Pid    int
	Wait   unix.WaitStatus
	Rusage unix.Rusage
}

// ExitCode returns the exit code a shell would report: the code for a normal
// exit and 128+N for death by signal N.
func (s Status) ExitCode() int {
	if s.Wait.Signaled() {
		return 128 + int(s.Wait.Signal())
	}
	return s.Wait.ExitStatus()
}

// Success reports whether the child exited with code 0.
func (s Status) Success() bool {
	return s.Wait.Exited() && s.Wait.ExitStatus() == 0
}

// String describes the status as "exit status N" or "killed by signal NAME".
func (s Status) String() string {
	switch {
	case s.Wait.Exited():
		return fmt.Sprintf("exit status %d", s.Wait.ExitStatus())
	case s.Wait.Signaled():
		text := fmt.Sprintf("killed by signal %s", unix.SignalName(s.Wait.Signal()))
		if s.Wait.CoreDump() {
			text += " (core dumped)"
		}
		return text
	default:
		return fmt.Sprintf("wait status %#x", uint32(s.Wait))
	}
}

// Reaper owns every wait for the children of this process.
type Reaper struct {
	// mu is held across fork and registration, so a child that exits at once
	// is registered before the reaping goroutine looks its pid up.
	mu      sync.Mutex
	waiters map[int]*waiter

	orphan func(Status)
	wake   <-chan os.Signal // SIGCHLD notifications, nil for a reaper made by NewDriven
}

type waiter struct {
	done   chan Status
	handle *handle
}

// created makes sure one process has one reaper: two would take each other's
// statuses.
var created atomic.Bool

// New starts the reaping goroutine. onOrphan, which may be nil, is called on
// that goroutine for every reaped process that was not started through
// [Reaper.Start]; it must not block. New panics when the process already has
// a reaper, made by New, [NewWoken] or [NewDriven].
func New(onOrphan func(Status)) *Reaper {
	if !created.CompareAndSwap(false, true) {
		panic("reaper.New called in a process that already has a reaper: a process must have exactly one")
	}
	// SIGCHLD does not queue, so one buffered slot is enough: every wake
	// drains all pending children.
	wake := make(chan os.Signal, 1)
	signal.Notify(wake, unix.SIGCHLD)
	return start(onOrphan, wake)
}

// NewWoken is [New] for a process that catches SIGCHLD itself, without
// os/signal, such as the vassal init with package sigwake. The caller makes
// every SIGCHLD send a value on wake without blocking, so wake needs a
// buffer of at least one. Each value makes the reaping goroutine collect
// every child that has exited. NewWoken panics when the process already
// has a reaper.
func NewWoken(onOrphan func(Status), wake <-chan os.Signal) *Reaper {
	if !created.CompareAndSwap(false, true) {
		panic("reaper.NewWoken called in a process that already has a reaper: a process must have exactly one")
	}
	return start(onOrphan, wake)
}

// start returns a reaper whose goroutine reaps after each value on wake.
func start(onOrphan func(Status), wake <-chan os.Signal) *Reaper {
	r := &Reaper{waiters: make(map[int]*waiter), orphan: onOrphan, wake: wake}
	go r.loop()
	return r
}

// NewDriven returns the process's reaper without a goroutine of its own and
// without a SIGCHLD handler. Its owner collects children by calling
// [Reaper.Wait], and may sweep with [Reaper.Reap]. It suits a process whose
// main goroutine has nothing to do but wait, such as the container init.
// There a child's exit wakes that goroutine directly, with no signal and no
// switch between goroutines, and the runtime starts no thread for
// os/signal. Statuses are handed out as by the reaper of [New]. onOrphan is
// called on the goroutine that calls Wait or Reap. NewDriven panics when the
// process already has a reaper.
func NewDriven(onOrphan func(Status)) *Reaper {
	if !created.CompareAndSwap(false, true) {
		panic("reaper.NewDriven called in a process that already has a reaper: a process must have exactly one")
	}
	return &Reaper{waiters: make(map[int]*waiter), orphan: onOrphan}
}

// errNotDriven is returned by Wait on a reaper made by New or NewWoken, whose goroutine
// does the waiting.
var errNotDriven = errors.New("reaper: Wait called on a reaper made by New or NewWoken; only a reaper made by NewDriven supports Wait")

// Wait blocks until a child of this process exits, reaps it and returns its
// status. Like [Reaper.Reap], it also sends the status to the Done channel
// of a started child, or passes it to the orphan function. It fails with
// unix.ECHILD when the process has no child left. Only the owner of a
// reaper made by [NewDriven] may call it, from one goroutine at a time.
func (r *Reaper) Wait() (Status, error) {
	if r.wake != nil {
		return Status{}, errNotDriven
	}
	for {
		var status Status
		pid, err := unix.Wait4(-1, &status.Wait, 0, &status.Rusage)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return Status{}, err
		}
		status.Pid = pid
		r.dispatch(status)
		return status, nil
	}
}

// Reap collects every child that has exited so far. The reaping goroutine
// calls it on each SIGCHLD; callers may call it too, as a sweep.
func (r *Reaper) Reap() {
	for {
		var status Status
		pid, err := unix.Wait4(-1, &status.Wait, unix.WNOHANG, &status.Rusage)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			// ECHILD: no children at all; 0: children, none exited yet.
			return
		}
		status.Pid = pid
		r.dispatch(status)
	}
}

func (r *Reaper) dispatch(status Status) {
	r.mu.Lock()
	w, ok := r.waiters[status.Pid]
	delete(r.waiters, status.Pid)
	r.mu.Unlock()

	if !ok {
		if r.orphan != nil {
			r.orphan(status)
		}
		return
	}

	// The handle is released before the status is sent, so a caller that
	// has received from Done finds the pidfd closed and Signal a no-op.
	w.handle.release()
	w.done <- status
}

func (r *Reaper) loop() {
	for range r.wake {
		r.Reap()
	}
}

// Pending returns how many started children have not been reaped yet.
func (r *Reaper) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.waiters)
}

// IsExecNotFound reports whether err from [Reaper.Start] means the program
// does not exist, as opposed to existing without being executable. A
// missing working directory (cmd.Dir) is not a missing program.
func IsExecNotFound(err error) bool {
	var pathErr *os.PathError
	if errors.As(err, &pathErr) && pathErr.Op == "chdir" {
		return false
	}
	return errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOENT)
}

// shared is the reaper of processes that did not create one with New.
var (
	sharedOnce sync.Once
	shared     *Reaper
)

// Shared returns the process's reaper, creating it without an orphan
// handler on first use. Code that may run in a process without an emperor
// or init, such as a command-line tool, uses it; New must then not be
// called in the same process.
func Shared() *Reaper {
	sharedOnce.Do(func() { shared = New(nil) })
	return shared
}

// Output runs cmd, which must have no stdout or stderr set, and returns what
// it wrote to them with its status. Its output is read through pipes while
// it runs, so a large output cannot block it.
func (r *Reaper) Output(cmd *exec.Cmd) (stdout, stderr []byte, status Status, err error) {
	if cmd.Stdout != nil || cmd.Stderr != nil {
		return nil, nil, Status{}, fmt.Errorf("running %q: Output sets stdout and stderr itself", cmd.Path)
	}
	outRead, outWrite, err := os.Pipe()
	if err != nil {
		return nil, nil, Status{}, err
	}
	errRead, errWrite, err := os.Pipe()
	if err != nil {
		outRead.Close()
		outWrite.Close()
		return nil, nil, Status{}, err
	}
	cmd.Stdout, cmd.Stderr = outWrite, errWrite

	child, startErr := r.Start(cmd)
	// Only the child keeps the write ends, so the reads end at its exit.
	outWrite.Close()
	errWrite.Close()
	if startErr != nil {
		outRead.Close()
		errRead.Close()
		return nil, nil, Status{}, startErr
	}

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); stdout, _ = io.ReadAll(outRead) }()
	go func() { defer wg.Done(); stderr, _ = io.ReadAll(errRead) }()
	status = <-child.Done
	wg.Wait()
	outRead.Close()
	errRead.Close()
	return stdout, stderr, status, nil
}
