package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Metric keys of the recovery section. Times are seconds.
const (
	metricKillRecovery = "kill-recovery"         // kill -9 of fuse-zip → HTTP 200 through a new one
	metricHang         = "hang-recovery"         // SIGSTOP of fuse-zip → HTTP 200, uWSGI
	metricHangFast     = "hang-recovery-1s"      // the same, fief with a 1 s check timeout and interval
	metricHangDefault  = "hang-recovery-default" // the same, fief with the default check settings
	metricHungStop     = "hung-stop"             // file removed while fuse-zip is stopped → no process left
)

const (
	// seriesAge is the time a fief vassal runs between two deaths that the
	// benchmark causes. fief respawns at once after the first death of a
	// series, and with a growing delay after a death within 10 s of the
	// vassal's start (README, "Respawn"), so each death is a first one.
	seriesAge = 11 * time.Second

	// Vassals that take turns in the recovery runs. With about 0.5 s per
	// fief kill -9 run, 20 vassals keep each one above seriesAge. uWSGI
	// needs about 4 s per run and has no such series.
	fiefKillPool = 20
	fiefHangPool = 5
	uwsgiPool    = 4

	// hangRecoveryTimeout bounds a fief recovery after SIGSTOP, which takes
	// mountpoint-check-interval plus mountpoint-check-timeout plus a respawn.
	hangRecoveryTimeout = 30 * time.Second
	// hungStopTimeout bounds the removal of a vassal whose FUSE daemon is
	// stopped. The uWSGI Emperor sends SIGKILL to a vassal master that has
	// not exited 30 s after its stop request (emperor-curse-tolerance).
	hungStopTimeout = 90 * time.Second
	// hungStopDelay is the time between the SIGSTOP and the removal of a
	// fief vassal. With a 1 s check interval, a statfs probe of the mount
	// is then blocked on the stopped daemon, and the 5 s default timeout
	// has not expired.
	hungStopDelay = 1500 * time.Millisecond
	// slowPollInterval is the /proc poll interval of the uWSGI hang, which
	// runs next to the fief runs and lasts tens of seconds.
	slowPollInterval = 100 * time.Millisecond
)

func recoverySides() (uwsgi, fief *side) {
	return &side{key: "recovery-uwsgi", title: "uWSGI Emperor", body: psgiBody, daemon: "fuse-zip", vassal: uwsgiVassal},
		&side{key: "recovery-fief", title: "fief, busybox httpd", fief: true, body: indexHTML, daemon: "fuse-zip", vassal: busyboxVassal}
}

// fastCheckVassal is busyboxVassal with a mount check every second that
// counts the daemon as hung after 1 s without a statfs reply.
func fastCheckVassal(cfg *config, ws *workspace, v *vassal) string {
	return busyboxVassal(cfg, ws, v) + "mountpoint-check-timeout = 1s\nmountpoint-check-interval = 1s\n"
}

// pool is a set of running vassals that take turns in the recovery runs.
type pool struct {
	vassals []*vassal
	next    int
	minAge  time.Duration // how long a vassal serves before its next turn
}

// take returns the next vassal once it has served for minAge.
func (p *pool) take(ctx context.Context) (*vassal, error) {
	v := p.vassals[p.next]
	p.next = (p.next + 1) % len(p.vassals)
	return v, sleep(ctx, time.Until(v.ready.Add(p.minAge)))
}

// startPool drops n vassals with the file that render returns, waits until
// all of them serve and finds their first processes. The uWSGI Emperor
// respawns a vassal that has served a request at once after every death,
// so only fief's vassals wait seriesAge between turns.
func (r *sideRun) startPool(ctx context.Context, name string, n int, render func(*config, *workspace, *vassal) string) (*pool, error) {
	p := &pool{}
	if r.side.fief {
		p.minAge = seriesAge
	}
	for i := range n {
		v, err := r.newVassalFrom(fmt.Sprintf("%s-%s-%02d", r.side.key, name, i+1), render)
		if err != nil {
			return p, err
		}
		p.vassals = append(p.vassals, v)
	}
	for _, v := range p.vassals {
		if err := r.drop(v); err != nil {
			return p, err
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, v := range p.vassals {
		wg.Go(func() {
			errs[i] = poll(ctx, manyPollInterval, manyTimeout, fmt.Sprintf("HTTP 200 on 127.0.0.1:%d", v.port), func() (bool, error) {
				return served(ctx, v.port, r.side.body), nil
			})
			v.ready = time.Now()
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return p, err
	}
	return p, r.findRoots(ctx, p.vassals)
}

// runBreaks sends sig to the FUSE daemon of a pool vassal count times, one
// vassal after another, and records under key the time until each vassal
// serves through a new daemon. A random pause of up to 1 s before each
// signal puts it at a random phase of the 1 s mount check.
func (r *sideRun) runBreaks(ctx context.Context, p *pool, count int, sig unix.Signal, key string) {
	for run := 1; run <= count && ctx.Err() == nil; run++ {
		v, err := p.take(ctx)
		if err != nil {
			return
		}
		if err := pause(ctx, time.Second); err != nil {
			return
		}
		limit := recoveryTimeout
		if sig == unix.SIGSTOP {
			limit = hangRecoveryTimeout
		}
		took, daemon, err := r.breakDaemon(ctx, v, sig, pollInterval, limit)
		if sig == unix.SIGSTOP {
			r.resume(daemon)
		}
		v.ready = time.Now()
		switch {
		case errors.Is(err, errTimedOut):
			r.result.censored[key] = append(r.result.censored[key], limit.Seconds())
			r.progress("run %d: %s: no recovery within %s; last lines of %s:\n%s", run, key, formatBound(limit.Seconds()), r.emp.logPath, r.emp.logTail(15))
			continue
		case err != nil:
			r.fail(key, run, err)
			continue
		}
		r.kills++
		r.record(key, run, took.Seconds())
		if err := r.findRoots(ctx, []*vassal{v}); err != nil {
			r.fail(key, run, err)
		}
	}
}

// resume sends SIGCONT to a stopped FUSE daemon that still runs, so that no
// stopped process is left behind.
func (r *sideRun) resume(daemon proc) {
	table, err := scanProcs()
	if err != nil || !table.alive(daemon) {
		return
	}
	if err := unix.Kill(daemon.pid, unix.SIGCONT); err != nil {
		r.progress("SIGCONT to %s %d failed: %v", r.side.daemon, daemon.pid, err)
		return
	}
	r.progress("sent SIGCONT to %s %d, which was still running", r.side.daemon, daemon.pid)
}

// hangAndRemove stops the FUSE daemon of a uWSGI vassal with SIGSTOP and
// watches for a recovery for cfg.hangLimit. Then it removes the vassal file,
// records the time until every process of the vassal is gone and resumes
// the daemon if it still runs.
func (r *sideRun) hangAndRemove(ctx context.Context, v *vassal, run int) {
	r.progress("run %d: stopping fuse-zip and watching for a recovery for %s", run, formatBound(r.cfg.hangLimit.Seconds()))
	took, daemon, err := r.breakDaemon(ctx, v, unix.SIGSTOP, slowPollInterval, r.cfg.hangLimit)
	switch {
	case errors.Is(err, errTimedOut):
		r.result.censored[metricHang] = append(r.result.censored[metricHang], r.cfg.hangLimit.Seconds())
		r.progress("run %d: %s: no recovery within %s", run, metricHang, formatBound(r.cfg.hangLimit.Seconds()))
	case err != nil:
		r.fail(metricHang, run, err)
	default:
		r.kills++
		r.record(metricHang, run, took.Seconds())
	}
	defer r.resume(daemon)
	if ctx.Err() != nil {
		return
	}

	took, err = removeVassals(ctx, []*vassal{v}, slowPollInterval, hungStopTimeout)
	if err != nil {
		r.fail(metricHungStop, run, err)
		return
	}
	r.record(metricHungStop, run, took.Seconds())
}

// hungStop starts a new fief vassal, stops its FUSE daemon with SIGSTOP,
// removes the file hungStopDelay later and records the time from the
// removal until every process of the vassal is gone.
func (r *sideRun) hungStop(ctx context.Context, run int) error {
	v, err := r.newVassal(fmt.Sprintf("%s-hung-%d", r.side.key, run))
	if err != nil {
		return err
	}
	if err := r.drop(v); err != nil {
		return err
	}
	err = poll(ctx, pollInterval, spawnTimeout, fmt.Sprintf("HTTP 200 on 127.0.0.1:%d", v.port), func() (bool, error) {
		return served(ctx, v.port, r.side.body), nil
	})
	if err != nil {
		return err
	}
	if err := r.findRoots(ctx, []*vassal{v}); err != nil {
		return err
	}
	table, err := scanProcs()
	if err != nil {
		return err
	}
	daemon, ok := table.program(r.side.daemon, v.mnt)
	if !ok {
		return fmt.Errorf("no %s process serves %s", r.side.daemon, v.mnt)
	}
	if err := unix.Kill(daemon.pid, unix.SIGSTOP); err != nil {
		return fmt.Errorf("sending SIGSTOP to %s %d: %w", r.side.daemon, daemon.pid, err)
	}
	defer r.resume(daemon)
	if err := sleep(ctx, hungStopDelay); err != nil {
		return err
	}

	took, err := removeVassals(ctx, []*vassal{v}, pollInterval, hungStopTimeout)
	if err != nil {
		r.fail(metricHungStop, run, err)
		return nil
	}
	r.record(metricHungStop, run, took.Seconds())
	return nil
}

// runRecoverySection measures the distribution of recovery times after
// kill -9 and after SIGSTOP of fuse-zip, and the removal of a vassal whose
// fuse-zip is stopped.
//
// The uWSGI hang runs for cfg.hangLimit plus about 30 s of removal, and its
// processes are blocked or idle all that time, so the fief runs take place
// meanwhile. The uWSGI kill -9 runs come before, with no fief emperor
// running.
func runRecoverySection(ctx context.Context, cfg *config, logCopy string) (string, bool) {
	const heading = "## Recovery time distributions: kill -9 and SIGSTOP of fuse-zip\n\n"
	load, began := loadAverage(), time.Now()
	ws, err := newWorkspace(cfg.portBase)
	if err != nil {
		return abortSection(heading, ws, err)
	}
	fmt.Fprintf(os.Stderr, "bench: recovery: workspace %s\n", ws.root)
	uwsgiSide, fiefSide := recoverySides()

	var hangs sync.WaitGroup
	u, err := startSideRun(cfg, ws, uwsgiSide)
	var uwsgiVassals []*vassal
	if err == nil {
		kills, err := u.startPool(ctx, "pool", uwsgiPool, uwsgiVassal)
		uwsgiVassals = append(uwsgiVassals, kills.vassals...)
		var hung *pool
		if err == nil && cfg.uwsgiHangs > 0 {
			hung, err = u.startPool(ctx, "hang", cfg.uwsgiHangs, uwsgiVassal)
			uwsgiVassals = append(uwsgiVassals, hung.vassals...)
		}
		if err != nil {
			u.fail(metricSetup, 0, err)
		} else {
			u.runBreaks(ctx, kills, cfg.recoveryUWSGIKills, unix.SIGKILL, metricKillRecovery)
			if hung != nil {
				hangs.Go(func() {
					for i, v := range hung.vassals {
						u.hangAndRemove(ctx, v, i+1)
					}
				})
			}
		}
	}

	f, err := startSideRun(cfg, ws, fiefSide)
	if err == nil {
		runFiefRecovery(ctx, f)
		f.finish()
	}

	hangs.Wait()
	if u.emp != nil {
		u.removeAll(ctx, uwsgiVassals)
		u.finish()
	}
	problems := finishWorkspace(ws, logCopy)

	results := []*sideResult{u.result, f.result}
	rows := []sectionRow{
		{label: "kill -9 of fuse-zip → HTTP 200 through a new fuse-zip", key: metricKillRecovery,
			stats: []statistic{medianStat, p99Stat, maxStat}, target: targetTenth},
		{label: "SIGSTOP of fuse-zip → HTTP 200 through a new fuse-zip; fief with mountpoint-check-timeout = 1s and mountpoint-check-interval = 1s", key: metricHangFast, uwsgiKey: metricHang,
			stats: []statistic{medianStat, p99Stat, maxStat}, target: targetRecovers},
		{label: "the same, fief with the defaults, mountpoint-check-timeout = 5s and mountpoint-check-interval = 1s", key: metricHangDefault, uwsgiKey: metricHang,
			stats: []statistic{medianStat, maxStat}, target: targetRecovers},
		{label: "file removed while fuse-zip is stopped → no process of the vassal left", key: metricHungStop,
			stats: []statistic{medianStat, maxStat}},
	}
	var out strings.Builder
	out.WriteString(heading)
	out.WriteString(sectionIntro(load, time.Since(began)))
	fmt.Fprintf(&out, "- kill -9 runs: %d of fief, %d of uWSGI; SIGSTOP runs of fief: %d with 1 s check settings, %d with the defaults; SIGSTOP runs of uWSGI: %d, watched for %s each; removals of fief vassals with a stopped fuse-zip: %d\n",
		cfg.recoveryKills, cfg.recoveryUWSGIKills, cfg.recoveryHangs, cfg.defaultHangs, cfg.uwsgiHangs, formatBound(cfg.hangLimit.Seconds()), cfg.hungStops)
	out.WriteString("- the uWSGI cell of both SIGSTOP rows shows the same uWSGI runs: uWSGI checks the mount every second and has no timeout setting\n")
	out.WriteString("- p99 is the nearest-rank percentile, which equals the maximum below 100 values\n\n")
	out.WriteString(renderSectionTable(rows, u.result, f.result))
	out.WriteString("\n")
	out.WriteString(renderDeaths(results))
	out.WriteString("\n```\n")
	out.WriteString(renderSectionRaw(rows, results...))
	out.WriteString("```\n")
	out.WriteString(renderCleanup(problems, "every emperor exited; no process and no mount was left under the workspace, and it was removed."))
	out.WriteString("\n")
	return out.String(), sectionOK(results, problems)
}

// runFiefRecovery runs the fief side of the recovery section: the removals
// of vassals with a stopped fuse-zip first, while the pools reach
// seriesAge, then the kill -9 runs and the SIGSTOP runs.
func runFiefRecovery(ctx context.Context, f *sideRun) {
	cfg := f.cfg
	kills, err := f.startPool(ctx, "pool", fiefKillPool, busyboxVassal)
	all := kills.vassals
	var hangs *pool
	if err == nil {
		hangs, err = f.startPool(ctx, "fast", fiefHangPool, fastCheckVassal)
		all = append(all, hangs.vassals...)
	}
	if err != nil {
		f.fail(metricSetup, 0, err)
		f.removeAll(ctx, all)
		return
	}

	for run := 1; run <= cfg.hungStops && ctx.Err() == nil; run++ {
		if err := f.hungStop(ctx, run); err != nil && ctx.Err() == nil {
			f.fail(metricHungStop, run, err)
		}
	}
	f.runBreaks(ctx, kills, cfg.recoveryKills, unix.SIGKILL, metricKillRecovery)
	f.runBreaks(ctx, hangs, cfg.recoveryHangs, unix.SIGSTOP, metricHangFast)
	f.runBreaks(ctx, kills, cfg.defaultHangs, unix.SIGSTOP, metricHangDefault)
	f.removeAll(ctx, all)
}
