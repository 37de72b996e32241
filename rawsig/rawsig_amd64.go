package rawsig

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Action is struct sigaction as the rt_sigaction system call takes it on
// amd64.
type Action struct {
	Handler  uintptr
	Flags    uint64
	Restorer uintptr
	Mask     uint64
}

// Handler values with a meaning of their own.
const (
	Default = 0 // SIG_DFL
	Ignore  = 1 // SIG_IGN
)

// Flags of Action.
const (
	FlagRestorer = 0x04000000 // SA_RESTORER
	FlagOnStack  = 0x08000000 // SA_ONSTACK
	FlagRestart  = 0x10000000 // SA_RESTART
)

// restorer returns from a handler with rt_sigreturn.
func restorer()

// restorerAddr returns the entry point of restorer.
func restorerAddr() uintptr

// HandlerAction returns the action that runs handler as the Go runtime
// runs its own: on the thread's signal stack, with interrupted system calls
// restarted, and returning through rt_sigreturn.
func HandlerAction(handler uintptr) Action {
	return Action{Handler: handler, Flags: FlagRestorer | FlagOnStack | FlagRestart, Restorer: restorerAddr()}
}

// Swap sets the action of sig to act and returns the action it replaced.
func Swap(sig unix.Signal, act Action) (Action, error) {
	var old Action
	_, _, errno := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig),
		uintptr(unsafe.Pointer(&act)), uintptr(unsafe.Pointer(&old)), unsafe.Sizeof(act.Mask), 0, 0)
	if errno != 0 {
		return Action{}, fmt.Errorf("setting the action of %s: %w", unix.SignalName(sig), errno)
	}
	return old, nil
}

// Get returns the current action of sig.
func Get(sig unix.Signal) (Action, error) {
	var act Action
	_, _, errno := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig),
		0, uintptr(unsafe.Pointer(&act)), unsafe.Sizeof(act.Mask), 0, 0)
	if errno != 0 {
		return Action{}, fmt.Errorf("reading the action of %s: %w", unix.SignalName(sig), errno)
	}
	return act, nil
}
