//go:build !amd64

package initd

import (
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// installHandlers passes signals to deliver through os/signal, on
// architectures without the assembly handler of forward_amd64.s. The
// channel is never stopped, because the process exits soon after the
// command.
func installHandlers(log *slog.Logger, signals []unix.Signal) error {
	ch := make(chan os.Signal, 16)
	for _, sig := range signals {
		signal.Notify(ch, sig)
	}
	go func() {
		for received := range ch {
			sig := received.(unix.Signal)
			if err := deliver(sig); err != nil {
				log.Warn("forwarding a signal failed", "pid", atomic.LoadInt32(&fwdPid), "signal", unix.SignalName(sig), "err", err)
			}
		}
	}()
	return nil
}
