package reaper

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// runOutput starts cmd with the test reaper, waits for it and returns its
// stdout, failing the test when it does not exit with code 0.
func runOutput(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	stdout, stderr, status, err := testReaper.Output(cmd)
	if err != nil {
		t.Fatalf("running %v: %v", cmd.Args, err)
	}
	if !status.Success() {
		t.Fatalf("%v: %s, stderr: %s", cmd.Args, status, stderr)
	}
	return string(stdout)
}

// openFDs returns the number of descriptors open in the test process.
func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("listing /proc/self/fd: %v", err)
	}
	return len(entries)
}

// holdsPidfd reports whether the child was started with a pidfd.
func holdsPidfd(child *Child) bool {
	child.handle.mu.RLock()
	defer child.handle.mu.RUnlock()
	return child.handle.pidfd >= 0
}

func TestStartNilStdioIsDevNull(t *testing.T) {
	out := filepath.Join(t.TempDir(), "fds")
	// The shell describes its own descriptors 0 to 2: the target of each
	// and the open flags, in octal, from fdinfo.
	script := `exec 9> "$1"
for fd in 0 1 2; do
	echo "$fd $(readlink /proc/$$/fd/$fd) $(sed -n 's/^flags:[[:space:]]*//p' /proc/$$/fdinfo/$fd)" >&9
done`
	child, err := testReaper.Start(exec.Command("sh", "-c", script, "sh", out))
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if st := waitStatus(t, child); !st.Success() {
		t.Fatalf("the shell failed: %s", st)
	}

	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 3 {
		t.Fatalf("expected 3 lines, one per descriptor, got %q", data)
	}
	wantAccess := []int{unix.O_RDONLY, unix.O_WRONLY, unix.O_WRONLY}
	for fd, line := range lines {
		var number int
		var target string
		var flags int
		if _, err := fmt.Sscanf(line, "%d %s %o", &number, &target, &flags); err != nil {
			t.Errorf("descriptor %d: cannot parse %q: %v", fd, line, err)
			continue
		}
		if target != os.DevNull {
			t.Errorf("descriptor %d is %q, want %s", fd, target, os.DevNull)
		}
		if got := flags & unix.O_ACCMODE; got != wantAccess[fd] {
			t.Errorf("descriptor %d has access mode %#o, want %#o", fd, got, wantAccess[fd])
		}
	}
}

func TestStartStdioFiles(t *testing.T) {
	in, err := os.CreateTemp(t.TempDir(), "stdin")
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if _, err := in.WriteString("from stdin\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := in.Seek(0, 0); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command("sh", "-c", "cat; echo to stderr >&2")
	cmd.Stdin = in
	stdout, stderr, status, err := testReaper.Output(cmd)
	if err != nil {
		t.Fatalf("Output: %v", err)
	}
	if !status.Success() {
		t.Fatalf("the shell failed: %s", status)
	}
	if got, want := string(stdout), "from stdin\n"; got != want {
		t.Errorf("stdout = %q, want %q", got, want)
	}
	if got, want := string(stderr), "to stderr\n"; got != want {
		t.Errorf("stderr = %q, want %q", got, want)
	}
}

func TestStartExtraFiles(t *testing.T) {
	read, write, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer read.Close()

	// ExtraFiles[0] is nil, so descriptor 3 is closed in the child, and the
	// pipe is descriptor 4.
	cmd := exec.Command("sh", "-c", `echo "to fd 4" >&4; if [ -e /proc/$$/fd/3 ]; then echo "fd 3 open" >&4; fi`)
	cmd.ExtraFiles = []*os.File{nil, write}
	child, err := testReaper.Start(cmd)
	write.Close()
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if st := waitStatus(t, child); !st.Success() {
		t.Fatalf("the shell failed: %s", st)
	}

	got := make([]byte, 100)
	n, _ := read.Read(got)
	if want := "to fd 4\n"; string(got[:n]) != want {
		t.Errorf("the pipe received %q, want %q", got[:n], want)
	}
}

func TestStartDir(t *testing.T) {
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", `pwd -P; echo "$PWD"`)
	cmd.Dir = dir
	out := runOutput(t, cmd)
	// With a nil Env, PWD names the new directory, as with exec.Cmd.
	if want := dir + "\n" + dir + "\n"; out != want {
		t.Errorf("output = %q, want %q", out, want)
	}
}

func TestStartMissingDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "missing")
	cmd := exec.Command("true")
	cmd.Dir = dir
	_, err := testReaper.Start(cmd)
	if err == nil {
		t.Fatalf("Start in a missing directory succeeded")
	}

	var pathErr *os.PathError
	if !errors.As(err, &pathErr) {
		t.Fatalf("error %v (%T) is not an *os.PathError", err, err)
	}
	if pathErr.Op != "chdir" || pathErr.Path != dir {
		t.Errorf("error = %v, want a chdir error on %s", err, dir)
	}
	if IsExecNotFound(err) {
		t.Errorf("IsExecNotFound(%v) = true for a missing directory, want false", err)
	}
}

func TestStartEnv(t *testing.T) {
	cmd := exec.Command("/usr/bin/env")
	cmd.Env = []string{"FIEF_A=1", "FIEF_B=two words", "FIEF_A=3"}
	// As with exec.Cmd, the last of two values of one variable wins, in
	// the place of the last.
	if got, want := runOutput(t, cmd), "FIEF_B=two words\nFIEF_A=3\n"; got != want {
		t.Errorf("env output = %q, want %q", got, want)
	}

	t.Setenv("FIEF_REAPER_INHERITED", "inherited value")
	out := runOutput(t, exec.Command("/usr/bin/env"))
	if !strings.Contains(out, "\nFIEF_REAPER_INHERITED=inherited value\n") {
		t.Errorf("with a nil Env the child's environment lacks FIEF_REAPER_INHERITED:\n%s", out)
	}
}

func TestStartEnvWithNUL(t *testing.T) {
	cmd := exec.Command("true")
	cmd.Env = []string{"FIEF_A=a\x00b"}
	if _, err := testReaper.Start(cmd); err == nil {
		t.Errorf("Start with a NUL in the environment succeeded, want an error")
	}
}

func TestStartExecFailure(t *testing.T) {
	_, err := testReaper.Start(exec.Command("/nonexistent/program"))
	if err == nil {
		t.Fatalf("Start of a missing program succeeded")
	}
	if got, want := err.Error(), "fork/exec /nonexistent/program: no such file or directory"; got != want {
		t.Errorf("error = %q, want %q", got, want)
	}
	if !IsExecNotFound(err) {
		t.Errorf("IsExecNotFound(%v) = false, want true", err)
	}

	// A program that exists but cannot be executed.
	script := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = testReaper.Start(exec.Command(script))
	if !errors.Is(err, syscall.EACCES) {
		t.Errorf("Start of a file without execute permission: error = %v, want EACCES", err)
	}
	if err != nil && !strings.Contains(err.Error(), script) {
		t.Errorf("error %q does not name %s", err, script)
	}
	if IsExecNotFound(err) {
		t.Errorf("IsExecNotFound(%v) = true for a file without execute permission, want false", err)
	}
}

func TestStartLookPathFailure(t *testing.T) {
	cmd := exec.Command("fief-reaper-test-no-such-program")
	_, err := testReaper.Start(cmd)
	if !errors.Is(err, exec.ErrNotFound) {
		t.Errorf("error = %v, want exec.ErrNotFound from LookPath", err)
	}
	if !IsExecNotFound(err) {
		t.Errorf("IsExecNotFound(%v) = false, want true", err)
	}
}

func TestStartRejectsCommandContext(t *testing.T) {
	cmd := exec.CommandContext(context.Background(), "true")
	if _, err := testReaper.Start(cmd); err == nil {
		t.Errorf("Start of a command made by exec.CommandContext succeeded, want an error")
	}
}

func TestStartLeavesCmdProcessNil(t *testing.T) {
	cmd := exec.Command("true")
	child, err := testReaper.Start(cmd)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	waitStatus(t, child)
	if cmd.Process != nil {
		t.Errorf("cmd.Process = %v after Start, want nil", cmd.Process)
	}
}

func TestStartGivesPidfd(t *testing.T) {
	child, err := testReaper.Start(exec.Command("sleep", "60"))
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer func() {
		_ = child.Signal(unix.SIGKILL)
		waitStatus(t, child)
	}()
	// Every kernel since Linux 5.2 returns a pidfd for CLONE_PIDFD.
	if !holdsPidfd(child) {
		t.Errorf("child %d has no pidfd on kernel %s", child.Pid, kernelRelease(t))
	}
}

func kernelRelease(t *testing.T) string {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		t.Fatal(err)
	}
	return unix.ByteSliceToString(uts.Release[:])
}

// TestSignalAfterReapSkipsReusedPid gives a reaped child the pid of a live
// process, as if the pid had been reused, and checks that Signal leaves that
// process alone. It runs with and without a pidfd.
func TestSignalAfterReapSkipsReusedPid(t *testing.T) {
	for _, withPidfd := range []bool{true, false} {
		t.Run(fmt.Sprintf("pidfd=%v", withPidfd), func(t *testing.T) {
			if !withPidfd {
				forcePidfdMissing(t)
			}
			// A child that runs until it is killed, so the reaper cannot
			// reap it and close its pidfd before the check.
			reaped, err := testReaper.Start(exec.Command("sleep", "60"))
			if err != nil {
				t.Fatalf("Start: %v", err)
			}
			if got := holdsPidfd(reaped); got != withPidfd {
				t.Fatalf("child holds a pidfd: %v, want %v", got, withPidfd)
			}
			if err := reaped.Signal(unix.SIGKILL); err != nil {
				t.Fatalf("Signal to the first child = %v, want nil", err)
			}
			waitStatus(t, reaped)

			live, err := testReaper.Start(exec.Command("sleep", "60"))
			if err != nil {
				t.Fatalf("Start: %v", err)
			}
			reaped.handle.pid = live.Pid
			if err := reaped.Signal(unix.SIGKILL); err != nil {
				t.Errorf("Signal after reap = %v, want nil", err)
			}
			select {
			case st := <-live.Done:
				t.Errorf("the process with the reused pid ended: %s", st)
			case <-time.After(200 * time.Millisecond):
			}

			if err := live.Signal(unix.SIGKILL); err != nil {
				t.Errorf("Signal to a live child = %v, want nil", err)
			}
			if st := waitStatus(t, live); st.ExitCode() != 128+int(unix.SIGKILL) {
				t.Errorf("live child: %s, want killed by SIGKILL", st)
			}
		})
	}
}

// forcePidfdMissing makes the starts of the test fork without CLONE_PIDFD,
// as on a kernel before 5.2.
func forcePidfdMissing(t *testing.T) {
	saved := pidfdState.Swap(pidfdMissing)
	t.Cleanup(func() { pidfdState.Store(saved) })
}

func TestSignalWhileChildExits(t *testing.T) {
	for _, withPidfd := range []bool{true, false} {
		t.Run(fmt.Sprintf("pidfd=%v", withPidfd), func(t *testing.T) {
			if !withPidfd {
				forcePidfdMissing(t)
			}
			for i := 0; i < 20; i++ {
				child, err := testReaper.Start(exec.Command("true"))
				if err != nil {
					t.Fatalf("Start: %v", err)
				}
				// SIGCONT changes nothing for a running child, so every
				// signal before, during and after the exit must return
				// nil.
				for done := false; !done; {
					if err := child.Signal(unix.SIGCONT); err != nil {
						t.Fatalf("Signal to child %d: %v", child.Pid, err)
					}
					select {
					case <-child.Done:
						done = true
					default:
					}
				}
				if err := child.Signal(unix.SIGCONT); err != nil {
					t.Errorf("Signal after Done = %v, want nil", err)
				}
			}
		})
	}
}

func TestSignalUnsupportedType(t *testing.T) {
	child, err := testReaper.Start(exec.Command("true"))
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	waitStatus(t, child)
	if err := child.Signal(otherSignal{}); err == nil {
		t.Errorf("Signal with a signal that is not a syscall.Signal succeeded, want an error")
	}
}

type otherSignal struct{}

func (otherSignal) String() string { return "other" }
func (otherSignal) Signal()        {}

// TestStartFallsBackOnEINVAL makes clone reject CLONE_PIDFD, which the
// kernel does when CLONE_PARENT_SETTID is set too, and checks that Start
// forks again without it and keeps that choice.
func TestStartFallsBackOnEINVAL(t *testing.T) {
	saved := pidfdState.Swap(pidfdUnknown)
	t.Cleanup(func() { pidfdState.Store(saved) })

	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_PARENT_SETTID}
	child, err := testReaper.Start(cmd)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if holdsPidfd(child) {
		t.Errorf("child holds a pidfd, want none after EINVAL")
	}
	if got := pidfdState.Load(); got != pidfdMissing {
		t.Errorf("pidfdState = %d after the fallback, want pidfdMissing (%d)", got, pidfdMissing)
	}
	if err := child.Signal(unix.SIGTERM); err != nil {
		t.Errorf("Signal by pid = %v, want nil", err)
	}
	if st := waitStatus(t, child); st.ExitCode() != 128+int(unix.SIGTERM) {
		t.Errorf("child: %s, want killed by SIGTERM", st)
	}
	if cmd.SysProcAttr.PidFD != nil {
		t.Errorf("Start set the caller's SysProcAttr.PidFD")
	}
}

// TestStartClosesDescriptors checks that neither the pidfds nor the
// /dev/null files opened for stdio outlive a child, on success and on
// exec failure.
func TestStartClosesDescriptors(t *testing.T) {
	start := func() {
		child, err := testReaper.Start(exec.Command("true"))
		if err != nil {
			t.Fatalf("Start: %v", err)
		}
		waitStatus(t, child)
		if _, err := testReaper.Start(exec.Command("/nonexistent/program")); err == nil {
			t.Fatalf("Start of a missing program succeeded")
		}
	}
	// The first start may open descriptors that the process keeps, such as
	// the runtime's epoll instance.
	start()

	before := openFDs(t)
	for i := 0; i < 100; i++ {
		start()
	}
	if after := openFDs(t); after != before {
		t.Errorf("%d descriptors open after 100 starts, %d before", after, before)
	}
}
