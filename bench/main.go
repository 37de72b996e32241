// Command bench measures the fief emperor side by side with the uWSGI
// Emperor on the setup of uWSGI's FUSE tutorial. Each vassal mounts a zip
// file with fuse-zip in its own mount and pid namespaces and serves an app
// from it on a loopback port. The emperor respawns it when the fuse-zip
// daemon dies.
//
// It measures spawn, recovery and stop times of one vassal, the start and
// stop of many vassals at once, and the memory of the emperor and the
// vassal, and prints a Markdown table with medians, maxima, ratios and
// targets.
//
// Three more sections use the same emperors. The union section runs the
// tutorial's copy-on-write root (unionfs-fuse and pivot_root). The recovery
// section measures the distribution of recovery times after kill -9 and
// SIGSTOP of fuse-zip. The scale section starts many vassals at once (200
// by default) and samples the idle emperor's memory and CPU time.
//
// Its container section compares "fief -- CMD" with tini (reaping orphans,
// signal forwarding, exit latency) and "fief exec-as-user" with gosu, with
// bench/initchild as CMD. bench/run.sh runs it; it needs root.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// config holds the command-line settings.
type config struct {
	fiefPath   string
	uwsgiPath  string
	runs       int
	vassals    int
	portBase   int
	sideKeys   []string
	fuseStep   string
	resultsDir string

	// Sections to run. -only picks some of them, and all run without it.
	emperorSection   bool
	unionSection     bool
	recoverySection  bool
	scaleSection     bool
	containerSection bool

	unionRuns int // spawns and recoveries of the copy-on-write root vassal

	recoveryKills      int           // kill -9 recoveries of fief
	recoveryUWSGIKills int           // kill -9 recoveries of uWSGI
	recoveryHangs      int           // SIGSTOP recoveries of fief with 1 s check timeout and interval
	defaultHangs       int           // SIGSTOP recoveries of fief with the default check settings
	hungStops          int           // file removals of fief vassals whose FUSE daemon is stopped
	uwsgiHangs         int           // SIGSTOP runs of uWSGI, each followed by the file's removal
	hangLimit          time.Duration // how long a uWSGI vassal with a stopped daemon is watched

	scaleVassals int
	scaleRuns    int
	scaleApp     string        // the app of the uWSGI vassals in the scale section: static or psgi
	idleWindow   time.Duration // CPU sampling window with every vassal idle

	tiniPath       string
	tiniStaticPath string
	gosuPath       string
	orphans        int // orphans per orphan run
	orphanRuns     int
	signals        int // SIGUSR1 signals sent through each init
	exits          int // exit latency runs per init
	execs          int // runs of each exec-as-user command
}

// usesUWSGI reports whether a selected section runs the uWSGI Emperor.
func (cfg *config) usesUWSGI() bool {
	return cfg.emperorSection || cfg.unionSection || cfg.recoverySection || cfg.scaleSection
}

// emperorStopTimeout is how long an emperor may take to exit after its stop
// signal once its vassals are gone.
const emperorStopTimeout = 40 * time.Second

func main() {
	os.Exit(run())
}

func parseFlags() (*config, error) {
	cfg := &config{}
	var sideList string
	flag.StringVar(&cfg.fiefPath, "fief", "./fief", "path of the fief binary")
	flag.StringVar(&cfg.uwsgiPath, "uwsgi", "uwsgi", "uWSGI binary, a path or a name looked up in PATH")
	flag.IntVar(&cfg.runs, "runs", 5, "repetitions of each measurement")
	flag.IntVar(&cfg.vassals, "vassals", 20, "number of vassals started at once")
	flag.IntVar(&cfg.portBase, "port-base", 28100, "first loopback TCP port to try for the vassals")
	flag.StringVar(&sideList, "sides", "uwsgi,fief-busybox,fief-uwsgi", "comma-separated setups to measure: uwsgi, fief-busybox, fief-uwsgi")
	flag.StringVar(&cfg.fuseStep, "fuse-step", "exec-pre-jail", "vassal key that runs fuse-zip: exec-pre-jail or exec-as-user")
	flag.StringVar(&cfg.resultsDir, "results", "bench/results", "directory for the results file and the emperor logs; empty to write none")
	only := flag.String("only", "", "comma-separated sections to run: emperor (fief and the uWSGI Emperor), union (copy-on-write root), recovery (recovery time distributions), scale (many vassals, idle emperor) and container (fief -- and tini, fief exec-as-user and gosu); empty runs all")
	flag.IntVar(&cfg.unionRuns, "union-runs", 5, "union section: spawns and recoveries of the copy-on-write root vassal per emperor")
	flag.IntVar(&cfg.recoveryKills, "recovery-kills", 30, "recovery section: kill -9 recoveries of fief")
	flag.IntVar(&cfg.recoveryUWSGIKills, "recovery-uwsgi-kills", 15, "recovery section: kill -9 recoveries of uWSGI")
	flag.IntVar(&cfg.recoveryHangs, "recovery-hangs", 10, "recovery section: SIGSTOP recoveries of fief with mountpoint-check-timeout and -interval of 1s")
	flag.IntVar(&cfg.defaultHangs, "default-hangs", 3, "recovery section: SIGSTOP recoveries of fief with the default mount check settings")
	flag.IntVar(&cfg.hungStops, "hung-stops", 3, "recovery section: file removals of fief vassals whose fuse-zip is stopped")
	flag.IntVar(&cfg.uwsgiHangs, "uwsgi-hangs", 1, "recovery section: SIGSTOP runs of uWSGI, each followed by the removal of the vassal file")
	flag.DurationVar(&cfg.hangLimit, "hang-limit", 40*time.Second, "recovery section: how long a uWSGI vassal with a stopped fuse-zip is watched for a recovery")
	flag.IntVar(&cfg.scaleVassals, "scale-vassals", 200, "scale section: vassals started at once")
	flag.IntVar(&cfg.scaleRuns, "scale-runs", 5, "scale section: runs per emperor")
	flag.StringVar(&cfg.scaleApp, "scale-uwsgi-app", "static", "scale section: what the uWSGI vassals serve: static (index.html through the notfound plugin) or psgi (app.psgi)")
	flag.DurationVar(&cfg.idleWindow, "idle-window", 10*time.Second, "scale section: how long the CPU time of the idle emperor is sampled")
	flag.StringVar(&cfg.tiniPath, "tini", "/usr/bin/tini", "tini binary compared with fief --")
	flag.StringVar(&cfg.tiniStaticPath, "tini-static", "/usr/bin/tini-static", "tini-static binary, for the size table only")
	flag.StringVar(&cfg.gosuPath, "gosu", "/usr/sbin/gosu", "gosu binary compared with fief exec-as-user")
	flag.IntVar(&cfg.orphans, "orphans", 10000, "orphans that each orphan run leaves to the init to reap (at most 30000)")
	flag.IntVar(&cfg.orphanRuns, "orphan-runs", 5, "orphan runs of each init")
	flag.IntVar(&cfg.signals, "signals", 1000, "SIGUSR1 signals sent through each init, in two sessions")
	flag.IntVar(&cfg.exits, "exits", 200, "exit latency runs of each init")
	flag.IntVar(&cfg.execs, "execs", 500, "runs of each exec-as-user command")
	flag.Parse()

	if flag.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q: bench takes flags only", flag.Args())
	}
	if *only == "" {
		*only = "emperor,union,recovery,scale,container"
	}
	sections := map[string]*bool{
		"emperor":   &cfg.emperorSection,
		"union":     &cfg.unionSection,
		"recovery":  &cfg.recoverySection,
		"scale":     &cfg.scaleSection,
		"container": &cfg.containerSection,
	}
	for name := range strings.SplitSeq(*only, ",") {
		selected, ok := sections[strings.TrimSpace(name)]
		if !ok {
			return nil, fmt.Errorf("invalid section %q in -only: use emperor, union, recovery, scale or container, separated by commas, or leave it empty for all", name)
		}
		*selected = true
	}
	if cfg.runs < 1 || cfg.vassals < 1 || cfg.unionRuns < 1 || cfg.scaleRuns < 1 || cfg.scaleVassals < 1 {
		return nil, errors.New("-runs, -vassals, -union-runs, -scale-runs and -scale-vassals must be at least 1")
	}
	if cfg.recoveryKills < 1 || cfg.recoveryUWSGIKills < 1 || cfg.recoveryHangs < 0 || cfg.defaultHangs < 0 || cfg.hungStops < 0 || cfg.uwsgiHangs < 0 {
		return nil, errors.New("-recovery-kills and -recovery-uwsgi-kills must be at least 1, and -recovery-hangs, -default-hangs, -hung-stops and -uwsgi-hangs at least 0")
	}
	if cfg.scaleApp != "static" && cfg.scaleApp != "psgi" {
		return nil, fmt.Errorf("invalid -scale-uwsgi-app %q: use static or psgi", cfg.scaleApp)
	}
	if cfg.hangLimit < time.Second || cfg.idleWindow < time.Second {
		return nil, errors.New("-hang-limit and -idle-window must be at least 1s")
	}
	if cfg.orphans < 1 || cfg.orphans > 30000 || cfg.orphanRuns < 1 || cfg.signals < 2 || cfg.exits < 1 || cfg.execs < 1 {
		return nil, errors.New("-orphans must be 1 to 30000, -signals at least 2, and -orphan-runs, -exits and -execs at least 1")
	}
	if cfg.portBase < 1024 || cfg.portBase > 65000 {
		return nil, fmt.Errorf("invalid -port-base %d: use a port between 1024 and 65000", cfg.portBase)
	}
	if cfg.fuseStep != "exec-pre-jail" && cfg.fuseStep != "exec-as-user" {
		return nil, fmt.Errorf("invalid -fuse-step %q: use exec-pre-jail or exec-as-user", cfg.fuseStep)
	}

	known := sides()
	for key := range strings.SplitSeq(sideList, ",") {
		key = strings.TrimSpace(key)
		if !slices.ContainsFunc(known, func(s *side) bool { return s.key == key }) {
			return nil, fmt.Errorf("unknown side %q in -sides: use uwsgi, fief-busybox or fief-uwsgi", key)
		}
		cfg.sideKeys = append(cfg.sideKeys, key)
	}

	var err error
	if cfg.fiefPath, err = filepath.Abs(cfg.fiefPath); err != nil {
		return nil, err
	}
	if _, err := os.Stat(cfg.fiefPath); err != nil {
		return nil, fmt.Errorf("fief binary not found: %w; run make build", err)
	}
	if cfg.usesUWSGI() {
		if cfg.uwsgiPath, err = exec.LookPath(cfg.uwsgiPath); err != nil {
			return nil, fmt.Errorf("uWSGI not found: %w; install the Debian packages uwsgi-core and uwsgi-plugin-psgi", err)
		}
		tools := []string{"fuse-zip", "busybox"}
		if cfg.unionSection {
			tools = append(tools, "unionfs-fuse")
		}
		for _, tool := range tools {
			if _, err := exec.LookPath(tool); err != nil {
				return nil, fmt.Errorf("%s not found in PATH: %w; run make bench-deps", tool, err)
			}
		}
	}
	if cfg.containerSection {
		for _, path := range []string{cfg.tiniPath, cfg.tiniStaticPath, cfg.gosuPath, "/bin/true"} {
			if _, err := os.Stat(path); err != nil {
				return nil, fmt.Errorf("%w; run make bench-deps (Debian packages tini and gosu)", err)
			}
		}
	}
	return cfg, nil
}

func run() int {
	cfg, err := parseFlags()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: must run as root: vassals and inits need new mount and pid namespaces, and vassals FUSE mounts")
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	began := time.Now()
	stamp := began.UTC().Format("20060102-150405")
	logCopy := ""
	if cfg.resultsDir != "" {
		logCopy = filepath.Join(cfg.resultsDir, "bench-"+stamp+"-logs")
	}

	var report strings.Builder
	fmt.Fprintf(&report, "# fief benchmark, %s\n\n", began.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&report, "Harness arguments: %s\n\n", strings.Join(os.Args[1:], " "))
	report.WriteString(describeMachine(cfg))

	failed := false
	for _, section := range []struct {
		selected bool
		run      func(context.Context, *config, string) (string, bool)
	}{
		{cfg.emperorSection, runEmperorSection},
		{cfg.unionSection, runUnionSection},
		{cfg.recoverySection, runRecoverySection},
		{cfg.scaleSection, runScaleSection},
		{cfg.containerSection, runContainerSection},
	} {
		if !section.selected || ctx.Err() != nil {
			continue
		}
		text, ok := section.run(ctx, cfg, logCopy)
		report.WriteString(text)
		failed = failed || !ok
	}
	if logCopy != "" {
		fmt.Fprintf(&report, "\nLogs: %s\n", logCopy)
	}

	fmt.Print(report.String())
	if cfg.resultsDir != "" {
		path := filepath.Join(cfg.resultsDir, "bench-"+stamp+".md")
		if err := os.WriteFile(path, []byte(report.String()), 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "bench: writing %s failed: %v\n", path, err)
		} else {
			fmt.Fprintf(os.Stderr, "bench: results written to %s\n", path)
		}
	}

	if failed || ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "bench: some measurements failed or left something behind; see above")
		return 1
	}
	return 0
}

// runEmperorSection measures every selected emperor side and returns the
// Markdown section of the report, and false when a measurement failed or
// the clean-up found something left behind.
func runEmperorSection(ctx context.Context, cfg *config, logCopy string) (string, bool) {
	load, began := loadAverage(), time.Now()
	ws, err := newWorkspace(cfg.portBase)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		problems := []string{err.Error()}
		if ws != nil {
			problems = append(problems, ws.cleanup()...)
		}
		reportProblems(problems)
		return renderProblems("## fief emperor and the uWSGI Emperor\n\n", problems), false
	}
	fmt.Fprintf(os.Stderr, "bench: workspace %s\n", ws.root)

	var results []*sideResult
	for _, s := range sides() {
		if !slices.Contains(cfg.sideKeys, s.key) {
			continue
		}
		results = append(results, runSide(ctx, cfg, ws, s))
		if ctx.Err() != nil {
			break
		}
	}

	if logCopy != "" {
		if err := copyDir(ws.logs, logCopy); err != nil {
			fmt.Fprintf(os.Stderr, "bench: copying the emperor logs failed: %v\n", err)
		}
	}
	problems := ws.cleanup()
	reportProblems(problems)

	ok := len(problems) == 0
	for _, r := range results {
		ok = ok && !r.failed()
	}
	return renderReport(cfg, results, problems, sectionIntro(load, time.Since(began))), ok
}

// runContainerSection measures fief -- against tini and fief exec-as-user
// against gosu, and returns the Markdown section of the report, and false
// when a measurement failed or the clean-up found something left behind.
func runContainerSection(ctx context.Context, cfg *config, logCopy string) (string, bool) {
	const heading = "## fief -- and tini, fief exec-as-user and gosu\n\n"
	load, began := loadAverage(), time.Now()
	fmt.Fprintln(os.Stderr, "bench: container: building bench/initchild")
	b, err := newInitBench(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: container: %v\n", err)
		problems := []string{err.Error()}
		if b != nil {
			problems = append(problems, b.cleanup("")...)
		}
		reportProblems(problems)
		return renderProblems(heading, problems), false
	}
	fmt.Fprintf(os.Stderr, "bench: container: temporary directory %s\n", b.dir)

	b.run(ctx)
	problems := b.cleanup(logCopy)
	reportProblems(problems)

	var out strings.Builder
	out.WriteString(heading)
	out.WriteString(sectionIntro(load, time.Since(began)))
	fmt.Fprintf(&out, "- orphans per run: %d, orphan runs: %d, signals: %d, exit runs: %d per init; exec-as-user runs: %d per command\n",
		cfg.orphans, cfg.orphanRuns, cfg.signals, cfg.exits, cfg.execs)
	out.WriteString("- each init runs as pid 1 of a new pid namespace; ratios are fief's figure over tini's or gosu's; MB is 10^6 bytes\n\n")
	out.WriteString(renderInitTables(cfg, b))
	out.WriteString("\n```\n")
	out.WriteString(renderInitRaw(b))
	out.WriteString("```\n")
	out.WriteString(renderCleanup(problems, "every init exited; no process was left and the temporary directory was removed."))

	ok := len(problems) == 0
	for _, s := range b.inits {
		ok = ok && !s.result.failed()
	}
	for _, s := range b.execs {
		ok = ok && !s.result.failed()
	}
	return out.String(), ok
}

// runSide starts the side's emperor on an empty directory, runs every
// measurement cfg.runs times and stops the emperor.
func runSide(ctx context.Context, cfg *config, ws *workspace, s *side) *sideResult {
	r, err := startSideRun(cfg, ws, s)
	if err != nil {
		return r.result
	}
	emp := r.emp
	for run := 1; run <= cfg.runs && ctx.Err() == nil; run++ {
		if err := r.measureOne(ctx, run); err != nil && ctx.Err() == nil {
			r.fail(metricSetup, run, err)
		}
	}
	for run := 1; run <= cfg.runs && ctx.Err() == nil; run++ {
		if err := r.measureMany(ctx, run); err != nil && ctx.Err() == nil {
			r.fail(metricSetup, run, err)
		}
	}

	// Memory that the emperor keeps after many vassals came and went, once
	// it has been idle for longer than fief's settle delay.
	if sleep(ctx, settleWait) == nil {
		r.recordMemory(emp.pid, cfg.runs, metricEndEmperorRSS, metricEndAnon, metricEndPSS)
	}
	r.finish()
	return r.result
}

// startSideRun starts the side's emperor on an empty directory. On an error
// it records the failure in the result of the returned run, which has no
// emperor then.
func startSideRun(cfg *config, ws *workspace, s *side) (*sideRun, error) {
	r := &sideRun{cfg: cfg, ws: ws, side: s, result: newSideResult(s)}
	fmt.Fprintf(os.Stderr, "bench: %s: starting the emperor\n", s.key)
	emp, err := startEmperor(cfg, ws, s)
	if err != nil {
		r.result.fail(metricSetup, err.Error())
		fmt.Fprintf(os.Stderr, "bench: %s: %v\n", s.key, err)
		if emp != nil {
			_ = emp.stop(emperorStopTimeout)
		}
		return r, err
	}
	r.emp = emp
	return r, nil
}

// finish stops the emperor and compares the vassal deaths in its log with
// the deaths the benchmark caused.
func (r *sideRun) finish() {
	s, result := r.side, r.result
	if err := r.emp.stop(emperorStopTimeout); err != nil {
		result.fail(metricSetup, err.Error())
	}
	fmt.Fprintf(os.Stderr, "bench: %s: emperor stopped\n", s.key)

	// Each fuse-zip kill should cause exactly one respawn. More deaths
	// mean that some times above include unplanned respawns.
	deaths, err := r.emp.vassalDeaths()
	if err != nil {
		result.fail(metricSetup, err.Error())
	}
	result.deaths, result.kills = deaths, r.kills
	if deaths != r.kills {
		fmt.Fprintf(os.Stderr, "bench: %s: WARNING: the emperor log reports %d vassal deaths with respawn, but the benchmark killed the FUSE daemon %d times\n",
			s.key, deaths, r.kills)
	}
}

func reportProblems(problems []string) {
	for _, problem := range problems {
		fmt.Fprintf(os.Stderr, "bench: clean-up: %s\n", problem)
	}
}

// renderReport returns the Markdown section of the emperor benchmark.
func renderReport(cfg *config, results []*sideResult, problems []string, intro string) string {
	var b strings.Builder
	b.WriteString("## fief emperor and the uWSGI Emperor\n\n")
	b.WriteString(intro)
	fmt.Fprintf(&b, "- runs per measurement: %d; vassals started at once: %d; FUSE step key: %s; fuse-zip runs as root; MB is 10^6 bytes\n\n",
		cfg.runs, cfg.vassals, cfg.fuseStep)

	b.WriteString(renderTable(cfg, results))
	b.WriteString("\nTargets are judged on the median. Ratios are fief's median over uWSGI's.\n\n")
	for _, r := range results {
		fmt.Fprintf(&b, "- %s: the emperor log reports %d vassal deaths with respawn; the benchmark killed fuse-zip %d times", r.side.title, r.deaths, r.kills)
		if r.deaths != r.kills {
			b.WriteString(" (WARNING: unplanned respawns)")
		}
		b.WriteString("\n")
	}

	b.WriteString("\n```\n")
	b.WriteString(renderRaw(results))
	b.WriteString("```\n")
	b.WriteString(renderCleanup(problems, "every emperor exited; no process and no mount was left under the workspace, and it was removed."))
	b.WriteString("\n")
	return b.String()
}

// renderCleanup returns the clean-up paragraph of a section.
func renderCleanup(problems []string, clean string) string {
	if len(problems) == 0 {
		return "\nClean-up: " + clean + "\n"
	}
	var b strings.Builder
	b.WriteString("\nClean-up problems:\n\n")
	for _, problem := range problems {
		fmt.Fprintf(&b, "- %s\n", problem)
	}
	return b.String()
}

// renderProblems returns a section that only lists why it could not run.
func renderProblems(heading string, problems []string) string {
	var b strings.Builder
	b.WriteString(heading)
	b.WriteString("The section did not run:\n\n")
	for _, problem := range problems {
		fmt.Fprintf(&b, "- %s\n", problem)
	}
	b.WriteString("\n")
	return b.String()
}

// copyDir copies the regular files of src into a new directory dst.
func copyDir(src, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, entry := range entries {
		if !entry.Type().IsRegular() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(src, entry.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, entry.Name()), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}
