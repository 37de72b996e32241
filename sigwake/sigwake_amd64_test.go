package sigwake

import (
	"errors"
	"os"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"fief/rawsig"
)

// unregisterForTest removes ch from the channels of sigs. The handler stays
// installed.
func unregisterForTest(ch chan os.Signal, sigs ...unix.Signal) {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	for _, sig := range sigs {
		registry.channels[sig] = slices.DeleteFunc(registry.channels[sig], func(c chan<- os.Signal) bool { return c == ch })
	}
}

func TestNotifyInstallsRawHandler(t *testing.T) {
	ch := make(chan os.Signal, 1)
	if err := Notify(ch, unix.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	defer unregisterForTest(ch, unix.SIGUSR2)

	current, err := rawsig.Get(unix.SIGUSR2)
	if err != nil {
		t.Fatal(err)
	}
	want := rawsig.HandlerAction(handlerAddr())
	if current.Handler != want.Handler || current.Restorer != want.Restorer {
		t.Errorf("SIGUSR2 has handler %#x and restorer %#x, expected wakeHandler %#x and rawsig's restorer %#x", current.Handler, current.Restorer, want.Handler, want.Restorer)
	}
	if current.Flags&want.Flags != want.Flags {
		t.Errorf("SIGUSR2 has flags %#x, expected SA_RESTORER|SA_ONSTACK|SA_RESTART (%#x)", current.Flags, want.Flags)
	}
	if current.Mask != 0 {
		t.Errorf("SIGUSR2's handler blocks signals %#x while it runs, expected none besides SIGUSR2 itself", current.Mask)
	}
}

// TestFullWakePipeDoesNotBlock points the handler at a pipe that is full.
// The handler's write then fails with EAGAIN, the signal stays pending as
// its bit, and the next byte on the real wake pipe delivers it.
func TestFullWakePipeDoesNotBlock(t *testing.T) {
	ch := make(chan os.Signal, 1)
	if err := Notify(ch, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	defer unregisterForTest(ch, unix.SIGUSR1)

	var full [2]int
	if err := unix.Pipe2(full[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(full[0])
	defer unix.Close(full[1])
	chunk := make([]byte, 4096)
	filled := 0
	for {
		n, err := unix.Write(full[1], chunk)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil {
			t.Fatalf("filling the pipe: %v", err)
		}
		filled += n
	}
	// The pipe may still take fewer than 4096 bytes.
	for {
		_, err := unix.Write(full[1], chunk[:1])
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil {
			t.Fatalf("filling the pipe: %v", err)
		}
		filled++
	}

	// Bytes that earlier tests left in the wake pipe would wake the reader
	// during this test, so it starts once the reader has emptied the pipe.
	waitWakePipeEmpty(t)
	realFD := atomic.SwapInt32(&wakeFD, int32(full[1]))
	restored := false
	restore := func() {
		if !restored {
			atomic.StoreInt32(&wakeFD, realFD)
			restored = true
		}
	}
	defer restore()

	if err := unix.Kill(os.Getpid(), unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for atomic.LoadUint64(&pending)&(1<<unix.SIGUSR1) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the SIGUSR1 bit is not pending 5 s after kill, expected the handler to set it although the pipe is full")
		}
		time.Sleep(time.Millisecond)
	}
	expectNothing(t, ch, 50*time.Millisecond, "no byte reached the wake pipe, so the reader has not woken")

	// TIOCINQ is FIONREAD, the number of bytes in the pipe.
	size, err := unix.IoctlGetInt(full[0], unix.TIOCINQ)
	if err != nil {
		t.Fatal(err)
	}
	if size != filled {
		t.Errorf("the full pipe contains %d bytes after the signal, expected the %d written before it", size, filled)
	}

	// Another wake-up, as a later signal's byte would be, delivers it.
	restore()
	if _, err := unix.Write(int(realFD), []byte{'w'}); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, ch, "SIGUSR1 after the next wake-up"); got != unix.SIGUSR1 {
		t.Errorf("received %v, expected SIGUSR1", got)
	}
}

// waitWakePipeEmpty waits until the wake pipe is empty and no signal is
// pending, then gives the reader 20 ms to finish delivering what it read.
func waitWakePipeEmpty(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		// TIOCINQ (FIONREAD) works on either end of a pipe.
		queued, err := unix.IoctlGetInt(int(atomic.LoadInt32(&wakeFD)), unix.TIOCINQ)
		if err != nil {
			t.Fatal(err)
		}
		if queued == 0 && atomic.LoadUint64(&pending) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the wake pipe still contains %d bytes and pending is %#x after 5 s, expected the reader to empty both", queued, atomic.LoadUint64(&pending))
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
}
