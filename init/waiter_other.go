//go:build !amd64

package initd

import (
	"golang.org/x/sys/unix"
)

// waiterSetup is what the waiter needs; see waiter_amd64.go.
type waiterSetup struct {
	pid, pidfd, mode int
	pid1             bool
	signals          []unix.Signal
	remap            map[int]int
	rerun            []string
}

const statusPlaceholder = "-status=XXXXXXXX"

// execWaiter fails: only amd64 has the waiter, elsewhere the Go loop of
// RunContainer waits.
func execWaiter(waiterSetup) error {
	return errNoWaiter
}
