package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"time"
)

// valueUnit is the unit of a metric's values.
type valueUnit int

const (
	unitSeconds valueUnit = iota
	unitBytes             // shown in MB, 10^6 bytes
	unitTicks             // clock ticks of CPU time, 10 ms each
)

// formatUnit formats one value of a metric.
func formatUnit(unit valueUnit, value float64) string {
	switch unit {
	case unitBytes:
		return formatValue(metric{bytes: true}, value)
	case unitTicks:
		if value == 1 {
			return "1 tick"
		}
		return fmt.Sprintf("%.0f ticks", value)
	}
	return formatSeconds(value)
}

// formatMetric formats one value of any metric of the harness for the
// progress log.
func formatMetric(key string, value float64) string {
	if unit, ok := scaleUnits[key]; ok {
		return formatUnit(unit, value)
	}
	return formatValue(metricByKey(key), value)
}

// oneStat shows the only value of a metric that is sampled once.
var oneStat = statistic{"one value", maxStat.value}

// formatRatio formats fief's figure over uWSGI's with at least two
// significant digits.
func formatRatio(ratio float64) string {
	if ratio > 0 && ratio < 0.01 {
		return fmt.Sprintf("%.2g", ratio)
	}
	return fmt.Sprintf("%.3f", ratio)
}

// formatBound formats the limit of a watch in whole seconds.
func formatBound(seconds float64) string {
	return fmt.Sprintf("%.0f s", seconds)
}

// rowTarget is the rule that judges a fief value in a section table.
type rowTarget int

const (
	targetNone     rowTarget = iota
	targetTenth              // fief's median is at most a tenth of uWSGI's median
	targetBelow              // fief's median is below the row's limit
	targetZero               // fief's maximum is 0
	targetRecovers           // every fief run recovered and none failed
)

// sectionRow is one row of a table that puts a uWSGI side next to a fief
// side.
type sectionRow struct {
	label string
	key   string
	// uwsgiKey, when set, is the metric shown for uWSGI in place of key,
	// for a setting that uWSGI does not have.
	uwsgiKey string
	unit     valueUnit
	stats    []statistic // shown in each cell, joined by " / "
	target   rowTarget
	limit    float64 // for targetBelow
}

// statNames returns "median / max" for the row's statistics.
func (row sectionRow) statNames() string {
	names := make([]string, len(row.stats))
	for i, stat := range row.stats {
		names[i] = stat.name
	}
	return strings.Join(names, " / ")
}

// keyOf returns the metric of the row for a side.
func (row sectionRow) keyOf(r *sideResult) string {
	if r != nil && !r.side.fief && row.uwsgiKey != "" {
		return row.uwsgiKey
	}
	return row.key
}

// cell formats the row's statistics of one side, with the runs that ended at
// the bound and the failed runs. A nil side has no such measurement.
func (row sectionRow) cell(r *sideResult) string {
	if r == nil {
		return "–"
	}
	key := row.keyOf(r)
	values := r.values[key]
	censored := len(r.censored[key])
	failures := len(r.failures[key])
	var parts []string
	if len(values) > 0 {
		texts := make([]string, len(row.stats))
		for i, stat := range row.stats {
			value, _ := stat.value(r, key)
			texts[i] = formatUnit(row.unit, value)
		}
		parts = append(parts, strings.Join(texts, " / "))
	}
	if censored > 0 {
		parts = append(parts, fmt.Sprintf("never within %s (%d of %d runs)",
			formatBound(slices.Min(r.censored[key])), censored, censored+len(values)))
	}
	if failures > 0 {
		parts = append(parts, fmt.Sprintf("%d failed", failures))
	}
	if len(parts) == 0 {
		return "–"
	}
	return strings.Join(parts, "; ")
}

// ratio formats fief's median over uWSGI's, or "–" when either is missing
// or uWSGI's runs ended at the bound.
func (row sectionRow) ratio(uwsgi, fief *sideResult) string {
	if uwsgi == nil || fief == nil || len(uwsgi.censored[row.keyOf(uwsgi)]) > 0 {
		return "–"
	}
	u, okU := uwsgi.median(row.keyOf(uwsgi))
	f, okF := fief.median(row.key)
	if !okU || !okF || u == 0 {
		return "–"
	}
	return formatRatio(f / u)
}

// verdict judges the fief side against the row's target.
func (row sectionRow) verdict(uwsgi, fief *sideResult) string {
	median, ok := fief.median(row.key)
	switch row.target {
	case targetTenth:
		const rule = "≤ 1/10 of uWSGI"
		u, okU := 0.0, false
		if uwsgi != nil && len(uwsgi.censored[row.keyOf(uwsgi)]) == 0 {
			u, okU = uwsgi.median(row.keyOf(uwsgi))
		}
		if !ok || !okU {
			return rule + ": n/a"
		}
		return passFail(median <= u/10) + " (" + rule + ")"
	case targetBelow:
		rule := "< " + formatUnit(row.unit, row.limit)
		if !ok {
			return rule + ": n/a"
		}
		return passFail(median < row.limit) + " (" + rule + ")"
	case targetZero:
		rule := "0 " + strings.TrimPrefix(formatUnit(row.unit, 0), "0 ") + " in every run"
		if !ok {
			return rule + ": n/a"
		}
		return passFail(slices.Max(fief.values[row.key]) == 0) + " (" + rule + ")"
	case targetRecovers:
		const rule = "recovers in every run"
		if !ok && len(fief.failures[row.key]) == 0 {
			return rule + ": n/a"
		}
		return passFail(len(fief.censored[row.key]) == 0 && len(fief.failures[row.key]) == 0) + " (" + rule + ")"
	}
	return ""
}

// renderSectionTable returns a Markdown table with one row per sectionRow:
// the uWSGI cell, the fief cell, fief's median over uWSGI's and the verdict.
func renderSectionTable(rows []sectionRow, uwsgi, fief *sideResult) string {
	var b strings.Builder
	uwsgiTitle, fiefTitle := "uWSGI Emperor", "fief"
	if uwsgi != nil {
		uwsgiTitle = uwsgi.side.title
	}
	if fief != nil {
		fiefTitle = fief.side.title
	}
	writeRow(&b, []string{"measurement", uwsgiTitle, fiefTitle, "fief/uWSGI (medians)", "target"})
	writeRow(&b, []string{"---", "---", "---", "---", "---"})
	for _, row := range rows {
		label := fmt.Sprintf("%s (%s)", row.label, row.statNames())
		verdict := ""
		if fief != nil {
			verdict = row.verdict(uwsgi, fief)
		}
		writeRow(&b, []string{label, row.cell(uwsgi), row.cell(fief), row.ratio(uwsgi, fief), verdict})
	}
	return b.String()
}

// renderSectionRaw lists every value of each side in run order, the runs
// that ended at a bound, and every failure.
func renderSectionRaw(rows []sectionRow, results ...*sideResult) string {
	var b strings.Builder
	for _, r := range results {
		if r == nil {
			continue
		}
		fmt.Fprintf(&b, "%s:\n", r.side.title)
		seen := map[string]bool{}
		for _, row := range rows {
			key := row.keyOf(r)
			if seen[key] {
				continue
			}
			seen[key] = true
			if values := r.values[key]; len(values) > 0 {
				texts := make([]string, len(values))
				for i, v := range values {
					texts[i] = formatUnit(row.unit, v)
				}
				fmt.Fprintf(&b, "  %-22s %s\n", key, strings.Join(texts, ", "))
			}
			if bounds := r.censored[key]; len(bounds) > 0 {
				fmt.Fprintf(&b, "  %-22s no recovery within %s in %d of %d runs\n", key, formatBound(slices.Min(bounds)), len(bounds), len(bounds)+len(r.values[key]))
			}
		}
		writeFailures(&b, r)
	}
	return b.String()
}

// sectionIntro returns the first line under a section heading: the load
// average when the section began and how long it took.
func sectionIntro(load string, took time.Duration) string {
	return fmt.Sprintf("- load average (1, 5, 15 min) when the section began: %s; the section took %.0f s\n", load, took.Seconds())
}

// abortSection cleans up the workspace of a section that could not start
// and returns the section's text, which lists why.
func abortSection(heading string, ws *workspace, err error) (string, bool) {
	fmt.Fprintf(os.Stderr, "bench: %v\n", err)
	problems := []string{err.Error()}
	if ws != nil {
		problems = append(problems, ws.cleanup()...)
	}
	reportProblems(problems)
	return renderProblems(heading, problems), false
}

// finishWorkspace copies the emperor logs to logCopy, when set, cleans up
// the workspace and returns what the clean-up found.
func finishWorkspace(ws *workspace, logCopy string) []string {
	if logCopy != "" {
		if err := copyDir(ws.logs, logCopy); err != nil {
			fmt.Fprintf(os.Stderr, "bench: copying the emperor logs failed: %v\n", err)
		}
	}
	problems := ws.cleanup()
	reportProblems(problems)
	return problems
}

// sideOf returns the first result whose emperor is fief, or is uWSGI when
// fief is false, and nil when there is none.
func sideOf(results []*sideResult, fief bool) *sideResult {
	for _, r := range results {
		if r.side.fief == fief {
			return r
		}
	}
	return nil
}

// renderDeaths returns one line per side with the vassal deaths that its
// emperor logged and the deaths that the benchmark caused.
func renderDeaths(results []*sideResult) string {
	var b strings.Builder
	for _, r := range results {
		fmt.Fprintf(&b, "- %s: the emperor log reports %d vassal deaths with respawn; the benchmark caused %d", r.side.title, r.deaths, r.kills)
		if r.deaths != r.kills {
			b.WriteString(" (WARNING: unplanned respawns, or planned ones that did not happen)")
		}
		b.WriteString("\n")
	}
	return b.String()
}

// sectionOK reports whether no measurement failed and the clean-up found
// nothing.
func sectionOK(results []*sideResult, problems []string) bool {
	ok := len(problems) == 0
	for _, r := range results {
		ok = ok && !r.failed()
	}
	return ok
}
