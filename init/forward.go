package initd

import (
	"errors"
	"log/slog"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// A forwarder passes the signals that the container init receives on to
// the command. On amd64 a signal handler written in assembly
// (forward_amd64.s) sends each signal on from whichever thread the kernel
// interrupts, with one system call and without the Go runtime: no
// goroutine has to wake up, and no thread of os/signal exists. Elsewhere a
// goroutine fed by os/signal does the same job.
//
// Signals that arrive before the command has started are kept as pending
// and sent once it has; signals that arrive after it has exited are
// dropped, as they were before the handler existed.
type forwarder struct {
	log     *slog.Logger
	pidfd   int
	stopped bool
}

// The forwarding state, shared with the assembly handler, which reads it
// with plain loads and changes it only by compare-and-swap. Bits 0 to 31 of
// fwdState hold the signals that arrived before the command started, one
// bit per signal number; fwdReady means fwdMode, fwdPid and fwdPidfd are
// set and signals go straight to the command; fwdClosed means the command
// has exited and signals are dropped.
var (
	fwdState uint64
	fwdMode  int32
	fwdPid   int32
	fwdPidfd int32
)

const (
	fwdPendingMask = 1<<32 - 1
	fwdReady       = 1 << 32
	fwdClosed      = 1 << 33
)

// How a signal reaches the command: through its pidfd, which cannot reach
// another process that reused the pid; to its process group (-g); or by pid,
// when the kernel has no pidfd_open. The handler reads these numbers too.
const (
	fwdByPidfd = 0
	fwdToGroup = 1
	fwdByPid   = 2
)

// errNoWaiter is the error of execWaiter on architectures without the
// waiter (waiter_amd64.s).
var errNoWaiter = errors.New("no waiter on this architecture")

// startForwarding installs the forwarding of signals, which must all be
// below 32. It must be called once per process, before the command starts.
func startForwarding(log *slog.Logger, signals []unix.Signal) (*forwarder, error) {
	for _, sig := range signals {
		if sig <= 0 || sig >= 32 {
			return nil, errors.New("forwarded signals must be numbered 1 to 31")
		}
	}
	atomic.StoreUint64(&fwdState, 0)
	if err := installHandlers(signals); err != nil {
		return nil, err
	}
	return &forwarder{log: log, pidfd: -1}, nil
}

// target makes pid the receiver of every forwarded signal, or its process
// group when group is set, and sends it the signals that arrived so far.
func (f *forwarder) target(pid int, group bool) {
	mode := fwdByPid
	switch {
	case group:
		mode = fwdToGroup
	default:
		// The child cannot be reaped before this returns: only the
		// caller's goroutine waits. So the pidfd is the child's.
		if fd, err := unix.PidfdOpen(pid, 0); err == nil {
			f.pidfd = fd
			mode = fwdByPidfd
		}
	}
	atomic.StoreInt32(&fwdMode, int32(mode))
	atomic.StoreInt32(&fwdPid, int32(pid))
	atomic.StoreInt32(&fwdPidfd, int32(f.pidfd))

	// The swap publishes the fields above (compare-and-swap is a full
	// barrier), and a handler that read the old state retries its own
	// compare-and-swap and then sees fwdReady.
	var old uint64
	for {
		old = atomic.LoadUint64(&fwdState)
		if atomic.CompareAndSwapUint64(&fwdState, old, fwdReady) {
			break
		}
	}
	for sig := unix.Signal(1); sig < 32; sig++ {
		if old&(1<<sig) != 0 {
			f.log.Debug("forwarding a signal that arrived while the command started", "signal", unix.SignalName(sig))
			if err := sendForwarded(sig); err != nil {
				f.log.Warn("forwarding a signal failed", "pid", pid, "signal", unix.SignalName(sig), "err", err)
			}
		}
	}
}

// stop drops every signal from now on. The pidfd stays open: a handler
// running at this moment on another thread may still use it, and fief exits
// soon after.
func (f *forwarder) stop() {
	for {
		old := atomic.LoadUint64(&fwdState)
		if atomic.CompareAndSwapUint64(&fwdState, old, fwdClosed) {
			return
		}
	}
}

// deliver is the Go twin of the assembly handler, for the goroutine of
// forward_other.go: it keeps sig as pending, sends it, or drops it.
func deliver(sig unix.Signal) error {
	for {
		old := atomic.LoadUint64(&fwdState)
		switch {
		case old&fwdClosed != 0:
			return nil
		case old&fwdReady != 0:
			return sendForwarded(sig)
		case atomic.CompareAndSwapUint64(&fwdState, old, old|1<<sig):
			return nil
		}
	}
}

// sendForwarded sends sig to the target, as the handler does. A target
// that is gone is not an error.
func sendForwarded(sig unix.Signal) error {
	var err error
	switch atomic.LoadInt32(&fwdMode) {
	case fwdByPidfd:
		err = unix.PidfdSendSignal(int(atomic.LoadInt32(&fwdPidfd)), sig, nil, 0)
	case fwdToGroup:
		err = unix.Kill(-int(atomic.LoadInt32(&fwdPid)), sig)
	default:
		err = unix.Kill(int(atomic.LoadInt32(&fwdPid)), sig)
	}
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}
