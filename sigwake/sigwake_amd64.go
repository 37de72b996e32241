package sigwake

import (
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"fief/rawsig"
)

// wakeHandler is the signal handler of sigwake_amd64.s. It runs on the
// interrupted thread's signal stack, sets the signal's bit in pending with
// LOCK OR and writes wakeByte to wakeFD, its only system call.
func wakeHandler()

// handlerAddr returns the entry point of wakeHandler.
func handlerAddr() uintptr

// The state shared with wakeHandler. Bit N of pending is set when signal N
// has arrived since the reading goroutine last swapped pending to zero.
// wakeFD is the write end of the wake pipe, or -1 before it exists.
// wakeByte is the byte that the handler writes.
var (
	pending  uint64
	wakeFD   int32 = -1
	wakeByte byte  = 'w'
)

// registry contains the channels of each signal. mu guards all fields.
var registry struct {
	mu        sync.Mutex
	channels  [64][]chan<- os.Signal
	installed [64]bool
	wake      *os.File // the read end of the wake pipe, nil before the first Notify
}

// Notify makes the package's handler catch sigs and send each of them to
// ch, without blocking, like os/signal.Notify. The first call creates the
// wake pipe and starts the reading goroutine. Notify fails on a signal
// that the package does not support, and when the pipe or rt_sigaction
// fails. Once Notify has returned, a signal of sigs that arrives is sent
// to ch, even when another goroutine is still receiving an earlier one.
func Notify(ch chan<- os.Signal, sigs ...unix.Signal) error {
	if err := checkArgs(ch, sigs); err != nil {
		return err
	}
	registry.mu.Lock()
	defer registry.mu.Unlock()

	if registry.wake == nil {
		if err := startReader(); err != nil {
			return err
		}
	}
	for _, sig := range sigs {
		// The channel is registered before the handler is installed, so
		// the first signal that the handler catches has a receiver.
		if !slices.Contains(registry.channels[sig], ch) {
			registry.channels[sig] = append(registry.channels[sig], ch)
		}
		if registry.installed[sig] {
			continue
		}
		if err := installHandler(sig); err != nil {
			return err
		}
		registry.installed[sig] = true
	}
	return nil
}

// startReader creates the wake pipe, non-blocking and close-on-exec, and
// starts the goroutine that reads it. The caller holds registry.mu.
func startReader() error {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return fmt.Errorf("creating the signal wake pipe: %w", err)
	}
	// os.NewFile registers a non-blocking descriptor with the runtime's
	// poller, so reads of the pipe park the goroutine instead of a thread.
	registry.wake = os.NewFile(uintptr(fds[0]), "sigwake")
	atomic.StoreInt32(&wakeFD, int32(fds[1]))
	go readWakes(registry.wake)
	return nil
}

// installHandler makes wakeHandler the handler of sig. The Go runtime still
// records its own handler as installed, which is why the package doc
// forbids os/signal for sig. As with the runtime's handlers, interrupted
// system calls restart (SA_RESTART) and the handler runs on the thread's
// signal stack (SA_ONSTACK).
func installHandler(sig unix.Signal) error {
	if _, err := rawsig.Swap(sig, rawsig.HandlerAction(handlerAddr())); err != nil {
		return fmt.Errorf("installing the signal handler: %w", err)
	}
	return nil
}

// readWakes waits for bytes on the wake pipe and delivers the pending
// signals after each read. The pipe is read before pending is swapped, so a
// signal whose bit the swap misses has written its byte after the read,
// and the next read returns. When the pipe was full, the handler's write
// failed with EAGAIN, but the bytes already in the pipe make the next read
// return after the bit was set.
func readWakes(wake *os.File) {
	buf := make([]byte, 128)
	for {
		if _, err := wake.Read(buf); err != nil {
			// The package never closes either end of the pipe, so a
			// failed read means that signals can no longer be delivered.
			panic(fmt.Sprintf("sigwake: reading the signal wake pipe failed: %v", err))
		}
		deliver(atomic.SwapUint64(&pending, 0))
	}
}

// deliver sends each signal of the mask to its channels, in increasing
// order of signal number, without blocking.
func deliver(mask uint64) {
	if mask == 0 {
		return
	}
	registry.mu.Lock()
	defer registry.mu.Unlock()
	for sig := unix.Signal(1); sig < 64; sig++ {
		if mask&(1<<sig) == 0 {
			continue
		}
		for _, ch := range registry.channels[sig] {
			select {
			case ch <- sig:
			default:
			}
		}
	}
}
