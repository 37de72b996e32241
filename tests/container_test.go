package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Tests of fief as a container init (fief [flags] -- CMD), on the host and
// as pid 1 of a pid namespace, with Debian's tini as the reference for exit
// codes.

// containerDieScript is a perl program that kills itself with the signal
// named by its first argument. It restores the default action first, since
// a shell started in the background inherits SIGINT ignored.
const containerDieScript = `$SIG{$ARGV[0]} = "DEFAULT" if $ARGV[0] ne "KILL"; kill $ARGV[0], $$; sleep 10; exit 99`

// containerRecordScript is a perl program that appends the name of every
// signal it receives to the file named by its first argument, one per line,
// after a first line "ready". It exits 0 on SIGTERM. It starts no child, so
// a SIGCHLD it records was sent to it.
const containerRecordScript = `use strict;
use IO::Handle;
open(my $out, '>>', $ARGV[0]) or die "opening $ARGV[0]: $!";
$out->autoflush(1);
for my $name (qw(HUP INT QUIT USR1 USR2 WINCH URG CHLD TERM)) {
	$SIG{$name} = sub { print $out "$_[0]\n"; exit 0 if $_[0] eq 'TERM'; };
}
print $out "ready\n";
sleep 1 while 1;
`

func TestContainerInitExitCodes(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)
	tini := containerRequireProgram(t, "tini", "tini")

	type job struct {
		init string
		code int
	}
	jobs := make(chan job)
	var (
		mu       sync.Mutex
		failures []string
		wg       sync.WaitGroup
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		failures = append(failures, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	start := time.Now()
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				cmd := exec.Command(j.init, "-s", "--", "sh", "-c", fmt.Sprintf("exit %d", j.code))
				result, err := containerExec(cmd)
				switch {
				case err != nil:
					fail("%v", err)
				case result.code != j.code || result.signaled:
					fail("%s: expected exit code %d, got %d (killed by a signal: %v); stderr: %q",
						strings.Join(cmd.Args, " "), j.code, result.code, result.signaled, result.stderr)
				}
			}
		}()
	}
	for code := range 256 {
		jobs <- job{fief, code}
		jobs <- job{tini, code}
	}
	close(jobs)
	wg.Wait()
	t.Logf("ran 256 exit codes through fief and tini in %v", time.Since(start).Round(time.Millisecond))

	slices.Sort(failures)
	for i, failure := range failures {
		if i == 20 {
			t.Errorf("... and %d more mismatches", len(failures)-20)
			break
		}
		t.Error(failure)
	}
}

func TestContainerInitSignalDeaths(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)
	tini := containerRequireProgram(t, "tini", "tini")
	perl := containerRequireProgram(t, "perl", "perl-base")

	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGINT, syscall.SIGKILL, syscall.SIGTERM} {
		name := strings.TrimPrefix(unix.SignalName(sig), "SIG")
		want := 128 + int(sig)
		for _, init := range []string{fief, tini} {
			cmd := exec.Command(init, "-s", "--", perl, "-e", containerDieScript, name)
			result := containerRun(t, cmd)
			if result.code != want {
				t.Errorf("%s: expected exit code %d (128+%d for SIG%s), got %d; stderr: %q",
					filepath.Base(init), want, int(sig), name, result.code, result.stderr)
			}
			if result.signaled {
				t.Errorf("%s: expected it to exit with code %d after CMD died of SIG%s, but it was killed by a signal itself",
					filepath.Base(init), want, name)
			}
		}
	}
}

func TestContainerInitCannotRun(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)
	tini := containerRequireProgram(t, "tini", "tini")
	dir := containerTempDir(t)
	notExecutable := filepath.Join(dir, "not-executable")
	containerWriteFile(t, notExecutable, "#!/bin/sh\nexit 0\n", 0o644)

	tests := []struct {
		name    string
		program string
		want    int
	}{
		{"name not in PATH", "fief-test-no-such-program", 127},
		{"missing path", filepath.Join(dir, "missing", "program"), 127},
		{"file without execute permission", notExecutable, 126},
		{"directory", dir, 126},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			result := containerRun(t, exec.Command(fief, "-s", "--", test.program))
			if result.code != test.want {
				t.Errorf("fief -s -- %s: expected exit code %d, got %d; stderr: %q", test.program, test.want, result.code, result.stderr)
			}
			if !strings.Contains(result.stderr, test.program) {
				t.Errorf("fief -s -- %s: expected stderr to name the program, got %q", test.program, result.stderr)
			}

			reference := containerRun(t, exec.Command(tini, "-s", "--", test.program))
			if reference.code != test.want {
				t.Errorf("tini -s -- %s (the reference): expected exit code %d, got %d; stderr: %q", test.program, test.want, reference.code, reference.stderr)
			}
		})
	}
}

func TestContainerInitProcessGroup(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)

	// CMD is cat, which prints its own /proc/PID/stat: its pid, parent,
	// process group and the foreground process group of its terminal.
	for _, terminal := range []bool{false, true} {
		name := "stdin not a terminal"
		if terminal {
			name = "stdin a terminal"
		}
		t.Run(name, func(t *testing.T) {
			dir := containerTempDir(t)
			cmd := exec.Command(fief, "-s", "--", "cat", "/proc/self/stat")
			if terminal {
				// fief leads a new session whose controlling terminal
				// is the pseudo-terminal on its stdin.
				master, slave := containerOpenPseudoTerminal(t)
				defer master.Close()
				defer slave.Close()
				cmd.Stdin = slave
				cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
			}
			p := containerStart(t, filepath.Join(dir, "fief.log"), cmd)
			code, exited := p.wait(10 * time.Second)
			if !exited {
				t.Fatalf("expected fief -- cat to exit within 10s, it is still running\n%s", p.describe())
			}
			if code != 0 {
				t.Fatalf("expected fief -- cat to exit 0, got %d\n%s", code, p.describe())
			}

			output := p.output()
			end := strings.LastIndexByte(output, ')')
			fields := strings.Fields(output[end+1:])
			if end < 0 || len(fields) < 6 {
				t.Fatalf("expected cat to print /proc/self/stat, got %q", output)
			}
			pid, _ := strconv.Atoi(strings.Fields(output)[0])
			// After the command name: state, ppid, pgrp, session,
			// tty_nr, tpgid.
			ppid, _ := strconv.Atoi(fields[1])
			pgrp, _ := strconv.Atoi(fields[2])
			tpgid, _ := strconv.Atoi(fields[5])
			if ppid != p.pid() {
				t.Errorf("expected CMD to be fief's child (parent pid %d), got parent pid %d", p.pid(), ppid)
			}
			if pgrp != pid {
				t.Errorf("expected CMD (pid %d) to lead its own process group, got process group %d", pid, pgrp)
			}
			if terminal && tpgid != pgrp {
				t.Errorf("expected CMD's process group %d in the foreground of the terminal, got foreground process group %d", pgrp, tpgid)
			}
		})
	}
}

// containerOpenPseudoTerminal opens a new pseudo-terminal and returns its
// master and slave ends, neither of which becomes the test's controlling
// terminal.
func containerOpenPseudoTerminal(t *testing.T) (*os.File, *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("opening /dev/ptmx: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		master.Close()
		t.Fatalf("unlocking the pseudo-terminal: %v", err)
	}
	number, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		master.Close()
		t.Fatalf("reading the pseudo-terminal number: %v", err)
	}
	slave, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", number), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		t.Fatalf("opening /dev/pts/%d: %v", number, err)
	}
	return master, slave
}

func TestContainerInitSubreaperNotice(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)
	const notice = "not running as pid 1"

	result := containerRun(t, exec.Command(fief, "--", "true"))
	if result.code != 0 {
		t.Errorf("fief -- true: expected exit code 0, got %d; stderr: %q", result.code, result.stderr)
	}
	if count := strings.Count(result.stderr, notice); count != 1 {
		t.Errorf("fief without -s, not pid 1: expected the notice %q exactly once on stderr, got it %d times:\n%s", notice, count, result.stderr)
	}

	silent := containerRun(t, exec.Command(fief, "-s", "--", "true"))
	if silent.code != 0 {
		t.Errorf("fief -s -- true: expected exit code 0, got %d; stderr: %q", silent.code, silent.stderr)
	}
	if strings.Contains(silent.stderr, notice) {
		t.Errorf("fief -s: expected no notice %q on stderr, got:\n%s", notice, silent.stderr)
	}
}

func TestContainerInitReapsOrphans(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)
	dir := containerTempDir(t)
	const orphanCount = 1000

	// Each orphan is a shell blocked opening the FIFO for reading. Its
	// parent subshell exits at once, so the orphan is re-parented to fief,
	// the nearest child subreaper.
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatalf("mkfifo %s: %v", fifo, err)
	}
	// Orphans that fief failed to adopt were re-parented elsewhere and
	// would block on the FIFO forever: kill every process that names it.
	t.Cleanup(func() {
		for range 3 {
			for _, proc := range containerProcs() {
				if slices.Contains(proc.argv, fifo) {
					_ = syscall.Kill(proc.pid, syscall.SIGKILL)
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	script := fmt.Sprintf(`i=0
while [ "$i" -lt %d ]; do
	( read line < "$1" & )
	i=$((i + 1))
done
exec sleep 60
`, orphanCount)
	start := time.Now()
	p := containerStart(t, filepath.Join(dir, "fief.log"), exec.Command(fief, "-s", "--", "sh", "-c", script, "orphans", fifo))

	// CMD becomes sleep 60 once every orphan was forked.
	var orphans []containerProc
	counted := containerPoll(30*time.Second, func() bool {
		orphans = orphans[:0]
		sleeping := false
		for _, child := range containerChildren(p.pid()) {
			switch {
			case len(child.argv) > 0 && child.argv[0] == "sleep":
				sleeping = true
			case child.state != 'Z':
				orphans = append(orphans, child)
			}
		}
		return sleeping && len(orphans) == orphanCount
	})
	if !counted {
		t.Fatalf("expected CMD (sleep 60) and %d orphans re-parented to fief (pid %d) within 30s, got %d orphans\n%s",
			orphanCount, p.pid(), len(orphans), p.describe())
	}
	t.Logf("%d orphans were children of fief %v after it started", orphanCount, time.Since(start).Round(time.Millisecond))

	// Opening the FIFO for writing releases every reader blocked in open;
	// each then reads end of file and exits. A reader that reaches open
	// later is released by the next round.
	released := time.Now()
	allExited := containerPoll(30*time.Second, func() bool {
		if fd, err := syscall.Open(fifo, syscall.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			syscall.Close(fd)
		}
		for _, child := range containerChildren(p.pid()) {
			if child.state != 'Z' && (len(child.argv) == 0 || child.argv[0] != "sleep") {
				return false
			}
		}
		return true
	})
	if !allExited {
		t.Fatalf("expected every orphan to exit within 30s of opening the FIFO; children of fief left:\n%s", containerFormatProcs(containerChildren(p.pid())))
	}

	var zombies []containerProc
	reaped := containerPoll(5*time.Second, func() bool {
		zombies = zombies[:0]
		for _, child := range containerChildren(p.pid()) {
			if child.state == 'Z' {
				zombies = append(zombies, child)
			}
		}
		return len(zombies) == 0
	})
	if !reaped {
		t.Errorf("expected fief to reap all %d orphans, %d zombies with fief (pid %d) as parent were left 5s after they exited, e.g.:\n%s",
			orphanCount, len(zombies), p.pid(), containerFormatProcs(zombies[:min(len(zombies), 5)]))
	} else {
		t.Logf("fief reaped %d orphans %v after they were released", orphanCount, time.Since(released).Round(time.Millisecond))
	}
	var left []containerProc
	for _, orphan := range orphans {
		if now, ok := containerReadProc(orphan.pid); ok && now.ppid == p.pid() {
			left = append(left, now)
		}
	}
	if len(left) > 0 {
		t.Errorf("expected none of the %d orphans in /proc after reaping, %d are still children of fief, e.g.:\n%s",
			orphanCount, len(left), containerFormatProcs(left[:min(len(left), 5)]))
	}

	if err := syscall.Kill(p.pid(), syscall.SIGTERM); err != nil {
		t.Fatalf("sending SIGTERM to fief (pid %d): %v", p.pid(), err)
	}
	code, exited := p.wait(5 * time.Second)
	if !exited {
		t.Fatalf("expected fief to exit within 5s of SIGTERM, it is still running\n%s", p.describe())
	}
	if code != 143 {
		t.Errorf("expected exit code 143 (sleep killed by the forwarded SIGTERM), got %d\n%s", code, p.describe())
	}
}

func TestContainerInitPid1StopsOnSIGTERM(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)
	unshare := containerRequireProgram(t, "unshare", "util-linux")
	dir := containerTempDir(t)

	p := containerStart(t, filepath.Join(dir, "unshare.log"),
		exec.Command(unshare, "--pid", "--fork", "--mount-proc", fief, "--", "sleep", "infinity"))

	// unshare forks the new namespace's pid 1, which executes fief.
	fiefPid := 0
	found := containerPoll(10*time.Second, func() bool {
		for _, child := range containerChildren(p.pid()) {
			if len(child.argv) > 0 && child.argv[0] == fief {
				fiefPid = child.pid
				return true
			}
		}
		return false
	})
	if !found {
		t.Fatalf("expected fief as the child of unshare (pid %d) within 10s\n%s", p.pid(), p.describe())
	}
	if nspid := containerNamespacePid(t, fiefPid); nspid != 1 {
		t.Errorf("expected fief (host pid %d) to be pid 1 of its pid namespace, got pid %d", fiefPid, nspid)
	}
	sleeping := containerPoll(10*time.Second, func() bool {
		return len(containerProgramPids(fiefPid, "sleep")) == 1
	})
	if !sleeping {
		t.Fatalf("expected sleep infinity as the child of fief (pid %d) within 10s\n%s", fiefPid, p.describe())
	}

	sent := time.Now()
	if err := syscall.Kill(fiefPid, syscall.SIGTERM); err != nil {
		t.Fatalf("sending SIGTERM to fief (pid %d): %v", fiefPid, err)
	}
	code, exited := p.wait(10 * time.Second)
	if !exited {
		t.Fatalf("expected fief as pid 1 to stop within 10s of SIGTERM, it is still running\n%s", p.describe())
	}
	took := p.end.Sub(sent)
	t.Logf("fief as pid 1 stopped %v after SIGTERM", took.Round(time.Millisecond))
	if took > time.Second {
		t.Errorf("expected fief as pid 1 to stop within 1s of SIGTERM, it took %v\n%s", took, p.describe())
	}
	// unshare exits with the code of the namespace's pid 1.
	if code != 143 {
		t.Errorf("expected exit code 143 (sleep killed by the forwarded SIGTERM), got %d\n%s", code, p.describe())
	}
	if strings.Contains(p.output(), "not running as pid 1") {
		t.Errorf("expected no notice about pid 1 from fief running as pid 1, got:\n%s", p.describe())
	}
}

func TestContainerInitForwardsSignals(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)
	perl := containerRequireProgram(t, "perl", "perl-base")
	dir := containerTempDir(t)
	script := filepath.Join(dir, "record.pl")
	containerWriteFile(t, script, containerRecordScript, 0o644)
	record := filepath.Join(dir, "signals")

	p := containerStart(t, filepath.Join(dir, "fief.log"), exec.Command(fief, "-s", "--", perl, script, record))
	lines := func() []string {
		data, _ := os.ReadFile(record)
		return strings.Fields(string(data))
	}
	waitLines := func(want []string) bool {
		return containerPoll(5*time.Second, func() bool { return slices.Equal(lines(), want) })
	}
	send := func(sig syscall.Signal) {
		t.Helper()
		if err := syscall.Kill(p.pid(), sig); err != nil {
			t.Fatalf("sending %s to fief (pid %d): %v", unix.SignalName(sig), p.pid(), err)
		}
	}

	want := []string{"ready"}
	if !waitLines(want) {
		t.Fatalf("expected the signal recorder to start within 5s, it recorded %q\n%s", lines(), p.describe())
	}
	forwarded := []syscall.Signal{syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH}
	for _, sig := range forwarded {
		send(sig)
		want = append(want, strings.TrimPrefix(unix.SignalName(sig), "SIG"))
		if !waitLines(want) {
			t.Fatalf("expected CMD to receive %s forwarded by fief within 5s; recorded %q, expected %q\n%s",
				unix.SignalName(sig), lines(), want, p.describe())
		}
	}

	// SIGCHLD is the reaper's and SIGURG the Go runtime's: neither may
	// reach CMD. SIGUSR1 after them marks the end of the sequence.
	send(syscall.SIGCHLD)
	send(syscall.SIGURG)
	send(syscall.SIGUSR1)
	want = append(want, "USR1")
	if !waitLines(want) {
		t.Errorf("expected CMD to receive only SIGUSR1 after SIGCHLD, SIGURG and SIGUSR1 were sent to fief; recorded %q, expected %q",
			lines(), want)
	}
	time.Sleep(100 * time.Millisecond)
	if got := lines(); !slices.Equal(got, want) {
		t.Errorf("expected no signal besides SIGUSR1 to reach CMD; recorded %q, expected %q", got, want)
	}

	send(syscall.SIGTERM)
	code, exited := p.wait(5 * time.Second)
	if !exited {
		t.Fatalf("expected fief to exit within 5s of SIGTERM, it is still running\n%s", p.describe())
	}
	if code != 0 {
		t.Errorf("expected exit code 0 (CMD exits 0 on SIGTERM), got %d\n%s", code, p.describe())
	}
	if got := lines(); len(got) == 0 || got[len(got)-1] != "TERM" {
		t.Errorf("expected CMD to record SIGTERM last, recorded %q", got)
	}
}

// containerGroupParent and containerGroupChild are a parent shell and the
// child it starts in the background, in the parent's process group. Each appends its role to the
// file $1 when it gets SIGTERM; the child writes its pid to $2 once its trap
// is set. The parent keeps waiting for the child, so it exits only after the
// child does.
const (
	containerGroupParent = `trap 'echo parent >> "$1"' TERM
sh "$(dirname "$0")/child.sh" "$@" &
wait
wait
`
	containerGroupChild = `trap 'echo child >> "$1"; exit 0' TERM
echo $$ > "$2"
while :; do sleep 0.05; done
`
)

func TestContainerInitGroupForwarding(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)

	for _, group := range []bool{true, false} {
		name := "without -g"
		if group {
			name = "with -g"
		}
		t.Run(name, func(t *testing.T) {
			dir := containerTempDir(t)
			parent := filepath.Join(dir, "parent.sh")
			containerWriteFile(t, parent, containerGroupParent, 0o644)
			containerWriteFile(t, filepath.Join(dir, "child.sh"), containerGroupChild, 0o644)
			record := filepath.Join(dir, "terminated")
			pidFile := filepath.Join(dir, "child.pid")
			lines := func() []string {
				data, _ := os.ReadFile(record)
				return strings.Fields(string(data))
			}

			args := []string{"-s"}
			if group {
				args = append(args, "-g")
			}
			args = append(args, "--", "sh", parent, record, pidFile)
			p := containerStart(t, filepath.Join(dir, "fief.log"), exec.Command(fief, args...))

			childPid := 0
			if !containerPoll(10*time.Second, func() bool {
				data, _ := os.ReadFile(pidFile)
				pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
				childPid = pid
				return err == nil && pid > 0
			}) {
				t.Fatalf("expected the child shell to write %s within 10s\n%s", pidFile, p.describe())
			}

			if err := syscall.Kill(p.pid(), syscall.SIGTERM); err != nil {
				t.Fatalf("sending SIGTERM to fief (pid %d): %v", p.pid(), err)
			}

			if group {
				both := containerPoll(5*time.Second, func() bool {
					got := lines()
					slices.Sort(got)
					return slices.Equal(got, []string{"child", "parent"})
				})
				if !both {
					t.Errorf("fief -g: expected SIGTERM to reach both shells of CMD's process group within 5s; they recorded %q", lines())
				}
			} else {
				if !containerPoll(5*time.Second, func() bool { return slices.Equal(lines(), []string{"parent"}) }) {
					t.Errorf("fief without -g: expected SIGTERM to reach CMD within 5s; recorded %q, expected [parent]", lines())
				}
				time.Sleep(300 * time.Millisecond)
				if got := lines(); !slices.Equal(got, []string{"parent"}) {
					t.Errorf("fief without -g: expected SIGTERM to reach CMD alone, not the child in its process group; recorded %q", got)
				}
				if !p.running() {
					t.Errorf("fief without -g: expected fief to keep running while CMD waits for its child\n%s", p.describe())
				}
				// The child ends the test: CMD then exits 0.
				if err := syscall.Kill(childPid, syscall.SIGTERM); err != nil {
					t.Fatalf("sending SIGTERM to the child shell (pid %d): %v", childPid, err)
				}
			}

			code, exited := p.wait(5 * time.Second)
			if !exited {
				t.Fatalf("expected fief to exit within 5s once both shells got SIGTERM, it is still running\n%s", p.describe())
			}
			if code != 0 {
				t.Errorf("expected exit code 0 (CMD exits 0 after its child), got %d\n%s", code, p.describe())
			}
		})
	}
}

// containerLeftoverCommand is CMD: it starts the leftover script $0 in the
// background and exits 4 once the leftover wrote its pid to $1. The
// leftover outlives CMD. containerLeftoverIgnoring executes sleep with
// SIGTERM still ignored, and containerLeftoverStopping appends "TERM" to $2
// when it gets SIGTERM.
const (
	containerLeftoverIgnoring = `trap '' TERM
echo $$ > "$1"
exec sleep 60
`
	containerLeftoverStopping = `trap 'echo TERM >> "$2"; exit 0' TERM
echo $$ > "$1"
while :; do sleep 0.05; done
`
	containerLeftoverCommand = `sh "$0" "$@" &
while [ ! -s "$1" ]; do sleep 0.01; done
exit 4
`
)

func TestContainerInitStopsLeftovers(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)

	tests := []struct {
		name   string
		script string
		grace  time.Duration
		// minTook and maxTook bound fief's run time: a process that
		// ignores SIGTERM must live through the whole grace period.
		minTook, maxTook time.Duration
		wantTERM         bool
	}{
		{"leftover that ignores SIGTERM", containerLeftoverIgnoring, time.Second, time.Second, 4 * time.Second, false},
		{"leftover that stops on SIGTERM", containerLeftoverStopping, 5 * time.Second, 0, 3 * time.Second, true},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			dir := containerTempDir(t)
			leftover := filepath.Join(dir, "leftover.sh")
			containerWriteFile(t, leftover, test.script, 0o644)
			pidFile := filepath.Join(dir, "leftover.pid")
			record := filepath.Join(dir, "terminated")

			cmd := exec.Command(fief, "-s", "--grace", test.grace.String(), "--", "sh", "-c", containerLeftoverCommand, leftover, pidFile, record)
			start := time.Now()
			p := containerStart(t, filepath.Join(dir, "fief.log"), cmd)
			code, exited := p.wait(test.maxTook + 10*time.Second)
			if !exited {
				t.Fatalf("expected fief --grace %v to exit within %v, it is still running\n%s", test.grace, test.maxTook+10*time.Second, p.describe())
			}
			took := p.end.Sub(start)
			t.Logf("fief --grace %v exited %v after it started", test.grace, took.Round(time.Millisecond))

			if code != 4 {
				t.Errorf("expected exit code 4, CMD's, got %d\n%s", code, p.describe())
			}
			if took < test.minTook || took > test.maxTook {
				t.Errorf("expected fief --grace %v to exit between %v and %v after it started, it took %v\n%s",
					test.grace, test.minTook, test.maxTook, took, p.describe())
			}

			data, err := os.ReadFile(pidFile)
			pid, convErr := strconv.Atoi(strings.TrimSpace(string(data)))
			if err != nil || convErr != nil {
				t.Fatalf("reading the leftover's pid from %s: %v %v", pidFile, err, convErr)
			}
			if proc, ok := containerReadProc(pid); ok && proc.state != 'Z' {
				t.Errorf("expected the leftover (pid %d) to be gone when fief exited, it is still running: %s", pid, proc)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			terminated, _ := os.ReadFile(record)
			if got := strings.Contains(string(terminated), "TERM"); got != test.wantTERM {
				t.Errorf("expected the leftover to record SIGTERM: %v, got %v (file content %q)", test.wantTERM, got, terminated)
			}
		})
	}
}

func TestContainerInitRemapExit(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)
	perl := containerRequireProgram(t, "perl", "perl-base")

	tests := []struct {
		name   string
		args   []string
		want   int
		stderr string // expected in stderr, when not empty
	}{
		{"mapped code", []string{"--remap-exit", "3:7", "--remap-exit", "143:0", "--", "sh", "-c", "exit 3"}, 7, ""},
		{"second mapping", []string{"--remap-exit", "3:7", "--remap-exit", "143:0", "--", perl, "-e", containerDieScript, "TERM"}, 0, ""},
		{"unmapped code", []string{"--remap-exit", "143:0", "--", "sh", "-c", "exit 5"}, 5, ""},
		{"mapping without a colon", []string{"--remap-exit", "143", "--", "true"}, 2, "invalid exit code mapping"},
		{"code out of range", []string{"--remap-exit", "300:0", "--", "true"}, 2, "invalid exit code mapping"},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			args := append([]string{"-s"}, test.args...)
			result := containerRun(t, exec.Command(fief, args...))
			if result.code != test.want {
				t.Errorf("fief %s: expected exit code %d, got %d; stderr: %q", strings.Join(args, " "), test.want, result.code, result.stderr)
			}
			if test.stderr != "" && !strings.Contains(result.stderr, test.stderr) {
				t.Errorf("fief %s: expected stderr to contain %q, got %q", strings.Join(args, " "), test.stderr, result.stderr)
			}
		})
	}

	t.Run("forwarded SIGTERM", func(t *testing.T) {
		dir := containerTempDir(t)
		p := containerStart(t, filepath.Join(dir, "fief.log"), exec.Command(fief, "-s", "--remap-exit", "143:0", "--", "sleep", "60"))
		if !containerPoll(10*time.Second, func() bool { return len(containerProgramPids(p.pid(), "sleep")) == 1 }) {
			t.Fatalf("expected sleep as the child of fief (pid %d) within 10s\n%s", p.pid(), p.describe())
		}
		if err := syscall.Kill(p.pid(), syscall.SIGTERM); err != nil {
			t.Fatalf("sending SIGTERM to fief (pid %d): %v", p.pid(), err)
		}
		code, exited := p.wait(5 * time.Second)
		if !exited {
			t.Fatalf("expected fief to exit within 5s of SIGTERM, it is still running\n%s", p.describe())
		}
		if code != 0 {
			t.Errorf("expected --remap-exit 143:0 to turn sleep's death by SIGTERM into exit code 0, got %d\n%s", code, p.describe())
		}
	})
}

// containerNamespacePid returns the pid of a process in its innermost pid
// namespace, the last field of the NSpid line of /proc/PID/status.
func containerNamespacePid(t *testing.T, pid int) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("reading the status of pid %d: %v", pid, err)
	}
	for line := range strings.Lines(string(data)) {
		fields := strings.Fields(line)
		if len(fields) > 1 && fields[0] == "NSpid:" {
			nspid, err := strconv.Atoi(fields[len(fields)-1])
			if err != nil {
				t.Fatalf("invalid NSpid line in /proc/%d/status: %q", pid, line)
			}
			return nspid
		}
	}
	t.Fatalf("no NSpid line in /proc/%d/status", pid)
	return 0
}

// containerStopTimeout bounds how long fief as a container's pid 1 may take
// to stop after SIGTERM: the vassal's stop-timeout is 2s and httpd stops at
// once, so a longer stop means SIGTERM was not handled.
const containerStopTimeout = 5 * time.Second

// containerCheckPid1 checks that pid is fief's emperor and pid 1 of its pid
// namespace.
func containerCheckPid1(t *testing.T, pid int) {
	t.Helper()
	proc, ok := containerReadProc(pid)
	if !ok {
		t.Fatalf("the container's pid 1 (host pid %d) is gone", pid)
	}
	if got := strings.Join(proc.argv, " "); got != "/fief emperor /vassals" {
		t.Errorf("expected the container's pid 1 to run /fief emperor /vassals, got %q", got)
	}
	if nspid := containerNamespacePid(t, pid); nspid != 1 {
		t.Errorf("expected fief (host pid %d) to be pid 1 of the container, got pid %d", pid, nspid)
	}
}

func TestRuncEmperorServesZipApp(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)
	runc := containerRequireProgram(t, "runc", "runc")
	busybox := containerRequireProgram(t, "busybox", "busybox-static")
	fuseZip := containerRequireProgram(t, "fuse-zip", "fuse-zip")
	fusermount := containerRequireProgram(t, "fusermount3", "fuse3")
	dir := containerTempDir(t)
	port := freePort(t)

	container, rootfs := newContainerRunc(t, runc, dir)
	rootfs.addBase(fief, busybox)
	rootfs.addWebApp(fuseZip, fusermount, port)
	container.writeSpec([]string{"/fief", "emperor", "/vassals"}, true)

	p := container.run()
	took, err := waitServes(port, containerWebApp, 20*time.Second)
	if err != nil {
		t.Fatalf("%v\n%s", err, p.describe())
	}
	t.Logf("the runc container served the app %v after runc run started", took.Round(time.Millisecond))
	initPid := container.initPid()
	containerCheckPid1(t, initPid)

	// Kill the FUSE daemon inside the container: the vassal's mount check
	// fails, and the emperor starts the vassal again with a new mount.
	daemons := containerProgramPids(initPid, "fuse-zip")
	if len(daemons) != 1 {
		t.Fatalf("expected one fuse-zip below the container's pid 1, got pids %v:\n%s", daemons, containerFormatProcs(containerDescendants(initPid)))
	}
	if err := syscall.Kill(daemons[0], syscall.SIGKILL); err != nil {
		t.Fatalf("sending SIGKILL to fuse-zip (pid %d): %v", daemons[0], err)
	}
	killed := time.Now()
	var current []int
	recovered := containerPoll(20*time.Second, func() bool {
		current = containerProgramPids(initPid, "fuse-zip")
		return len(current) == 1 && current[0] != daemons[0] && serves(port, containerWebApp)
	})
	if !recovered {
		status, body, err := fetch(port)
		t.Fatalf("expected a new fuse-zip and the app served again within 20s of killing fuse-zip (pid %d); fuse-zip pids now %v, last answer: status %d, body %q, error %v\n%s",
			daemons[0], current, status, body, err, p.describe())
	}
	t.Logf("the app was served again by a new fuse-zip %v after SIGKILL to the old one", time.Since(killed).Round(time.Millisecond))

	running := containerDescendants(initPid)
	sent := time.Now()
	if out, err := container.command("kill", container.id, "TERM").CombinedOutput(); err != nil {
		t.Fatalf("runc kill %s TERM failed: %v\n%s", container.id, err, out)
	}
	code, exited := p.wait(containerStopTimeout + 10*time.Second)
	if !exited {
		t.Fatalf("expected the container to stop within %v of runc kill TERM, it is still running\n%s", containerStopTimeout+10*time.Second, p.describe())
	}
	stopTook := p.end.Sub(sent)
	t.Logf("fief as the container's pid 1 exited %v after runc kill TERM", stopTook.Round(time.Millisecond))
	if code != 0 {
		t.Errorf("expected fief as the container's pid 1 to exit 0 on SIGTERM, runc run exited %d\n%s", code, p.describe())
	}
	if stopTook > containerStopTimeout {
		t.Errorf("expected fief to stop within %v of SIGTERM, it took %v\n%s", containerStopTimeout, stopTook, p.describe())
	}

	// runc run removes the container when its pid 1 exits; runc delete of
	// a removed container reports that it does not exist.
	if out, err := container.command("delete", container.id).CombinedOutput(); err != nil && !strings.Contains(string(out), "does not exist") {
		t.Errorf("runc delete %s failed: %v\n%s", container.id, err, out)
	}
	for _, proc := range running {
		if now, ok := containerReadProc(proc.pid); ok && now.state != 'Z' && slices.Equal(now.argv, proc.argv) {
			t.Errorf("expected every process of the container to be gone after it stopped, %s is still running", now)
		}
	}
	if mounts := containerMountsBelow(dir); len(mounts) > 0 {
		t.Errorf("expected no mount of the bundle on the host, got:\n%s", strings.Join(mounts, "\n"))
	}
}

func TestRuncInitExitStatus(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)
	runc := containerRequireProgram(t, "runc", "runc")
	busybox := containerRequireProgram(t, "busybox", "busybox-static")

	t.Run("exit 3", func(t *testing.T) {
		container, rootfs := newContainerRunc(t, runc, containerTempDir(t))
		rootfs.addBase(fief, busybox)
		container.writeSpec([]string{"/fief", "--", "busybox", "sh", "-c", "exit 3"}, false)

		p := container.run()
		code, exited := p.wait(20 * time.Second)
		if !exited {
			t.Fatalf("expected the container to exit within 20s, it is still running\n%s", p.describe())
		}
		if code != 3 {
			t.Errorf("expected runc run to exit 3, the status of fief -- busybox sh -c 'exit 3', got %d\n%s", code, p.describe())
		}
		if strings.Contains(p.output(), "not running as pid 1") {
			t.Errorf("expected no notice about pid 1 from fief as the container's pid 1, got:\n%s", p.describe())
		}
	})

	t.Run("runc kill TERM", func(t *testing.T) {
		container, rootfs := newContainerRunc(t, runc, containerTempDir(t))
		rootfs.addBase(fief, busybox)
		container.writeSpec([]string{"/fief", "--", "busybox", "sleep", "1000"}, false)

		p := container.run()
		var initPid int
		sleeping := containerPoll(20*time.Second, func() bool {
			if out, err := container.command("state", container.id).Output(); err != nil || !strings.Contains(string(out), `"running"`) {
				return false
			}
			initPid = container.initPid()
			return len(containerProgramPids(initPid, "busybox")) == 1
		})
		if !sleeping {
			t.Fatalf("expected busybox sleep below the container's pid 1 within 20s\n%s", p.describe())
		}

		sent := time.Now()
		if out, err := container.command("kill", container.id, "TERM").CombinedOutput(); err != nil {
			t.Fatalf("runc kill %s TERM failed: %v\n%s", container.id, err, out)
		}
		code, exited := p.wait(10 * time.Second)
		if !exited {
			t.Fatalf("expected the container to exit within 10s of runc kill TERM, it is still running\n%s", p.describe())
		}
		if took := p.end.Sub(sent); took > containerStopTimeout {
			t.Errorf("expected the container to stop within %v of SIGTERM, it took %v", containerStopTimeout, took)
		}
		if code != 143 {
			t.Errorf("expected runc run to exit 143 (sleep killed by the SIGTERM fief forwarded), got %d\n%s", code, p.describe())
		}
	})
}

func TestDockerEmperorServesZipApp(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)
	busybox := containerRequireProgram(t, "busybox", "busybox-static")
	fuseZip := containerRequireProgram(t, "fuse-zip", "fuse-zip")
	fusermount := containerRequireProgram(t, "fusermount3", "fuse3")
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("/dev/fuse is required: %v; load the fuse kernel module", err)
	}
	dockerd := startContainerDockerd(t)
	port := freePort(t)

	work := containerTempDir(t)
	rootfs := newContainerRootfs(t, filepath.Join(work, "rootfs"))
	rootfs.addBase(fief, busybox)
	rootfs.addWebApp(fuseZip, fusermount, port)
	buildContext := filepath.Join(work, "context")
	rootfs.writeTar(filepath.Join(buildContext, "rootfs.tar"))
	containerWriteFile(t, filepath.Join(buildContext, "Dockerfile"), containerDockerfile, 0o644)

	image := containerUniqueName(t, "fief-test-")
	start := time.Now()
	dockerd.mustDocker("build", "--quiet", "--tag", image, buildContext)
	t.Cleanup(func() { _ = containerRun(t, dockerd.docker("rmi", "--force", image)) })
	t.Logf("docker build took %v", time.Since(start).Round(time.Millisecond))

	// The host network: httpd's 127.0.0.1 is the host's loopback.
	name := image
	dockerd.mustDocker("run", "--detach", "--name", name, "--network", "host", "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN", image)
	t.Cleanup(func() { _ = containerRun(t, dockerd.docker("rm", "--force", name)) })
	logs := func() string {
		result := containerRun(t, dockerd.docker("logs", name))
		return fmt.Sprintf("--- docker logs %s ---\n%s%s---", name, result.stdout, result.stderr)
	}

	took, err := waitServes(port, containerWebApp, 20*time.Second)
	if err != nil {
		t.Fatalf("%v\n%s", err, logs())
	}
	t.Logf("the Docker container served the app %v after docker run", took.Round(time.Millisecond))
	pid, err := strconv.Atoi(dockerd.inspect(name, "{{.State.Pid}}"))
	if err != nil || pid <= 0 {
		t.Fatalf("docker inspect gave no pid for %s: %v", name, err)
	}
	containerCheckPid1(t, pid)

	start = time.Now()
	dockerd.mustDocker("stop", "--time", "10", name)
	stopTook := time.Since(start)
	t.Logf("docker stop took %v", stopTook.Round(time.Millisecond))
	if stopTook > containerStopTimeout {
		t.Errorf("expected docker stop to return within %v (fief stops on SIGTERM), it took %v\n%s", containerStopTimeout, stopTook, logs())
	}
	if code := dockerd.inspect(name, "{{.State.ExitCode}}"); code != "0" {
		t.Errorf("expected fief as the container's pid 1 to exit 0 on docker stop, the exit code is %s\n%s", code, logs())
	}
}
