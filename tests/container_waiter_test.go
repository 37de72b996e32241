package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Tests of how fief -- waits for CMD. On amd64 a one-thread waiter replaces
// fief under the same pid, and it executes fief again to stop the processes
// that CMD left behind. With --log-level debug, fief keeps its Go loop.

// containerStatusField returns a field of /proc/PID/status, or "".
func containerStatusField(pid int, field string) string {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return ""
	}
	for line := range strings.Lines(string(data)) {
		if value, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSpace(value)
		}
	}
	return ""
}

// CMD must start with no signal blocked and with exactly the ignored signals
// that fief inherited, with the Go loop and the waiter, as a subreaper and as
// pid 1. The expected masks are those of grep started by the test itself,
// because the test's own parent may ignore signals: under GNU Make 4.3, for
// one, the commands of make test start with signals 32 and 33 ignored.
func TestContainerInitCommandSignalMask(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)
	unshare := containerRequireProgram(t, "unshare", "util-linux")
	grep := containerRequireProgram(t, "grep", "grep")

	// masks parses the SigBlk and SigIgn lines that grep printed.
	masks := func(stdout string) map[string]string {
		fields := make(map[string]string)
		for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
			name, value, _ := strings.Cut(line, ":")
			fields[name] = strings.TrimSpace(value)
		}
		return fields
	}

	direct := containerRun(t, exec.Command(grep, "-E", "^(SigBlk|SigIgn):", "/proc/self/status"))
	if direct.code != 0 {
		t.Fatalf("grep of /proc/self/status started by the test failed with exit code %d\n%s", direct.code, direct.stderr)
	}
	want := masks(direct.stdout)
	if strings.Trim(want["SigBlk"], "0") != "" {
		t.Fatalf("grep started by the test has blocked signals (SigBlk %s), so the test cannot compare masks: run it from a shell that blocks no signal", want["SigBlk"])
	}

	for _, setup := range []struct {
		name   string
		prefix []string
	}{
		{"subreaper", []string{fief, "-s", "--"}},
		{"subreaper, debug log", []string{fief, "-s", "--log-level", "debug", "--"}},
		{"pid 1", []string{unshare, "--pid", "--fork", "--mount-proc", fief, "--"}},
		{"pid 1, group", []string{unshare, "--pid", "--fork", "--mount-proc", fief, "-g", "--"}},
	} {
		argv := append(slices.Clone(setup.prefix), grep, "-E", "^(SigBlk|SigIgn):", "/proc/self/status")
		result := containerRun(t, exec.Command(argv[0], argv[1:]...))
		if result.code != 0 {
			t.Errorf("%s: expected exit code 0, got %d\n%s", setup.name, result.code, result.stderr)
			continue
		}
		got := masks(result.stdout)
		for _, name := range []string{"SigBlk", "SigIgn"} {
			if got[name] != want[name] {
				t.Errorf("%s: expected CMD to start with %s %s like grep started by the test, got %q", setup.name, name, want[name], got[name])
			}
		}
	}
}

// Once CMD runs, fief is the waiter: one thread and a few pages, with fief's
// name and command line, as pid 1 and as a subreaper.
func TestContainerInitWaiter(t *testing.T) {
	t.Parallel()
	if runtime.GOARCH != "amd64" {
		t.Skipf("the waiter exists on amd64 only, not on %s", runtime.GOARCH)
	}
	fief := containerFief(t)
	unshare := containerRequireProgram(t, "unshare", "util-linux")

	for _, pid1 := range []bool{true, false} {
		name := "subreaper"
		argv := []string{fief, "-s", "--", "sleep", "infinity"}
		if pid1 {
			name = "pid 1"
			argv = []string{fief, "--", "sleep", "infinity"}
		}
		t.Run(name, func(t *testing.T) {
			dir := containerTempDir(t)
			cmd := exec.Command(argv[0], argv[1:]...)
			if pid1 {
				cmd = exec.Command(unshare, append([]string{"--pid", "--fork", "--mount-proc"}, argv...)...)
			}
			p := containerStart(t, filepath.Join(dir, "fief.log"), cmd)

			// As pid 1, fief is the child of unshare.
			fiefPid := 0
			ready := containerPoll(10*time.Second, func() bool {
				candidates := []containerProc{{pid: p.pid(), argv: argv}}
				if pid1 {
					candidates = containerChildren(p.pid())
				}
				for _, proc := range candidates {
					if len(proc.argv) > 0 && proc.argv[0] == fief && len(containerProgramPids(proc.pid, "sleep")) == 1 {
						fiefPid = proc.pid
						return containerStatusField(fiefPid, "Threads") == "1"
					}
				}
				return false
			})
			if !ready {
				t.Fatalf("timed out after 10s waiting for fief with one thread and sleep as its child\n%s", p.describe())
			}

			if name := containerStatusField(fiefPid, "Name"); name != "fief" {
				t.Errorf("expected the waiter to keep the name fief, got %q", name)
			}
			vmRSS := containerStatusField(fiefPid, "VmRSS")
			rss, _ := strconv.Atoi(strings.TrimSuffix(vmRSS, " kB"))
			if rss <= 0 || rss > 200 {
				t.Errorf("expected the waiter's VmRSS to be between 1 and 200 kB, got %q", vmRSS)
			}
			proc, ok := containerReadProc(fiefPid)
			if !ok {
				t.Errorf("reading /proc/%d/stat of the waiter failed", fiefPid)
			} else if !slices.Equal(proc.argv, argv) {
				t.Errorf("expected the waiter to keep fief's command line %q, got %q", argv, proc.argv)
			}

			// The waiter ignores the signals that the Go runtime ignores, as
			// fief did before it, so it neither forwards them nor dies of them.
			for _, sig := range []syscall.Signal{syscall.SIGALRM, syscall.SIGIO, syscall.SIGPIPE, syscall.SIGVTALRM, syscall.Signal(40)} {
				if err := syscall.Kill(fiefPid, sig); err != nil {
					t.Fatalf("sending %v to fief (pid %d): %v", sig, fiefPid, err)
				}
			}
			time.Sleep(100 * time.Millisecond)
			if !p.running() || len(containerProgramPids(fiefPid, "sleep")) != 1 {
				t.Fatalf("expected fief and sleep to keep running after SIGALRM, SIGIO, SIGPIPE, SIGVTALRM and signal 40 to fief\n%s", p.describe())
			}

			if err := syscall.Kill(fiefPid, syscall.SIGTERM); err != nil {
				t.Fatalf("sending SIGTERM to fief (pid %d): %v", fiefPid, err)
			}
			code, exited := p.wait(10 * time.Second)
			if !exited {
				t.Fatalf("timed out after 10s waiting for the waiter to forward SIGTERM and exit\n%s", p.describe())
			}
			if code != 143 {
				t.Errorf("expected exit code 143 (sleep killed by the forwarded SIGTERM), got %d\n%s", code, p.describe())
			}
		})
	}
}

// While fief stops the processes that CMD left behind, it ignores signals,
// so the leftovers get their whole grace period and fief exits with CMD's code.
func TestContainerInitIgnoresSignalsDuringGrace(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)
	unshare := containerRequireProgram(t, "unshare", "util-linux")

	for _, pid1 := range []bool{false, true} {
		name := "subreaper"
		if pid1 {
			name = "pid 1"
		}
		t.Run(name, func(t *testing.T) {
			dir := containerTempDir(t)
			leftover := filepath.Join(dir, "leftover.sh")
			containerWriteFile(t, leftover, containerLeftoverIgnoring, 0o644)
			pidFile := filepath.Join(dir, "leftover.pid")
			argv := []string{fief, "-s", "--grace", "2s", "--", "sh", "-c", containerLeftoverCommand, leftover, pidFile, filepath.Join(dir, "record")}
			if pid1 {
				argv = append([]string{unshare, "--pid", "--fork", "--mount-proc"}, argv...)
			}
			start := time.Now()
			p := containerStart(t, filepath.Join(dir, "fief.log"), exec.Command(argv[0], argv[1:]...))

			// As pid 1, fief is the process with argv[0] fief, or the one
			// that the waiter executed with argv[0] fief-container-leftovers.
			fiefPid := 0
			found := containerPoll(10*time.Second, func() bool {
				for _, proc := range append([]containerProc{{pid: p.pid()}}, containerDescendants(p.pid())...) {
					if proc.pid == p.pid() && !pid1 {
						fiefPid = proc.pid
					} else if pid1 && len(proc.argv) > 0 && (proc.argv[0] == fief || proc.argv[0] == "fief-container-leftovers") {
						fiefPid = proc.pid
					}
				}
				data, _ := os.ReadFile(pidFile)
				return fiefPid != 0 && len(strings.TrimSpace(string(data))) > 0
			})
			if !found {
				t.Fatalf("timed out after 10s waiting for the leftover to write its pid\n%s", p.describe())
			}

			// CMD exits once the leftover has written its pid. Then fief
			// stops the leftover, which ignores SIGTERM for the 2s grace.
			time.Sleep(300 * time.Millisecond)
			for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP} {
				if err := syscall.Kill(fiefPid, sig); err != nil {
					t.Fatalf("sending %v to fief (pid %d): %v", sig, fiefPid, err)
				}
			}
			code, exited := p.wait(15 * time.Second)
			if !exited {
				t.Fatalf("timed out after 15s waiting for fief to exit\n%s", p.describe())
			}
			took := p.end.Sub(start)
			if code != 4 {
				t.Errorf("expected CMD's exit code 4 despite SIGTERM, SIGINT and SIGHUP during the grace period, got %d\n%s", code, p.describe())
			}
			if took < 2*time.Second {
				t.Errorf("expected the leftover to get the whole 2s grace period, but fief exited after %v\n%s", took, p.describe())
			}
		})
	}
}

// With --log-level debug or --no-waiter, fief waits for CMD itself instead of
// running the waiter. It forwards signals to CMD (on amd64 through the handler
// in init/forward_amd64.s), and the debug log records how CMD ended.
func TestContainerInitGoLoop(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)
	perl := containerRequireProgram(t, "perl", "perl-base")

	for _, mode := range []struct {
		name  string
		flags []string
		debug bool
	}{
		{"debug log", []string{"-s", "--log-level", "debug"}, true},
		{"no waiter", []string{"-s", "--no-waiter"}, false},
	} {
		t.Run(mode.name, func(t *testing.T) {
			dir := containerTempDir(t)
			script := filepath.Join(dir, "record.pl")
			containerWriteFile(t, script, containerRecordScript, 0o644)
			record := filepath.Join(dir, "signals")

			argv := append(slices.Clone(mode.flags), "--", perl, script, record)
			p := containerStart(t, filepath.Join(dir, "fief.log"), exec.Command(fief, argv...))

			lines := func() []string {
				data, _ := os.ReadFile(record)
				return strings.Fields(string(data))
			}
			want := []string{"ready"}
			if !containerPoll(5*time.Second, func() bool { return slices.Equal(lines(), want) }) {
				t.Fatalf("timed out after 5s waiting for the signal recorder to start, it recorded %q\n%s", lines(), p.describe())
			}

			if threads := containerStatusField(p.pid(), "Threads"); threads == "1" {
				t.Errorf("expected fief to wait for CMD itself with %v, but it has one thread like the waiter", mode.flags)
			}

			for _, sig := range []syscall.Signal{syscall.SIGUSR1, syscall.SIGHUP, syscall.SIGTERM} {
				if err := syscall.Kill(p.pid(), sig); err != nil {
					t.Fatalf("sending %v to fief: %v", sig, err)
				}
				want = append(want, strings.TrimPrefix(unix.SignalName(sig), "SIG"))
				if !containerPoll(5*time.Second, func() bool { return slices.Equal(lines(), want) }) {
					t.Fatalf("expected CMD to record %q, it recorded %q\n%s", want, lines(), p.describe())
				}
			}

			code, exited := p.wait(5 * time.Second)
			if !exited {
				t.Fatalf("timed out after 5s waiting for fief to exit after CMD's exit on SIGTERM\n%s", p.describe())
			}
			if code != 0 {
				t.Errorf("expected exit code 0 after CMD's exit on SIGTERM, got %d\n%s", code, p.describe())
			}
			if mode.debug && !strings.Contains(p.output(), "command exited") {
				t.Errorf("expected the debug log to contain \"command exited\", got:\n%s", p.output())
			}
		})
	}
}
