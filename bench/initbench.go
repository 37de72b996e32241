package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Metric keys of the container init and exec-as-user benchmarks. Times are
// seconds and memory is bytes, as in the emperor benchmark.
const (
	metricOrphanTotal = "orphans-total" // init started → init exited, orphan runs
	metricOrphanReap  = "orphans-reap"  // spawner exited → last orphan reaped
	metricSignal      = "signal"        // SIGUSR1 sent to the init → seen by the child
	metricExit        = "exit"          // child's last timestamp → init reaped
	metricInitRSS     = "init-rss"      // the init's VmRSS while the child runs
	metricInitAnon    = "init-rss-anon" // RssAnon of the same sample
	metricInitFile    = "init-rss-file" // RssFile of the same sample
	metricInitPSS     = "init-pss"      // PSS of the same sample
	metricExecTime    = "exec"          // start → exit of an exec-as-user command
)

// Time limits of one container measurement.
const (
	orphanTimeout = 120 * time.Second
	readyTimeout  = 10 * time.Second
	signalTimeout = 2 * time.Second
	exitTimeout   = 10 * time.Second
)

// initSide is one container init under test.
type initSide struct {
	key    string
	title  string
	prefix []string // the init's argv up to and including "--"
	result *sideResult
	log    *os.File // stderr of every run of this init
}

// execSide is one way to run /bin/true as user nobody.
type execSide struct {
	key    string
	title  string
	argv   []string
	result *sideResult
	log    *os.File
}

// initBench holds the state of the container init and exec-as-user
// benchmarks: a temporary directory with the child program (bench/initchild)
// and the logs, and every process it started that is still running.
type initBench struct {
	cfg     *config
	dir     string
	child   string // path of the initchild binary
	env     []string
	null    *os.File
	inits   []*initSide
	execs   []*execSide
	running map[int]*initProcess
}

// newInitBench creates the temporary directory and builds bench/initchild
// into it.
func newInitBench(cfg *config) (*initBench, error) {
	dir, err := os.MkdirTemp("", "fief-bench-init-")
	if err != nil {
		return nil, fmt.Errorf("creating the temporary directory: %w", err)
	}
	if resolved, err := filepath.EvalSymlinks(dir); err == nil {
		dir = resolved
	}
	b := &initBench{cfg: cfg, dir: dir, child: filepath.Join(dir, "initchild"), running: make(map[int]*initProcess)}

	// GOMAXPROCS in the harness's environment would override fief's
	// default of one P, which is part of what is measured.
	for _, entry := range os.Environ() {
		if !strings.HasPrefix(entry, "GOMAXPROCS=") {
			b.env = append(b.env, entry)
		}
	}
	if b.null, err = os.OpenFile(os.DevNull, os.O_RDWR, 0); err != nil {
		return b, err
	}
	if err := b.buildChild(); err != nil {
		return b, err
	}

	b.inits = []*initSide{
		{key: "tini", title: "tini", prefix: []string{cfg.tiniPath, "--"}},
		{key: "fief", title: "fief --", prefix: []string{cfg.fiefPath, "--"}},
	}
	for _, s := range b.inits {
		s.result = newSideResult(&side{key: s.key, title: s.title})
		if s.log, err = os.Create(filepath.Join(dir, "init-"+s.key+".log")); err != nil {
			return b, err
		}
	}
	b.execs = []*execSide{
		{key: "true", title: "/bin/true alone", argv: []string{"/bin/true"}},
		{key: "gosu", title: "gosu", argv: []string{cfg.gosuPath, "nobody", "/bin/true"}},
		{key: "fief", title: "fief exec-as-user", argv: []string{cfg.fiefPath, "exec-as-user", "nobody", "/bin/true"}},
	}
	for _, s := range b.execs {
		s.result = newSideResult(&side{key: s.key, title: s.title})
		if s.log, err = os.Create(filepath.Join(dir, "exec-"+s.key+".log")); err != nil {
			return b, err
		}
	}
	return b, nil
}

// buildChild compiles bench/initchild as a static binary, as fief is built.
func (b *initBench) buildChild() error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.Command(goTool, "build", "-trimpath", "-ldflags", "-s -w", "-o", b.child, "fief/bench/initchild")
	cmd.Env = append(slices.Clone(b.env), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building bench/initchild with %s failed: %v\n%s", goTool, err, out)
	}
	return nil
}

// monotonic returns CLOCK_MONOTONIC in nanoseconds, the clock that
// bench/initchild writes its timestamps with.
func monotonic() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err)
	}
	return ts.Nano()
}

// initProcess is an init started by the harness as pid 1 of a new pid
// namespace.
type initProcess struct {
	pid     int
	process *os.Process
	bench   *initBench
}

// exitStatus is the wait status of an init and the time its parent, the
// harness, reaped it.
type exitStatus struct {
	status   unix.WaitStatus
	reapedAt int64 // CLOCK_MONOTONIC, nanoseconds
}

func (e exitStatus) String() string {
	switch {
	case e.status.Exited():
		return fmt.Sprintf("exit status %d", e.status.ExitStatus())
	case e.status.Signaled():
		return "killed by signal " + unix.SignalName(e.status.Signal())
	}
	return fmt.Sprintf("wait status %#x", uint32(e.status))
}

// startInit runs the side's init with initchild and args as its command, as
// pid 1 of a new pid namespace, the way `unshare --pid --fork` would. The
// harness itself is the parent, so it reaps the init without an unshare
// process in between. stdin and stdout go to the init, which passes them on
// to the child.
func (b *initBench) startInit(s *initSide, args []string, stdin, stdout *os.File) (*initProcess, error) {
	argv := append(slices.Clone(s.prefix), b.child)
	argv = append(argv, args...)
	process, err := os.StartProcess(argv[0], argv, &os.ProcAttr{
		Env:   b.env,
		Files: []*os.File{stdin, stdout, s.log},
		Sys: &syscall.SysProcAttr{
			Cloneflags: syscall.CLONE_NEWPID,
			// Its own process group keeps a Ctrl-C on the terminal away
			// from the init. The harness stops it by pid.
			Setpgid:   true,
			Pdeathsig: syscall.SIGKILL,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", strings.Join(argv, " "), err)
	}
	p := &initProcess{pid: process.Pid, process: process, bench: b}
	b.running[p.pid] = p
	return p, nil
}

// wait reaps the init with wait4 and reads the clock right after it
// returns. After timeout it sends SIGKILL, which also ends every process of
// the init's pid namespace, and returns an error.
func (p *initProcess) wait(timeout time.Duration) (exitStatus, error) {
	done := make(chan exitStatus, 1)
	go func() {
		var status unix.WaitStatus
		for {
			_, err := unix.Wait4(p.pid, &status, 0, nil)
			if !errors.Is(err, unix.EINTR) {
				break
			}
		}
		done <- exitStatus{status: status, reapedAt: monotonic()}
	}()

	var result exitStatus
	var err error
	select {
	case result = <-done:
	case <-time.After(timeout):
		_ = unix.Kill(p.pid, unix.SIGKILL)
		result = <-done
		err = fmt.Errorf("the init (pid %d) did not exit within %v; sent SIGKILL", p.pid, timeout)
	}
	delete(p.bench.running, p.pid)
	_ = p.process.Release()
	return result, err
}

// kill ends an init that is still running, for the error paths.
func (p *initProcess) kill() {
	if _, ok := p.bench.running[p.pid]; !ok {
		return
	}
	_ = unix.Kill(p.pid, unix.SIGKILL)
	_, _ = p.wait(10 * time.Second)
}

// readTime reads one 8-byte timestamp of initchild.
func readTime(r *os.File, timeout time.Duration) (int64, error) {
	if err := r.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return 0, err
	}
	var buf [8]byte
	if _, err := io.ReadFull(r, buf[:]); err != nil {
		return 0, err
	}
	return int64(binary.LittleEndian.Uint64(buf[:])), nil
}

// readReady waits for the child's ready mark: a timestamp of 0.
func readReady(r *os.File) error {
	mark, err := readTime(r, readyTimeout)
	if err != nil {
		return fmt.Errorf("waiting for the child's ready mark: %w", err)
	}
	if mark != 0 {
		return fmt.Errorf("expected the ready mark 0 from the child, got %d", mark)
	}
	return nil
}

// checkExit returns an error unless the init exited with status 0, the exit
// status of initchild.
func checkExit(s *initSide, status exitStatus) error {
	if status.status.Exited() && status.status.ExitStatus() == 0 {
		return nil
	}
	return fmt.Errorf("%s ended with %v, expected exit status 0; see %s", s.title, status, s.log.Name())
}

func (b *initBench) progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: container: "+format+"\n", args...)
}

// run measures every init and exec-as-user command. Sides alternate in
// every round, so load from elsewhere on the machine falls on both.
func (b *initBench) run(ctx context.Context) {
	for run := 1; run <= b.cfg.orphanRuns && ctx.Err() == nil; run++ {
		for _, s := range b.inits {
			if err := b.measureOrphans(s); err != nil {
				b.fail(s.result, metricOrphanTotal, run, err)
			}
		}
	}

	// Two sessions per init, so a slow phase of the machine does not fall
	// on one side only.
	const signalSessions = 2
	for session := 1; session <= signalSessions && ctx.Err() == nil; session++ {
		for _, s := range b.inits {
			count := b.cfg.signals / signalSessions
			if err := b.measureSignals(ctx, s, count); err != nil {
				b.fail(s.result, metricSignal, session, err)
			}
		}
	}

	for run := 1; run <= b.cfg.exits && ctx.Err() == nil; run++ {
		for _, s := range b.inits {
			if err := b.measureExit(s); err != nil {
				b.fail(s.result, metricExit, run, err)
			}
		}
	}
	for _, s := range b.inits {
		b.summarize(s.title, s.result, metricSignal, metricExit)
	}

	if ctx.Err() == nil {
		b.measureExecs(ctx)
	}
}

func (b *initBench) fail(r *sideResult, metric string, run int, err error) {
	r.fail(metric, fmt.Sprintf("run %d: %v", run, err))
	b.progress("%s: run %d: %s failed: %v", r.side.title, run, metric, err)
}

// summarize logs the median and p99 of metrics that have too many values to
// log one by one.
func (b *initBench) summarize(title string, r *sideResult, keys ...string) {
	for _, key := range keys {
		median, ok := r.median(key)
		if !ok {
			continue
		}
		p99, _ := r.percentile(key, 99)
		b.progress("%s: %s: %d values, median %s, p99 %s", title, key, len(r.values[key]),
			formatSeconds(median), formatSeconds(p99))
	}
}

// orphanReport is the JSON line that "initchild orphans" prints.
type orphanReport struct {
	Orphans   int   `json:"orphans"`
	SpawnedAt int64 `json:"spawned_at"`
	ReapedAt  int64 `json:"reaped_at"`
}

// measureOrphans runs "initchild orphans" under the init: a spawner starts
// /bin/true cfg.orphans times and exits without waiting, so the init must
// reap every /bin/true. initchild exits once none is left, even as a zombie.
// The total runs from just before the harness starts the init to its
// reaping of the init.
func (b *initBench) measureOrphans(s *initSide) error {
	reader, writer, err := os.Pipe()
	if err != nil {
		return err
	}
	defer reader.Close()

	start := monotonic()
	p, err := b.startInit(s, []string{"orphans", "-n", strconv.Itoa(b.cfg.orphans), "-program", "/bin/true"}, b.null, writer)
	writer.Close()
	if err != nil {
		return err
	}
	output := make(chan []byte, 1)
	go func() {
		// The pipe reaches end of file once the init and its pid namespace
		// are gone, because the init holds it as its stdout.
		data, _ := io.ReadAll(io.LimitReader(reader, 64*1024))
		output <- data
	}()
	status, err := p.wait(orphanTimeout)
	if err != nil {
		return err
	}
	data := <-output
	if err := checkExit(s, status); err != nil {
		return err
	}

	var report orphanReport
	if err := json.Unmarshal(data, &report); err != nil {
		return fmt.Errorf("invalid output of initchild orphans %q: %w", data, err)
	}
	if report.Orphans != b.cfg.orphans || report.ReapedAt < report.SpawnedAt {
		return fmt.Errorf("unexpected output of initchild orphans: %s", data)
	}
	total := float64(status.reapedAt-start) / 1e9
	reap := float64(report.ReapedAt-report.SpawnedAt) / 1e9
	s.result.add(metricOrphanTotal, total)
	s.result.add(metricOrphanReap, reap)
	b.progress("%s: %d orphans: total %s, spawner exit → all reaped %s", s.title, b.cfg.orphans, formatSeconds(total), formatSeconds(reap))
	return nil
}

// measureSignals runs "initchild signal" under the init and sends the init
// count SIGUSR1 signals, one at a time. Each latency runs from just before
// the kill call to the child's timestamp in its signal handler. At the end it
// samples the init's memory.
func (b *initBench) measureSignals(ctx context.Context, s *initSide, count int) error {
	stdinReader, stdinWriter, err := os.Pipe()
	if err != nil {
		return err
	}
	defer stdinWriter.Close()
	stdoutReader, stdoutWriter, err := os.Pipe()
	if err != nil {
		stdinReader.Close()
		return err
	}
	defer stdoutReader.Close()

	p, err := b.startInit(s, []string{"signal"}, stdinReader, stdoutWriter)
	stdinReader.Close()
	stdoutWriter.Close()
	if err != nil {
		return err
	}
	defer p.kill()
	if err := readReady(stdoutReader); err != nil {
		return err
	}

	for i := 0; i < count && ctx.Err() == nil; i++ {
		// A random gap of 0.5 to 1.5 ms keeps the signals off any
		// periodic timer of the init or the machine.
		time.Sleep(500*time.Microsecond + rand.N(time.Millisecond))
		sent := monotonic()
		if err := unix.Kill(p.pid, unix.SIGUSR1); err != nil {
			return fmt.Errorf("sending SIGUSR1 to the init (pid %d): %w", p.pid, err)
		}
		seen, err := readTime(stdoutReader, signalTimeout)
		if err != nil {
			return fmt.Errorf("signal %d of %d: the child did not report SIGUSR1: %w", i+1, count, err)
		}
		s.result.add(metricSignal, float64(seen-sent)/1e9)
	}

	if memory, err := readMemory(p.pid); err == nil {
		s.result.add(metricInitRSS, float64(memory.rss))
		s.result.add(metricInitAnon, float64(memory.anon))
		s.result.add(metricInitFile, float64(memory.file))
		s.result.add(metricInitPSS, float64(memory.pss))
	} else {
		s.result.fail(metricInitRSS, err.Error())
	}

	// End of file on stdin ends the child, and with it the init.
	stdinWriter.Close()
	status, err := p.wait(exitTimeout)
	if err != nil {
		return err
	}
	return checkExit(s, status)
}

// measureExit runs "initchild exit" under the init. Once the child is
// ready, and 2 ms later so the init has settled, the harness lets it go. The
// latency runs from the child's last timestamp, just before it exits, to the
// harness's reaping of the init.
func (b *initBench) measureExit(s *initSide) error {
	stdinReader, stdinWriter, err := os.Pipe()
	if err != nil {
		return err
	}
	defer stdinWriter.Close()
	stdoutReader, stdoutWriter, err := os.Pipe()
	if err != nil {
		stdinReader.Close()
		return err
	}
	defer stdoutReader.Close()

	p, err := b.startInit(s, []string{"exit"}, stdinReader, stdoutWriter)
	stdinReader.Close()
	stdoutWriter.Close()
	if err != nil {
		return err
	}
	defer p.kill()
	if err := readReady(stdoutReader); err != nil {
		return err
	}
	time.Sleep(2 * time.Millisecond)
	if _, err := stdinWriter.Write([]byte{1}); err != nil {
		return fmt.Errorf("writing the start byte to the child: %w", err)
	}
	exiting, err := readTime(stdoutReader, exitTimeout)
	if err != nil {
		return fmt.Errorf("reading the child's exit time: %w", err)
	}
	status, err := p.wait(exitTimeout)
	if err != nil {
		return err
	}
	if err := checkExit(s, status); err != nil {
		return err
	}
	s.result.add(metricExit, float64(status.reapedAt-exiting)/1e9)
	return nil
}

// measureExecs runs each exec-as-user command cfg.execs times, in turns,
// and records the time from just before the fork to the reaping of the
// process. A few warm-up runs first fill the page cache.
func (b *initBench) measureExecs(ctx context.Context) {
	const warmUp = 5
	for _, s := range b.execs {
		for range warmUp {
			if _, err := b.runExec(s); err != nil {
				b.fail(s.result, metricExecTime, 0, err)
				return
			}
		}
	}
	for run := 1; run <= b.cfg.execs && ctx.Err() == nil; run++ {
		// Rotating the order keeps any effect of the previous command,
		// such as a warm cache line, from favouring one side.
		for i := range b.execs {
			s := b.execs[(run+i)%len(b.execs)]
			took, err := b.runExec(s)
			if err != nil {
				b.fail(s.result, metricExecTime, run, err)
				return
			}
			s.result.add(metricExecTime, took)
		}
	}
	for _, s := range b.execs {
		b.summarize(s.title, s.result, metricExecTime)
	}
}

// runExec runs one command with stdin and stdout on /dev/null and returns
// its wall time in seconds.
func (b *initBench) runExec(s *execSide) (float64, error) {
	start := monotonic()
	process, err := os.StartProcess(s.argv[0], s.argv, &os.ProcAttr{
		Env:   b.env,
		Files: []*os.File{b.null, b.null, s.log},
		Sys:   &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
	})
	if err != nil {
		return 0, fmt.Errorf("starting %s: %w", strings.Join(s.argv, " "), err)
	}
	var status unix.WaitStatus
	for {
		_, err = unix.Wait4(process.Pid, &status, 0, nil)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	end := monotonic()
	_ = process.Release()
	if err != nil {
		return 0, fmt.Errorf("waiting for %s: %w", strings.Join(s.argv, " "), err)
	}
	if !status.Exited() || status.ExitStatus() != 0 {
		return 0, fmt.Errorf("%s ended with wait status %#x, expected exit status 0; see %s",
			strings.Join(s.argv, " "), uint32(status), s.log.Name())
	}
	return float64(end-start) / 1e9, nil
}

// cleanup stops every init still running, closes the logs, copies them to
// logDir when it is not empty, and removes the temporary directory. It
// returns what it had to clean up, which a clean run leaves empty.
func (b *initBench) cleanup(logDir string) []string {
	var problems []string
	for pid, p := range b.running {
		problems = append(problems, fmt.Sprintf("init %d was still running and got SIGKILL", pid))
		p.kill()
	}
	if b.null != nil {
		b.null.Close()
	}
	for _, s := range b.inits {
		s.log.Close()
	}
	for _, s := range b.execs {
		s.log.Close()
	}

	killed, err := killLeftovers(b.dir)
	if err != nil {
		problems = append(problems, err.Error())
	}
	for _, p := range killed {
		problems = append(problems, fmt.Sprintf("process %d (%s) was still running and got SIGKILL", p.pid, p.cmdline()))
	}
	if logDir != "" {
		if err := copyLogs(b.dir, logDir); err != nil {
			problems = append(problems, fmt.Sprintf("copying the init logs failed: %v", err))
		}
	}
	if err := os.RemoveAll(b.dir); err != nil {
		problems = append(problems, fmt.Sprintf("removing %s failed: %v", b.dir, err))
	}
	return problems
}

// copyLogs copies the *.log files of src into dst.
func copyLogs(src, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	logs, err := filepath.Glob(filepath.Join(src, "*.log"))
	if err != nil {
		return err
	}
	for _, path := range logs {
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, filepath.Base(path)), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}
