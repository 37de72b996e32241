package tests

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSIGSTOPRecovers stops the fuse-zip daemon with SIGSTOP, which leaves a
// live daemon that handles no request. It checks what
// TestHungFuseDaemonIsAborted does not: the recovery bound, the thread states
// of the emperor and the vassal init during the hang, a client request stuck
// on the mount, and the old daemon after the recovery.
func TestSIGSTOPRecovers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const (
		interval    = time.Second
		timeout     = 2 * time.Second
		stopTimeout = 2 * time.Second // webVassal's stop-timeout
	)
	emperor, app, port, firstInit := startWebEmperor(t, e,
		"mountpoint-check-interval = 1s",
		"mountpoint-check-timeout = 2s",
	)
	oldPidNamespace := namespace(firstInit, "pid")

	fuseZips := e.fuseZipPids()
	if len(fuseZips) != 1 {
		t.Fatalf("expected one fuse-zip daemon to stop, found %d: %v\n%s", len(fuseZips), e.processes(), emperor.tail())
	}
	hung := fuseZips[0]
	pidfd, err := chaosPidfd(hung, chaosChildOf(firstInit, app.zip))
	if err != nil {
		t.Fatalf("expected fuse-zip (pid %d) to be a child of the vassal init (pid %d): %v\n%s", hung, firstInit, err, emperor.tail())
	}
	t.Cleanup(func() { unix.Close(pidfd) })

	// The sampler watches the emperor and every vassal init seen so far.
	var watchedMu sync.Mutex
	watched := []int{emperor.pid(), firstInit}
	sampler := chaosSampleTasks(t, func() []int {
		watchedMu.Lock()
		defer watchedMu.Unlock()
		return slices.Clone(watched)
	})

	stopped := time.Now()
	if err := unix.PidfdSendSignal(pidfd, unix.SIGSTOP, nil, 0); err != nil {
		t.Fatalf("kill -STOP fuse-zip (pid %d): %v", hung, err)
	}

	// This request reaches httpd while the daemon is stopped, so httpd's
	// open of index.html waits on the FUSE connection. Its own timeout is
	// far beyond the abort.
	type response struct {
		done   time.Time
		status int
		err    error
	}
	stuck := make(chan response, 1)
	go func() {
		client := &http.Client{
			Timeout:   30 * time.Second,
			Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
		}
		var r response
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/index.html", port))
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			r.status = resp.StatusCode
		}
		r.err, r.done = err, time.Now()
		stuck <- r
	}()

	failure := emperor.waitLogOnce("mount check failed", matchLog("mount check failed; tearing the vassal down", "vassal", "web.ini", "pid", fmt.Sprint(firstInit)))
	t.Logf("the hung daemon was detected and aborted %v after SIGSTOP", failure.time.Sub(stopped).Round(time.Millisecond))
	if !strings.Contains(failure.attr("err"), "aborted connection") {
		t.Errorf("expected the failure to say the hung connection was aborted, found err=%q", failure.attr("err"))
	}

	newFuseZip, recovery := waitRecovery(t, e, emperor, hung, stopped, port, app.index)
	t.Logf("SIGSTOP of fuse-zip to the next 200 from a new fuse-zip: %v", recovery.Round(time.Millisecond))
	if bound := timeout + interval + time.Second; recovery > bound {
		t.Errorf("expected a new fuse-zip to serve within %v (mountpoint-check-timeout + interval + 1s) of SIGSTOP, took %v\n%s", bound, recovery, emperor.tail())
	}
	secondInit := emperor.waitVassalStarted("web.ini", 2)
	watchedMu.Lock()
	watched = append(watched, secondInit)
	watchedMu.Unlock()

	// The request must have waited on the hung daemon until the abort,
	// and must end soon after it: the abort fails httpd's open, and the
	// teardown ends httpd.
	returnBound := failure.time.Add(stopTimeout + time.Second)
	select {
	case r := <-stuck:
		outcome := fmt.Sprintf("status %d", r.status)
		if r.err != nil {
			outcome = "error " + r.err.Error()
		}
		t.Logf("the request sent during the hang returned %v after SIGSTOP, %v after the abort was logged: %s",
			r.done.Sub(stopped).Round(time.Millisecond), r.done.Sub(failure.time).Round(time.Millisecond), outcome)
		// Log times have millisecond precision.
		if r.done.Before(failure.time.Add(-50 * time.Millisecond)) {
			t.Errorf("expected the request sent during the hang to wait for the abort (logged %v after SIGSTOP), it returned %v after SIGSTOP: %s\n%s",
				failure.time.Sub(stopped).Round(time.Millisecond), r.done.Sub(stopped).Round(time.Millisecond), outcome, emperor.tail())
		}
	case <-time.After(time.Until(returnBound)):
		t.Errorf("expected the request sent during the hang to return within %v of the abort, it is still waiting %v after SIGSTOP\n%s",
			stopTimeout+time.Second, time.Since(stopped).Round(time.Millisecond), emperor.tail())
	}

	// The teardown killed every process of the old pid namespace, so
	// SIGCONT finds no process and nothing changes.
	err = unix.PidfdSendSignal(pidfd, unix.SIGCONT, nil, 0)
	if !errors.Is(err, unix.ESRCH) {
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", hung))
		t.Errorf("expected the old fuse-zip (pid %d) to be gone with its pid namespace (SIGCONT fails with ESRCH), SIGCONT returned %v; /proc/%d/stat: %s\n%s",
			hung, err, hung, stat, emperor.tail())
	}
	for _, p := range e.processes() {
		if namespace(p.pid, "pid") == oldPidNamespace {
			t.Errorf("expected no process left in the old vassal's pid namespace %s, found %s\n%s", oldPidNamespace, p, emperor.tail())
		}
	}

	// Two intervals and a timeout: enough for any effect of the SIGCONT
	// on the mount checks to show.
	watch := 2*interval + timeout + 500*time.Millisecond
	failedFetches := 0
	var lastFailure string
	for end := time.Now().Add(watch); time.Now().Before(end); {
		status, body, err := fetch(port)
		if err != nil || status != http.StatusOK || body != app.index {
			failedFetches++
			lastFailure = fmt.Sprintf("status %d, body %q, err %v", status, body, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if failedFetches > 0 {
		t.Errorf("expected the vassal to keep serving for %v after SIGCONT, %d requests failed, the last with %s\n%s", watch, failedFetches, lastFailure, emperor.tail())
	}
	if starts := emperor.find(matchLog("vassal started", "vassal", "web.ini")); len(starts) != 2 || starts[1].attr("pid") != fmt.Sprint(secondInit) {
		t.Errorf("expected the vassal to keep vassal init %d after SIGCONT (2 starts in all), found %d starts\n%s", secondInit, len(starts), emperor.tail())
	}
	if deaths := emperor.find(matchLog("vassal died; respawning", "vassal", "web.ini")); len(deaths) != 1 {
		t.Errorf("expected exactly one vassal death (the hang), found %d\n%s", len(deaths), emperor.tail())
	}
	if got := e.fuseZipPids(); !slices.Equal(got, []int{newFuseZip}) {
		t.Errorf("expected fuse-zip %d to keep serving after SIGCONT, found fuse-zip pids %v\n%s", newFuseZip, got, emperor.tail())
	}

	report := sampler.finish()
	longest := report.maxBlocked()
	t.Logf("thread states of the emperor (pid %d) and vassal inits %d, %d: %d samples of %d threads; longest state D: %v; state and wchan per sample: %s",
		emperor.pid(), firstInit, secondInit, report.samples, report.threads, longest.length().Round(time.Millisecond), strings.Join(report.waits, ", "))
	if report.samples < 10 {
		t.Errorf("expected the thread states to be sampled at least 10 times during the hang, they were sampled %d times", report.samples)
	}
	limit := timeout + time.Second
	for _, run := range report.over(limit) {
		t.Errorf("expected no thread of the emperor or a vassal init in state D for more than %v (mountpoint-check-timeout + 1s), found %s\n%s", limit, run, emperor.tail())
	}
}

// Defaults of TestChaos, which FIEF_CHAOS_KILLS and FIEF_CHAOS_HANGS
// override. With them, go test -run '^TestChaos$' took 105 s on a 2-CPU VM
// (Linux 6.18), and 1000 kills with 100 hangs took 8.5 minutes.
const (
	chaosDefaultKills = 200
	chaosDefaultHangs = 20
	chaosVassals      = 10
)

// Mount check settings of the chaos vassals: a short timeout makes a hang
// quick to detect.
const (
	chaosCheckInterval = 500 * time.Millisecond
	chaosCheckTimeout  = time.Second
)

// chaosMaxBackoff is the max respawn delay the test lets a vassal reach. A
// fault is injected into a vassal only when its next death would wait at most
// this long. Otherwise the vassal first runs for chaosQuickDeath, which
// resets its deaths in a row. So every vassal goes through the delays 0 s,
// 1 s, 2 s and 4 s again and again.
const chaosMaxBackoff = 4 * time.Second

// chaosIdleLimit bounds the wait for a vassal that is ready for a fault. The
// longest expected wait is chaosQuickDeath plus a recovery.
const chaosIdleLimit = 60 * time.Second

// TestChaos runs 10 web vassals under one emperor and injects a seeded random
// sequence of faults: kill -9 of the fuse-zip daemon, of busybox httpd and of
// the vassal init, and SIGSTOP of the fuse-zip daemon. Each fault must cause
// exactly one death and respawn of its vassal, with the logged cause and the
// documented backoff. After the run every vassal must serve its own app, and
// the emperor must hold no extra mount, process, zombie, descriptor, thread
// or memory.
//
// FIEF_CHAOS_SEED replays a seed. The seed fixes the order of the faults,
// the choice among the vassals ready for one, and the pauses. Which vassals
// are ready depends on timing, so a replay is close to the original run but
// not identical.
//
// The test does not call t.Parallel: it runs alone, so its load does not
// stretch the timing bounds of the other tests, nor theirs its own.
func TestChaos(t *testing.T) {
	kills, err := chaosEnvInt("FIEF_CHAOS_KILLS", chaosDefaultKills)
	if err != nil || kills < 0 {
		t.Fatalf("FIEF_CHAOS_KILLS must be a count of 0 or more: %v (value %d)", err, kills)
	}
	hangs, err := chaosEnvInt("FIEF_CHAOS_HANGS", chaosDefaultHangs)
	if err != nil || hangs < 0 {
		t.Fatalf("FIEF_CHAOS_HANGS must be a count of 0 or more: %v (value %d)", err, hangs)
	}
	seed, err := chaosEnvInt("FIEF_CHAOS_SEED", time.Now().UnixNano())
	if err != nil {
		t.Fatalf("FIEF_CHAOS_SEED must be an integer: %v", err)
	}
	t.Logf("chaos seed %d (set FIEF_CHAOS_SEED=%d to replay), %d kills, %d hangs, %d vassals", seed, seed, kills, hangs, chaosVassals)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))

	e := newEnv(t)
	run := &chaosRun{t: t, e: e, byName: map[string]*chaosVassal{}, byInit: map[int]*chaosAction{}}
	for i := range chaosVassals {
		name := fmt.Sprintf("app%02d", i)
		v := &chaosVassal{
			name: fmt.Sprintf("v%02d.ini", i),
			app:  e.newApp(name, fmt.Sprintf("chaos vassal %d\n", i)),
			port: freePort(t),
		}
		v.file = e.writeVassal(v.name, webVassal(v.app, v.port,
			"mountpoint-check-interval = "+chaosCheckInterval.String(),
			"mountpoint-check-timeout = "+chaosCheckTimeout.String(),
		))
		run.vassals = append(run.vassals, v)
		run.byName[v.name] = v
	}

	run.emperor = e.startEmperor()
	run.follower = &chaosLogFollower{path: run.emperor.logPath}
	for _, v := range run.vassals {
		run.emperor.mustServe(v.port, v.app.index)
	}
	run.update()
	for _, v := range run.vassals {
		if v.init == 0 {
			t.Fatalf("expected a vassal started line for %s once it serves, found none\n%s", v.name, run.emperor.tail())
		}
	}
	baseline, err := chaosReadUsage(run.emperor.pid())
	if err != nil {
		t.Fatalf("reading the emperor's resource use: %v", err)
	}
	t.Logf("emperor baseline with %d vassals serving: %v", chaosVassals, baseline)
	sampler := chaosSampleTasks(t, run.watchedPids)

	// The plan is the seeded order of the faults.
	var plan []chaosKind
	for range kills {
		plan = append(plan, chaosKind(rng.IntN(3)))
	}
	for range hangs {
		plan = append(plan, chaosHang)
	}
	rng.Shuffle(len(plan), func(i, j int) { plan[i], plan[j] = plan[j], plan[i] })

	begin := time.Now()
	for seq, kind := range plan {
		v := run.waitReady(rng)
		run.inject(seq, kind, v)
		time.Sleep(time.Duration(rng.IntN(50)) * time.Millisecond)
	}
	injected := time.Since(begin)
	run.waitNoPending()
	total := time.Since(begin)

	counts := map[chaosKind]int{}
	for _, a := range run.actions {
		counts[a.kind]++
	}
	deaths := run.find(matchLog("vassal died; respawning"))
	t.Logf("chaos done: %d kill -9 of fuse-zip, %d kill -9 of httpd, %d kill -9 of the vassal init, %d SIGSTOP of fuse-zip (up to %d at once); %d respawns in the log; max respawn delay %v; faults injected in %v, all recovered after %v",
		counts[chaosKillFuse], counts[chaosKillProgram], counts[chaosKillInit], counts[chaosHang], run.maxHangs, len(deaths), run.maxDelay, injected.Round(time.Millisecond), total.Round(time.Millisecond))
	run.logRecoveries()

	run.checkEveryVassalServes()
	run.checkCauses()
	run.checkDeaths(deaths)
	run.checkBackoff()
	run.checkLogHasNo(
		"vassal start failed",
		"spawning the vassal init failed",
		"vassal init did not stop in time; sending SIGKILL",
		"vassal init stuck after SIGKILL; aborted its FUSE connections",
		"a process was stuck after SIGKILL; aborted the vassal's FUSE connections",
	)
	run.checkHostMounts()
	run.checkProcesses()
	run.checkZombies()
	run.checkUsage(baseline)

	report := sampler.finish()
	longest := report.maxBlocked()
	t.Logf("thread states of the emperor and the vassal inits: %d samples of %d threads; longest state D: %v (%s)",
		report.samples, report.threads, longest.length().Round(time.Millisecond), longest.wchan)
	limit := chaosCheckTimeout + time.Second
	for _, blocked := range report.over(limit) {
		t.Errorf("expected no thread of the emperor or a vassal init in state D for more than %v (mountpoint-check-timeout + 1s), found %s", limit, blocked)
	}

	// The checks above print their values, and one log tail serves them
	// all.
	if t.Failed() {
		t.Logf("%s", run.emperor.tail())
	}
}

// chaosKind is one kind of fault.
type chaosKind int

const (
	chaosKillFuse    chaosKind = iota // kill -9 of the fuse-zip daemon
	chaosKillProgram                  // kill -9 of busybox httpd, the program
	chaosKillInit                     // kill -9 of the vassal init
	chaosHang                         // SIGSTOP of the fuse-zip daemon
)

func (k chaosKind) String() string {
	switch k {
	case chaosKillFuse:
		return "kill -9 fuse-zip"
	case chaosKillProgram:
		return "kill -9 httpd"
	case chaosKillInit:
		return "kill -9 vassal init"
	case chaosHang:
		return "SIGSTOP fuse-zip"
	}
	return fmt.Sprintf("chaosKind(%d)", int(k))
}

// detectBound bounds the time from the fault to the vassal's death in the
// log. A kill is seen at once, and a hang after at most one interval and one
// probe timeout. The slack covers a loaded machine.
func (k chaosKind) detectBound() time.Duration {
	if k == chaosHang {
		return chaosCheckInterval + chaosCheckTimeout + 5*time.Second
	}
	return 5 * time.Second
}

// chaosVassal is one vassal of the chaos test as the test last saw it.
type chaosVassal struct {
	name string // file name, such as v03.ini
	file string // absolute path of the vassal file
	app  zipApp
	port int

	// init is the pid of the latest vassal init, and started the time of
	// its "vassal started" log line.
	init    int
	started time.Time
	// deaths is deaths_in_a_row of the vassal's latest death, 0 before
	// the first.
	deaths int
	// pending is the fault the vassal has not recovered from yet.
	pending *chaosAction
}

// chaosAction is one injected fault and what followed it.
type chaosAction struct {
	seq    int
	kind   chaosKind
	vassal *chaosVassal
	init   int // the vassal init at the time of the fault
	target int // the pid signalled
	at     time.Time

	// died is the "vassal died; respawning" line of init, nil until seen.
	died  *logRecord
	delay time.Duration
	// next is the vassal init started after the death, 0 until seen.
	next        int
	nextStarted time.Time
	recovered   time.Time
}

func (a *chaosAction) String() string {
	return fmt.Sprintf("fault %d: %s of %s (vassal init %d, target pid %d) at %s",
		a.seq, a.kind, a.vassal.name, a.init, a.target, a.at.Format("15:04:05.000"))
}

// chaosRun is the state of one chaos test.
type chaosRun struct {
	t        *testing.T
	e        *testEnv
	emperor  *fiefProcess
	follower *chaosLogFollower

	vassals []*chaosVassal
	byName  map[string]*chaosVassal
	actions []*chaosAction
	// byInit maps a vassal init to the fault injected into it, until its
	// death is seen.
	byInit map[int]*chaosAction
	// records are every emperor log record read so far.
	records []logRecord
	// unexpected are deaths that no fault explains.
	unexpected []logRecord
	maxDelay   time.Duration
	// maxHangs is the max number of hangs pending at once.
	maxHangs int

	// initsMu guards inits, the current vassal inits, which the thread
	// sampler reads from its own goroutine.
	initsMu sync.Mutex
	inits   []int
}

// watchedPids returns the emperor and the current vassal inits.
func (r *chaosRun) watchedPids() []int {
	r.initsMu.Lock()
	defer r.initsMu.Unlock()
	return append([]int{r.emperor.pid()}, r.inits...)
}

// update reads the new emperor log lines and follows the vassal inits and
// deaths they report.
func (r *chaosRun) update() {
	r.t.Helper()
	records, err := r.follower.next()
	if err != nil {
		r.t.Fatalf("reading the emperor log: %v", err)
	}
	for _, record := range records {
		r.records = append(r.records, record)
		v := r.byName[record.attr("vassal")]
		if v == nil {
			continue
		}
		switch record.msg {
		case "vassal started":
			pid, err := strconv.Atoi(record.attr("pid"))
			if err != nil {
				r.t.Fatalf("invalid pid in %q", record.raw)
			}
			v.init, v.started = pid, record.time
			if a := v.pending; a != nil && a.died != nil && a.next == 0 {
				a.next, a.nextStarted = pid, record.time
			}
		case "vassal died; respawning":
			r.recordDeath(v, record)
		}
	}

	inits := make([]int, 0, len(r.vassals))
	for _, v := range r.vassals {
		inits = append(inits, v.init)
	}
	r.initsMu.Lock()
	r.inits = inits
	r.initsMu.Unlock()
}

func (r *chaosRun) recordDeath(v *chaosVassal, record logRecord) {
	r.t.Helper()
	pid, err := strconv.Atoi(record.attr("pid"))
	if err != nil {
		r.t.Fatalf("invalid pid in %q", record.raw)
	}
	deaths, err := strconv.Atoi(record.attr("deaths_in_a_row"))
	if err != nil {
		r.t.Fatalf("invalid deaths_in_a_row in %q", record.raw)
	}
	delay, err := time.ParseDuration(record.attr("delay"))
	if err != nil {
		r.t.Fatalf("invalid delay in %q", record.raw)
	}
	v.deaths = deaths
	r.maxDelay = max(r.maxDelay, delay)

	a := r.byInit[pid]
	if a == nil || a.vassal != v {
		r.unexpected = append(r.unexpected, record)
		return
	}
	delete(r.byInit, pid)
	a.died, a.delay = &record, delay
}

// progress advances the pending fault of each vassal: a death, then a new
// vassal init, then a 200 with the vassal's content. It fails the test when
// a step is overdue.
func (r *chaosRun) progress() {
	r.t.Helper()
	now := time.Now()
	for _, v := range r.vassals {
		a := v.pending
		switch {
		case a == nil:
		case a.died == nil:
			if now.Sub(a.at) > a.kind.detectBound() {
				r.t.Fatalf("expected %s to die within %v of %s, no death of vassal init %d is logged\n%s",
					v.name, a.kind.detectBound(), a, a.init, r.emperor.tail())
			}
		case a.next == 0:
			// The respawn delay plus slack for a loaded machine.
			if bound := a.delay + 3*time.Second; now.Sub(a.died.time) > bound {
				r.t.Fatalf("expected %s to be respawned within %v of its death after %s, no new vassal init is logged\n%s",
					v.name, bound, a, r.emperor.tail())
			}
		case serves(v.port, v.app.index):
			a.recovered = time.Now()
			v.pending = nil
		default:
			if now.Sub(a.nextStarted) > serveTimeout {
				status, body, err := fetch(v.port)
				r.t.Fatalf("expected %s to serve its app within %v of the start of vassal init %d after %s; last response: status %d, body %q, err %v\n%s",
					v.name, serveTimeout, a.next, a, status, body, err, r.emperor.tail())
			}
		}
	}
}

// ready reports whether a fault may be injected into v now: it has no
// pending fault, and its next death would wait at most chaosMaxBackoff.
func (r *chaosRun) ready(v *chaosVassal) bool {
	if v.pending != nil {
		return false
	}
	next := v.deaths + 1
	// The margin covers the gap between the emperor's start time and the
	// time of its log line.
	if time.Since(v.started) >= chaosQuickDeath+500*time.Millisecond {
		next = 1
	}
	return chaosBackoff(next) <= chaosMaxBackoff
}

// waitReady waits until at least one vassal is ready for a fault and picks
// one of them at random.
func (r *chaosRun) waitReady(rng *rand.Rand) *chaosVassal {
	r.t.Helper()
	start := time.Now()
	for {
		r.update()
		r.progress()
		var ready []*chaosVassal
		for _, v := range r.vassals {
			if r.ready(v) {
				ready = append(ready, v)
			}
		}
		if len(ready) > 0 {
			return ready[rng.IntN(len(ready))]
		}
		if time.Since(start) > chaosIdleLimit {
			r.t.Fatalf("expected a vassal to be ready for a fault within %v, none was:\n%s\n%s", chaosIdleLimit, r.describeVassals(), r.emperor.tail())
		}
		time.Sleep(pollPeriod)
	}
}

// waitNoPending waits until every vassal has recovered from its fault.
// progress bounds each step.
func (r *chaosRun) waitNoPending() {
	r.t.Helper()
	for {
		r.update()
		r.progress()
		if !slices.ContainsFunc(r.vassals, func(v *chaosVassal) bool { return v.pending != nil }) {
			return
		}
		time.Sleep(pollPeriod)
	}
}

func (r *chaosRun) describeVassals() string {
	var b strings.Builder
	for _, v := range r.vassals {
		state := "no pending fault"
		if v.pending != nil {
			state = "pending " + v.pending.String()
		}
		fmt.Fprintf(&b, "  %s: vassal init %d started %v ago, deaths in a row %d, %s\n",
			v.name, v.init, time.Since(v.started).Round(time.Millisecond), v.deaths, state)
	}
	return b.String()
}

// inject injects one fault into v. The vassal serves and has no pending
// fault, so its processes are the running ones of its current vassal init.
func (r *chaosRun) inject(seq int, kind chaosKind, v *chaosVassal) {
	r.t.Helper()
	if _, err := waitServes(v.port, v.app.index, 5*time.Second); err != nil {
		r.t.Fatalf("expected %s to serve before fault %d, since it recovered from its last fault: %v\n%s", v.name, seq, err, r.emperor.tail())
	}

	var matches func(pid int) bool
	var target int
	sig := unix.SIGKILL
	switch kind {
	case chaosKillInit:
		target = v.init
		matches = chaosChildOf(r.emperor.pid(), v.file)
	case chaosKillProgram:
		// Connection handlers of httpd are children of the listener.
		matches = chaosChildOf(v.init, fmt.Sprintf("-p 127.0.0.1:%d ", v.port))
	case chaosKillFuse, chaosHang:
		matches = chaosChildOf(v.init, v.app.zip)
		if kind == chaosHang {
			sig = unix.SIGSTOP
		}
	}
	if target == 0 {
		var found []process
		for _, p := range r.e.processes() {
			if matches(p.pid) {
				found = append(found, p)
			}
		}
		if len(found) != 1 {
			r.t.Fatalf("expected one process for %s in %s (vassal init %d), found %d:\n%s\nall processes of the test:\n%s%s",
				kind, v.name, v.init, len(found), formatProcesses(found), formatProcesses(r.e.processes()), r.emperor.tail())
		}
		target = found[0].pid
	}

	a := &chaosAction{seq: seq, kind: kind, vassal: v, init: v.init, target: target, at: time.Now()}
	if err := chaosSignalPid(target, sig, matches); err != nil {
		r.t.Fatalf("%s: %v\n%s", a, err, r.emperor.tail())
	}
	r.actions = append(r.actions, a)
	r.byInit[v.init] = a
	v.pending = a

	hangs := 0
	for _, other := range r.vassals {
		if other.pending != nil && other.pending.kind == chaosHang {
			hangs++
		}
	}
	r.maxHangs = max(r.maxHangs, hangs)
}

// find returns the log records read so far that match.
func (r *chaosRun) find(match func(logRecord) bool) []logRecord {
	var found []logRecord
	for _, record := range r.records {
		if match(record) {
			found = append(found, record)
		}
	}
	return found
}

// logRecoveries logs the longest time from a fault to the next 200, per
// kind, and the longest hang detection.
func (r *chaosRun) logRecoveries() {
	longest := map[chaosKind]*chaosAction{}
	for _, a := range r.actions {
		if a.recovered.IsZero() {
			continue
		}
		if l := longest[a.kind]; l == nil || a.recovered.Sub(a.at) > l.recovered.Sub(l.at) {
			longest[a.kind] = a
		}
	}
	for kind := chaosKillFuse; kind <= chaosHang; kind++ {
		if a := longest[kind]; a != nil {
			r.t.Logf("longest recovery after %s: %v, with a respawn delay of %v", kind, a.recovered.Sub(a.at).Round(time.Millisecond), a.delay)
		}
	}
}

// checkEveryVassalServes waits until every vassal serves its own app. The
// bound covers the longest respawn delay seen.
func (r *chaosRun) checkEveryVassalServes() {
	bound := r.maxDelay + serveTimeout
	for _, v := range r.vassals {
		if _, err := waitServes(v.port, v.app.index, bound); err != nil {
			r.t.Errorf("expected %s to serve its app after the chaos: %v", v.name, err)
		}
	}
}

// checkCauses checks that the log of each fault's vassal init names the
// fault as the cause of its death.
func (r *chaosRun) checkCauses() {
	const maxReports = 10
	reports := 0
	failCause := func(a *chaosAction, format string, args ...any) {
		reports++
		if reports <= maxReports {
			r.t.Errorf("%s: %s", a, fmt.Sprintf(format, args...))
		}
	}

	var longestDetection time.Duration
	for _, a := range r.actions {
		if a.died == nil {
			failCause(a, "expected a vassal died line for vassal init %d, found none", a.init)
			continue
		}
		ofInit := func(msg string) []logRecord {
			return r.find(func(record logRecord) bool {
				return record.msg == msg && record.attr("pid") == fmt.Sprint(a.init) &&
					!record.time.Before(a.at.Add(-time.Second)) && !record.time.After(a.died.time)
			})
		}
		status := a.died.attr("status")

		switch a.kind {
		case chaosKillInit:
			if status != "killed by signal SIGKILL" {
				failCause(a, "expected the vassal died line to say status=%q, found %q", "killed by signal SIGKILL", status)
			}
		case chaosKillProgram:
			exits := ofInit("program exited unexpectedly")
			if len(exits) != 1 || exits[0].attr("status") != "killed by signal SIGKILL" {
				failCause(a, "expected one program exited unexpectedly line with status=%q, found %d:\n%s", "killed by signal SIGKILL", len(exits), chaosRawLines(exits))
			}
		case chaosKillFuse, chaosHang:
			// A probe that runs when the daemon dies fails with
			// ECONNABORTED, a later one with ENOTCONN.
			expected := []string{"ENOTCONN", "software caused connection abort"}
			if a.kind == chaosHang {
				expected = []string{"aborted connection"}
			}
			failures := ofInit("mount check failed; tearing the vassal down")
			if len(failures) != 1 || !slices.ContainsFunc(expected, func(text string) bool { return strings.Contains(failures[0].attr("err"), text) }) {
				failCause(a, "expected one mount check failed line whose err contains one of %q, found %d:\n%s", expected, len(failures), chaosRawLines(failures))
				continue
			}
			if a.kind == chaosHang {
				detection := failures[0].time.Sub(a.at)
				longestDetection = max(longestDetection, detection)
				if bound := chaosCheckTimeout + chaosCheckInterval + time.Second; detection > bound {
					failCause(a, "expected the hang to be detected within %v (mountpoint-check-timeout + interval + 1s), it took %v", bound, detection)
				}
			}
		}
		if a.kind != chaosKillInit && status != "exit status 1" {
			failCause(a, "expected the vassal init to exit with status 1 after the failure, found status=%q", status)
		}
	}
	if reports > maxReports {
		r.t.Errorf("%d more faults had an unexpected cause of death; only the first %d are shown", reports-maxReports, maxReports)
	}
	r.t.Logf("longest hang detection: %v", longestDetection.Round(time.Millisecond))
}

// checkDeaths checks that every death in the log comes from a fault, one
// death per fault.
func (r *chaosRun) checkDeaths(deaths []logRecord) {
	if len(deaths) != len(r.actions) {
		r.t.Errorf("expected %d vassal deaths in the log, one per fault, found %d", len(r.actions), len(deaths))
	}
	for i, record := range r.unexpected {
		if i == 10 {
			r.t.Errorf("%d more unexpected deaths", len(r.unexpected)-i)
			break
		}
		r.t.Errorf("expected every vassal death to follow a fault, found one that none explains: %s", record.raw)
	}
}

// checkBackoff checks every death's deaths_in_a_row and delay against the
// emperor's rule, and that each respawn waited that delay.
func (r *chaosRun) checkBackoff() {
	const maxReports = 10
	reports := 0
	fail := func(format string, args ...any) {
		reports++
		if reports <= maxReports {
			r.t.Errorf(format, args...)
		}
	}

	for _, v := range r.vassals {
		previous := 0
		var lastDeath *logRecord
		for _, record := range r.records {
			if record.attr("vassal") != v.name {
				continue
			}
			switch record.msg {
			case "vassal died; respawning":
				ran, err := time.ParseDuration(record.attr("ran"))
				if err != nil {
					fail("invalid ran in %q", record.raw)
					continue
				}
				expected := previous + 1
				if ran >= chaosQuickDeath {
					expected = 1
				}
				got, _ := strconv.Atoi(record.attr("deaths_in_a_row"))
				// ran is rounded to the millisecond, so a run of
				// about 10 s can go either way.
				nearQuickDeath := ran > chaosQuickDeath-5*time.Millisecond && ran < chaosQuickDeath+5*time.Millisecond
				if got != expected && !nearQuickDeath {
					fail("expected deaths_in_a_row=%d after %d before and a run of %v, found %q", expected, previous, ran, record.raw)
				}
				if delay := record.attr("delay"); delay != chaosBackoff(got).String() {
					fail("expected delay=%v for deaths_in_a_row=%d, found %q", chaosBackoff(got), got, record.raw)
				}
				previous = got
				lastDeath = &record
			case "vassal started":
				if lastDeath == nil {
					continue
				}
				delay, _ := time.ParseDuration(lastDeath.attr("delay"))
				gap := record.time.Sub(lastDeath.time)
				// Log times have millisecond precision.
				if gap < delay-2*time.Millisecond || gap > delay+3*time.Second {
					fail("expected %s to be respawned %v after its death (up to 3s later on a loaded machine), it was respawned after %v: %q then %q",
						v.name, delay, gap, lastDeath.raw, record.raw)
				}
				lastDeath = nil
			}
		}
	}
	if reports > maxReports {
		r.t.Errorf("%d more backoff mismatches; only the first %d are shown", reports-maxReports, maxReports)
	}
}

// checkLogHasNo checks that the emperor log has no line with one of the
// messages.
func (r *chaosRun) checkLogHasNo(messages ...string) {
	for _, msg := range messages {
		if found := r.find(matchLog(msg)); len(found) > 0 {
			r.t.Errorf("expected no %q line in the emperor log, found %d, the first: %s", msg, len(found), found[0].raw)
		}
	}
}

func (r *chaosRun) checkHostMounts() {
	lines, err := mountLines("self", r.e.dir+"/")
	if err != nil {
		r.t.Errorf("reading the host mount table: %v", err)
		return
	}
	if len(lines) > 0 {
		r.t.Errorf("expected no mount of the test directory in the host mount table, found:\n%s", strings.Join(lines, "\n"))
	}
}

// checkProcesses checks that the processes of the test are exactly the
// emperor and, per vassal, its current vassal init with one fuse-zip and one
// httpd. httpd's connection handlers of the last requests may take a moment
// to exit, so the check retries for a few seconds.
func (r *chaosRun) checkProcesses() {
	var problems []string
	deadline := time.Now().Add(5 * time.Second)
	for {
		problems = problems[:0]
		var expected []int
		for _, v := range r.vassals {
			expected = append(expected, v.init)
			for _, child := range []struct {
				program string
				matches func(int) bool
			}{
				{"fuse-zip", chaosChildOf(v.init, v.app.zip)},
				{"httpd", chaosChildOf(v.init, fmt.Sprintf("-p 127.0.0.1:%d ", v.port))},
			} {
				var found []int
				for _, p := range r.e.processes() {
					if child.matches(p.pid) {
						found = append(found, p.pid)
					}
				}
				if len(found) != 1 {
					problems = append(problems, fmt.Sprintf("expected one %s of %s under vassal init %d, found %d: %v", child.program, v.name, v.init, len(found), found))
				}
				expected = append(expected, found...)
			}
			if !chaosChildOf(r.emperor.pid(), v.file)(v.init) {
				problems = append(problems, fmt.Sprintf("expected vassal init %d of %s to run as a child of the emperor (pid %d), it does not: %v", v.init, v.name, r.emperor.pid(), chaosArgv(v.init)))
			}
		}
		all := r.e.processes(r.emperor.pid())
		var stray []process
		for _, p := range all {
			if !slices.Contains(expected, p.pid) {
				stray = append(stray, p)
			}
		}
		if len(stray) > 0 {
			problems = append(problems, fmt.Sprintf("expected no process of the test beside the %d of the vassals, found:\n%s", 3*len(r.vassals), formatProcesses(stray)))
		}
		if len(all) != 3*len(r.vassals) {
			problems = append(problems, fmt.Sprintf("expected %d processes of the test beside the emperor (vassal init, fuse-zip and httpd per vassal), found %d", 3*len(r.vassals), len(all)))
		}
		if len(problems) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, problem := range problems {
		r.t.Errorf("%s", problem)
	}
	if len(problems) > 0 {
		r.t.Errorf("processes of the test:\n%s", formatProcesses(r.e.processes()))
	}
}

// checkZombies checks that neither the emperor nor a vassal init keeps a
// zombie child. A child that exited a moment ago is a zombie until its
// parent reaps it, so the check retries for a second.
func (r *chaosRun) checkZombies() {
	parents := r.watchedPids()
	var zombies []chaosZombie
	for deadline := time.Now().Add(time.Second); ; {
		zombies = chaosZombiesOf(parents)
		if len(zombies) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, z := range zombies {
		r.t.Errorf("expected no zombie child of the emperor or a vassal init (pids %v), found %s", parents, z)
	}
}

// checkUsage compares the emperor's descriptors, threads and resident memory
// with the baseline taken when the vassals first served. The check waits up
// to 10 s for the numbers to settle, because the Go runtime returns freed
// memory to the kernel in the background.
func (r *chaosRun) checkUsage(baseline chaosUsage) {
	const (
		threadTolerance = 2
		rssToleranceKiB = 2048
		// heapGoalKiB is the Go GC's minimum heap goal with GOGC=100
		// (defaultHeapMinimum in runtime/mgcpacer.go): the emperor's
		// garbage grows to it before the first collection, and the
		// runtime keeps freed heap pages resident for reuse. That rise
		// comes on top of a baseline taken early, and it is no leak.
		heapGoalKiB = 4096
	)
	rssLimit := baseline.rssKiB + heapGoalKiB + rssToleranceKiB
	var usage chaosUsage
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; {
		usage, err = chaosReadUsage(r.emperor.pid())
		if err != nil {
			r.t.Errorf("reading the emperor's resource use: %v", err)
			return
		}
		settled := usage.fds == baseline.fds && usage.threads <= baseline.threads+threadTolerance && usage.rssKiB <= rssLimit
		if settled || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	r.t.Logf("emperor after the chaos: %v; baseline %v", usage, baseline)
	if usage.fds != baseline.fds {
		r.t.Errorf("expected the emperor to hold %d fds as at the baseline, found %d:\n%s", baseline.fds, usage.fds, chaosFds(r.emperor.pid()))
	}
	if usage.threads > baseline.threads+threadTolerance {
		r.t.Errorf("expected the emperor to have at most %d threads (baseline %d + %d), found %d", baseline.threads+threadTolerance, baseline.threads, threadTolerance, usage.threads)
	}
	if usage.rssKiB > rssLimit {
		r.t.Errorf("expected the emperor's VmRSS to be at most %d KiB (baseline %d KiB + %d KiB of Go heap goal + %d KiB), found %d KiB",
			rssLimit, baseline.rssKiB, heapGoalKiB, rssToleranceKiB, usage.rssKiB)
	}
}
