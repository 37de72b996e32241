package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestVassalProgramHasDefaultSignals checks what a vassal's program
// inherits from its vassal init, which catches its signals with its own
// handler: no blocked or caught signal, and the ignored signals of the
// emperor. It also checks that SIGHUP to the init restarts the program and
// that the init reaps the old one.
func TestVassalProgramHasDefaultSignals(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.writeVassal("sleeper.ini", "[uwsgi]\nexec = busybox sleep 1000\n")
	emperor := e.startEmperor()
	initPid := emperor.waitVassalStarted("sleeper.ini", 1)
	emperor.waitLog(1, "program started (sleeper.ini)", matchLog("program started", "vassal", "sleeper.ini"))

	first := waitOnlyChild(t, initPid, 0, emperor)
	checkDefaultSignals(t, first, "the first program", emperor)
	if threads, err := statusField(initPid, "Threads:"); err == nil {
		t.Logf("vassal init %d has %d threads while its program runs", initPid, threads)
	}

	if err := syscall.Kill(initPid, syscall.SIGHUP); err != nil {
		t.Fatalf("kill -HUP %d (vassal init): %v", initPid, err)
	}
	emperor.waitLog(2, "program started again after SIGHUP", matchLog("program started", "vassal", "sleeper.ini"))
	second := waitOnlyChild(t, initPid, first, emperor)
	checkDefaultSignals(t, second, "the program started by the reload", emperor)

	// The old program must be reaped, not left as a zombie, so its /proc
	// entry goes away.
	deadline := time.Now().Add(exitTimeout)
	for {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", first)); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the program %d stopped by the reload is still in /proc %v later, expected the vassal init to reap it\n%s", first, exitTimeout, emperor.tail())
		}
		time.Sleep(pollPeriod)
	}
}

// waitOnlyChild waits until the process pid has exactly one child other
// than previous, and returns it.
func waitOnlyChild(t *testing.T, pid, previous int, emperor *fiefProcess) int {
	t.Helper()
	deadline := time.Now().Add(exitTimeout)
	for {
		children, err := childPids(pid)
		if err != nil {
			t.Fatalf("listing the children of vassal init %d: %v", pid, err)
		}
		if len(children) == 1 && children[0] != previous {
			return children[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("vassal init %d has children %v after %v, expected one program other than %d\n%s", pid, children, exitTimeout, previous, emperor.tail())
		}
		time.Sleep(pollPeriod)
	}
}

// childPids returns the children of pid. The kernel lists each child under
// the thread that forked it, so every thread's list is read.
func childPids(pid int) ([]int, error) {
	lists, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, list := range lists {
		data, err := os.ReadFile(list)
		if err != nil {
			// A thread that has exited since the glob has no children.
			continue
		}
		for _, field := range strings.Fields(string(data)) {
			child, err := strconv.Atoi(field)
			if err != nil {
				return nil, fmt.Errorf("invalid pid %q in %s", field, list)
			}
			pids = append(pids, child)
		}
	}
	return pids, nil
}

// caughtByInit contains the bits, in /proc/PID/status masks, of the signals
// that a vassal init catches: SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1,
// SIGUSR2, SIGWINCH and SIGCHLD.
const caughtByInit = 1<<(syscall.SIGTERM-1) | 1<<(syscall.SIGINT-1) | 1<<(syscall.SIGQUIT-1) | 1<<(syscall.SIGHUP-1) |
	1<<(syscall.SIGUSR1-1) | 1<<(syscall.SIGUSR2-1) | 1<<(syscall.SIGWINCH-1) | 1<<(syscall.SIGCHLD-1)

// checkDefaultSignals checks that the program pid blocks and catches no
// signal, and ignores the same signals as the emperor, which the test
// started. Those can be more than none: under GNU Make 4.3 on Debian 12,
// recipe commands start with signals 32 and 33 ignored, and the Go runtime
// keeps signal 32 ignored.
// busybox sleep changes none of the masks itself.
func checkDefaultSignals(t *testing.T, pid int, program string, emperor *fiefProcess) {
	t.Helper()
	got := signalMasks(t, pid, program)
	inherited := signalMasks(t, emperor.pid(), "the emperor")
	if got["SigBlk"] != 0 {
		t.Errorf("%s (pid %d) has SigBlk %#x, expected 0: it inherited blocked signals from the vassal init", program, pid, got["SigBlk"])
	}
	if got["SigIgn"] != inherited["SigIgn"] {
		t.Errorf("%s (pid %d) has SigIgn %#x, expected the emperor's %#x: the vassal init changed it", program, pid, got["SigIgn"], inherited["SigIgn"])
	}
	if got["SigIgn"]&caughtByInit != 0 {
		t.Errorf("%s (pid %d) has SigIgn %#x, expected none of the vassal init's signals (%#x) in it", program, pid, got["SigIgn"], uint64(caughtByInit))
	}
	if got["SigCgt"] != 0 {
		t.Errorf("%s (pid %d) has SigCgt %#x, expected 0: it inherited a caught signal from the vassal init", program, pid, got["SigCgt"])
	}
}

// signalMasks returns the SigBlk, SigIgn and SigCgt masks of pid.
func signalMasks(t *testing.T, pid int, process string) map[string]uint64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("reading the status of %s (pid %d): %v", process, pid, err)
	}
	masks := make(map[string]uint64)
	for line := range strings.Lines(string(data)) {
		name, value, ok := strings.Cut(line, ":")
		if !ok || (name != "SigBlk" && name != "SigIgn" && name != "SigCgt") {
			continue
		}
		mask, err := strconv.ParseUint(strings.TrimSpace(value), 16, 64)
		if err != nil {
			t.Fatalf("invalid %s line in /proc/%d/status: %q", name, pid, line)
		}
		masks[name] = mask
	}
	if len(masks) != 3 {
		t.Fatalf("/proc/%d/status has %d of the lines SigBlk, SigIgn and SigCgt, expected all 3", pid, len(masks))
	}
	return masks
}
