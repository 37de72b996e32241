//go:build !amd64

package sigwake

import (
	"os"
	"os/signal"

	"golang.org/x/sys/unix"
)

// unregisterForTest stops the delivery of every signal to ch.
func unregisterForTest(ch chan os.Signal, _ ...unix.Signal) {
	signal.Stop(ch)
}
