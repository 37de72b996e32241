package reaper

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"fief/sigwake"
)

// testReaper is the one reaper of the test binary; orphanHook receives its
// orphans.
var (
	testReaper *Reaper
	orphanMu   sync.Mutex
	orphanHook func(Status)
)

// The test binary becomes a child subreaper, so grandchildren orphaned by
// the shell commands below are reaped by the reaper under test.
func TestMain(m *testing.M) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "becoming a child subreaper: %v\n", err)
		os.Exit(1)
	}
	// TestDrivenReaper runs this test binary again with drivenEnv set, for
	// a process whose reaper is made by NewDriven.
	if os.Getenv(drivenEnv) == "1" {
		if err := drivenScenario(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	// TestWokenReaper runs this test binary again with wokenEnv set, for a
	// process whose reaper is made by NewWoken.
	if os.Getenv(wokenEnv) == "1" {
		if err := wokenScenario(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	testReaper = New(func(st Status) {
		orphanMu.Lock()
		hook := orphanHook
		orphanMu.Unlock()
		if hook != nil {
			hook(st)
		}
	})
	os.Exit(m.Run())
}

func setOrphanHook(t *testing.T, hook func(Status)) {
	orphanMu.Lock()
	orphanHook = hook
	orphanMu.Unlock()
	t.Cleanup(func() {
		orphanMu.Lock()
		orphanHook = nil
		orphanMu.Unlock()
	})
}

func waitStatus(t *testing.T, child *Child) Status {
	t.Helper()
	select {
	case st := <-child.Done:
		return st
	case <-time.After(10 * time.Second):
		t.Fatalf("child %d: no status within 10s", child.Pid)
		return Status{}
	}
}

func TestStatusOfEveryChild(t *testing.T) {
	const runs = 200
	orphanCount := make(chan struct{}, runs*2)
	setOrphanHook(t, func(Status) { orphanCount <- struct{}{} })
	r := testReaper

	var wg sync.WaitGroup
	errs := make(chan error, runs)
	for i := 0; i < runs; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code := i % 256
			// Each shell leaves one orphan behind that the reaper must
			// collect too.
			cmd := exec.Command("sh", "-c", fmt.Sprintf("sleep 0.01 & exit %d", code))
			child, err := r.Start(cmd)
			if err != nil {
				errs <- fmt.Errorf("run %d: Start: %v", i, err)
				return
			}
			st := <-child.Done
			if got := st.ExitCode(); got != code {
				errs <- fmt.Errorf("run %d: ExitCode() = %d, want %d (%s)", i, got, code, st)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	deadline := time.After(10 * time.Second)
	for i := 0; i < runs; i++ {
		select {
		case <-orphanCount:
		case <-deadline:
			t.Fatalf("%d of %d orphans reaped within 10s", i, runs)
		}
	}
	if n := r.Pending(); n != 0 {
		t.Errorf("Pending() = %d after every child exited, want 0", n)
	}
}

func TestStatusOfSignalledChild(t *testing.T) {
	r := testReaper
	child, err := r.Start(exec.Command("sleep", "60"))
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := child.Signal(unix.SIGTERM); err != nil {
		t.Fatalf("Signal: %v", err)
	}
	st := waitStatus(t, child)
	if got := st.ExitCode(); got != 128+int(unix.SIGTERM) {
		t.Errorf("ExitCode() = %d, want %d", got, 128+int(unix.SIGTERM))
	}
	if got, want := st.String(), "killed by signal SIGTERM"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}

	// A signal to a reaped child is not an error: the pidfd cannot reach
	// another process that reused the pid.
	if err := child.Signal(unix.SIGTERM); err != nil {
		t.Errorf("Signal after exit = %v, want nil", err)
	}
}

func TestStartRejectsPipedOutput(t *testing.T) {
	r := testReaper
	cmd := exec.Command("true")
	cmd.Stdout = &discard{}
	if _, err := r.Start(cmd); err == nil {
		t.Fatalf("Start with a non-file stdout succeeded, want an error")
	}
}

type discard struct{}

func (*discard) Write(p []byte) (int, error) { return len(p), nil }

func TestStartMissingProgram(t *testing.T) {
	r := testReaper
	_, err := r.Start(exec.Command("/nonexistent/program"))
	if err == nil {
		t.Fatalf("Start of a missing program succeeded")
	}
	if !IsExecNotFound(err) {
		t.Errorf("IsExecNotFound(%v) = false, want true", err)
	}
}

func TestNewTwicePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Errorf("a second New did not panic")
		}
	}()
	New(nil)
}

// drivenEnv makes TestMain run drivenScenario instead of the tests.
const drivenEnv = "FIEF_REAPER_TEST_DRIVEN"

// drivenScenario runs in a process of its own, because a process can have
// only one reaper. A shell exits 7 and leaves an orphan behind, and Wait
// must collect both.
func drivenScenario() error {
	var orphans []Status
	r := NewDriven(func(st Status) { orphans = append(orphans, st) })
	if !newDrivenPanics() {
		return fmt.Errorf("a second NewDriven in the process did not panic")
	}

	child, err := r.Start(exec.Command("sh", "-c", "sleep 0.1 & exit 7"))
	if err != nil {
		return fmt.Errorf("Start: %v", err)
	}
	var statuses []Status
	for {
		st, err := r.Wait()
		if errors.Is(err, unix.ECHILD) {
			break
		}
		if err != nil {
			return fmt.Errorf("Wait: %v", err)
		}
		statuses = append(statuses, st)
	}

	if len(statuses) != 2 || statuses[0].Pid != child.Pid || statuses[0].ExitCode() != 7 {
		return fmt.Errorf("Wait returned %v, expected the shell (pid %d, exit 7) and then its orphan", statuses, child.Pid)
	}
	select {
	case st := <-child.Done:
		if st.Pid != child.Pid || st.ExitCode() != 7 {
			return fmt.Errorf("Done received %v, expected pid %d with exit code 7", st, child.Pid)
		}
	default:
		return fmt.Errorf("Done received nothing after Wait returned the child's status")
	}
	if len(orphans) != 1 || orphans[0].Pid != statuses[1].Pid {
		return fmt.Errorf("the orphan function received %v, expected the orphan %v", orphans, statuses[1])
	}
	if n := r.Pending(); n != 0 {
		return fmt.Errorf("Pending() = %d after every child exited, expected 0", n)
	}
	return nil
}

// newDrivenPanics reports whether NewDriven panics, as it must when the
// process already has a reaper.
func newDrivenPanics() (panicked bool) {
	defer func() {
		if recover() != nil {
			panicked = true
		}
	}()
	NewDriven(nil)
	return false
}

func TestDrivenReaper(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), drivenEnv+"=1")
	stdout, stderr, status, err := testReaper.Output(cmd)
	if err != nil {
		t.Fatalf("running the driven reaper scenario: %v", err)
	}
	if !status.Success() {
		t.Errorf("the driven reaper scenario failed (%s):\n%s%s", status, stdout, stderr)
	}
}

func TestWaitNeedsDrivenReaper(t *testing.T) {
	if _, err := testReaper.Wait(); err == nil {
		t.Error("Wait on the reaper of New succeeded, expected an error")
	}
}

// wokenEnv makes TestMain run wokenScenario instead of the tests.
const wokenEnv = "FIEF_REAPER_TEST_WOKEN"

// wokenScenario runs in a process of its own, because a process can have
// only one reaper. Package sigwake, not os/signal, catches SIGCHLD and wakes
// the reaper. A shell exits 7 and leaves an orphan behind, and the reaper
// must report both.
func wokenScenario() error {
	wake := make(chan os.Signal, 1)
	if err := sigwake.Notify(wake, unix.SIGCHLD); err != nil {
		return err
	}
	orphans := make(chan Status, 1)
	r := NewWoken(func(st Status) { orphans <- st }, wake)
	if !newWokenPanics(wake) {
		return fmt.Errorf("a second NewWoken in the process did not panic")
	}

	child, err := r.Start(exec.Command("sh", "-c", "sleep 0.1 & exit 7"))
	if err != nil {
		return fmt.Errorf("Start: %v", err)
	}
	select {
	case st := <-child.Done:
		if st.Pid != child.Pid || st.ExitCode() != 7 {
			return fmt.Errorf("Done received %v, expected pid %d with exit code 7", st, child.Pid)
		}
	case <-time.After(10 * time.Second):
		return fmt.Errorf("Done received nothing 10 s after the shell started")
	}
	select {
	case st := <-orphans:
		if st.Pid == child.Pid || !st.Success() {
			return fmt.Errorf("the orphan function received %v, expected the shell's sleep with exit status 0", st)
		}
	case <-time.After(10 * time.Second):
		return fmt.Errorf("the orphan function received nothing 10 s after the shell started")
	}
	if _, err := r.Wait(); err == nil {
		return fmt.Errorf("Wait on the reaper of NewWoken succeeded, expected an error")
	}
	if n := r.Pending(); n != 0 {
		return fmt.Errorf("Pending() = %d after every child exited, expected 0", n)
	}
	return nil
}

// newWokenPanics reports whether NewWoken panics, as it must when the
// process already has a reaper.
func newWokenPanics(wake <-chan os.Signal) (panicked bool) {
	defer func() {
		if recover() != nil {
			panicked = true
		}
	}()
	NewWoken(nil, wake)
	return false
}

func TestWokenReaper(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), wokenEnv+"=1")
	stdout, stderr, status, err := testReaper.Output(cmd)
	if err != nil {
		t.Fatalf("running the woken reaper scenario: %v", err)
	}
	if !status.Success() {
		t.Errorf("the woken reaper scenario failed (%s):\n%s%s", status, stdout, stderr)
	}
}
