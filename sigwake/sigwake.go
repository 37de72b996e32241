// Package sigwake delivers signals to channels, as os/signal does, without
// the cost that os/signal has in a short-lived process with one P.
//
// Each signal that os/signal.Notify enables is a round trip to the
// runtime's signal-mask goroutine (runtime.ensureSigM), which is locked to
// a thread of its own. With GOMAXPROCS=1 every round trip is two thread
// switches, and the locked thread makes the runtime start its template
// thread as well. On amd64 this package installs its own handler with
// rt_sigaction instead (sigwake_amd64.s). The handler sets the signal's
// bit in a pending mask and writes one byte to a non-blocking pipe. A
// goroutine reads the pipe through the runtime's poller, so no thread
// blocks, and sends each pending signal to the channels registered for it.
// On other architectures [Notify] calls os/signal.Notify.
//
// Rules for the process that calls [Notify]:
//
//   - Nothing in the process may call os/signal.Notify, Ignore or Reset
//     for a signal that this package handles. The runtime would install
//     its own handler again, and this package's channels would stop
//     receiving the signal.
//   - A signal that arrives before Notify has installed the handler runs
//     the Go runtime's handler (Go 1.26, runtime/signal_unix.go). For
//     SIGTERM, SIGINT and SIGHUP it raises the signal again with the
//     default action, and exits with status 2 when the kernel ignores that
//     signal, as it does for pid 1 of a pid namespace. For SIGQUIT it
//     prints the goroutines and exits with status 2. SIGTSTP, SIGTTIN and
//     SIGTTOU have no runtime handler, so they keep their default action
//     and stop the process. The runtime discards the other signals of this
//     package.
//   - execve resets a caught signal to its default action, so a program
//     that the process starts inherits default dispositions, as with
//     os/signal. The handler blocks no signal outside its own run, so the
//     signal mask of a started program is the forking thread's.
//
// NOTE: between fork and execve, a child of syscall.ForkExec shares the
// parent's memory (CLONE_VM) and resets only the handlers that the runtime
// installed. For SIGTSTP, SIGTTIN, SIGTTOU, and for SIGHUP and SIGINT when
// the process started with them ignored, the child keeps this package's
// handler, so such a signal sent to the child in that window reaches the
// parent's channels. os/signal resets these handlers in the child.
//
// As with os/signal, signals of the same number that arrive before the
// reading goroutine has run are delivered once, and a channel that is full
// misses the signal, so a channel needs a buffer.
package sigwake

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// supported contains the signals Notify accepts: asynchronous signals that
// the Go runtime has no use of its own for. The runtime needs its handler
// for the synchronous signals (SIGSEGV, SIGBUS, SIGFPE, ...), SIGPIPE,
// SIGABRT, SIGURG (goroutine preemption) and SIGPROF (profiling), and
// SIGKILL and SIGSTOP cannot be caught.
var supported = map[unix.Signal]bool{
	unix.SIGHUP:   true,
	unix.SIGINT:   true,
	unix.SIGQUIT:  true,
	unix.SIGUSR1:  true,
	unix.SIGUSR2:  true,
	unix.SIGALRM:  true,
	unix.SIGTERM:  true,
	unix.SIGCHLD:  true,
	unix.SIGTSTP:  true,
	unix.SIGTTIN:  true,
	unix.SIGTTOU:  true,
	unix.SIGWINCH: true,
	unix.SIGPWR:   true,
}

// checkArgs returns an error for a nil ch, an empty sigs and the first
// signal in sigs that Notify does not handle. os/signal.Notify panics on a
// nil channel, so the check runs on every architecture.
func checkArgs(ch chan<- os.Signal, sigs []unix.Signal) error {
	if ch == nil {
		return fmt.Errorf("sigwake.Notify needs a channel, got nil")
	}
	if len(sigs) == 0 {
		return fmt.Errorf("sigwake.Notify needs at least one signal: it does not catch every signal as os/signal.Notify does")
	}
	for _, sig := range sigs {
		if !supported[sig] {
			return fmt.Errorf("invalid signal %d (%s) for sigwake.Notify: only asynchronous signals that the Go runtime does not use itself are supported", int(sig), unix.SignalName(sig))
		}
	}
	return nil
}
