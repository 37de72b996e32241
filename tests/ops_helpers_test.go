package tests

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Helpers of operations_test.go: an emperor with its own status socket, the
// fief status report, per-vassal process lookups and test users.

// opsStartEmperor runs fief emperor on the test's vassal directory with the
// status socket at dir/status.sock and the given extra flags. It returns the
// emperor and the socket path.
func opsStartEmperor(e *testEnv, flags ...string) (*fiefProcess, string) {
	e.t.Helper()
	socket := e.path("status.sock")
	argv := append([]string{fiefBinary, "emperor", "--status-socket", socket}, flags...)
	argv = append(argv, e.vassalDir)
	emperor := e.start("emperor", argv...)
	emperor.waitLogOnce("serving status", matchLog("serving status", "socket", socket))
	return emperor, socket
}

// opsRunFief runs fief with args to completion and returns its exit code,
// stdout and stderr.
func opsRunFief(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(fiefBinary, args...)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return 0, stdout.String(), stderr.String()
	case errors.As(err, &exitErr):
		return exitErr.ExitCode(), stdout.String(), stderr.String()
	}
	t.Fatalf("running fief %s: %v", strings.Join(args, " "), err)
	return 0, "", ""
}

// opsReport is the JSON report of fief status --json.
type opsReport struct {
	Pid           int               `json:"pid"`
	Dir           string            `json:"dir"`
	UptimeSeconds float64           `json:"uptime_seconds"`
	Vassals       []opsVassalStatus `json:"vassals"`
}

// opsVassalStatus is one vassal of opsReport.
type opsVassalStatus struct {
	Name          string           `json:"name"`
	State         string           `json:"state"`
	Pid           int              `json:"pid"`
	UptimeSeconds float64          `json:"uptime_seconds"`
	Restarts      int              `json:"restarts"`
	LastExit      string           `json:"last_exit"`
	Error         string           `json:"error"`
	Mounts        []opsMountStatus `json:"mounts"`
}

// opsMountStatus is one mountpoint-check path of opsVassalStatus.
type opsMountStatus struct {
	Path    string `json:"path"`
	Healthy bool   `json:"healthy"`
	Detail  string `json:"detail"`
}

// vassal returns the entry of the vassal file name, and false when the
// report has none.
func (r opsReport) vassal(name string) (opsVassalStatus, bool) {
	for _, v := range r.Vassals {
		if v.Name == name {
			return v, true
		}
	}
	return opsVassalStatus{}, false
}

// count returns how many vassals are in state.
func (r opsReport) count(state string) int {
	n := 0
	for _, v := range r.Vassals {
		if v.State == state {
			n++
		}
	}
	return n
}

// opsFetchReport runs fief status --json against socket and decodes the
// report. It returns the raw output too, for failure messages.
func opsFetchReport(t *testing.T, socket string) (opsReport, string, error) {
	t.Helper()
	code, stdout, stderr := opsRunFief(t, "status", "--socket", socket, "--json")
	if code != 0 {
		return opsReport{}, stdout, fmt.Errorf("fief status --json exited %d: %s", code, strings.TrimSpace(stderr))
	}
	var report opsReport
	if err := json.Unmarshal([]byte(stdout), &report); err != nil {
		return opsReport{}, stdout, fmt.Errorf("decoding the output of fief status --json: %w", err)
	}
	return report, stdout, nil
}

// opsWaitReport polls fief status --json until done returns true and
// returns that report. It fails the test with the last report and the log
// tail after timeout.
func opsWaitReport(t *testing.T, emperor *fiefProcess, socket string, timeout time.Duration, what string, done func(opsReport) bool) opsReport {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		report, raw, err := opsFetchReport(t, socket)
		if err == nil && done(report) {
			return report
		}
		last = raw
		if err != nil {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("expected fief status to show %s within %v; last report:\n%s\n%s", what, timeout, last, emperor.tail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// opsTableColumns are the column titles of the fief status table, in order.
var opsTableColumns = []string{"VASSAL", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "MOUNTS"}

// opsTable is the fief status table, split into its parts.
type opsTable struct {
	summary string                       // the first line, about the emperor
	header  string                       // the line of column titles
	rows    map[string]map[string]string // cells by vassal name and column title
	after   []string                     // the lines after the rows: errors of broken files
}

// opsParseTable splits the output of fief status. The table is aligned
// with spaces, so each cell starts at the offset of its column title, and a
// cell with blanks, such as "exit status 1", stays in one piece.
func opsParseTable(output string) (opsTable, error) {
	lines := strings.Split(strings.TrimSuffix(output, "\n"), "\n")
	if len(lines) < 2 {
		return opsTable{}, fmt.Errorf("expected a summary line and a header, found %d line(s)", len(lines))
	}
	table := opsTable{summary: lines[0], header: lines[1], rows: map[string]map[string]string{}}

	starts := make([]int, len(opsTableColumns))
	for i, title := range opsTableColumns {
		starts[i] = strings.Index(table.header, title)
		if starts[i] < 0 || (i > 0 && starts[i] <= starts[i-1]) {
			return opsTable{}, fmt.Errorf("expected the column titles %q in this order, found header %q", opsTableColumns, table.header)
		}
	}

	fields := strings.Fields(table.summary)
	if len(fields) < 2 {
		return opsTable{}, fmt.Errorf("invalid summary line %q", table.summary)
	}
	rowCount, err := strconv.Atoi(fields[len(fields)-2])
	if err != nil || !strings.HasSuffix(table.summary, " vassal(s)") {
		return opsTable{}, fmt.Errorf("expected the summary line %q to end with N vassal(s)", table.summary)
	}
	if len(lines) < 2+rowCount {
		return opsTable{}, fmt.Errorf("the summary announces %d vassal(s), found %d line(s) after the header", rowCount, len(lines)-2)
	}

	for _, line := range lines[2 : 2+rowCount] {
		cells := map[string]string{}
		for i, title := range opsTableColumns {
			end := len(line)
			if i+1 < len(starts) {
				end = min(starts[i+1], len(line))
			}
			if starts[i] < end {
				cells[title] = strings.TrimSpace(line[starts[i]:end])
			}
		}
		table.rows[cells["VASSAL"]] = cells
	}
	table.after = lines[2+rowCount:]
	return table, nil
}

// opsWaitTable polls fief status until done returns true for its table and
// returns that table, or fails the test with the last output.
func opsWaitTable(t *testing.T, emperor *fiefProcess, socket string, timeout time.Duration, what string, done func(opsTable) bool) opsTable {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		code, stdout, stderr := opsRunFief(t, "status", "--socket", socket)
		last = stdout + stderr
		if code == 0 {
			table, err := opsParseTable(stdout)
			if err != nil {
				t.Fatalf("parsing the output of fief status: %v\n%s", err, stdout)
			}
			if done(table) {
				return table
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("expected the fief status table to show %s within %v; last output:\n%s\n%s", what, timeout, last, emperor.tail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// opsFuseZipPids returns the pids of the fuse-zip daemons that mount zip.
func opsFuseZipPids(e *testEnv, zip string) []int {
	var pids []int
	for _, p := range e.processes() {
		if filepath.Base(p.argv[0]) == "fuse-zip" && slices.Contains(p.argv, zip) {
			pids = append(pids, p.pid)
		}
	}
	return pids
}

// opsHttpdPids returns the pids of the listening busybox httpd servers with
// arg as one of their arguments, such as the document root or the address.
func opsHttpdPids(e *testEnv, arg string) []int {
	var pids []int
	for _, pid := range e.httpdPids() {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
		if slices.Contains(argv, arg) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// opsAlive reports whether pid runs and is not a zombie.
func opsAlive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which ends with the last ")".
	text := string(stat)
	end := strings.LastIndex(text, ")")
	return end >= 0 && !strings.HasPrefix(text[end+1:], " Z")
}

// opsUser is a system user of the host.
type opsUser struct {
	name     string
	uid, gid int
}

// opsRequireUser returns the user name, and creates it as a system user
// without a home directory and with its own group when it does not exist.
// A user that the test created is removed again when the test ends.
func opsRequireUser(t *testing.T, name string) opsUser {
	t.Helper()
	found, err := user.Lookup(name)
	if err != nil {
		var unknown user.UnknownUserError
		if !errors.As(err, &unknown) {
			t.Fatalf("looking up the user %s: %v", name, err)
		}
		useradd, err := exec.LookPath("useradd")
		if err != nil {
			t.Fatalf("useradd is required to create the test user %s but not found in PATH (%v); install the Debian package passwd", name, err)
		}
		out, err := exec.Command(useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name).CombinedOutput()
		if err != nil {
			t.Fatalf("useradd --system %s failed: %v\n%s", name, err, out)
		}
		t.Cleanup(func() {
			if out, err := exec.Command("userdel", name).CombinedOutput(); err != nil {
				t.Errorf("userdel %s, the test user this test created, failed: %v\n%s", name, err, out)
			}
		})
		found, err = user.Lookup(name)
		if err != nil {
			t.Fatalf("looking up the user %s after useradd: %v", name, err)
		}
	}
	uid, err := strconv.Atoi(found.Uid)
	if err != nil {
		t.Fatalf("invalid uid %q of user %s: %v", found.Uid, name, err)
	}
	gid, err := strconv.Atoi(found.Gid)
	if err != nil {
		t.Fatalf("invalid gid %q of user %s: %v", found.Gid, name, err)
	}
	return opsUser{name: name, uid: uid, gid: gid}
}

// opsUnusedIDs returns a uid without a passwd entry and a gid without a
// group entry, as an owner that only has numbers.
func opsUnusedIDs(t *testing.T) opsUser {
	t.Helper()
	for id := 54321; id < 54421; id++ {
		_, userErr := user.LookupId(strconv.Itoa(id))
		_, groupErr := user.LookupGroupId(strconv.Itoa(id + 1))
		var unknownUser user.UnknownUserIdError
		var unknownGroup user.UnknownGroupIdError
		if errors.As(userErr, &unknownUser) && errors.As(groupErr, &unknownGroup) {
			return opsUser{name: fmt.Sprintf("uid %d without a passwd entry", id), uid: id, gid: id + 1}
		}
	}
	t.Fatalf("found no uid from 54321 to 54420 without a passwd entry whose next number has no group entry")
	return opsUser{}
}

// opsInstallVassal writes a vassal file with the given owner and mode
// beside the vassal directory and renames it in, so the emperor reads its
// final owner and mode at its first event.
func opsInstallVassal(e *testEnv, name, content string, uid, gid int, mode os.FileMode) string {
	e.t.Helper()
	staging := e.path(".staging-" + name)
	if err := os.WriteFile(staging, []byte(content), 0o600); err != nil {
		e.t.Fatalf("writing %s: %v", staging, err)
	}
	if err := os.Chown(staging, uid, gid); err != nil {
		e.t.Fatalf("chown %d:%d %s: %v", uid, gid, staging, err)
	}
	// Chmod, because the umask applies to WriteFile.
	if err := os.Chmod(staging, mode); err != nil {
		e.t.Fatalf("chmod %o %s: %v", mode, staging, err)
	}
	target := filepath.Join(e.vassalDir, name)
	if err := os.Rename(staging, target); err != nil {
		e.t.Fatalf("renaming %s to %s: %v", staging, target, err)
	}
	return target
}

// opsReadWords returns the blank-separated words of a file, or nil when it
// does not exist.
func opsReadWords(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	return strings.Fields(string(data))
}
