package initd

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The forwarder changes the handlers of the whole process, so its test runs
// in a process of its own: this test binary again, with forwardRoleEnv set.
const forwardRoleEnv = "FIEF_FORWARD_TEST_ROLE"

func TestMain(m *testing.M) {
	switch os.Getenv(forwardRoleEnv) {
	case "recorder":
		recordSignals()
	case "forwarder":
		if err := forwardScenario(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// recordSignals prints "ready" and then the name of every SIGUSR1, SIGUSR2
// and SIGTERM that it receives. It exits after SIGTERM.
func recordSignals() {
	ch := make(chan os.Signal, 8)
	signal.Notify(ch, unix.SIGUSR1, unix.SIGUSR2, unix.SIGTERM)
	fmt.Println("ready")
	for sig := range ch {
		fmt.Println(unix.SignalName(sig.(unix.Signal)))
		if sig == unix.SIGTERM {
			os.Exit(0)
		}
	}
}

// forwardScenario sends signals to its own process before the recorder
// starts, after it has started, and after forwarding has stopped, and
// checks what the recorder receives.
func forwardScenario() error {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	fwd, err := startForwarding(log, []unix.Signal{unix.SIGUSR1, unix.SIGUSR2, unix.SIGTERM})
	if err != nil {
		return err
	}
	// Before the command starts, signals are kept as pending. SIGUSR1 is
	// sent twice and must arrive once, because fwdState has one pending
	// bit per signal, like the kernel's set of pending standard signals.
	for _, sig := range []unix.Signal{unix.SIGUSR2, unix.SIGUSR1, unix.SIGUSR1} {
		if err := unix.Kill(os.Getpid(), sig); err != nil {
			return err
		}
	}
	time.Sleep(50 * time.Millisecond)

	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), forwardRoleEnv+"=recorder")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	// On failure the recorder must not outlive this process, because it
	// holds the test's output pipe open.
	defer cmd.Process.Kill()
	lines := bufio.NewScanner(out)
	next := func() string {
		if !lines.Scan() {
			return "(end of output)"
		}
		return lines.Text()
	}
	if line := next(); line != "ready" {
		return fmt.Errorf("the recorder printed %q, expected ready", line)
	}
	fwd.target(cmd.Process.Pid, false)
	// Each pending signal is sent once. The recorder's Go runtime may
	// pass the two signals on in either order.
	got := []string{next(), next()}
	slices.Sort(got)
	if want := []string{"SIGUSR1", "SIGUSR2"}; !slices.Equal(got, want) {
		return fmt.Errorf("the recorder received %q for the pending signals, expected %q in any order", got, want)
	}

	// Once the command runs, the handler sends each signal immediately.
	if err := unix.Kill(os.Getpid(), unix.SIGTERM); err != nil {
		return err
	}
	if line := next(); line != "SIGTERM" {
		return fmt.Errorf("the recorder printed %q after this process received SIGTERM, expected SIGTERM", line)
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("the recorder failed after SIGTERM, expected exit status 0: %v", err)
	}

	// After stop, signals are dropped, and SIGTERM does not end this
	// process.
	fwd.stop()
	if err := unix.Kill(os.Getpid(), unix.SIGTERM); err != nil {
		return err
	}
	time.Sleep(50 * time.Millisecond)
	return nil
}

func TestForwarderKeepsSendsAndDrops(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), forwardRoleEnv+"=forwarder")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("the forwarding scenario failed (%v):\n%s", err, strings.TrimSpace(string(out)))
	}
}
