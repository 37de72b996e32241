//go:build !amd64

package initd

import (
	"golang.org/x/sys/unix"
)

// waiterSetup is the waiter's input, as in waiter_amd64.go, where the
// fields are described.
type waiterSetup struct {
	pid, pidfd, mode int
	pid1             bool
	signals          []unix.Signal
	remap            map[int]int
	rerun            []string
}

// statusPlaceholder is the argument of the rerun argv that carries the
// command's wait status, as in waiter_amd64.go.
const statusPlaceholder = "-status=XXXXXXXX"

// execWaiter returns errNoWaiter, because only amd64 has the waiter.
// RunContainer then waits in its Go loop.
func execWaiter(waiterSetup) error {
	return errNoWaiter
}
