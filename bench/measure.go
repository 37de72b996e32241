package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Poll intervals. They bound the resolution of every measured time.
const (
	pollInterval     = 5 * time.Millisecond  // HTTP and /proc polls of one vassal
	manyPollInterval = 10 * time.Millisecond // HTTP polls of each of the many vassals
)

// Time limits of one measurement. uWSGI scans its directory every 3 s and
// gives a vassal 30 s to stop before SIGKILL, so they are generous.
const (
	spawnTimeout    = 30 * time.Second
	recoveryTimeout = 30 * time.Second
	stopTimeout     = 45 * time.Second
	manyTimeout     = 60 * time.Second
	findTimeout     = 5 * time.Second
)

// settleWait is how long the harness waits after the last vassal event
// before it samples memory that should have settled. The fief emperor
// returns freed heap pages to the kernel once it has seen no spawn, exit or
// file event for 2 s (settleDelay in emperor/emperor.go).
const settleWait = 3 * time.Second

// client sends every request to loopback and never through a proxy, and
// opens a new connection each time, so a response always comes from the
// process that accepts now.
var client = &http.Client{
	Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
	Timeout:   2 * time.Second,
}

// served reports whether "GET /" on the vassal's port returns 200 with the
// expected body.
func served(ctx context.Context, port int, body string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/", port), nil)
	if err != nil {
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(io.LimitReader(resp.Body, 64*1024))
	return err == nil && resp.StatusCode == http.StatusOK && string(got) == body
}

// errTimedOut is the error of a poll whose condition did not hold in time.
var errTimedOut = errors.New("timed out")

// poll calls check every interval until it returns true or an error, ctx
// ends, or timeout passes. what describes the awaited condition in the
// timeout error.
func poll(ctx context.Context, interval, timeout time.Duration, what string, check func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		done, err := check()
		if err != nil || done {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w after %v waiting for %s", errTimedOut, timeout, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// sideRun measures one side while its emperor runs.
type sideRun struct {
	cfg    *config
	ws     *workspace
	side   *side
	emp    *emperor
	result *sideResult
	kills  int // fuse-zip daemons killed on purpose
}

func (r *sideRun) progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: %s: "+format+"\n", append([]any{r.side.key}, args...)...)
}

// record stores one measured value and logs it.
func (r *sideRun) record(metric string, run int, value float64) {
	r.result.add(metric, value)
	r.progress("run %d: %s = %s", run, metric, formatMetric(metric, value))
}

// fail records a failed measurement and logs it with the end of the
// emperor's log.
func (r *sideRun) fail(metric string, run int, err error) {
	r.result.fail(metric, fmt.Sprintf("run %d: %v", run, err))
	r.progress("run %d: %s failed: %v; last lines of %s:\n%s", run, metric, err, r.emp.logPath, r.emp.logTail(15))
}

// newVassal prepares the app directory and port of a vassal with the
// side's vassal file. Nothing runs until drop.
func (r *sideRun) newVassal(name string) (*vassal, error) {
	return r.newVassalFrom(name, r.side.vassal)
}

// newVassalFrom is newVassal with the vassal file that render returns.
func (r *sideRun) newVassalFrom(name string, render func(cfg *config, ws *workspace, v *vassal) string) (*vassal, error) {
	port, err := r.ws.allocatePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(r.ws.root, "apps", name)
	v := &vassal{name: name, port: port, dir: dir, mnt: filepath.Join(dir, "mnt"), file: filepath.Join(r.emp.dir, name+".ini")}
	if err := os.MkdirAll(v.mnt, 0o755); err != nil {
		return nil, err
	}
	staged := filepath.Join(r.ws.staging, name+".ini")
	if err := os.WriteFile(staged, []byte(render(r.cfg, r.ws, v)), 0o644); err != nil {
		return nil, err
	}
	return v, nil
}

// drop moves the staged vassal file into the vassal directory with one
// rename, so the emperor never reads a partly written file.
func (r *sideRun) drop(v *vassal) error {
	return os.Rename(filepath.Join(r.ws.staging, v.name+".ini"), v.file)
}

// findRoots waits until every vassal's first process (uWSGI vassal master or
// fief vassal init) is a child of the emperor, and records it.
func (r *sideRun) findRoots(ctx context.Context, vassals []*vassal) error {
	return poll(ctx, pollInterval, findTimeout, "the vassal processes to appear", func() (bool, error) {
		table, err := scanProcs()
		if err != nil {
			return false, err
		}
		for _, v := range vassals {
			root, ok := table.childWithArg(r.emp.pid, v.name+".ini")
			if !ok {
				return false, nil
			}
			v.root = root
		}
		return true, nil
	})
}

// vassalProcesses returns the live processes of v: its first process and
// its descendants, and every process whose command line names v's file or
// app directory.
func vassalProcesses(table *procTable, v *vassal) []proc {
	seen := make(map[int]bool)
	var found []proc
	for _, p := range append(table.descendants(v.root), table.mentioning(v.markers()...)...) {
		if !seen[p.pid] {
			seen[p.pid] = true
			found = append(found, p)
		}
	}
	return found
}

// gone reports whether no process of v runs any more. snapshot holds v's
// processes from before the stop, so a process that left the tree (by a
// double fork outside the pid namespace, say) still counts.
func gone(table *procTable, v *vassal, snapshot []proc) bool {
	if len(vassalProcesses(table, v)) > 0 {
		return false
	}
	for _, p := range snapshot {
		if table.alive(p) {
			return false
		}
	}
	return true
}

// pause waits a random time below limit, so a measurement starts at a
// random phase of the uWSGI Emperor's 3 s directory scan and of the 1 s
// mount check. Without it, a stop right after a vassal's first response
// would always wait a full scan period: the vassal's message to the Emperor
// wakes it and restarts its 3 s timer.
func pause(ctx context.Context, limit time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(rand.N(limit)):
		return nil
	}
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// memorySampleDelay is the wait between a vassal's first response and the
// sample of its memory.
const memorySampleDelay = 500 * time.Millisecond

// measureOne runs one vassal through spawn, RSS sampling, recovery and
// stop.
func (r *sideRun) measureOne(ctx context.Context, run int) error {
	v, err := r.newVassal(fmt.Sprintf("%s-one-%d", r.side.key, run))
	if err != nil {
		return err
	}
	if err := pause(ctx, 3*time.Second); err != nil {
		return err
	}

	// Spawn: the file appears, then poll until the app responds.
	start := time.Now()
	if err := r.drop(v); err != nil {
		return err
	}
	err = poll(ctx, pollInterval, spawnTimeout, fmt.Sprintf("HTTP 200 on 127.0.0.1:%d", v.port), func() (bool, error) {
		return served(ctx, v.port, r.side.body), nil
	})
	if err != nil {
		r.fail(metricSpawn, run, err)
		return r.stopOne(ctx, v, run, false)
	}
	r.record(metricSpawn, run, time.Since(start).Seconds())

	if err := r.findRoots(ctx, []*vassal{v}); err != nil {
		r.fail(metricRootRSS, run, err)
		return r.stopOne(ctx, v, run, false)
	}
	// The fief vassal init drops the binary's pages once its program runs,
	// which may come just after the first response. The sample waits for it,
	// and the uWSGI vassal gets the same wait.
	if err := sleep(ctx, memorySampleDelay); err != nil {
		return err
	}
	r.sampleRSS(v, run)

	if err := pause(ctx, time.Second); err != nil {
		return err
	}
	if err := r.recover(ctx, v, run); err != nil {
		r.fail(metricRecovery, run, err)
		return r.stopOne(ctx, v, run, false)
	}
	return r.stopOne(ctx, v, run, true)
}

// sampleRSS records the memory of the emperor and of the vassal's first
// process, and the sums of VmRSS and PSS over all of the vassal's processes.
func (r *sideRun) sampleRSS(v *vassal, run int) {
	r.recordMemory(r.emp.pid, run, metricEmperorRSS, metricEmperorAnon, metricEmperorPSS)
	r.recordMemory(v.root.pid, run, metricRootRSS, metricRootAnon, metricRootPSS)

	table, err := scanProcs()
	if err != nil {
		r.fail(metricTotalRSS, run, err)
		return
	}
	var total memory
	for _, p := range vassalProcesses(table, v) {
		m, err := readMemory(p.pid)
		// A process that is exiting, such as the parent of a daemonizing
		// fuse-zip, has no memory left to count.
		if errors.Is(err, errNoMemory) || errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			continue
		}
		if err != nil {
			r.fail(metricTotalRSS, run, fmt.Errorf("process %d (%s): %w", p.pid, p.cmdline(), err))
			return
		}
		total.rss += m.rss
		total.pss += m.pss
	}
	r.record(metricTotalRSS, run, float64(total.rss))
	r.record(metricTotalPSS, run, float64(total.pss))
}

// recordMemory records VmRSS, RssAnon and PSS of a process under three
// metric keys.
func (r *sideRun) recordMemory(pid, run int, rssKey, anonKey, pssKey string) {
	m, err := readMemory(pid)
	if err != nil {
		r.fail(rssKey, run, err)
		return
	}
	r.record(rssKey, run, float64(m.rss))
	r.record(anonKey, run, float64(m.anon))
	r.record(pssKey, run, float64(m.pss))
}

// recover kills the vassal's FUSE daemon with SIGKILL and records the time
// until the app responds through a new daemon.
func (r *sideRun) recover(ctx context.Context, v *vassal, run int) error {
	took, _, err := r.breakDaemon(ctx, v, unix.SIGKILL, pollInterval, recoveryTimeout)
	if err != nil {
		return err
	}
	r.kills++
	r.record(metricRecovery, run, took.Seconds())

	// The stop that follows needs the new first process.
	return r.findRoots(ctx, []*vassal{v})
}

// breakDaemon sends sig to the vassal's FUSE daemon and waits up to limit
// until the old vassal is gone, a new daemon runs and the app responds
// again, polling every interval. The old uWSGI worker keeps responding until
// the mount check fails, so a 200 counts only once the old vassal's first
// process has exited. It returns the time from the signal to that response
// and the signalled daemon, also with an error that wraps errTimedOut.
func (r *sideRun) breakDaemon(ctx context.Context, v *vassal, sig unix.Signal, interval, limit time.Duration) (time.Duration, proc, error) {
	table, err := scanProcs()
	if err != nil {
		return 0, proc{}, err
	}
	daemon, ok := table.program(r.side.daemon, v.mnt)
	if !ok {
		return 0, proc{}, fmt.Errorf("no %s process serves %s", r.side.daemon, v.mnt)
	}
	oldRoot := v.root

	start := time.Now()
	if err := unix.Kill(daemon.pid, sig); err != nil {
		return 0, daemon, fmt.Errorf("sending %s to %s %d: %w", unix.SignalName(sig), r.side.daemon, daemon.pid, err)
	}
	err = poll(ctx, interval, limit, "HTTP 200 through a new "+r.side.daemon, func() (bool, error) {
		table, err := scanProcs()
		if err != nil {
			return false, err
		}
		if table.alive(oldRoot) {
			return false, nil
		}
		current, ok := table.program(r.side.daemon, v.mnt)
		if !ok || current.same(daemon) {
			return false, nil
		}
		return served(ctx, v.port, r.side.body), nil
	})
	return time.Since(start), daemon, err
}

// stopOne removes the vassal file and waits until every process of the
// vassal is gone. It records the time only when measured is true: the stop
// of a vassal that never served, or did not recover, is clean-up.
func (r *sideRun) stopOne(ctx context.Context, v *vassal, run int, measured bool) error {
	if measured {
		if err := pause(ctx, 3*time.Second); err != nil {
			return err
		}
	}
	table, err := scanProcs()
	if err != nil {
		return err
	}
	snapshot := vassalProcesses(table, v)

	start := time.Now()
	if err := os.Remove(v.file); err != nil {
		return err
	}
	err = poll(ctx, pollInterval, stopTimeout, "every process of the vassal to exit", func() (bool, error) {
		table, err := scanProcs()
		if err != nil {
			return false, err
		}
		return gone(table, v, snapshot), nil
	})
	if err != nil {
		r.fail(metricStop, run, err)
		return nil
	}
	if !measured {
		return nil
	}
	took := time.Since(start)
	r.record(metricStop, run, took.Seconds())

	if r.side.fief && v.root.pid != 0 {
		exit, err := r.emp.programExitTime(v)
		if err != nil {
			r.fail(metricStopOverhead, run, err)
			return nil
		}
		r.record(metricStopOverhead, run, (took - exit).Seconds())
	}
	return nil
}

// manySettle is the delay between the first and the second sample of the
// emperor's memory after the many-vassal start.
const manySettle = 3 * time.Second

// measureMany starts cfg.vassals vassals at once in the empty directory,
// waits until all respond, samples the emperor's RSS then and 3 s later,
// then removes all files and waits until every process is gone.
func (r *sideRun) measureMany(ctx context.Context, run int) error {
	vassals := make([]*vassal, r.cfg.vassals)
	for i := range vassals {
		v, err := r.newVassal(fmt.Sprintf("%s-many-%d-%02d", r.side.key, run, i+1))
		if err != nil {
			return err
		}
		vassals[i] = v
	}
	if err := pause(ctx, 3*time.Second); err != nil {
		return err
	}

	start := time.Now()
	for _, v := range vassals {
		if err := r.drop(v); err != nil {
			return err
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, len(vassals))
	for i, v := range vassals {
		wg.Go(func() {
			errs[i] = poll(ctx, manyPollInterval, manyTimeout, fmt.Sprintf("HTTP 200 on 127.0.0.1:%d", v.port), func() (bool, error) {
				return served(ctx, v.port, r.side.body), nil
			})
		})
	}
	wg.Wait()
	started := errors.Join(errs...)
	if started != nil {
		r.fail(metricManyStart, run, started)
	} else {
		r.record(metricManyStart, run, time.Since(start).Seconds())
		r.recordMemory(r.emp.pid, run, metricManyEmperorRSS, metricManyAnon, metricManyPSS)

		// fief's emperor returns freed memory to the kernel after 2 s without
		// a spawn, exit or file event (settleDelay in emperor/emperor.go).
		// The second sample, taken for both emperors, shows what each keeps
		// while the vassals run.
		if err := sleep(ctx, manySettle); err != nil {
			return err
		}
		r.recordMemory(r.emp.pid, run, metricSettledRSS, metricSettledAnon, metricSettledPSS)
	}

	// Vassals whose first process never appeared are still stopped and
	// waited for through their command lines.
	if err := r.findRoots(ctx, vassals); err != nil && started == nil {
		r.fail(metricManyStop, run, err)
	}
	if err := pause(ctx, 3*time.Second); err != nil {
		return err
	}
	took, err := removeVassals(ctx, vassals, pollInterval, stopTimeout)
	if errors.Is(err, errTimedOut) {
		r.fail(metricManyStop, run, err)
		return nil
	}
	if err != nil {
		return err
	}
	// Stopping vassals that did not all start is clean-up, not a measurement.
	if started == nil {
		r.record(metricManyStop, run, took.Seconds())
	}
	return nil
}

// removeVassals removes the files of vassals and waits until none of their
// processes runs, polling /proc every interval for at most limit. It
// returns the time from the first removal to that moment.
func removeVassals(ctx context.Context, vassals []*vassal, interval, limit time.Duration) (time.Duration, error) {
	table, err := scanProcs()
	if err != nil {
		return 0, err
	}
	snapshots := make([][]proc, len(vassals))
	for i, v := range vassals {
		snapshots[i] = vassalProcesses(table, v)
	}

	start := time.Now()
	for _, v := range vassals {
		if err := os.Remove(v.file); err != nil {
			return 0, err
		}
	}
	err = poll(ctx, interval, limit, "every process of the vassals to exit", func() (bool, error) {
		table, err := scanProcs()
		if err != nil {
			return false, err
		}
		for i, v := range vassals {
			if !gone(table, v, snapshots[i]) {
				return false, nil
			}
		}
		return true, nil
	})
	return time.Since(start), err
}
