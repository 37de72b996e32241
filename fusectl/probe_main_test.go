package fusectl

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// proberOnMainEnv makes the test binary run proberOnMain instead of the
// tests.
const proberOnMainEnv = "FUSECTL_TEST_PROBER_ON_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(proberOnMainEnv) == "1" {
		os.Exit(proberOnMain())
	}
	os.Exit(m.Run())
}

// proberOnMain starts a prober as uid 65534 from the main goroutine while it
// runs on the main thread. With one P, the prober's goroutine then first
// runs on the main thread. It prints the uid of the main thread and of
// every thread, and exits 0, or 3 when the set-up did not hold.
func proberOnMain() int {
	if unix.Gettid() != unix.Getpid() {
		fmt.Println("setup: the main goroutine is not on the main thread")
		return 3
	}
	p, err := NewProber(65534, 65534)
	if err != nil {
		fmt.Println("NewProber:", err)
		return 1
	}
	defer p.Close()

	fmt.Println("main", threadUID("/proc/self/status"))
	tasks, _ := filepath.Glob("/proc/self/task/*/status")
	for _, task := range tasks {
		fmt.Println("thread", threadUID(task))
	}
	return 0
}

// threadUID returns the real uid field of a status file.
func threadUID(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	for line := range strings.Lines(string(data)) {
		if fields := strings.Fields(line); len(fields) > 1 && fields[0] == "Uid:" {
			return fields[1]
		}
	}
	return "no Uid line"
}

func TestProberKeepsMainThreadCredentials(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("this test must run as root: the prober switches a thread to uid 65534")
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), proberOnMainEnv+"=1", "GOMAXPROCS=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("running the prober child: %v\n%s", err, out)
	}

	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) == 0 || lines[0] != "main 0" {
		t.Errorf("expected the main thread to keep uid 0, so its parent-death signal stays armed; child printed:\n%s", out)
	}
	if !strings.Contains(string(out), "thread 65534") {
		t.Errorf("expected one thread with uid 65534, the probe thread; child printed:\n%s", out)
	}
}
