package initd

import (
	"fmt"
	"log/slog"

	"golang.org/x/sys/unix"

	"fief/rawsig"
)

// forwardHandler is the signal handler of forward_amd64.s. It runs on the
// interrupted thread's signal stack. It only reads the fwd variables,
// changes fwdState by compare-and-swap and makes at most one system call.
func forwardHandler()

// forwardAddr returns the entry point of forwardHandler.
func forwardAddr() uintptr

// savedActions contains the Go runtime's handlers that installHandlers
// replaced, so that restoreHandlers can put them back when installHandlers
// fails part way.
var savedActions map[unix.Signal]rawsig.Action

// installHandlers makes forwardHandler the handler of signals with
// rt_sigaction, bypassing the Go runtime. The runtime still records its own
// handler as installed. That is harmless, because nothing in the container
// init requests these signals from os/signal. As with the runtime's
// handlers, interrupted system calls restart (SA_RESTART) and the handler
// runs on the thread's signal stack (SA_ONSTACK). The handler cannot log,
// so a failed send goes unreported.
func installHandlers(_ *slog.Logger, signals []unix.Signal) error {
	if savedActions == nil {
		savedActions = make(map[unix.Signal]rawsig.Action, len(signals))
	}
	act := rawsig.HandlerAction(forwardAddr())
	for _, sig := range signals {
		old, err := rawsig.Swap(sig, act)
		if err != nil {
			restoreHandlers()
			return fmt.Errorf("installing the forwarding handler: %w", err)
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
		_, _ = rawsig.Swap(sig, old)
		delete(savedActions, sig)
	}
}
