package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Metric keys.
const (
	metricSpawn          = "spawn"
	metricRecovery       = "recovery"
	metricStop           = "stop"
	metricStopOverhead   = "stop-overhead"
	metricManyStart      = "many-start"
	metricManyStop       = "many-stop"
	metricEmperorRSS     = "emperor-rss"
	metricEmperorAnon    = "emperor-rss-anon"
	metricEmperorPSS     = "emperor-pss"
	metricManyEmperorRSS = "many-emperor-rss"
	metricManyAnon       = "many-emperor-rss-anon"
	metricManyPSS        = "many-emperor-pss"
	metricSettledRSS     = "many-settled-emperor-rss"
	metricSettledAnon    = "many-settled-emperor-rss-anon"
	metricSettledPSS     = "many-settled-emperor-pss"
	metricEndEmperorRSS  = "end-emperor-rss"
	metricEndAnon        = "end-emperor-rss-anon"
	metricEndPSS         = "end-emperor-pss"
	metricRootRSS        = "vassal-rss"
	metricRootAnon       = "vassal-rss-anon"
	metricRootPSS        = "vassal-pss"
	metricTotalRSS       = "vassal-total-rss"
	metricTotalPSS       = "vassal-total-pss"
	metricSetup          = "setup" // failures outside any measurement
)

// targetKind is the rule that judges a fief value.
type targetKind int

const (
	noTarget     targetKind = iota
	tenthOfUWSGI            // fief's median is at most a tenth of uWSGI's median
	below                   // fief's median is below limit
)

// metric is one row of the results table. Values are seconds, or bytes when
// bytes is set.
type metric struct {
	key   string
	label string // %d is replaced by the number of vassals
	bytes bool
	fief  bool // measured for fief only
	kind  targetKind
	limit float64
}

var metrics = []metric{
	{key: metricSpawn, label: "spawn: file dropped → first HTTP 200", kind: tenthOfUWSGI},
	{key: metricRecovery, label: "recovery: fuse-zip killed → HTTP 200 through a new fuse-zip", kind: tenthOfUWSGI},
	{key: metricStop, label: "stop: file removed → no process of the vassal left"},
	{key: metricStopOverhead, label: "stop minus the program's own exit time", fief: true, kind: below, limit: 0.200},
	{key: metricManyStart, label: "%d vassals: files dropped into the empty directory → all HTTP 200", kind: tenthOfUWSGI},
	{key: metricManyStop, label: "%d vassals: files removed → no process left"},
	{key: metricEmperorRSS, label: "emperor VmRSS, 1 vassal", bytes: true, kind: below, limit: 5e6},
	{key: metricEmperorAnon, label: "emperor RssAnon, 1 vassal", bytes: true},
	{key: metricEmperorPSS, label: "emperor PSS, 1 vassal", bytes: true},
	{key: metricManyEmperorRSS, label: "emperor VmRSS, %d vassals, as the last one serves", bytes: true},
	{key: metricManyAnon, label: "emperor RssAnon, %d vassals, as the last one serves", bytes: true},
	{key: metricManyPSS, label: "emperor PSS, %d vassals, as the last one serves", bytes: true},
	{key: metricSettledRSS, label: "emperor VmRSS, %d vassals, settled (3 s later)", bytes: true, kind: below, limit: 5e6},
	{key: metricSettledAnon, label: "emperor RssAnon, %d vassals, settled", bytes: true},
	{key: metricSettledPSS, label: "emperor PSS, %d vassals, settled", bytes: true},
	{key: metricEndEmperorRSS, label: "emperor VmRSS after all runs, no vassal left (one value)", bytes: true, kind: below, limit: 5e6},
	{key: metricEndAnon, label: "emperor RssAnon after all runs (one value)", bytes: true},
	{key: metricEndPSS, label: "emperor PSS after all runs (one value)", bytes: true},
	{key: metricRootRSS, label: "VmRSS of the vassal init (fief) or vassal master (uWSGI)", bytes: true, kind: below, limit: 4e6},
	{key: metricRootAnon, label: "RssAnon of the vassal init or vassal master", bytes: true},
	{key: metricRootPSS, label: "PSS of the vassal init or vassal master", bytes: true},
	{key: metricTotalRSS, label: "sum of VmRSS over the vassal's processes", bytes: true},
	{key: metricTotalPSS, label: "sum of PSS over the vassal's processes", bytes: true},
}

func metricByKey(key string) metric {
	for _, m := range metrics {
		if m.key == key {
			return m
		}
	}
	return metric{key: key, label: key}
}

// sideResult holds every value and failure of one side.
type sideResult struct {
	side     *side
	values   map[string][]float64
	failures map[string][]string
	// censored holds, per metric, the bound of each run that ended without
	// the awaited event, such as a recovery that never came.
	censored map[string][]float64
	deaths   int // vassal deaths with respawn, from the emperor log
	kills    int // fuse-zip daemons the benchmark killed
}

func newSideResult(s *side) *sideResult {
	return &sideResult{side: s, values: make(map[string][]float64), failures: make(map[string][]string), censored: make(map[string][]float64)}
}

func (r *sideResult) add(metric string, value float64) {
	r.values[metric] = append(r.values[metric], value)
}

func (r *sideResult) fail(metric, message string) {
	r.failures[metric] = append(r.failures[metric], message)
}

func (r *sideResult) failed() bool {
	return len(r.failures) > 0
}

// median returns the median of the metric's values, and false when there
// are none.
func (r *sideResult) median(metric string) (float64, bool) {
	values := slices.Sorted(slices.Values(r.values[metric]))
	n := len(values)
	switch {
	case n == 0:
		return 0, false
	case n%2 == 1:
		return values[n/2], true
	default:
		return (values[n/2-1] + values[n/2]) / 2, true
	}
}

func formatValue(m metric, value float64) string {
	if m.bytes {
		return fmt.Sprintf("%.2f MB", value/1e6)
	}
	switch {
	case value < 0.01:
		return fmt.Sprintf("%.1f ms", value*1e3)
	case value < 1:
		return fmt.Sprintf("%.0f ms", value*1e3)
	default:
		return fmt.Sprintf("%.2f s", value)
	}
}

// cell formats "median / max" of a metric, with the number of failed runs.
func (r *sideResult) cell(m metric) string {
	values := r.values[m.key]
	failures := len(r.failures[m.key])
	if len(values) == 0 {
		if failures > 0 {
			return "failed"
		}
		return "–"
	}
	median, _ := r.median(m.key)
	text := formatValue(m, median) + " / " + formatValue(m, slices.Max(values))
	if failures > 0 {
		text += fmt.Sprintf(" (%d failed)", failures)
	}
	return text
}

// ratio formats fief's median over uWSGI's.
func ratio(m metric, fief, uwsgi *sideResult) string {
	if uwsgi == nil {
		return "–"
	}
	f, okF := fief.median(m.key)
	u, okU := uwsgi.median(m.key)
	if !okF || !okU || u == 0 {
		return "–"
	}
	return fmt.Sprintf("%.3f", f/u)
}

// verdict judges fief's median against the metric's target.
func verdict(m metric, fief, uwsgi *sideResult) string {
	f, ok := fief.median(m.key)
	switch m.kind {
	case tenthOfUWSGI:
		if uwsgi == nil {
			return "≤ 1/10 of uWSGI: n/a"
		}
		u, okU := uwsgi.median(m.key)
		if !ok || !okU {
			return "≤ 1/10 of uWSGI: n/a"
		}
		return passFail(f <= u/10) + " (≤ 1/10 of uWSGI)"
	case below:
		if !ok {
			return fmt.Sprintf("< %s: n/a", formatValue(m, m.limit))
		}
		return passFail(f < m.limit) + fmt.Sprintf(" (< %s)", formatValue(m, m.limit))
	}
	return ""
}

func passFail(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

// renderTable returns the results as a Markdown table: one row per metric,
// and for each side its median and max, with the ratio to uWSGI and the
// verdict for fief sides.
func renderTable(cfg *config, results []*sideResult) string {
	var uwsgi *sideResult
	for _, r := range results {
		if !r.side.fief {
			uwsgi = r
		}
	}

	var b strings.Builder
	header := []string{"measurement (median / max)"}
	for _, r := range results {
		header = append(header, r.side.title)
		if r.side.fief {
			header = append(header, "fief/uWSGI", "target")
		}
	}
	writeRow(&b, header)
	separator := make([]string, len(header))
	for i := range separator {
		separator[i] = "---"
	}
	writeRow(&b, separator)

	for _, m := range metrics {
		label := m.label
		if strings.Contains(label, "%d") {
			label = fmt.Sprintf(label, cfg.vassals)
		}
		row := []string{label}
		for _, r := range results {
			switch {
			case r.side.fief:
				row = append(row, r.cell(m), ratio(m, r, uwsgi), verdict(m, r, uwsgi))
			case m.fief:
				row = append(row, "–")
			default:
				row = append(row, r.cell(m))
			}
		}
		writeRow(&b, row)
	}
	return b.String()
}

func writeRow(b *strings.Builder, cells []string) {
	b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
}

// renderRaw lists every value in run order and every failure.
func renderRaw(results []*sideResult) string {
	var b strings.Builder
	for _, r := range results {
		fmt.Fprintf(&b, "%s:\n", r.side.title)
		for _, m := range append(slices.Clone(metrics), metric{key: metricSetup, label: metricSetup}) {
			values := r.values[m.key]
			if len(values) > 0 {
				texts := make([]string, len(values))
				for i, v := range values {
					texts[i] = formatValue(m, v)
				}
				fmt.Fprintf(&b, "  %-22s %s\n", m.key, strings.Join(texts, ", "))
			}
			for _, failure := range r.failures[m.key] {
				fmt.Fprintf(&b, "  %-22s FAILED %s\n", m.key, failure)
			}
		}
	}
	return b.String()
}

// describeMachine returns the machine and software the run used, in the
// terms of nproc, free, uname -r and /proc/cpuinfo.
func describeMachine(cfg *config) string {
	var b strings.Builder
	var uts unix.Utsname
	kernel := "unknown"
	if unix.Uname(&uts) == nil {
		kernel = unix.ByteSliceToString(uts.Release[:])
	}
	fmt.Fprintf(&b, "- CPU: %s, %d CPUs (nproc)\n", cpuModel(), runtime.NumCPU())
	fmt.Fprintf(&b, "- memory: %s total (MemTotal)\n", memTotal())
	fmt.Fprintf(&b, "- kernel: %s\n", kernel)
	fmt.Fprintf(&b, "- load average before the run: %s\n", loadAverage())
	fmt.Fprintf(&b, "- fief: %s\n", firstLine(cfg.fiefPath, "version"))
	if cfg.usesUWSGI() {
		fmt.Fprintf(&b, "- uWSGI: %s (%s)\n", firstLine(cfg.uwsgiPath, "--version"), cfg.uwsgiPath)
		fmt.Fprintf(&b, "- %s\n", firstLine("fuse-zip", "-V"))
		fmt.Fprintf(&b, "- %s\n", firstLine("busybox"))
	}
	if cfg.unionSection {
		fmt.Fprintf(&b, "- %s (dpkg-query)\n", firstLine("dpkg-query", "-W", "-f", "unionfs-fuse ${Version}", "unionfs-fuse"))
	}
	if cfg.containerSection {
		fmt.Fprintf(&b, "- %s (%s)\n", firstLine(cfg.tiniPath, "--version"), cfg.tiniPath)
		fmt.Fprintf(&b, "- gosu %s (%s)\n", firstLine(cfg.gosuPath, "--version"), cfg.gosuPath)
	}
	b.WriteString("\n")
	return b.String()
}

func cpuModel() string {
	file, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer file.Close()
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		key, value, ok := strings.Cut(scanner.Text(), ":")
		if ok && strings.TrimSpace(key) == "model name" {
			return strings.TrimSpace(value)
		}
	}
	return "unknown"
}

func memTotal() string {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return "unknown"
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if value, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			fields := strings.Fields(value)
			if kib, err := strconv.ParseFloat(fields[0], 64); err == nil {
				return fmt.Sprintf("%.1f GiB", kib/(1<<20))
			}
		}
	}
	return "unknown"
}

func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	fields := strings.Fields(string(data))
	if len(fields) < 3 {
		return "unknown"
	}
	return strings.Join(fields[:3], " ")
}

// firstLine runs a command for at most 5 s and returns the first line of its
// combined output.
func firstLine(name string, args ...string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, name, args...).CombinedOutput()
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	if line == "" {
		return name + ": no version output"
	}
	return line
}
