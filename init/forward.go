package initd

import (
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// A forwarder passes the signals that the container init receives on to
// the command. On amd64 a signal handler written in assembly
// (forward_amd64.s) sends each signal on from whichever thread the kernel
// interrupts, with one system call and without the Go runtime. So no
// goroutine has to wake up, and no os/signal thread exists. On other
// architectures a goroutine fed by os/signal does the same job.
//
// Signals that arrive before the command has started are kept as pending
// and sent once it has started. Signals that arrive after it has exited are
// dropped, as they were before the handler existed.
type forwarder struct {
	log   *slog.Logger
	pidfd int // the command's pidfd, or -1
}

// The forwarding state, shared with the assembly handler, which reads it
// with plain loads and changes it only by compare-and-swap. Bits 0 to 31 of
// fwdState contain the signals that arrived before the command started, one
// bit per signal number. fwdReady means that fwdMode, fwdPid and fwdPidfd
// are set, so signals go straight to the command. fwdClosed means that the
// command has exited, so signals are dropped.
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

// Forwarding modes, the values of fwdMode. fwdByPidfd sends through the
// command's pidfd, which cannot reach another process that reused the pid.
// fwdToGroup sends to the command's process group (-g). fwdByPid sends by
// pid, when pidfd_open fails, as on kernels before 5.3. The assembly
// handler and the waiter compare fwdMode with these numbers too.
const (
	fwdByPidfd = 0
	fwdToGroup = 1
	fwdByPid   = 2
)

// startForwarding installs the handlers that forward signals, which must
// all be standard signals (1 to 31), because fwdState has one pending bit
// for each. Call it once per process, before the command starts.
func startForwarding(log *slog.Logger, signals []unix.Signal) (*forwarder, error) {
	for _, sig := range signals {
		if sig <= 0 || sig >= 32 {
			return nil, fmt.Errorf("invalid forwarded signal %d: only standard signals 1 to 31 can be forwarded", int(sig))
		}
	}
	atomic.StoreUint64(&fwdState, 0)
	if err := installHandlers(log, signals); err != nil {
		return nil, err
	}
	return &forwarder{log: log, pidfd: -1}, nil
}

// target makes pid, or its process group when group is set, the receiver
// of every forwarded signal, and sends it the signals that are pending.
func (f *forwarder) target(pid int, group bool) {
	mode := fwdByPid
	switch {
	case group:
		mode = fwdToGroup
	default:
		// The child cannot be reaped before this returns, because only
		// the caller's goroutine waits. So the pidfd refers to the child.
		if fd, err := unix.PidfdOpen(pid, 0); err == nil {
			f.pidfd = fd
			mode = fwdByPidfd
		}
	}
	atomic.StoreInt32(&fwdMode, int32(mode))
	atomic.StoreInt32(&fwdPid, int32(pid))
	atomic.StoreInt32(&fwdPidfd, int32(f.pidfd))

	// The swap publishes the fields above, because compare-and-swap is a
	// full barrier. A handler that loaded the old state fails its own
	// compare-and-swap, retries and then reads fwdReady.
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

// stop makes the handlers drop every signal from now on. The pidfd stays
// open, because a handler running on another thread may still be using it,
// and fief exits soon after.
func (f *forwarder) stop() {
	for {
		old := atomic.LoadUint64(&fwdState)
		if atomic.CompareAndSwapUint64(&fwdState, old, fwdClosed) {
			return
		}
	}
}

// deliver keeps sig as pending, sends it or drops it, as the assembly
// handler does. The goroutine of forward_other.go calls it.
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

// sendForwarded sends sig to the target, as the assembly handler does. A
// target that has exited is not an error.
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
