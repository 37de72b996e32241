package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Metric keys of the scale section. Times are seconds, memory is bytes and
// CPU time is clock ticks.
const (
	metricScaleStart   = "scale-start"        // files dropped into the empty directory → all HTTP 200
	metricScaleStop    = "scale-stop"         // files removed → no process left
	metricStartTicks   = "start-ticks"        // emperor CPU time from the drop to all HTTP 200
	metricIdleTicks    = "idle-ticks"         // emperor CPU time in the idle window
	metricSettleTicks  = "settle-ticks"       // emperor CPU time from all served to the end of the idle window
	metricVassalTicks  = "idle-vassal-ticks"  // CPU time of all vassal processes in the idle window
	metricScaleRSS     = "scale-rss"          // emperor VmRSS at the end of the idle window
	metricScaleAnon    = "scale-rss-anon"     // emperor RssAnon of the same sample
	metricScalePSS     = "scale-pss"          // emperor PSS of the same sample
	metricScaleProcPSS = "scale-vassal-pss"   // sum of PSS over every vassal process, same moment
	metricScaleEndRSS  = "scale-end-rss"      // emperor VmRSS after the last run, settled
	metricScaleEndAnon = "scale-end-rss-anon" // emperor RssAnon of the same sample
	metricScaleEndPSS  = "scale-end-pss"      // emperor PSS of the same sample
)

// scaleUnits are the units of the scale section's metrics that are not
// seconds.
var scaleUnits = map[string]valueUnit{
	metricStartTicks:   unitTicks,
	metricIdleTicks:    unitTicks,
	metricSettleTicks:  unitTicks,
	metricVassalTicks:  unitTicks,
	metricScaleRSS:     unitBytes,
	metricScaleAnon:    unitBytes,
	metricScalePSS:     unitBytes,
	metricScaleProcPSS: unitBytes,
	metricScaleEndRSS:  unitBytes,
	metricScaleEndAnon: unitBytes,
	metricScaleEndPSS:  unitBytes,
}

const (
	// scalePollInterval is the HTTP poll interval of each vassal while many
	// start. Each poll of a vassal that does not listen yet is a refused
	// connection, and a shorter interval would take more CPU time from the
	// vassals that are starting.
	scalePollInterval = 25 * time.Millisecond
	scaleTimeout      = 180 * time.Second
)

// scaleSides are the two emperors of the scale section, with the smallest
// vassal that serves a static file on its own loopback port, or with the
// psgi app for uWSGI when app is "psgi". Neither uses FUSE.
func scaleSides(app string) (uwsgi, fief *side) {
	uwsgi = &side{key: "scale-uwsgi", title: "uWSGI Emperor, uWSGI static files", body: indexHTML, vassal: uwsgiScaleVassal}
	if app == "psgi" {
		uwsgi = &side{key: "scale-uwsgi-psgi", title: "uWSGI Emperor, psgi app", body: psgiBody, vassal: uwsgiScalePSGIVassal}
	}
	return uwsgi, &side{key: "scale-fief", title: "fief, busybox httpd", fief: true, body: indexHTML, vassal: fiefScaleVassal}
}

// uwsgiScalePSGIVassal serves WORKSPACE/app.psgi with uWSGI's psgi plugin.
func uwsgiScalePSGIVassal(_ *config, ws *workspace, v *vassal) string {
	return fmt.Sprintf(`[uwsgi]
plugin = psgi
http-socket = 127.0.0.1:%d
psgi = %s
`, v.port, filepath.Join(ws.root, "app.psgi"))
}

// uwsgiScaleVassal serves WORKSPACE/www with uWSGI's static file server.
// That server responds only when a request plugin is loaded, so the file
// loads notfound, the smallest one.
func uwsgiScaleVassal(_ *config, ws *workspace, v *vassal) string {
	return fmt.Sprintf(`[uwsgi]
plugin = notfound
http-socket = 127.0.0.1:%d
check-static = %s
static-index = index.html
`, v.port, scaleDocRoot(ws))
}

// fiefScaleVassal serves WORKSPACE/www with busybox httpd.
func fiefScaleVassal(_ *config, ws *workspace, v *vassal) string {
	return fmt.Sprintf(`[uwsgi]
exec = busybox httpd -f -p 127.0.0.1:%d -h %s
`, v.port, scaleDocRoot(ws))
}

func scaleDocRoot(ws *workspace) string {
	return filepath.Join(ws.root, "www")
}

// runScaleSection starts many vassals at once under each emperor, and
// measures the emperor's memory and CPU time while they idle.
func runScaleSection(ctx context.Context, cfg *config, logCopy string) (string, bool) {
	const heading = "## Scale: many vassals, idle emperor\n\n"
	load, began := loadAverage(), time.Now()
	ws, err := newWorkspace(cfg.portBase)
	if err == nil {
		err = os.Mkdir(scaleDocRoot(ws), 0o755)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(scaleDocRoot(ws), "index.html"), []byte(indexHTML), 0o644)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(ws.root, "app.psgi"), []byte(psgiApp), 0o644)
	}
	if err != nil {
		return abortSection(heading, ws, err)
	}
	fmt.Fprintf(os.Stderr, "bench: scale: workspace %s\n", ws.root)

	uwsgiSide, fiefSide := scaleSides(cfg.scaleApp)
	var results []*sideResult
	for _, s := range []*side{uwsgiSide, fiefSide} {
		results = append(results, runScaleSide(ctx, cfg, ws, s))
		if ctx.Err() != nil {
			break
		}
	}
	problems := finishWorkspace(ws, logCopy)

	n := cfg.scaleVassals
	window := formatBound(cfg.idleWindow.Seconds())
	medianMax := []statistic{medianStat, maxStat}
	rows := []sectionRow{
		{label: fmt.Sprintf("%d vassals: files dropped into the empty directory → all HTTP 200", n), key: metricScaleStart, stats: medianMax, target: targetTenth},
		{label: fmt.Sprintf("emperor CPU time during that start of %d vassals", n), key: metricStartTicks, unit: unitTicks, stats: medianMax},
		{label: fmt.Sprintf("%d vassals: files removed → no process left", n), key: metricScaleStop, stats: medianMax},
		{label: fmt.Sprintf("emperor CPU time in %s with %d idle vassals", window, n), key: metricIdleTicks, unit: unitTicks, stats: medianMax, target: targetZero},
		{label: fmt.Sprintf("emperor CPU time from the moment all %d were served to the end of that window (%s)", n, formatBound((settleWait + cfg.idleWindow).Seconds())), key: metricSettleTicks, unit: unitTicks, stats: medianMax},
		{label: fmt.Sprintf("CPU time of all %d vassals' processes in the same window", n), key: metricVassalTicks, unit: unitTicks, stats: medianMax},
		{label: fmt.Sprintf("emperor VmRSS, %d idle vassals", n), key: metricScaleRSS, unit: unitBytes, stats: medianMax, target: targetBelow, limit: 5e6},
		{label: fmt.Sprintf("emperor RssAnon, %d idle vassals", n), key: metricScaleAnon, unit: unitBytes, stats: medianMax},
		{label: fmt.Sprintf("emperor PSS, %d idle vassals", n), key: metricScalePSS, unit: unitBytes, stats: medianMax},
		{label: fmt.Sprintf("sum of PSS over the processes of the %d vassals", n), key: metricScaleProcPSS, unit: unitBytes, stats: medianMax},
		{label: "emperor VmRSS after the last run, settled", key: metricScaleEndRSS, unit: unitBytes, stats: []statistic{oneStat}, target: targetBelow, limit: 5e6},
		{label: "emperor RssAnon after the last run", key: metricScaleEndAnon, unit: unitBytes, stats: []statistic{oneStat}},
		{label: "emperor PSS after the last run", key: metricScaleEndPSS, unit: unitBytes, stats: []statistic{oneStat}},
	}
	var out strings.Builder
	out.WriteString(heading)
	out.WriteString(sectionIntro(load, time.Since(began)))
	fmt.Fprintf(&out, "- runs per emperor: %d; vassals: %d; the CPU window starts %s after the last vassal's first response; a tick is 10 ms (USER_HZ 100); MB is 10^6 bytes; targets are judged on fief's median, and the CPU target on its maximum\n\n",
		cfg.scaleRuns, n, formatBound(settleWait.Seconds()))
	out.WriteString(renderSectionTable(rows, sideOf(results, false), sideOf(results, true)))
	out.WriteString("\n")
	out.WriteString(renderDeaths(results))
	out.WriteString("\n```\n")
	out.WriteString(renderSectionRaw(rows, results...))
	out.WriteString("```\n")
	out.WriteString(renderCleanup(problems, "every emperor exited; no process and no mount was left under the workspace, and it was removed."))
	out.WriteString("\n")
	return out.String(), sectionOK(results, problems)
}

// runScaleSide runs cfg.scaleRuns starts and stops of cfg.scaleVassals
// vassals under one emperor, then samples the settled emperor's memory.
func runScaleSide(ctx context.Context, cfg *config, ws *workspace, s *side) *sideResult {
	r, err := startSideRun(cfg, ws, s)
	if err != nil {
		return r.result
	}
	for run := 1; run <= cfg.scaleRuns && ctx.Err() == nil; run++ {
		if err := r.measureScale(ctx, run); err != nil && ctx.Err() == nil {
			r.fail(metricSetup, run, err)
		}
	}
	if sleep(ctx, settleWait) == nil {
		r.recordMemory(r.emp.pid, cfg.scaleRuns, metricScaleEndRSS, metricScaleEndAnon, metricScaleEndPSS)
	}
	r.finish()
	return r.result
}

// measureScale drops cfg.scaleVassals files into the empty vassal
// directory, waits until every vassal serves, samples the idle emperor and
// removes every file.
func (r *sideRun) measureScale(ctx context.Context, run int) error {
	vassals := make([]*vassal, r.cfg.scaleVassals)
	for i := range vassals {
		v, err := r.newVassal(fmt.Sprintf("%s-%d-%03d", r.side.key, run, i+1))
		if err != nil {
			return err
		}
		vassals[i] = v
	}
	if err := pause(ctx, 3*time.Second); err != nil {
		return err
	}

	ticksBefore, err := cpuTicks(r.emp.pid)
	if err != nil {
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
			errs[i] = poll(ctx, scalePollInterval, scaleTimeout, fmt.Sprintf("HTTP 200 on 127.0.0.1:%d", v.port), func() (bool, error) {
				return servedCheaply(v.port, r.side.body), nil
			})
		})
	}
	wg.Wait()
	started := errors.Join(errs...)
	if started != nil {
		r.fail(metricScaleStart, run, started)
	} else {
		r.record(metricScaleStart, run, time.Since(start).Seconds())
		if ticks, err := cpuTicks(r.emp.pid); err == nil {
			r.record(metricStartTicks, run, float64(ticks-ticksBefore))
		} else {
			r.fail(metricStartTicks, run, err)
		}
		if err := r.sampleIdle(ctx, run); err != nil {
			r.fail(metricIdleTicks, run, err)
		}
	}

	// Vassals whose first process never appeared are still stopped and
	// waited for through their command lines.
	if err := r.findRoots(ctx, vassals); err != nil && started == nil {
		r.fail(metricScaleStop, run, err)
	}
	if err := pause(ctx, 3*time.Second); err != nil {
		return err
	}
	took, err := removeVassals(ctx, vassals, 20*time.Millisecond, scaleTimeout)
	if errors.Is(err, errTimedOut) {
		r.fail(metricScaleStop, run, err)
		return nil
	}
	if err != nil {
		return err
	}
	if started == nil {
		r.record(metricScaleStop, run, took.Seconds())
	}
	return nil
}

// sampleIdle waits settleWait after every vassal served, then records the
// CPU time of the emperor and of all vassal processes over cfg.idleWindow,
// and the memory at the end of the window.
func (r *sideRun) sampleIdle(ctx context.Context, run int) error {
	served, err := cpuTicks(r.emp.pid)
	if err != nil {
		return err
	}
	if err := sleep(ctx, settleWait); err != nil {
		return err
	}
	before, err := cpuTicks(r.emp.pid)
	if err != nil {
		return err
	}
	vassalsBefore, err := r.vassalTicks()
	if err != nil {
		return err
	}
	if err := sleep(ctx, r.cfg.idleWindow); err != nil {
		return err
	}
	after, err := cpuTicks(r.emp.pid)
	if err != nil {
		return err
	}
	vassalsAfter, err := r.vassalTicks()
	if err != nil {
		return err
	}
	r.record(metricIdleTicks, run, float64(after-before))
	r.record(metricSettleTicks, run, float64(after-served))
	var vassalTicks int64
	for p, ticks := range vassalsAfter {
		// A process that started or ended in the window counts for the
		// part that both samples see.
		if earlier, ok := vassalsBefore[p]; ok {
			vassalTicks += ticks - earlier
		}
	}
	r.record(metricVassalTicks, run, float64(vassalTicks))

	r.recordMemory(r.emp.pid, run, metricScaleRSS, metricScaleAnon, metricScalePSS)
	table, err := scanProcs()
	if err != nil {
		return err
	}
	var pss int64
	for _, p := range r.vassalTree(table) {
		m, err := readMemory(p.pid)
		if errors.Is(err, errNoMemory) || errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			continue
		}
		if err != nil {
			return fmt.Errorf("process %d (%s): %w", p.pid, p.cmdline(), err)
		}
		pss += m.pss
	}
	r.record(metricScaleProcPSS, run, float64(pss))
	return nil
}

// vassalTree returns the live processes below the emperor, which are the
// processes of its vassals.
func (r *sideRun) vassalTree(table *procTable) []proc {
	emperor, ok := table.byPid[r.emp.pid]
	if !ok {
		return nil
	}
	var found []proc
	for _, p := range table.descendants(emperor) {
		if p.pid != r.emp.pid {
			found = append(found, p)
		}
	}
	return found
}

// processKey identifies a process across two scans of /proc.
type processKey struct {
	pid   int
	start uint64
}

// vassalTicks returns the CPU time of every process below the emperor.
func (r *sideRun) vassalTicks() (map[processKey]int64, error) {
	table, err := scanProcs()
	if err != nil {
		return nil, err
	}
	ticks := make(map[processKey]int64)
	for _, p := range r.vassalTree(table) {
		t, err := cpuTicks(p.pid)
		if err != nil {
			continue // exited since the scan
		}
		ticks[processKey{p.pid, p.start}] = t
	}
	return ticks, nil
}

// servedCheaply reports whether "GET /" on the vassal's port returns 200 with
// the expected body, as served does, but it connects with plain system calls
// and writes the request itself. While 200 vassals start, most polls find no
// listener yet, and every poll takes CPU time from the starting vassals.
// Measured over 5,000 polls of a closed loopback port on the 2-CPU bench
// machine, such a poll took about 15 µs of CPU time this way and about 80 µs
// through net/http's client.
func servedCheaply(port int, body string) bool {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	// Connect and each read time out after 2 s, as the client of served
	// times out after 2 s.
	timeout := unix.NsecToTimeval((2 * time.Second).Nanoseconds())
	if unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &timeout) != nil ||
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &timeout) != nil {
		unix.Close(fd)
		return false
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		unix.Close(fd)
		return false
	}

	// Only a listening port gets this far, so this part runs once or a few
	// times per vassal.
	file := os.NewFile(uintptr(fd), "http")
	defer file.Close()
	request := fmt.Sprintf("GET / HTTP/1.0\r\nHost: 127.0.0.1:%d\r\n\r\n", port)
	if _, err := file.WriteString(request); err != nil {
		return false
	}
	resp, err := http.ReadResponse(bufio.NewReader(file), nil)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(io.LimitReader(resp.Body, 64*1024))
	return err == nil && resp.StatusCode == http.StatusOK && string(got) == body
}
