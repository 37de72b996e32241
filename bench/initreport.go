package main

import (
	"debug/elf"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
)

// Targets of the container init and exec-as-user benchmarks.
const (
	maxInitRatio = 1.2 // fief's figure over tini's
	maxExecRatio = 1.0 // fief exec-as-user's median over gosu's
)

// percentile returns the nearest-rank percentile p (0 to 100) of the
// metric's values, and false when there are none.
func (r *sideResult) percentile(metric string, p float64) (float64, bool) {
	values := slices.Sorted(slices.Values(r.values[metric]))
	if len(values) == 0 {
		return 0, false
	}
	rank := int(math.Ceil(p / 100 * float64(len(values))))
	return values[min(max(rank, 1), len(values))-1], true
}

// formatSeconds formats a time in seconds with a unit that suits it.
func formatSeconds(value float64) string {
	if value < 0.001 {
		return fmt.Sprintf("%.0f µs", value*1e6)
	}
	return formatValue(metric{}, value)
}

// statistic is one figure computed from a metric's values.
type statistic struct {
	name  string // shown in the row label
	value func(r *sideResult, key string) (float64, bool)
}

var (
	medianStat = statistic{"median", (*sideResult).median}
	p99Stat    = statistic{"p99", func(r *sideResult, key string) (float64, bool) { return r.percentile(key, 99) }}
	maxStat    = statistic{"max", func(r *sideResult, key string) (float64, bool) {
		if len(r.values[key]) == 0 {
			return 0, false
		}
		return slices.Max(r.values[key]), true
	}}
)

// comparisonRow is one row of a table that compares fief with one other
// program: a figure of each side, their ratio and the verdict.
type comparisonRow struct {
	label    string
	key      string
	stat     statistic
	bytes    bool
	maxRatio float64 // 0 means no target
	target   string  // the target as shown, e.g. "≤ 1.2 × tini"
}

// cellOf formats one side's figure, with the number of failed runs.
func cellOf(row comparisonRow, r *sideResult) string {
	value, ok := row.stat.value(r, row.key)
	failures := len(r.failures[row.key])
	if !ok {
		if failures > 0 {
			return "failed"
		}
		return "–"
	}
	text := formatSeconds(value)
	if row.bytes {
		text = formatValue(metric{bytes: true}, value)
	}
	if failures > 0 {
		text += fmt.Sprintf(" (%d failed)", failures)
	}
	return text
}

// ratioAndVerdict returns fief's figure over the other side's and the
// verdict on the row's target.
func ratioAndVerdict(row comparisonRow, fief, other *sideResult) (string, string) {
	f, okF := row.stat.value(fief, row.key)
	o, okO := row.stat.value(other, row.key)
	if !okF || !okO || o == 0 {
		if row.maxRatio == 0 {
			return "–", ""
		}
		return "–", row.target + ": n/a"
	}
	ratio := f / o
	text := fmt.Sprintf("%.2f", ratio)
	if row.maxRatio == 0 {
		return text, ""
	}
	return text, passFail(ratio <= row.maxRatio) + " (" + row.target + ")"
}

// renderInitTables returns the container init table, the exec-as-user table
// and the binary size table of a run.
func renderInitTables(cfg *config, b *initBench) string {
	var out strings.Builder
	tini, fief := b.inits[0].result, b.inits[1].result
	initTarget := fmt.Sprintf("≤ %.1f × tini", maxInitRatio)

	rows := []comparisonRow{
		{label: fmt.Sprintf("%d orphans: init started → init exited, median", cfg.orphans), key: metricOrphanTotal, stat: medianStat, maxRatio: maxInitRatio, target: initTarget},
		{label: fmt.Sprintf("%d orphans: init started → init exited, max", cfg.orphans), key: metricOrphanTotal, stat: maxStat},
		{label: fmt.Sprintf("%d orphans: spawner exited → last orphan reaped, median", cfg.orphans), key: metricOrphanReap, stat: medianStat, maxRatio: maxInitRatio, target: initTarget},
		{label: fmt.Sprintf("%d orphans: spawner exited → last orphan reaped, max", cfg.orphans), key: metricOrphanReap, stat: maxStat},
		{label: "signal: SIGUSR1 sent to the init → seen by the child, median", key: metricSignal, stat: medianStat, maxRatio: maxInitRatio, target: initTarget},
		{label: "signal: SIGUSR1 sent to the init → seen by the child, p99", key: metricSignal, stat: p99Stat, maxRatio: maxInitRatio, target: initTarget},
		{label: "exit: child exits → init reaped by its parent, median", key: metricExit, stat: medianStat, maxRatio: maxInitRatio, target: initTarget},
		{label: "exit: child exits → init reaped by its parent, p99", key: metricExit, stat: p99Stat, maxRatio: maxInitRatio, target: initTarget},
		{label: "init VmRSS while the child runs, max", key: metricInitRSS, stat: maxStat, bytes: true},
		{label: "init RssAnon, max", key: metricInitAnon, stat: maxStat, bytes: true},
		{label: "init RssFile, max", key: metricInitFile, stat: maxStat, bytes: true},
		{label: "init PSS, max", key: metricInitPSS, stat: maxStat, bytes: true},
	}
	writeRow(&out, []string{"measurement", "tini", "fief --", "fief/tini", "target"})
	writeRow(&out, []string{"---", "---", "---", "---", "---"})
	for _, row := range rows {
		ratio, verdict := ratioAndVerdict(row, fief, tini)
		writeRow(&out, []string{row.label, cellOf(row, tini), cellOf(row, fief), ratio, verdict})
	}

	plain, gosu, fiefExec := b.execs[0].result, b.execs[1].result, b.execs[2].result
	execTarget := "≤ gosu"
	execRows := []comparisonRow{
		{label: "start → exit of `CMD nobody /bin/true`, median", key: metricExecTime, stat: medianStat, maxRatio: maxExecRatio, target: execTarget},
		{label: "start → exit of `CMD nobody /bin/true`, p99", key: metricExecTime, stat: p99Stat},
	}
	out.WriteString("\n")
	writeRow(&out, []string{"measurement", "/bin/true alone", "gosu", "fief exec-as-user", "fief/gosu", "target"})
	writeRow(&out, []string{"---", "---", "---", "---", "---", "---"})
	for _, row := range execRows {
		ratio, verdict := ratioAndVerdict(row, fiefExec, gosu)
		writeRow(&out, []string{row.label, cellOf(row, plain), cellOf(row, gosu), cellOf(row, fiefExec), ratio, verdict})
	}

	out.WriteString("\n")
	out.WriteString(renderSizes(cfg))
	return out.String()
}

// binaryInfo describes one executable file.
type binaryInfo struct {
	size     int64
	static   bool // no program interpreter (PT_INTERP)
	stripped bool // no symbol table (.symtab)
}

func inspectBinary(path string) (binaryInfo, error) {
	stat, err := os.Stat(path)
	if err != nil {
		return binaryInfo{}, err
	}
	file, err := elf.Open(path)
	if err != nil {
		return binaryInfo{}, err
	}
	defer file.Close()
	info := binaryInfo{size: stat.Size(), static: true, stripped: file.Section(".symtab") == nil}
	for _, prog := range file.Progs {
		if prog.Type == elf.PT_INTERP {
			info.static = false
		}
	}
	return info, nil
}

// renderSizes returns a table of the file sizes of fief, tini, tini-static
// and gosu.
func renderSizes(cfg *config) string {
	var out strings.Builder
	writeRow(&out, []string{"binary", "path", "size", "linking", "symbol table"})
	writeRow(&out, []string{"---", "---", "---", "---", "---"})
	for _, entry := range []struct{ name, path string }{
		{"fief", cfg.fiefPath},
		{"tini", cfg.tiniPath},
		{"tini-static", cfg.tiniStaticPath},
		{"gosu", cfg.gosuPath},
	} {
		info, err := inspectBinary(entry.path)
		if err != nil {
			writeRow(&out, []string{entry.name, entry.path, "failed: " + err.Error(), "", ""})
			continue
		}
		linking, symbols := "dynamic", "present"
		if info.static {
			linking = "static"
		}
		if info.stripped {
			symbols = "stripped"
		}
		writeRow(&out, []string{entry.name, "`" + entry.path + "`", formatSize(info.size), linking, symbols})
	}
	return out.String()
}

// formatSize formats a file size in bytes with kB (10^3) or MB (10^6).
func formatSize(size int64) string {
	switch {
	case size >= 1e6:
		return fmt.Sprintf("%.2f MB (%d bytes)", float64(size)/1e6, size)
	case size >= 1e3:
		return fmt.Sprintf("%.1f kB (%d bytes)", float64(size)/1e3, size)
	}
	return fmt.Sprintf("%d bytes", size)
}

// renderInitRaw lists the values of the runs with few values, and the
// failures of every metric.
func renderInitRaw(b *initBench) string {
	var out strings.Builder
	for _, s := range b.inits {
		fmt.Fprintf(&out, "%s:\n", s.title)
		for _, key := range []string{metricOrphanTotal, metricOrphanReap, metricInitRSS, metricInitAnon, metricInitFile, metricInitPSS} {
			values := s.result.values[key]
			if len(values) == 0 {
				continue
			}
			texts := make([]string, len(values))
			for i, v := range values {
				if key == metricOrphanTotal || key == metricOrphanReap {
					texts[i] = formatSeconds(v)
				} else {
					texts[i] = formatValue(metric{bytes: true}, v)
				}
			}
			fmt.Fprintf(&out, "  %-17s %s\n", key, strings.Join(texts, ", "))
		}
		for _, key := range []string{metricSignal, metricExit} {
			if n := len(s.result.values[key]); n > 0 {
				median, _ := s.result.median(key)
				p90, _ := s.result.percentile(key, 90)
				p99, _ := s.result.percentile(key, 99)
				fmt.Fprintf(&out, "  %-17s %d values: min %s, median %s, p90 %s, p99 %s, max %s\n", key, n,
					formatSeconds(slices.Min(s.result.values[key])), formatSeconds(median), formatSeconds(p90),
					formatSeconds(p99), formatSeconds(slices.Max(s.result.values[key])))
			}
		}
		writeFailures(&out, s.result)
	}
	for _, s := range b.execs {
		if n := len(s.result.values[metricExecTime]); n > 0 {
			values := s.result.values[metricExecTime]
			median, _ := s.result.median(metricExecTime)
			p99, _ := s.result.percentile(metricExecTime, 99)
			mean := 0.0
			for _, v := range values {
				mean += v / float64(n)
			}
			fmt.Fprintf(&out, "%s: %d runs: min %s, median %s, mean %s, p99 %s, max %s\n", s.title, n,
				formatSeconds(slices.Min(values)), formatSeconds(median), formatSeconds(mean), formatSeconds(p99), formatSeconds(slices.Max(values)))
		}
		writeFailures(&out, s.result)
	}
	return out.String()
}

func writeFailures(out *strings.Builder, r *sideResult) {
	keys := make([]string, 0, len(r.failures))
	for key := range r.failures {
		keys = append(keys, key)
	}
	slices.Sort(keys)
	for _, key := range keys {
		for _, failure := range r.failures[key] {
			fmt.Fprintf(out, "  %-17s FAILED %s\n", key, failure)
		}
	}
}
