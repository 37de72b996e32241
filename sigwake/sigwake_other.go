//go:build !amd64

package sigwake

import (
	"os"
	"os/signal"

	"golang.org/x/sys/unix"
)

// Notify makes the process send sigs to ch through os/signal, because only
// amd64 has the assembly handler. It accepts the same signals as on amd64.
func Notify(ch chan<- os.Signal, sigs ...unix.Signal) error {
	if err := checkArgs(ch, sigs); err != nil {
		return err
	}
	for _, sig := range sigs {
		signal.Notify(ch, sig)
	}
	return nil
}
