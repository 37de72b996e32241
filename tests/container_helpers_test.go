package tests

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Helpers of the container init, exec-as-user, runc and Docker tests. Every
// name starts with "container" so that it cannot clash with the helpers of
// the emperor tests in the same package.

// containerRunTimeout bounds one short command of these tests, such as
// fief -- sh -c 'exit 3'. It is a generous bound for a loaded machine.
const containerRunTimeout = 30 * time.Second

// containerFief fails the test unless it runs as root and fief was built,
// and returns the fief binary that TestMain built.
func containerFief(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("this test needs root; euid is %d: run go test as root", os.Geteuid())
	}
	if buildErr != nil {
		t.Fatalf("building fief failed: %v", buildErr)
	}
	return fiefBinary
}

// containerRequireProgram fails the test when program is not in PATH and
// returns its path. pkg is the Debian package that installs it.
func containerRequireProgram(t *testing.T, program, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(program)
	if err != nil {
		t.Fatalf("%s is required but not found in PATH (%v); install the Debian package %s (make deps installs the test packages)", program, err, pkg)
	}
	return path
}

// containerRequireFile fails the test unless path exists, and returns path.
// pkg is the Debian package that installs it.
func containerRequireFile(t *testing.T, path, pkg string) string {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s is required: %v; install the Debian package %s (make deps installs the test packages)", path, err, pkg)
	}
	return path
}

// containerTempDir creates a directory of mode 0755 for the test. On cleanup
// it detaches every mount left below it and removes it. A test that must
// leave no mount checks containerMountsBelow itself.
func containerTempDir(t *testing.T) string {
	t.Helper()
	name := strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())
	dir, err := os.MkdirTemp("", "fief-"+name+"-")
	if err != nil {
		t.Fatalf("creating a temporary directory: %v", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("chmod 0755 %s: %v", dir, err)
	}
	t.Cleanup(func() {
		for _, mountPoint := range containerMountsBelow(dir) {
			t.Logf("unmounting %s, left mounted below the test directory", mountPoint)
			if err := syscall.Unmount(mountPoint, syscall.MNT_DETACH); err != nil {
				t.Errorf("unmounting %s: %v", mountPoint, err)
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing %s: %v", dir, err)
		}
	})
	return dir
}

// containerMountsBelow returns the mount points below dir in the test
// process's mount table, deepest first.
func containerMountsBelow(dir string) []string {
	lines, err := mountLines("self", dir+"/")
	if err != nil {
		return nil
	}
	var points []string
	for _, line := range lines {
		// Field 4 is the mount point, with spaces escaped as \040.
		point := mountinfoField(line, 4)
		if strings.HasPrefix(point, dir+"/") {
			points = append(points, point)
		}
	}
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	return points
}

// containerWriteFile writes content to path with mode, creating the parent
// directories.
func containerWriteFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatalf("creating %s: %v", filepath.Dir(path), err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatalf("writing %s: %v", path, err)
	}
	// WriteFile applies the umask, so set the mode again.
	if err := os.Chmod(path, mode); err != nil {
		t.Fatalf("chmod %o %s: %v", mode, path, err)
	}
}

// containerResult is how a command run by containerRun ended.
type containerResult struct {
	code int // exit code, or 128+N for death by signal N
	// signaled is true when the process itself was killed by a signal
	// instead of exiting.
	signaled bool
	stdout   string
	stderr   string
	took     time.Duration
}

// containerExitCode returns the exit code a shell would report for state:
// the code of a normal exit, or 128+N for death by signal N.
func containerExitCode(state *os.ProcessState) int {
	if status, ok := state.Sys().(syscall.WaitStatus); ok && status.Signaled() {
		return 128 + int(status.Signal())
	}
	return state.ExitCode()
}

// containerExec runs cmd to completion and returns how it ended. A command
// still running after containerRunTimeout is killed with every process
// below it, and an error is returned. It is safe to call from goroutines.
func containerExec(cmd *exec.Cmd) (containerResult, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	// A process left behind by cmd may hold the output pipes open; do not
	// wait for it longer than this after cmd exits.
	cmd.WaitDelay = 2 * time.Second

	start := time.Now()
	if err := containerStartCommand(cmd); err != nil {
		return containerResult{}, fmt.Errorf("starting %s: %w", strings.Join(cmd.Args, " "), err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	var err error
	select {
	case err = <-done:
	case <-time.After(containerRunTimeout):
		containerKillTree(cmd.Process.Pid)
		<-done
		return containerResult{}, fmt.Errorf("%s did not exit within %v\nstdout:\n%s\nstderr:\n%s",
			strings.Join(cmd.Args, " "), containerRunTimeout, stdout.String(), stderr.String())
	}
	took := time.Since(start)

	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) && !errors.Is(err, exec.ErrWaitDelay) {
		return containerResult{}, fmt.Errorf("running %s: %w", strings.Join(cmd.Args, " "), err)
	}
	status, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	return containerResult{
		code:     containerExitCode(cmd.ProcessState),
		signaled: status.Signaled(),
		stdout:   stdout.String(),
		stderr:   stderr.String(),
		took:     took,
	}, nil
}

// containerStartCommand starts cmd, retrying while its program is busy
// (ETXTBSY). A program the test has just written can be busy for a moment:
// a child that another goroutine forked meanwhile holds the written file
// open until it executes its own program.
func containerStartCommand(cmd *exec.Cmd) error {
	for attempt := 0; ; attempt++ {
		err := cmd.Start()
		if !errors.Is(err, syscall.ETXTBSY) || attempt == 50 {
			return err
		}
		time.Sleep(10 * time.Millisecond)
		// An exec.Cmd keeps state from a failed Start: reset it to a
		// fresh one with the same settings.
		*cmd = exec.Cmd{
			Path: cmd.Path, Args: cmd.Args, Env: cmd.Env, Dir: cmd.Dir,
			Stdin: cmd.Stdin, Stdout: cmd.Stdout, Stderr: cmd.Stderr,
			ExtraFiles: cmd.ExtraFiles, SysProcAttr: cmd.SysProcAttr, WaitDelay: cmd.WaitDelay,
		}
	}
}

// containerRun is containerExec that fails the test when cmd cannot be run
// or times out.
func containerRun(t *testing.T, cmd *exec.Cmd) containerResult {
	t.Helper()
	result, err := containerExec(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return result
}

// containerProc is one process read from /proc.
type containerProc struct {
	pid, ppid int
	state     byte // R, S, D, Z, ...
	argv      []string
}

func (p containerProc) String() string {
	return fmt.Sprintf("pid %d (parent %d, state %c): %s", p.pid, p.ppid, p.state, strings.Join(p.argv, " "))
}

// containerReadProc reads the parent, state and command line of pid. It
// reports false when the process is gone. Zombies have an empty command
// line.
func containerReadProc(pid int) (containerProc, bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return containerProc{}, false
	}
	// The command name in parentheses may contain spaces and parentheses,
	// so the fields start after the last ')'.
	end := bytes.LastIndexByte(data, ')')
	if end < 0 {
		return containerProc{}, false
	}
	fields := strings.Fields(string(data[end+1:]))
	if len(fields) < 2 {
		return containerProc{}, false
	}
	ppid, err := strconv.Atoi(fields[1])
	if err != nil {
		return containerProc{}, false
	}
	p := containerProc{pid: pid, ppid: ppid, state: fields[0][0]}
	if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && len(cmdline) > 0 {
		p.argv = strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	}
	return p, true
}

// containerProcs returns every process in /proc.
func containerProcs() []containerProc {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var procs []containerProc
	for _, entry := range entries {
		pid, err := strconv.Atoi(entry.Name())
		if err != nil {
			continue
		}
		if p, ok := containerReadProc(pid); ok {
			procs = append(procs, p)
		}
	}
	return procs
}

// containerChildren returns the processes whose parent is pid, zombies
// included.
func containerChildren(pid int) []containerProc {
	var children []containerProc
	for _, p := range containerProcs() {
		if p.ppid == pid {
			children = append(children, p)
		}
	}
	return children
}

// containerDescendants returns every process below pid, zombies included.
func containerDescendants(pid int) []containerProc {
	byParent := map[int][]containerProc{}
	for _, p := range containerProcs() {
		byParent[p.ppid] = append(byParent[p.ppid], p)
	}
	var found []containerProc
	queue := []int{pid}
	for len(queue) > 0 {
		next := queue[0]
		queue = queue[1:]
		for _, child := range byParent[next] {
			found = append(found, child)
			queue = append(queue, child.pid)
		}
	}
	return found
}

// containerProgramPids returns the live descendants of pid whose program
// (the base name of argv[0]) is name.
func containerProgramPids(pid int, name string) []int {
	var pids []int
	for _, p := range containerDescendants(pid) {
		if p.state != 'Z' && len(p.argv) > 0 && filepath.Base(p.argv[0]) == name {
			pids = append(pids, p.pid)
		}
	}
	return pids
}

// containerKillTree sends SIGKILL to pid and every process below it, by pid.
// It is the last resort of a test that failed with processes running.
func containerKillTree(pid int) {
	for _, p := range containerDescendants(pid) {
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// containerFormatProcs lists processes one per line for failure messages.
func containerFormatProcs(procs []containerProc) string {
	var b strings.Builder
	for _, p := range procs {
		fmt.Fprintf(&b, "  %s\n", p)
	}
	return b.String()
}

// containerProcess is a long-running command of a test, with stdout and
// stderr in a file.
type containerProcess struct {
	t          *testing.T
	cmd        *exec.Cmd
	outputPath string
	exited     chan struct{}
	// state and end are set before exited is closed.
	state *os.ProcessState
	end   time.Time
}

// containerStart starts cmd with its output in outputPath. On cleanup a
// process still running is killed with every process below it.
func containerStart(t *testing.T, outputPath string, cmd *exec.Cmd) *containerProcess {
	t.Helper()
	output, err := os.OpenFile(outputPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("creating %s: %v", outputPath, err)
	}
	defer output.Close()
	cmd.Stdout = output
	cmd.Stderr = output
	if err := containerStartCommand(cmd); err != nil {
		t.Fatalf("starting %s: %v", strings.Join(cmd.Args, " "), err)
	}

	p := &containerProcess{t: t, cmd: cmd, outputPath: outputPath, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		p.state = cmd.ProcessState
		p.end = time.Now()
		close(p.exited)
	}()
	t.Cleanup(func() {
		if p.running() {
			containerKillTree(p.pid())
			<-p.exited
		}
	})
	return p
}

func (p *containerProcess) pid() int {
	return p.cmd.Process.Pid
}

func (p *containerProcess) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// wait waits up to timeout for the process to exit and returns its exit
// code; ok is false when it is still running.
func (p *containerProcess) wait(timeout time.Duration) (code int, ok bool) {
	select {
	case <-p.exited:
		return containerExitCode(p.state), true
	case <-time.After(timeout):
		return 0, false
	}
}

// output returns what the process wrote so far.
func (p *containerProcess) output() string {
	data, err := os.ReadFile(p.outputPath)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", p.outputPath, err)
	}
	return string(data)
}

// describe returns the command line and its output for failure messages.
func (p *containerProcess) describe() string {
	return fmt.Sprintf("--- output of %s ---\n%s---", strings.Join(p.cmd.Args, " "), p.output())
}

// containerPoll calls check every few milliseconds until it reports true or
// timeout passes, and returns whether it did.
func containerPoll(timeout time.Duration, check func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if check() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}
