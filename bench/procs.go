package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// proc is one process as read from /proc.
type proc struct {
	pid   int
	ppid  int
	state byte   // the state letter of /proc/PID/stat: R, S, D, Z, ...
	start uint64 // start time in clock ticks after boot; with pid it identifies a process
	argv  []string
}

// live reports whether the process still runs. A zombie has exited and only
// waits for its parent to reap it.
func (p proc) live() bool {
	return p.state != 'Z' && p.state != 'X'
}

func (p proc) same(other proc) bool {
	return p.pid == other.pid && p.start == other.start
}

func (p proc) cmdline() string {
	return strings.Join(p.argv, " ")
}

// procTable is one scan of /proc.
type procTable struct {
	byPid    map[int]proc
	children map[int][]int
}

// scanProcs reads every process of /proc. Processes that exit during the
// scan are left out.
func scanProcs() (*procTable, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("listing /proc: %w", err)
	}
	table := &procTable{byPid: make(map[int]proc, len(entries)), children: make(map[int][]int)}
	for _, entry := range entries {
		pid, err := strconv.Atoi(entry.Name())
		if err != nil {
			continue
		}
		p, ok := readProc(pid)
		if !ok {
			continue
		}
		table.byPid[pid] = p
		table.children[p.ppid] = append(table.children[p.ppid], pid)
	}
	return table, nil
}

func readProc(pid int) (proc, bool) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return proc{}, false
	}
	// The command name in brackets may contain spaces and ")", so the
	// fields start after the last ")".
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 {
		return proc{}, false
	}
	// Fields after the name: state(3) ppid(4) ... starttime(22).
	fields := strings.Fields(string(stat[end+1:]))
	if len(fields) < 20 {
		return proc{}, false
	}
	ppid, err1 := strconv.Atoi(fields[1])
	start, err2 := strconv.ParseUint(fields[19], 10, 64)
	if err1 != nil || err2 != nil || len(fields[0]) == 0 {
		return proc{}, false
	}

	p := proc{pid: pid, ppid: ppid, state: fields[0][0], start: start}
	if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
		cmdline = bytes.TrimRight(cmdline, "\x00")
		if len(cmdline) > 0 {
			p.argv = strings.Split(string(cmdline), "\x00")
		}
	}
	return p, true
}

// alive reports whether the process p, identified by pid and start time,
// still runs.
func (t *procTable) alive(p proc) bool {
	current, ok := t.byPid[p.pid]
	return ok && current.same(p) && current.live()
}

// descendants returns the live processes below root, root included, when
// root still runs. In a vassal's pid namespace every process descends from
// the namespace's first process, because orphans are reparented to it.
func (t *procTable) descendants(root proc) []proc {
	if !t.alive(root) {
		return nil
	}
	var found []proc
	queue := []int{root.pid}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		p := t.byPid[pid]
		if p.live() {
			found = append(found, p)
		}
		queue = append(queue, t.children[pid]...)
	}
	return found
}

// mentioning returns the live processes whose command line contains any of
// the markers.
func (t *procTable) mentioning(markers ...string) []proc {
	var found []proc
	for _, p := range t.byPid {
		if !p.live() {
			continue
		}
		line := p.cmdline()
		for _, marker := range markers {
			if strings.Contains(line, marker) {
				found = append(found, p)
				break
			}
		}
	}
	return found
}

// childWithArg returns the live child of parent that has an argument whose
// base name is base.
func (t *procTable) childWithArg(parent int, base string) (proc, bool) {
	for _, pid := range t.children[parent] {
		p := t.byPid[pid]
		if !p.live() {
			continue
		}
		for _, arg := range p.argv[min(1, len(p.argv)):] {
			if filepath.Base(arg) == base {
				return p, true
			}
		}
	}
	return proc{}, false
}

// program returns a live process whose argv[0] has the base name name and
// which has the argument arg.
func (t *procTable) program(name, arg string) (proc, bool) {
	for _, p := range t.byPid {
		if !p.live() || len(p.argv) == 0 || filepath.Base(p.argv[0]) != name {
			continue
		}
		for _, a := range p.argv[1:] {
			if a == arg {
				return p, true
			}
		}
	}
	return proc{}, false
}

// errNoMemory means a process has no address space: it is a kernel thread,
// a zombie, or exiting.
var errNoMemory = errors.New("no VmRSS line: the process has no memory (kernel thread, zombie or exiting)")

// cwd returns the working directory of a process, "" when it is unreadable.
func cwd(pid int) string {
	dir, _ := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	return dir
}

// mountsUnder returns the mount points of /proc/self/mountinfo at or below
// dir.
func mountsUnder(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("reading /proc/self/mountinfo: %w", err)
	}
	var found []string
	for line := range strings.SplitSeq(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 5 {
			continue
		}
		point := unescapeMountinfo(fields[4])
		if point == dir || strings.HasPrefix(point, dir+"/") {
			found = append(found, point)
		}
	}
	return found, nil
}

// unescapeMountinfo decodes the octal escapes (\040 for a space) that
// mountinfo uses in paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// memory is the resident memory of a process in bytes: VmRSS, RssAnon and
// RssFile from /proc/PID/status, and Pss from /proc/PID/smaps_rollup. PSS
// divides each page among the processes that map it, so the pages of a
// binary that many processes run count once in the sum over them.
type memory struct {
	rss, anon, file, pss int64
}

// readMemory returns the memory of a process. The kernel reports every
// field in kB, which there means KiB.
func readMemory(pid int) (memory, error) {
	var m memory
	status := map[string]*int64{"VmRSS:": &m.rss, "RssAnon:": &m.anon, "RssFile:": &m.file}
	if err := readKiBFields(fmt.Sprintf("/proc/%d/status", pid), status); err != nil {
		return memory{}, err
	}
	if err := readKiBFields(fmt.Sprintf("/proc/%d/smaps_rollup", pid), map[string]*int64{"Pss:": &m.pss}); err != nil {
		return memory{}, err
	}
	return m, nil
}

// readKiBFields sets each field of fields, keyed by its name with the colon,
// from the lines "NAME: VALUE kB" of a /proc file, in bytes.
func readKiBFields(path string, fields map[string]*int64) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	found := 0
	for line := range strings.SplitSeq(string(data), "\n") {
		parts := strings.Fields(line)
		if len(parts) != 3 || parts[2] != "kB" {
			continue
		}
		if target, ok := fields[parts[0]]; ok {
			kib, err := strconv.ParseInt(parts[1], 10, 64)
			if err != nil {
				return fmt.Errorf("invalid %s line in %s: %w", parts[0], path, err)
			}
			*target = kib * 1024
			found++
		}
	}
	if found != len(fields) {
		return fmt.Errorf("%s: %w", path, errNoMemory)
	}
	return nil
}

// cpuTicks returns utime plus stime of a process from /proc/PID/stat: the
// CPU time of all its threads, in clock ticks (USER_HZ, 100 per second on
// Linux).
func cpuTicks(pid int) (int64, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, fmt.Errorf("invalid /proc/%d/stat: no \")\" after the command name", pid)
	}
	// Fields after the name start with state (field 3), so utime (14) and
	// stime (15) are at indexes 11 and 12.
	fields := strings.Fields(string(stat[end+1:]))
	if len(fields) < 13 {
		return 0, fmt.Errorf("invalid /proc/%d/stat: %d fields after the command name", pid, len(fields))
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("invalid utime or stime in /proc/%d/stat", pid)
	}
	return utime + stime, nil
}
