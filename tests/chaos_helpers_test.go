package tests

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Helpers of the SIGSTOP and chaos tests. Every name starts with "chaos" so
// that it cannot clash with the helpers of other tests in the package.

// chaosTaskPeriod is how often chaosTaskSampler reads the thread states.
const chaosTaskPeriod = 20 * time.Millisecond

// chaosTaskKey names one thread of one process.
type chaosTaskKey struct {
	pid, tid int
}

// chaosBlockedRun is one stretch of time during which a thread was seen in
// state D (uninterruptible sleep) in every sample.
type chaosBlockedRun struct {
	task  chaosTaskKey
	comm  string
	wchan string // the kernel function the thread waited in, at the last D sample
	from  time.Time
	last  time.Time
}

func (r chaosBlockedRun) length() time.Duration {
	return r.last.Sub(r.from)
}

func (r chaosBlockedRun) String() string {
	return fmt.Sprintf("pid %d tid %d (%s) in state D for %v, waiting in %s", r.task.pid, r.task.tid, r.comm, r.length().Round(time.Millisecond), r.wchan)
}

// chaosTaskSampler reads /proc/PID/task/*/stat and wchan of a changing set
// of processes in the background and records every stretch of state D.
type chaosTaskSampler struct {
	pids func() []int
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	samples int
	threads map[chaosTaskKey]bool
	// waits counts the samples per state and wchan, such as "S
	// request_wait_answer", over every thread seen.
	waits   map[string]int
	current map[chaosTaskKey]*chaosBlockedRun
	runs    []chaosBlockedRun
}

// chaosSampleTasks starts sampling the threads of the processes that pids
// returns. The set may change between samples. Sampling ends when finish is
// called or the test ends.
func chaosSampleTasks(t *testing.T, pids func() []int) *chaosTaskSampler {
	s := &chaosTaskSampler{
		pids:    pids,
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		threads: map[chaosTaskKey]bool{},
		waits:   map[string]int{},
		current: map[chaosTaskKey]*chaosBlockedRun{},
	}
	go s.loop()
	t.Cleanup(s.finishOnce)
	return s
}

func (s *chaosTaskSampler) loop() {
	defer close(s.done)
	ticker := time.NewTicker(chaosTaskPeriod)
	defer ticker.Stop()
	for {
		s.sample()
		select {
		case <-s.stop:
			return
		case <-ticker.C:
		}
	}
}

func (s *chaosTaskSampler) sample() {
	now := time.Now()
	seen := map[chaosTaskKey]bool{}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.samples++

	for _, pid := range s.pids() {
		entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			continue // the process is gone
		}
		for _, entry := range entries {
			tid, err := strconv.Atoi(entry.Name())
			if err != nil {
				continue
			}
			comm, state, _, err := chaosReadStat(fmt.Sprintf("/proc/%d/task/%d/stat", pid, tid))
			if err != nil {
				continue
			}
			wchan := chaosReadWchan(pid, tid)
			key := chaosTaskKey{pid: pid, tid: tid}
			s.threads[key] = true
			s.waits[state+" "+wchan]++
			if state != "D" {
				continue
			}
			seen[key] = true
			run := s.current[key]
			if run == nil {
				run = &chaosBlockedRun{task: key, comm: comm, from: now}
				s.current[key] = run
			}
			run.last, run.wchan = now, wchan
		}
	}

	// A thread that left state D, or vanished, ends its run.
	for key, run := range s.current {
		if !seen[key] {
			s.runs = append(s.runs, *run)
			delete(s.current, key)
		}
	}
}

func (s *chaosTaskSampler) finishOnce() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

// chaosTaskReport is the record of a chaosTaskSampler.
type chaosTaskReport struct {
	samples int
	threads int
	// runs are every stretch of state D, longest first.
	runs []chaosBlockedRun
	// waits lists "state wchan: samples" over every thread, most frequent
	// first.
	waits []string
}

// maxBlocked returns the longest stretch of state D, or a zero run.
func (r chaosTaskReport) maxBlocked() chaosBlockedRun {
	if len(r.runs) == 0 {
		return chaosBlockedRun{}
	}
	return r.runs[0]
}

// over returns the stretches of state D longer than limit.
func (r chaosTaskReport) over(limit time.Duration) []chaosBlockedRun {
	var found []chaosBlockedRun
	for _, run := range r.runs {
		if run.length() > limit {
			found = append(found, run)
		}
	}
	return found
}

// finish stops sampling and returns the report. A thread still in state D
// counts up to its last sample.
func (s *chaosTaskSampler) finish() chaosTaskReport {
	s.finishOnce()
	s.mu.Lock()
	defer s.mu.Unlock()

	runs := slices.Clone(s.runs)
	for _, run := range s.current {
		runs = append(runs, *run)
	}
	sort.Slice(runs, func(i, j int) bool { return runs[i].length() > runs[j].length() })

	keys := make([]string, 0, len(s.waits))
	for key := range s.waits {
		keys = append(keys, key)
	}
	sort.Slice(keys, func(i, j int) bool { return s.waits[keys[i]] > s.waits[keys[j]] })
	waits := make([]string, 0, len(keys))
	for _, key := range keys {
		waits = append(waits, fmt.Sprintf("%s: %d", key, s.waits[key]))
	}
	return chaosTaskReport{samples: s.samples, threads: len(s.threads), runs: runs, waits: waits}
}

// chaosReadStat parses a /proc stat file: the command name, the
// one-letter state and the parent pid.
func chaosReadStat(path string) (comm, state string, ppid int, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", "", 0, err
	}
	open := bytes.IndexByte(data, '(')
	end := bytes.LastIndexByte(data, ')')
	if open < 0 || end < open {
		return "", "", 0, fmt.Errorf("invalid %s: %q", path, data)
	}
	fields := strings.Fields(string(data[end+1:]))
	if len(fields) < 2 {
		return "", "", 0, fmt.Errorf("invalid %s: %q", path, data)
	}
	ppid, err = strconv.Atoi(fields[1])
	if err != nil {
		return "", "", 0, fmt.Errorf("invalid parent pid in %s: %q", path, data)
	}
	return string(data[open+1 : end]), fields[0], ppid, nil
}

// chaosReadWchan returns the kernel function a thread sleeps in, "-" when
// it runs, or "?" when the file cannot be read.
func chaosReadWchan(pid, tid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/wchan", pid, tid))
	if err != nil {
		return "?"
	}
	wchan := strings.TrimSpace(string(data))
	if wchan == "" || wchan == "0" {
		return "-"
	}
	return wchan
}

// chaosZombie is a process in state Z.
type chaosZombie struct {
	pid, ppid int
	comm      string
}

func (z chaosZombie) String() string {
	return fmt.Sprintf("pid %d (%s), parent %d", z.pid, z.comm, z.ppid)
}

// chaosZombiesOf returns the zombies whose parent is one of parents.
func chaosZombiesOf(parents []int) []chaosZombie {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var found []chaosZombie
	for _, entry := range entries {
		pid, err := strconv.Atoi(entry.Name())
		if err != nil {
			continue
		}
		comm, state, ppid, err := chaosReadStat(filepath.Join("/proc", entry.Name(), "stat"))
		if err == nil && state == "Z" && slices.Contains(parents, ppid) {
			found = append(found, chaosZombie{pid: pid, ppid: ppid, comm: comm})
		}
	}
	return found
}

// chaosUsage is the resource use of one process.
type chaosUsage struct {
	fds     int
	threads int
	rssKiB  int
}

func (u chaosUsage) String() string {
	return fmt.Sprintf("%d fds, %d threads, VmRSS %d KiB", u.fds, u.threads, u.rssKiB)
}

// chaosReadUsage counts /proc/PID/fd and reads Threads and VmRSS from
// /proc/PID/status.
func chaosReadUsage(pid int) (chaosUsage, error) {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return chaosUsage{}, err
	}
	threads, err := statusField(pid, "Threads:")
	if err != nil {
		return chaosUsage{}, err
	}
	rss, err := statusField(pid, "VmRSS:")
	if err != nil {
		return chaosUsage{}, err
	}
	return chaosUsage{fds: len(entries), threads: threads, rssKiB: rss}, nil
}

// chaosFds lists the targets of /proc/PID/fd, for failure messages.
func chaosFds(pid int) string {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, entry := range entries {
		target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, entry.Name()))
		fmt.Fprintf(&b, "  fd %s -> %s\n", entry.Name(), target)
	}
	return b.String()
}

// chaosPidfd opens a pidfd for pid and checks, after opening it, that pid
// still is the process that matches. Signals sent through the pidfd then
// reach that process or fail with ESRCH once it is gone, never a process that
// reused the pid.
func chaosPidfd(pid int, matches func(pid int) bool) (int, error) {
	if !matches(pid) {
		return -1, fmt.Errorf("pid %d is no longer the expected process", pid)
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_open(%d): %w", pid, err)
	}
	if !matches(pid) {
		unix.Close(fd)
		return -1, fmt.Errorf("pid %d is no longer the expected process", pid)
	}
	return fd, nil
}

// chaosSignalPid sends sig to pid through a pidfd after checking that pid
// still matches.
func chaosSignalPid(pid int, sig unix.Signal, matches func(pid int) bool) error {
	fd, err := chaosPidfd(pid, matches)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil {
		return fmt.Errorf("sending %s to pid %d: %w", unix.SignalName(sig), pid, err)
	}
	return nil
}

// chaosArgv returns the command line of pid, nil when it is gone or a
// zombie.
func chaosArgv(pid int) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(data) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
}

// chaosChildOf returns a matcher for a live process whose parent is parent
// and whose command line contains text.
func chaosChildOf(parent int, text string) func(pid int) bool {
	return func(pid int) bool {
		argv := chaosArgv(pid)
		if argv == nil || !strings.Contains(strings.Join(argv, " "), text) {
			return false
		}
		ppid, err := parentPid(pid)
		return err == nil && ppid == parent
	}
}

// chaosLogFollower reads the log/slog lines that a log file gained since the
// last call.
type chaosLogFollower struct {
	path    string
	offset  int64
	partial []byte
}

// next returns the records of the complete lines written since the last
// call. Lines that are not log records (program output) are skipped.
func (f *chaosLogFollower) next() ([]logRecord, error) {
	file, err := os.Open(f.path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	if _, err := file.Seek(f.offset, io.SeekStart); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(file)
	if err != nil {
		return nil, err
	}
	f.offset += int64(len(data))
	data = append(f.partial, data...)

	end := bytes.LastIndexByte(data, '\n')
	if end < 0 {
		f.partial = data
		return nil, nil
	}
	f.partial = slices.Clone(data[end+1:])

	var records []logRecord
	for _, line := range strings.Split(string(data[:end]), "\n") {
		if r, ok := parseLogLine(line); ok {
			records = append(records, r)
		}
	}
	return records, nil
}

// chaosRawLines returns the log lines of records, one per line.
func chaosRawLines(records []logRecord) string {
	var b strings.Builder
	for _, record := range records {
		fmt.Fprintf(&b, "  %s\n", record.raw)
	}
	return b.String()
}

// chaosEnvInt returns the integer in the environment variable name, or def
// when it is unset or empty.
func chaosEnvInt(name string, def int64) (int64, error) {
	text := os.Getenv(name)
	if text == "" {
		return def, nil
	}
	value, err := strconv.ParseInt(text, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid %s=%q: %w", name, text, err)
	}
	return value, nil
}

// chaosBackoff returns the respawn delay of the emperor after deaths quick
// deaths in a row: 0 for the first, 1 s for the second, then doubling up to
// 60 s. It is fief's emperor.Backoff, restated so that the test checks the
// emperor's log against the documented rule instead of against itself.
func chaosBackoff(deaths int) time.Duration {
	if deaths <= 1 {
		return 0
	}
	delay := time.Second
	for i := 2; i < deaths; i++ {
		delay *= 2
		if delay >= time.Minute {
			return time.Minute
		}
	}
	return delay
}

// chaosQuickDeath is how long a vassal must run for its death to start a new
// series of deaths, with respawn delay 0 (emperor.QuickDeath).
const chaosQuickDeath = 10 * time.Second
