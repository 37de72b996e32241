package initd

import (
	"fmt"
	"log/slog"
	"unsafe"

	"golang.org/x/sys/unix"
)

// forwardHandler is the signal handler of forward_amd64.s. It runs on the
// interrupted thread's signal stack. It only reads the fwd variables,
// changes fwdState by compare-and-swap and makes at most one system call.
func forwardHandler()

// forwardRestorer returns from forwardHandler with rt_sigreturn.
func forwardRestorer()

// forwardAddrs returns the entry points of forwardHandler and
// forwardRestorer.
func forwardAddrs() (handler, restorer uintptr)

// kernelSigaction is struct sigaction as the rt_sigaction system call
// takes it on amd64.
type kernelSigaction struct {
	handler  uintptr
	flags    uint64
	restorer uintptr
	mask     uint64
}

const (
	saRestorer = 0x04000000
	saOnStack  = 0x08000000
	saRestart  = 0x10000000
)

// savedActions contains the Go runtime's handlers that installHandlers
// replaced, so that restoreHandlers can put them back when installHandlers
// fails part way.
var savedActions map[unix.Signal]kernelSigaction

// installHandlers makes forwardHandler the handler of signals with
// rt_sigaction, bypassing the Go runtime. The runtime still records its own
// handler as installed. That is harmless, because nothing in the container
// init requests these signals from os/signal. As with the runtime's
// handlers, interrupted system calls restart (SA_RESTART) and the handler
// runs on the thread's signal stack (SA_ONSTACK). The handler cannot log,
// so a failed send goes unreported.
func installHandlers(_ *slog.Logger, signals []unix.Signal) error {
	if savedActions == nil {
		savedActions = make(map[unix.Signal]kernelSigaction, len(signals))
	}
	handler, restorer := forwardAddrs()
	act := kernelSigaction{handler: handler, flags: saRestorer | saOnStack | saRestart, restorer: restorer}
	for _, sig := range signals {
		var old kernelSigaction
		_, _, errno := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig),
			uintptr(unsafe.Pointer(&act)), uintptr(unsafe.Pointer(&old)), unsafe.Sizeof(act.mask), 0, 0)
		if errno != 0 {
			restoreHandlers()
			return fmt.Errorf("installing the forwarding handler of %s: %w", unix.SignalName(sig), errno)
		}
		if _, ok := savedActions[sig]; !ok {
			savedActions[sig] = old
		}
	}
	return nil
}

// restoreHandlers puts back the handlers that installHandlers replaced.
func restoreHandlers() {
	for sig, old := range savedActions {
		unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(&old)), 0, unsafe.Sizeof(old.mask), 0, 0)
		delete(savedActions, sig)
	}
}
