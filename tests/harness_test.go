package tests

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fiefBinary is the fief binary that TestMain builds once for the package;
// buildErr is why the build failed, and every test reports it.
var (
	fiefBinary string
	buildErr   error
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	binDir, err := os.MkdirTemp("", "fief-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "creating a directory for the fief binary: %v\n", err)
		return 1
	}
	defer os.RemoveAll(binDir)

	fiefBinary = filepath.Join(binDir, "fief")
	buildErr = buildFief(fiefBinary)
	return m.Run()
}

// buildFief builds the module that contains this file into a static binary
// at output.
func buildFief(output string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("the go command is not in PATH: %w", err)
	}
	cmd := exec.Command(goTool, "build", "-o", output, ".")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("CGO_ENABLED=0 go build -o %s . in %s failed: %w\n%s", output, root, err, out)
	}
	return nil
}

// moduleRoot returns the parent of the directory that contains this file,
// and checks that it is the fief module.
func moduleRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	var dir string
	if ok && filepath.IsAbs(file) {
		dir = filepath.Dir(file)
	} else {
		// Built with -trimpath: go test runs in the package directory.
		wd, err := os.Getwd()
		if err != nil {
			return "", fmt.Errorf("finding the test directory: %w", err)
		}
		dir = wd
	}
	root := filepath.Dir(dir)
	data, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		return "", fmt.Errorf("reading the go.mod of the fief module: %w", err)
	}
	if !bytes.HasPrefix(data, []byte("module fief\n")) {
		return "", fmt.Errorf("%s/go.mod does not declare module fief", root)
	}
	return root, nil
}

// Timeouts of the helpers. They are generous bounds for a loaded CI machine,
// not the times fief is expected to take.
const (
	serveTimeout = 15 * time.Second
	logTimeout   = 15 * time.Second
	// exitTimeout bounds a stop: stop-timeout (2 s in the test vassals)
	// plus the atexit steps and the emperor's own shutdown.
	exitTimeout = 10 * time.Second
	pollPeriod  = 10 * time.Millisecond
)

// testEnv is one test's private directory and the user it runs vassals as.
type testEnv struct {
	t *testing.T
	// dir is unique to the test, mode 0755 so that nobody can traverse
	// it. Every process and mount of the test names a path below it.
	dir string
	// vassalDir is dir/vassals, the emperor's directory.
	vassalDir string
	// nobody is the uid of the user nobody.
	nobody int
}

// newEnv checks that the test can run (root, /dev/fuse, fuse-zip, busybox,
// zip, the fief build) and creates the test's directory. A missing
// requirement fails the test, because CI runs as root with every package
// installed.
func newEnv(t *testing.T) *testEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("fief's integration tests need root for namespaces and mounts; euid is %d: run go test as root", os.Geteuid())
	}
	if buildErr != nil {
		t.Fatalf("building fief failed: %v", buildErr)
	}
	for _, program := range []string{"fuse-zip", "busybox", "zip"} {
		if _, err := exec.LookPath(program); err != nil {
			t.Fatalf("%s is required but not found in PATH (%v); run make deps to install the test packages", program, err)
		}
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("/dev/fuse is required: %v; load the fuse kernel module", err)
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("looking up the user nobody: %v", err)
	}
	uid, err := strconv.Atoi(nobody.Uid)
	if err != nil {
		t.Fatalf("invalid uid %q of user nobody: %v", nobody.Uid, err)
	}

	name := strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())
	dir, err := os.MkdirTemp("", "fief-"+name+"-")
	if err != nil {
		t.Fatalf("creating the test directory: %v", err)
	}
	e := &testEnv{t: t, dir: dir, vassalDir: filepath.Join(dir, "vassals"), nobody: uid}
	// Registered first, so it runs after every process cleanup.
	t.Cleanup(e.removeDir)

	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("chmod 0755 %s: %v", dir, err)
	}
	if err := os.Mkdir(e.vassalDir, 0o755); err != nil {
		t.Fatalf("creating the vassal directory: %v", err)
	}
	return e
}

// forSubtest returns the environment for subtest t: processes started
// through it fail and clean up in t, in the same directory.
func (e *testEnv) forSubtest(t *testing.T) *testEnv {
	sub := *e
	sub.t = t
	return &sub
}

// removeDir unmounts whatever the test left mounted below its directory on
// the host, which fails the test, and removes the directory.
func (e *testEnv) removeDir() {
	leaks, err := mountLines("self", e.dir+"/")
	if err != nil {
		e.t.Errorf("reading the host mount table: %v", err)
	}
	for _, line := range leaks {
		e.t.Errorf("a mount below the test directory was left on the host: %s", line)
		if mountPoint := mountinfoField(line, 4); mountPoint != "" {
			if err := syscall.Unmount(mountPoint, syscall.MNT_DETACH); err != nil {
				e.t.Errorf("unmounting %s: %v", mountPoint, err)
			}
		}
	}
	if err := os.RemoveAll(e.dir); err != nil {
		e.t.Errorf("removing the test directory: %v", err)
	}
}

// path returns a path below the test directory.
func (e *testEnv) path(elem ...string) string {
	return filepath.Join(append([]string{e.dir}, elem...)...)
}

// requireProgram fails the test when program is not in PATH and returns its
// path.
func (e *testEnv) requireProgram(program string) string {
	e.t.Helper()
	path, err := exec.LookPath(program)
	if err != nil {
		e.t.Fatalf("%s is required but not found in PATH (%v); run make deps to install the test packages", program, err)
	}
	return path
}

// zipApp is a zip archive with an index.html and the empty directory that
// fuse-zip mounts it on.
type zipApp struct {
	zip        string
	mountPoint string
	index      string // content of index.html
}

// newApp zips an index.html with the given content into dir/NAME.zip with
// the zip command, and creates dir/NAME owned by nobody as the mount point.
func (e *testEnv) newApp(name, index string) zipApp {
	e.t.Helper()
	source := e.path(name + "-src")
	if err := os.Mkdir(source, 0o755); err != nil {
		e.t.Fatalf("creating %s: %v", source, err)
	}
	if err := os.WriteFile(filepath.Join(source, "index.html"), []byte(index), 0o644); err != nil {
		e.t.Fatalf("writing index.html: %v", err)
	}
	archive := e.path(name + ".zip")
	cmd := exec.Command("zip", "-q", archive, "index.html")
	cmd.Dir = source
	if out, err := cmd.CombinedOutput(); err != nil {
		e.t.Fatalf("zip -q %s index.html failed: %v\n%s", archive, err, out)
	}
	if err := os.Chmod(archive, 0o644); err != nil {
		e.t.Fatalf("chmod 0644 %s: %v", archive, err)
	}

	mountPoint := e.path(name)
	if err := os.Mkdir(mountPoint, 0o755); err != nil {
		e.t.Fatalf("creating the mount point %s: %v", mountPoint, err)
	}
	if err := os.Chown(mountPoint, e.nobody, -1); err != nil {
		e.t.Fatalf("chown nobody %s: %v", mountPoint, err)
	}
	return zipApp{zip: archive, mountPoint: mountPoint, index: index}
}

// webVassal returns the tutorial's first vassal: fuse-zip mounts the app as
// nobody, busybox httpd serves it on 127.0.0.1:port, and the mount is
// checked. Line 7 is the mountpoint-check. extra lines are appended.
func webVassal(app zipApp, port int, extra ...string) string {
	lines := []string{
		"[uwsgi]",
		"uid = nobody",
		"if-not-reload =",
		fmt.Sprintf("exec-as-user = fuse-zip -r %s %s", app.zip, app.mountPoint),
		"endif =",
		fmt.Sprintf("exec = busybox httpd -f -p 127.0.0.1:%d -h %s", port, app.mountPoint),
		fmt.Sprintf("mountpoint-check = %s", app.mountPoint),
		"stop-timeout = 2s",
	}
	return strings.Join(append(lines, extra...), "\n") + "\n"
}

// webVassalCheckLine is the line of mountpoint-check in webVassal.
const webVassalCheckLine = 7

// writeVassal installs a vassal file atomically: it writes the content
// beside the vassal directory and renames it in, so the emperor never reads
// a partial file.
func (e *testEnv) writeVassal(name, content string) string {
	e.t.Helper()
	staging := e.path(".staging-" + name)
	if err := os.WriteFile(staging, []byte(content), 0o644); err != nil {
		e.t.Fatalf("writing %s: %v", staging, err)
	}
	target := filepath.Join(e.vassalDir, name)
	if err := os.Rename(staging, target); err != nil {
		e.t.Fatalf("renaming %s to %s: %v", staging, target, err)
	}
	return target
}

// writeVassalInPlace creates or rewrites a vassal file with os.WriteFile, as
// an editor or a shell redirection would.
func (e *testEnv) writeVassalInPlace(name, content string) string {
	e.t.Helper()
	target := filepath.Join(e.vassalDir, name)
	if err := os.WriteFile(target, []byte(content), 0o644); err != nil {
		e.t.Fatalf("writing %s: %v", target, err)
	}
	return target
}

var (
	portsMu sync.Mutex
	ports   = map[int]bool{}
)

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago and
// that no other test of this run got.
func freePort(t *testing.T) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 100 {
		listener, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listening on 127.0.0.1:0 to find a free port: %v", err)
		}
		port := listener.Addr().(*net.TCPAddr).Port
		listener.Close()
		if !ports[port] {
			ports[port] = true
			return port
		}
	}
	t.Fatalf("found no TCP port on 127.0.0.1 that this run has not used yet")
	return 0
}

// httpClient never uses a proxy, so requests to 127.0.0.1 stay on loopback.
var httpClient = &http.Client{
	Timeout: time.Second,
	Transport: &http.Transport{
		Proxy:             nil,
		DisableKeepAlives: true,
	},
}

// fetch gets http://127.0.0.1:PORT/index.html.
func fetch(port int) (status int, body string, err error) {
	resp, err := httpClient.Get(fmt.Sprintf("http://127.0.0.1:%d/index.html", port))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data), err
}

// serves reports whether port returns 200 with body want.
func serves(port int, want string) bool {
	status, body, err := fetch(port)
	return err == nil && status == http.StatusOK && body == want
}

// waitServes polls port until it returns 200 with body want and returns how
// long that took. The error describes the last response seen.
func waitServes(port int, want string, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	var last string
	for time.Since(start) < timeout {
		status, body, err := fetch(port)
		switch {
		case err != nil:
			last = err.Error()
		case status == http.StatusOK && body == want:
			return time.Since(start), nil
		default:
			last = fmt.Sprintf("status %d, body %q", status, body)
		}
		time.Sleep(pollPeriod)
	}
	return 0, fmt.Errorf("127.0.0.1:%d did not return 200 with body %q within %v; last response: %s", port, want, timeout, last)
}

// refusesConnections reports whether nothing listens on 127.0.0.1:port.
func refusesConnections(port int) bool {
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
	if err != nil {
		return errors.Is(err, syscall.ECONNREFUSED)
	}
	conn.Close()
	return false
}

// process is one process found in /proc.
type process struct {
	pid  int
	argv []string
}

func (p process) String() string {
	return fmt.Sprintf("pid %d: %s", p.pid, strings.Join(p.argv, " "))
}

// processesMentioning scans /proc/*/cmdline and returns the processes whose
// command line contains text, except the test process itself. Zombies have
// an empty command line and are never returned.
func processesMentioning(text string) []process {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var found []process
	for _, entry := range entries {
		pid, err := strconv.Atoi(entry.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", entry.Name(), "cmdline"))
		if err != nil || len(data) == 0 {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
		if strings.Contains(strings.Join(argv, " "), text) {
			found = append(found, process{pid: pid, argv: argv})
		}
	}
	return found
}

// processes returns the processes that name a path below the test
// directory, except the pids in exclude.
func (e *testEnv) processes(exclude ...int) []process {
	var found []process
	for _, p := range processesMentioning(e.dir + "/") {
		if !slices.Contains(exclude, p.pid) {
			found = append(found, p)
		}
	}
	return found
}

// fuseZipPids returns the pids of the fuse-zip daemons of the test.
func (e *testEnv) fuseZipPids() []int {
	var pids []int
	for _, p := range e.processes() {
		if filepath.Base(p.argv[0]) == "fuse-zip" {
			pids = append(pids, p.pid)
		}
	}
	return pids
}

// httpdPids returns the pids of the listening busybox httpd servers of the
// test. busybox httpd forks a child with the same command line for each
// connection; those children are left out.
func (e *testEnv) httpdPids() []int {
	var all []int
	for _, p := range e.processes() {
		if len(p.argv) > 1 && filepath.Base(p.argv[0]) == "busybox" && p.argv[1] == "httpd" {
			all = append(all, p.pid)
		}
	}
	var listeners []int
	for _, pid := range all {
		if parent, err := parentPid(pid); err == nil && !slices.Contains(all, parent) {
			listeners = append(listeners, pid)
		}
	}
	return listeners
}

// parentPid returns the parent pid of a process from /proc/PID/status.
func parentPid(pid int) (int, error) {
	return statusField(pid, "PPid:")
}

// realUID returns the real uid of a process from /proc/PID/status.
func realUID(pid int) (int, error) {
	return statusField(pid, "Uid:")
}

// statusField returns the first number of a line of /proc/PID/status.
func statusField(pid int, name string) (int, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(data)) {
		if fields := strings.Fields(line); len(fields) > 1 && fields[0] == name {
			return strconv.Atoi(fields[1])
		}
	}
	return 0, fmt.Errorf("no %s line in /proc/%d/status", name, pid)
}

// waitNoProcesses polls until no process names the test directory, except
// the pids in exclude, and returns how long that took and what was left at
// the deadline.
func (e *testEnv) waitNoProcesses(timeout time.Duration, exclude ...int) (time.Duration, []process) {
	start := time.Now()
	for {
		left := e.processes(exclude...)
		if len(left) == 0 {
			return time.Since(start), nil
		}
		if time.Since(start) >= timeout {
			return time.Since(start), left
		}
		time.Sleep(pollPeriod)
	}
}

// namespace returns the namespace link of a process, such as "mnt:[4026531841]".
func namespace(pid int, kind string) string {
	link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, kind))
	if err != nil {
		return "unreadable: " + err.Error()
	}
	return link
}

// mountLines reads /proc/PID/mountinfo (pid "self" for the test process)
// and returns the lines that contain text.
func mountLines(pid, text string) ([]string, error) {
	data, err := os.ReadFile(filepath.Join("/proc", pid, "mountinfo"))
	if err != nil {
		return nil, err
	}
	var lines []string
	for line := range strings.Lines(string(data)) {
		if strings.Contains(line, text) {
			lines = append(lines, strings.TrimSuffix(line, "\n"))
		}
	}
	return lines, nil
}

// mountinfoField returns the field at index of a mountinfo line (4 is the mount
// point, 5 the mount options), or "" when the line is shorter.
func mountinfoField(line string, index int) string {
	fields := strings.Fields(line)
	if index >= len(fields) {
		return ""
	}
	return fields[index]
}

// mountsInAnyNamespace reads the mount table of every mount namespace that
// some process is in and returns the lines that contain text, each prefixed
// with the namespace and a pid in it.
func mountsInAnyNamespace(text string) []string {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return []string{"reading /proc: " + err.Error()}
	}
	seen := map[string]bool{}
	var found []string
	for _, entry := range entries {
		pid, err := strconv.Atoi(entry.Name())
		if err != nil {
			continue
		}
		ns := namespace(pid, "mnt")
		if strings.HasPrefix(ns, "unreadable") || seen[ns] {
			continue
		}
		seen[ns] = true
		lines, err := mountLines(entry.Name(), text)
		if err != nil {
			continue
		}
		for _, line := range lines {
			found = append(found, fmt.Sprintf("%s (pid %d): %s", ns, pid, line))
		}
	}
	return found
}

// mountSampler reads one process's mount table every few milliseconds in
// the background and records every line that names the test directory.
type mountSampler struct {
	stop    chan struct{}
	done    chan struct{}
	samples int
	leaks   []string
}

// sampleMounts starts sampling /proc/PID/mountinfo; pid "self" samples the
// test process, whose mount namespace is the host's. Sampling ends when the
// process is gone or finish is called.
func (e *testEnv) sampleMounts(pid string) *mountSampler {
	s := &mountSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		ticker := time.NewTicker(5 * time.Millisecond)
		defer ticker.Stop()
		for {
			lines, err := mountLines(pid, e.dir+"/")
			if err != nil {
				return
			}
			s.samples++
			for _, line := range lines {
				if !slices.Contains(s.leaks, line) {
					s.leaks = append(s.leaks, line)
				}
			}
			select {
			case <-s.stop:
				return
			case <-ticker.C:
			}
		}
	}()
	e.t.Cleanup(s.finishOnce)
	return s
}

func (s *mountSampler) finishOnce() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

// finish stops sampling and returns the number of samples taken and the
// lines that named the test directory.
func (s *mountSampler) finish() (int, []string) {
	s.finishOnce()
	return s.samples, s.leaks
}

// logRecord is one log/slog text line.
type logRecord struct {
	time  time.Time
	level string
	msg   string
	attrs map[string]string
	raw   string
}

// attr returns the value of the attribute key, "" when absent.
func (r logRecord) attr(key string) string {
	return r.attrs[key]
}

// parseLogLine parses a log/slog text line: key=value pairs, where a value
// with spaces or quotes is a Go quoted string. Lines that do not start with
// time= (program output) are rejected.
func parseLogLine(line string) (logRecord, bool) {
	if !strings.HasPrefix(line, "time=") {
		return logRecord{}, false
	}
	r := logRecord{attrs: map[string]string{}, raw: line}
	rest := line
	for rest != "" {
		key, after, ok := strings.Cut(rest, "=")
		if !ok {
			return logRecord{}, false
		}
		var value string
		if strings.HasPrefix(after, `"`) {
			quoted, err := strconv.QuotedPrefix(after)
			if err != nil {
				return logRecord{}, false
			}
			value, _ = strconv.Unquote(quoted)
			after = after[len(quoted):]
		} else {
			value, after, _ = strings.Cut(after, " ")
			after = " " + after
		}
		r.attrs[key] = value
		rest = strings.TrimLeft(after, " ")
	}

	t, err := time.Parse(time.RFC3339Nano, r.attrs["time"])
	if err != nil {
		return logRecord{}, false
	}
	r.time, r.level, r.msg = t, r.attrs["level"], r.attrs["msg"]
	return r, true
}

// matchLog returns a predicate for records with message msg and the given
// attribute pairs, such as "vassal", "web.ini".
func matchLog(msg string, attrPairs ...string) func(logRecord) bool {
	return func(r logRecord) bool {
		if r.msg != msg {
			return false
		}
		for i := 0; i+1 < len(attrPairs); i += 2 {
			if r.attrs[attrPairs[i]] != attrPairs[i+1] {
				return false
			}
		}
		return true
	}
}

// fiefProcess is a fief command that the test started, in its own process
// group, with stdout and stderr going to a log file.
type fiefProcess struct {
	e       *testEnv
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	// state is set before exited is closed.
	state *os.ProcessState
}

// startEmperor runs fief emperor on the test's vassal directory.
func (e *testEnv) startEmperor() *fiefProcess {
	e.t.Helper()
	return e.start("emperor", fiefBinary, "emperor", e.vassalDir)
}

// start runs argv with its output in dir/NAME.log. On cleanup the process
// gets SIGTERM, then SIGKILL, and the test fails when a process or a mount
// of the test directory is left.
func (e *testEnv) start(name string, argv ...string) *fiefProcess {
	e.t.Helper()
	logPath := e.path(name + ".log")
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatalf("creating %s: %v", logPath, err)
	}
	defer logFile.Close()

	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("starting %s: %v", strings.Join(argv, " "), err)
	}

	p := &fiefProcess{e: e, name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		p.state = cmd.ProcessState
		close(p.exited)
	}()
	e.t.Cleanup(p.cleanUp)
	return p
}

func (p *fiefProcess) pid() int {
	return p.cmd.Process.Pid
}

// signal sends sig to the process by pid.
func (p *fiefProcess) signal(sig syscall.Signal) {
	p.e.t.Helper()
	if err := syscall.Kill(p.pid(), sig); err != nil {
		p.e.t.Fatalf("sending %v to %s (pid %d): %v", sig, p.name, p.pid(), err)
	}
}

// waitExit waits up to timeout for the process to exit and returns its state,
// or nil when it is still running.
func (p *fiefProcess) waitExit(timeout time.Duration) *os.ProcessState {
	select {
	case <-p.exited:
		return p.state
	case <-time.After(timeout):
		return nil
	}
}

// running reports whether the process has not exited.
func (p *fiefProcess) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// cleanUp stops the process by pid and checks that no process of the test
// is left. removeDir checks the mounts.
func (p *fiefProcess) cleanUp() {
	t := p.e.t
	if p.running() {
		_ = syscall.Kill(p.pid(), syscall.SIGTERM)
		if p.waitExit(exitTimeout+5*time.Second) == nil {
			t.Errorf("%s (pid %d) did not exit within %v of SIGTERM; sending SIGKILL\n%s", p.name, p.pid(), exitTimeout+5*time.Second, p.tail())
			_ = syscall.Kill(p.pid(), syscall.SIGKILL)
			<-p.exited
		}
	}

	if _, left := p.e.waitNoProcesses(5 * time.Second); len(left) > 0 {
		t.Errorf("processes of the test were left after %s exited:\n%s\n%s", p.name, formatProcesses(left), p.tail())
		for _, leftover := range left {
			_ = syscall.Kill(leftover.pid, syscall.SIGKILL)
		}
	}
}

func formatProcesses(list []process) string {
	var b strings.Builder
	for _, p := range list {
		fmt.Fprintf(&b, "  %s\n    threads: %s\n", p, threadStates(p.pid))
	}
	return b.String()
}

// threadStates describes each thread of a process by its state letter from
// /proc/PID/task/TID/stat and the kernel function it waits in, from wchan,
// such as "123 S futex_do_wait, 124 D request_wait_answer". A process that
// outlives a SIGKILL usually has a thread in state D.
func threadStates(pid int) string {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return fmt.Sprintf("(reading its tasks: %v)", err)
	}
	var states []string
	for _, task := range tasks {
		dir := fmt.Sprintf("/proc/%d/task/%s", pid, task.Name())
		state := "?"
		if stat, err := os.ReadFile(dir + "/stat"); err == nil {
			// The state follows the command name, which ends with ") ".
			if i := strings.LastIndex(string(stat), ") "); i >= 0 && i+2 < len(stat) {
				state = string(stat[i+2])
			}
		}
		wchan, _ := os.ReadFile(dir + "/wchan")
		states = append(states, fmt.Sprintf("%s %s %s", task.Name(), state, wchan))
	}
	return strings.Join(states, ", ")
}

// log returns the whole log of the process.
func (p *fiefProcess) log() string {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", p.logPath, err)
	}
	return string(data)
}

// tail returns the last lines of the log, for failure messages.
func (p *fiefProcess) tail() string {
	lines := strings.Split(strings.TrimRight(p.log(), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return fmt.Sprintf("--- last lines of the %s log (%s) ---\n%s\n---", p.name, p.logPath, strings.Join(lines, "\n"))
}

// records returns the parsed log lines in order.
func (p *fiefProcess) records() []logRecord {
	var records []logRecord
	scanner := bufio.NewScanner(strings.NewReader(p.log()))
	scanner.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for scanner.Scan() {
		if r, ok := parseLogLine(scanner.Text()); ok {
			records = append(records, r)
		}
	}
	return records
}

// find returns the log records that match.
func (p *fiefProcess) find(match func(logRecord) bool) []logRecord {
	var found []logRecord
	for _, r := range p.records() {
		if match(r) {
			found = append(found, r)
		}
	}
	return found
}

// waitLog waits until the log has count records that match and returns
// them; it fails the test with the log tail after logTimeout.
func (p *fiefProcess) waitLog(count int, what string, match func(logRecord) bool) []logRecord {
	p.e.t.Helper()
	deadline := time.Now().Add(logTimeout)
	for {
		found := p.find(match)
		if len(found) >= count {
			return found
		}
		if time.Now().After(deadline) {
			p.e.t.Fatalf("expected %d log line(s) %s within %v, found %d\n%s", count, what, logTimeout, len(found), p.tail())
		}
		time.Sleep(pollPeriod)
	}
}

// waitLogOnce waits for the first record that matches.
func (p *fiefProcess) waitLogOnce(what string, match func(logRecord) bool) logRecord {
	p.e.t.Helper()
	return p.waitLog(1, what, match)[0]
}

// waitVassalStarted waits until the emperor has started the vassal count
// times and returns the pid of the latest vassal init.
func (p *fiefProcess) waitVassalStarted(vassal string, count int) int {
	p.e.t.Helper()
	found := p.waitLog(count, fmt.Sprintf("msg=%q vassal=%s", "vassal started", vassal), matchLog("vassal started", "vassal", vassal))
	pid, err := strconv.Atoi(found[len(found)-1].attr("pid"))
	if err != nil || pid <= 0 {
		p.e.t.Fatalf("the vassal started line has no valid pid: %s", found[len(found)-1].raw)
	}
	return pid
}

// mustServe waits until port returns 200 with body want and fails the test
// with the log tail otherwise.
func (p *fiefProcess) mustServe(port int, want string) time.Duration {
	p.e.t.Helper()
	took, err := waitServes(port, want, serveTimeout)
	if err != nil {
		p.e.t.Fatalf("%v\n%s", err, p.tail())
	}
	return took
}
