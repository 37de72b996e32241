package sigwake

import (
	"bufio"
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The tests change the handlers of the test process itself. None of them
// runs in parallel, so a test's signals reach only its own channels.

// receive waits up to 5 seconds for a signal on ch.
func receive(t *testing.T, ch <-chan os.Signal, expected string) os.Signal {
	t.Helper()
	select {
	case sig := <-ch:
		return sig
	case <-time.After(5 * time.Second):
		t.Fatalf("no signal on the channel after 5 s, expected %s", expected)
		return nil
	}
}

// expectNothing fails when ch receives a signal within wait.
func expectNothing(t *testing.T, ch <-chan os.Signal, wait time.Duration, reason string) {
	t.Helper()
	select {
	case sig := <-ch:
		t.Errorf("received %v, expected no signal because %s", sig, reason)
	case <-time.After(wait):
	}
}

func TestNotifyDeliversEachSignal(t *testing.T) {
	signals := []unix.Signal{unix.SIGUSR1, unix.SIGUSR2, unix.SIGWINCH, unix.SIGHUP}
	ch := make(chan os.Signal, len(signals))
	if err := Notify(ch, signals...); err != nil {
		t.Fatal(err)
	}
	for _, sig := range signals {
		if err := unix.Kill(os.Getpid(), sig); err != nil {
			t.Fatal(err)
		}
		if got := receive(t, ch, sig.String()); got != sig {
			t.Errorf("received %v after kill -%s, expected %v", got, unix.SignalName(sig), sig)
		}
	}
	expectNothing(t, ch, 50*time.Millisecond, "every signal was sent once and received")
}

func TestNotifyRejectsUnsupportedSignals(t *testing.T) {
	ch := make(chan os.Signal, 1)
	for _, sig := range []unix.Signal{unix.SIGKILL, unix.SIGSTOP, unix.SIGSEGV, unix.SIGPIPE, unix.SIGURG, unix.SIGPROF, unix.SIGABRT, 0, 40, 64} {
		if err := Notify(ch, sig); err == nil {
			t.Errorf("Notify accepted signal %d (%s), expected an error", int(sig), unix.SignalName(sig))
		}
	}
	if err := Notify(ch); err == nil {
		t.Error("Notify accepted an empty signal list, expected an error")
	}
	if err := Notify(nil, unix.SIGUSR1); err == nil {
		t.Error("Notify accepted a nil channel, expected an error")
	}
}

func TestNotifySendsToEveryChannel(t *testing.T) {
	first, second := make(chan os.Signal, 1), make(chan os.Signal, 1)
	if err := Notify(first, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if err := Notify(second, unix.SIGUSR1, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if err := unix.Kill(os.Getpid(), unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	receive(t, first, "SIGUSR1 on the first channel")
	receive(t, second, "SIGUSR1 on the second channel")
	expectNothing(t, second, 50*time.Millisecond, "a channel registered twice for a signal receives it once")
	unregisterForTest(first, unix.SIGUSR1)
	unregisterForTest(second, unix.SIGUSR1)
}

// TestNoSignalLostAcrossThreads sends, in each round, each of five signals
// once, all at the same time from five threads to randomly chosen threads
// of the process with tgkill. Each signal must then arrive exactly once, so
// no pending bit was lost between concurrent handlers and the reader's swap.
func TestNoSignalLostAcrossThreads(t *testing.T) {
	signals := []unix.Signal{unix.SIGUSR1, unix.SIGUSR2, unix.SIGWINCH, unix.SIGALRM, unix.SIGPWR}
	channels := make(map[unix.Signal]chan os.Signal)
	for _, sig := range signals {
		channels[sig] = make(chan os.Signal, 1)
		if err := Notify(channels[sig], sig); err != nil {
			t.Fatal(err)
		}
		defer unregisterForTest(channels[sig], sig)
	}

	// Each sender is locked to a thread of its own, and they target each
	// other's threads as well as any other thread of the process.
	const rounds = 2000
	start := make([]chan struct{}, len(signals))
	var tids sync.Map
	var ready, done sync.WaitGroup
	errs := make(chan error, len(signals))
	for i := range signals {
		start[i] = make(chan struct{})
		ready.Add(1)
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			tids.Store(unix.Gettid(), true)
			ready.Done()
			for range start[i] {
				var targets []int
				tids.Range(func(key, _ any) bool { targets = append(targets, key.(int)); return true })
				tid := targets[rand.IntN(len(targets))]
				if err := unix.Tgkill(os.Getpid(), tid, signals[i]); err != nil {
					errs <- err
				}
				done.Done()
			}
		}()
	}
	ready.Wait()
	tids.Store(unix.Gettid(), true)

	for round := range rounds {
		done.Add(len(signals))
		for i := range signals {
			start[i] <- struct{}{}
		}
		done.Wait()
		select {
		case err := <-errs:
			t.Fatalf("tgkill failed in round %d: %v", round, err)
		default:
		}
		for _, sig := range signals {
			select {
			case <-channels[sig]:
			case <-time.After(5 * time.Second):
				t.Fatalf("round %d: %s was sent once and has not arrived after 5 s: its pending bit was lost", round, unix.SignalName(sig))
			}
		}
	}
	for i := range signals {
		close(start[i])
	}
	for _, sig := range signals {
		expectNothing(t, channels[sig], 10*time.Millisecond, unix.SignalName(sig)+" was sent once per round and received once per round")
	}
}

// TestBurstOfSignalsIsDelivered sends many signals from several threads as
// fast as they can, so the handler often writes to the wake pipe faster
// than the reader empties it. The burst must not block the senders, and
// the last signal must still arrive.
func TestBurstOfSignalsIsDelivered(t *testing.T) {
	burst, last := make(chan os.Signal, 1), make(chan os.Signal, 1)
	if err := Notify(burst, unix.SIGUSR1, unix.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	defer unregisterForTest(burst, unix.SIGUSR1, unix.SIGUSR2)
	if err := Notify(last, unix.SIGWINCH); err != nil {
		t.Fatal(err)
	}
	defer unregisterForTest(last, unix.SIGWINCH)

	const senders, perSender = 4, 20000
	var wg sync.WaitGroup
	for i := range senders {
		wg.Go(func() {
			sig := unix.SIGUSR1
			if i%2 == 1 {
				sig = unix.SIGUSR2
			}
			for range perSender {
				if err := unix.Kill(os.Getpid(), sig); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(30 * time.Second):
		t.Fatalf("%d senders of %d signals each have not finished after 30 s", senders, perSender)
	}
	if err := unix.Kill(os.Getpid(), unix.SIGWINCH); err != nil {
		t.Fatal(err)
	}
	receive(t, last, "SIGWINCH sent after the burst")
	receive(t, burst, "at least one signal of the burst")
}

// TestExecStartsWithDefaultDispositions checks that a program started after
// Notify neither catches, ignores nor blocks the signals of this package,
// because execve resets a caught signal to its default action.
func TestExecStartsWithDefaultDispositions(t *testing.T) {
	signals := []unix.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGQUIT, unix.SIGHUP, unix.SIGUSR1, unix.SIGUSR2, unix.SIGWINCH, unix.SIGCHLD}
	ch := make(chan os.Signal, len(signals))
	if err := Notify(ch, signals...); err != nil {
		t.Fatal(err)
	}
	defer unregisterForTest(ch, signals...)
	var mask uint64
	for _, sig := range signals {
		mask |= 1 << (sig - 1)
	}

	out, err := exec.Command("cat", "/proc/self/status").Output()
	if err != nil {
		t.Fatalf("cat /proc/self/status: %v", err)
	}
	fields := statusMasks(t, out)
	for _, name := range []string{"SigBlk", "SigIgn", "SigCgt"} {
		if got := fields[name] & mask; got != 0 {
			t.Errorf("%s of the started program has bits %#x of the notified signals set, expected none", name, got)
		}
	}
}

// statusMasks parses the signal mask lines of a /proc/PID/status file.
func statusMasks(t *testing.T, status []byte) map[string]uint64 {
	t.Helper()
	masks := make(map[string]uint64)
	lines := bufio.NewScanner(bytes.NewReader(status))
	for lines.Scan() {
		name, value, ok := strings.Cut(lines.Text(), ":")
		if !ok || (name != "SigBlk" && name != "SigIgn" && name != "SigCgt") {
			continue
		}
		mask, err := strconv.ParseUint(strings.TrimSpace(value), 16, 64)
		if err != nil {
			t.Fatalf("invalid %s line in /proc/PID/status: %v", name, err)
		}
		masks[name] = mask
	}
	for _, name := range []string{"SigBlk", "SigIgn", "SigCgt"} {
		if _, ok := masks[name]; !ok {
			t.Fatalf("/proc/PID/status has no %s line:\n%s", name, status)
		}
	}
	return masks
}
