//go:build !amd64

package initd

import (
	"os"
	"os/signal"

	"golang.org/x/sys/unix"
)

// installHandlers passes signals to deliver through os/signal, on
// architectures without the assembly handler of forward_amd64.s. The
// channel is never stopped: the process exits right after the command.
func installHandlers(signals []unix.Signal) error {
	ch := make(chan os.Signal, 16)
	for _, sig := range signals {
		signal.Notify(ch, sig)
	}
	go func() {
		for sig := range ch {
			_ = deliver(sig.(unix.Signal))
		}
	}()
	return nil
}

// restoreHandlers gives the signals back to the Go runtime.
func restoreHandlers() {}
