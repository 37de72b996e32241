package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// Tests of fief exec-as-user against Debian's gosu, which it replaces.

// gosuPath is where Debian's gosu package installs gosu.
const gosuPath = "/usr/sbin/gosu"

// execUserReport prints what the tests compare, one item per line: the
// output of id, then HOME, USER and LOGNAME ("unset" when absent).
const execUserReport = `id; echo "HOME=$HOME"; echo "USER=${USER-unset}"; echo "LOGNAME=${LOGNAME-unset}"`

// execUserEnv is the environment of both switchers: no USER or LOGNAME, and
// the caller's HOME, which the switch must replace.
var execUserEnv = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"}

// execUserSwitch runs SWITCHER [flags] SPEC sh -c execUserReport and returns
// the result. switcher is fief's argv prefix ("fief", "exec-as-user") or
// gosu's.
func execUserSwitch(t *testing.T, switcher []string, spec string) containerResult {
	t.Helper()
	argv := append(append([]string{}, switcher...), spec, "sh", "-c", execUserReport)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = execUserEnv
	cmd.Dir = "/"
	return containerRun(t, cmd)
}

// execUserLines splits the report into its id line and the HOME, USER and
// LOGNAME lines.
func execUserLines(output string) (id, home, user, logname string) {
	lines := strings.Split(strings.TrimRight(output, "\n"), "\n")
	for len(lines) < 4 {
		lines = append(lines, "(missing line)")
	}
	return lines[0], lines[1], lines[2], lines[3]
}

func TestExecAsUserMatchesGosu(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)
	gosu := containerRequireFile(t, gosuPath, "gosu")
	// 1234 stands for a uid without a passwd entry.
	for _, fields := range execUserPasswd(t) {
		if fields[2] == "1234" {
			t.Fatalf("uid 1234 must have no /etc/passwd entry for this test, but %s has it", fields[0])
		}
	}

	tests := []struct {
		spec string
		// name is the user name that USER and LOGNAME must hold, "" when
		// the uid has no passwd entry and both stay unset.
		name string
	}{
		{"nobody", "nobody"},
		{"65534", "nobody"},
		{"1234", ""},
		{"nobody:nogroup", "nobody"},
		{"nobody:daemon", "nobody"},
		{"65534:65534", "nobody"},
		{"65534:1", "nobody"},
		{"1234:1234", ""},
		{"1234:5678", ""},
		{"daemon", "daemon"},
		{"root", "root"},
	}
	for _, test := range tests {
		t.Run(test.spec, func(t *testing.T) {
			got := execUserSwitch(t, []string{fief, "exec-as-user"}, test.spec)
			want := execUserSwitch(t, []string{gosu}, test.spec)
			if got.code != 0 || want.code != 0 {
				t.Fatalf("expected both to exit 0; fief exec-as-user exited %d (stderr %q), gosu exited %d (stderr %q)",
					got.code, got.stderr, want.code, want.stderr)
			}

			gotID, gotHome, gotUser, gotLogname := execUserLines(got.stdout)
			wantID, wantHome, _, _ := execUserLines(want.stdout)
			if gotID != wantID {
				t.Errorf("id under fief exec-as-user %s: expected %q as under gosu, got %q", test.spec, wantID, gotID)
			}
			if gotHome != wantHome {
				t.Errorf("fief exec-as-user %s: expected %q as under gosu, got %q", test.spec, wantHome, gotHome)
			}

			// gosu leaves USER and LOGNAME alone; fief sets both to the
			// user's name when the user has one.
			wantName := test.name
			if wantName == "" {
				wantName = "unset"
			}
			if gotUser != "USER="+wantName {
				t.Errorf("fief exec-as-user %s: expected USER=%s, got %q", test.spec, wantName, gotUser)
			}
			if gotLogname != "LOGNAME="+wantName {
				t.Errorf("fief exec-as-user %s: expected LOGNAME=%s, got %q", test.spec, wantName, gotLogname)
			}
		})
	}
}

// execUserChrootPasswd and execUserChrootGroup are the user database of the
// chroot in TestExecAsUserSupplementaryGroups. alice is a member of two
// groups besides her own, and carol's home field is empty.
const (
	execUserChrootPasswd = `root:x:0:0:root:/root:/bin/sh
alice:x:2000:2000:Alice:/home/alice:/bin/sh
bob:x:2001:2001:Bob:/home/bob:/bin/sh
carol:x:2002:2002:Carol::/bin/sh
`
	execUserChrootGroup = `root:x:0:
staff:x:50:alice,bob
audio:x:63:alice
alice:x:2000:
bob:x:2001:
carol:x:2002:
`
)

func TestExecAsUserSupplementaryGroups(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)
	gosu := containerRequireFile(t, gosuPath, "gosu")
	busybox := containerRequireProgram(t, "busybox", "busybox-static")

	// fief and gosu both read /etc/passwd and /etc/group of the root they
	// run in, so a chroot gives them a user database of the test's own.
	// Every program in it is static. gosu also needs /proc, which busybox
	// mounts in a private mount namespace, so the host's mount table never lists it.
	root := containerTempDir(t)
	image := newContainerRootfs(t, root)
	image.copyFile(fief, "/fief", 0o755)
	image.copyFile(gosu, "/gosu", 0o755)
	image.copyFile(busybox, "/bin/busybox", 0o755)
	for _, applet := range []string{"sh", "id", "mount"} {
		image.symlink("busybox", "/bin/"+applet)
	}
	image.writeFile("/etc/passwd", execUserChrootPasswd, 0o644)
	image.writeFile("/etc/group", execUserChrootGroup, 0o644)

	run := func(switcher, spec string) containerResult {
		t.Helper()
		argv := []string{"/bin/busybox", "sh", "-c", `mount -t proc proc /proc && exec "$@"`, "sh", switcher}
		if switcher == "/fief" {
			argv = append(argv, "exec-as-user")
		}
		argv = append(argv, spec, "sh", "-c", execUserReport)
		cmd := &exec.Cmd{
			Path: argv[0],
			Args: argv,
			Env:  []string{"PATH=/bin", "HOME=/root"},
			Dir:  "/",
			// With CLONE_NEWNS, Go makes every mount of the new
			// namespace private before the chroot.
			SysProcAttr: &syscall.SysProcAttr{Chroot: root, Unshareflags: syscall.CLONE_NEWNS},
		}
		return containerRun(t, cmd)
	}

	// wantID is busybox id under fief, which prints the supplementary
	// groups as the kernel keeps them, sorted. As gosu 1.14 does, fief
	// leaves the primary gid out of that list and sets no supplementary
	// group at all for USER:GROUP, so the id lines must match gosu's
	// exactly.
	tests := []struct {
		spec     string
		wantID   string
		wantHome string
		wantUser string
		// compareGosu is whether gosu must give the same ids and HOME.
		compareGosu bool
	}{
		{spec: "alice", wantID: "uid=2000(alice) gid=2000(alice) groups=50(staff),63(audio)", wantHome: "/home/alice", wantUser: "alice", compareGosu: true},
		{spec: "2000", wantID: "uid=2000(alice) gid=2000(alice) groups=50(staff),63(audio)", wantHome: "/home/alice", wantUser: "alice", compareGosu: true},
		{spec: "alice:staff", wantID: "uid=2000(alice) gid=50(staff)", wantHome: "/home/alice", wantUser: "alice", compareGosu: true},
		{spec: "bob", wantID: "uid=2001(bob) gid=2001(bob) groups=50(staff)", wantHome: "/home/bob", wantUser: "bob", compareGosu: true},
		{spec: "2001:63", wantID: "uid=2001(bob) gid=63(audio)", wantHome: "/home/bob", wantUser: "bob", compareGosu: true},
		// An empty home field gives HOME=/ in fief, as for a uid without
		// a passwd entry; gosu is not compared here.
		{spec: "carol", wantID: "uid=2002(carol) gid=2002(carol)", wantHome: "/", wantUser: "carol"},
	}
	for _, test := range tests {
		t.Run(test.spec, func(t *testing.T) {
			got := run("/fief", test.spec)
			if got.code != 0 {
				t.Fatalf("fief exec-as-user %s in the chroot: expected exit code 0, got %d; stderr %q", test.spec, got.code, got.stderr)
			}
			id, home, user, logname := execUserLines(got.stdout)
			if id != test.wantID {
				t.Errorf("id under fief exec-as-user %s: expected %q, got %q", test.spec, test.wantID, id)
			}
			if home != "HOME="+test.wantHome {
				t.Errorf("fief exec-as-user %s: expected HOME=%s, got %q", test.spec, test.wantHome, home)
			}
			if user != "USER="+test.wantUser || logname != "LOGNAME="+test.wantUser {
				t.Errorf("fief exec-as-user %s: expected USER=%s and LOGNAME=%s, got %q and %q", test.spec, test.wantUser, test.wantUser, user, logname)
			}

			if !test.compareGosu {
				return
			}
			reference := run("/gosu", test.spec)
			if reference.code != 0 {
				t.Fatalf("gosu %s in the chroot: expected exit code 0, got %d; stderr %q", test.spec, reference.code, reference.stderr)
			}
			gosuID, gosuHome, _, _ := execUserLines(reference.stdout)
			if id != gosuID {
				t.Errorf("fief exec-as-user %s: expected id %q as under gosu, got %q", test.spec, gosuID, id)
			}
			if home != gosuHome {
				t.Errorf("fief exec-as-user %s: expected %q as under gosu, got %q", test.spec, gosuHome, home)
			}
		})
	}
}

func TestExecAsUserReplacesCallerEnv(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)

	cmd := exec.Command(fief, "exec-as-user", "nobody", "sh", "-c", execUserReport)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/root", "USER=root", "LOGNAME=root", "FIEF_TEST_KEPT=yes"}
	result := containerRun(t, cmd)
	if result.code != 0 {
		t.Fatalf("fief exec-as-user nobody: expected exit code 0, got %d; stderr %q", result.code, result.stderr)
	}
	_, home, user, logname := execUserLines(result.stdout)
	nobody := execUserLookupHome(t, "nobody")
	if home != "HOME="+nobody || user != "USER=nobody" || logname != "LOGNAME=nobody" {
		t.Errorf("expected the caller's HOME, USER and LOGNAME replaced by HOME=%s USER=nobody LOGNAME=nobody, got %q %q %q", nobody, home, user, logname)
	}

	// cat is executed by fief itself, so /proc/self/environ is exactly the
	// environment fief passed: a shell in between would merge duplicates.
	environ := exec.Command(fief, "exec-as-user", "nobody", "cat", "/proc/self/environ")
	environ.Env = cmd.Env
	environResult := containerRun(t, environ)
	if environResult.code != 0 {
		t.Fatalf("fief exec-as-user nobody cat /proc/self/environ: expected exit code 0, got %d; stderr %q", environResult.code, environResult.stderr)
	}
	entries := strings.Split(strings.TrimRight(environResult.stdout, "\x00"), "\x00")
	for _, key := range []string{"HOME", "USER", "LOGNAME"} {
		var found []string
		for _, entry := range entries {
			if strings.HasPrefix(entry, key+"=") {
				found = append(found, entry)
			}
		}
		if len(found) != 1 {
			t.Errorf("expected exactly one %s entry in the environment fief passed, got %q", key, found)
		}
	}
	if !slices.Contains(entries, "FIEF_TEST_KEPT=yes") {
		t.Errorf("expected the caller's FIEF_TEST_KEPT=yes kept in the environment, got %q", entries)
	}
}

func TestExecAsUserUnknownUser(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)
	gosu := containerRequireFile(t, gosuPath, "gosu")

	for _, spec := range []string{"fief-test-no-such-user", "nobody:fief-test-no-such-group", "1234:fief-test-no-such-group"} {
		t.Run(spec, func(t *testing.T) {
			got := execUserSwitch(t, []string{fief, "exec-as-user"}, spec)
			reference := execUserSwitch(t, []string{gosu}, spec)
			if reference.code == 0 {
				t.Errorf("gosu %s (the reference): expected a failure, got exit code 0", spec)
			}
			if got.code != 1 {
				t.Errorf("fief exec-as-user %s: expected exit code 1, got %d; stderr %q", spec, got.code, got.stderr)
			}
			if got.stdout != "" {
				t.Errorf("fief exec-as-user %s: expected the command not to run, it printed %q", spec, got.stdout)
			}
			unknown := spec[strings.LastIndex(spec, ":")+1:]
			if lines := strings.Split(strings.TrimRight(got.stderr, "\n"), "\n"); len(lines) != 1 || !strings.Contains(lines[0], unknown) {
				t.Errorf("fief exec-as-user %s: expected one line on stderr naming %q, got %q", spec, unknown, got.stderr)
			}
		})
	}
}

func TestExecAsUserKeepsPid(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)

	cmd := exec.Command(fief, "exec-as-user", "nobody", "sh", "-c", `echo $$`)
	result := containerRun(t, cmd)
	if result.code != 0 {
		t.Fatalf("fief exec-as-user nobody sh: expected exit code 0, got %d; stderr %q", result.code, result.stderr)
	}
	if got, want := strings.TrimSpace(result.stdout), strconv.Itoa(cmd.Process.Pid); got != want {
		t.Errorf("expected the shell to run with fief's pid %s (exec, no fork), it printed pid %q", want, got)
	}
}

func TestExecAsUserNoNewPrivs(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)
	if own := execUserStatusLine(t, "self", "NoNewPrivs:"); own != "0" {
		t.Fatalf("expected the test process to run with NoNewPrivs 0, got %q: the check without --no-new-privs cannot tell the flag's effect", own)
	}

	tests := []struct {
		args []string
		want string
	}{
		{[]string{"exec-as-user", "--no-new-privs", "nobody"}, "1"},
		{[]string{"exec-as-user", "nobody"}, "0"},
	}
	for _, test := range tests {
		argv := append(test.args, "sh", "-c", "grep '^NoNewPrivs:' /proc/self/status")
		result := containerRun(t, exec.Command(fief, argv...))
		if result.code != 0 {
			t.Errorf("fief %s: expected exit code 0, got %d; stderr %q", strings.Join(argv, " "), result.code, result.stderr)
			continue
		}
		if fields := strings.Fields(result.stdout); len(fields) != 2 || fields[1] != test.want {
			t.Errorf("fief %s: expected NoNewPrivs %s in /proc/self/status, got %q", strings.Join(test.args, " "), test.want, result.stdout)
		}
	}
}

func TestExecAsUserCannotRun(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)
	dir := containerTempDir(t)
	notExecutable := filepath.Join(dir, "not-executable")
	containerWriteFile(t, notExecutable, "#!/bin/sh\nexit 0\n", 0o644)

	tests := []struct {
		name    string
		program string
		want    int
	}{
		{"name not in PATH", "fief-test-no-such-program", 127},
		{"missing path", filepath.Join(dir, "missing", "program"), 127},
		{"file without execute permission", notExecutable, 126},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			result := containerRun(t, exec.Command(fief, "exec-as-user", "nobody", test.program))
			if result.code != test.want {
				t.Errorf("fief exec-as-user nobody %s: expected exit code %d, got %d; stderr %q", test.program, test.want, result.code, result.stderr)
			}
			if !strings.Contains(result.stderr, test.program) {
				t.Errorf("fief exec-as-user nobody %s: expected stderr to name the program, got %q", test.program, result.stderr)
			}
		})
	}
}

func TestExecAsUserWithoutRoot(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)
	nobodyUID, nobodyGID := execUserLookupIDs(t, "nobody")

	// The test binary's directory is private to root, so the user nobody
	// runs a copy of fief from a directory it can read.
	dir := containerTempDir(t)
	image := newContainerRootfs(t, dir)
	image.copyFile(fief, "/fief", 0o755)
	copied := filepath.Join(dir, "fief")

	asNobody := func(argv ...string) containerResult {
		t.Helper()
		cmd := exec.Command(copied, argv...)
		cmd.Dir = "/"
		cmd.Env = execUserEnv
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(nobodyUID), Gid: uint32(nobodyGID), Groups: []uint32{}}}
		return containerRun(t, cmd)
	}

	other := asNobody("exec-as-user", "daemon", "id", "-u")
	if other.code != 1 {
		t.Errorf("fief exec-as-user daemon run by nobody: expected exit code 1, got %d; stdout %q, stderr %q", other.code, other.stdout, other.stderr)
	}
	if other.stdout != "" {
		t.Errorf("fief exec-as-user daemon run by nobody: expected the command not to run, it printed %q", other.stdout)
	}
	if !strings.Contains(other.stderr, "needs root") {
		t.Errorf("fief exec-as-user daemon run by nobody: expected an error saying the switch needs root, got %q", other.stderr)
	}

	same := asNobody("exec-as-user", "nobody", "id", "-u")
	if same.code != 0 || strings.TrimSpace(same.stdout) != strconv.Itoa(nobodyUID) {
		t.Errorf("fief exec-as-user nobody run by nobody: expected exit code 0 and uid %d, got exit code %d, stdout %q, stderr %q",
			nobodyUID, same.code, same.stdout, same.stderr)
	}
}

// execUserLookupIDs returns the uid and gid of a user from /etc/passwd.
func execUserLookupIDs(t *testing.T, name string) (int, int) {
	t.Helper()
	fields := execUserPasswdEntry(t, name)
	uid, err1 := strconv.Atoi(fields[2])
	gid, err2 := strconv.Atoi(fields[3])
	if err1 != nil || err2 != nil {
		t.Fatalf("invalid uid or gid in the /etc/passwd entry of %s: %q", name, strings.Join(fields, ":"))
	}
	return uid, gid
}

// execUserLookupHome returns the home directory of a user from /etc/passwd.
func execUserLookupHome(t *testing.T, name string) string {
	t.Helper()
	return execUserPasswdEntry(t, name)[5]
}

// execUserPasswdEntry returns the fields of the /etc/passwd line of a user.
func execUserPasswdEntry(t *testing.T, name string) []string {
	t.Helper()
	for _, fields := range execUserPasswd(t) {
		if fields[0] == name {
			return fields
		}
	}
	t.Fatalf("the user %s has no entry in /etc/passwd", name)
	return nil
}

// execUserPasswd returns the fields of every valid /etc/passwd line.
func execUserPasswd(t *testing.T) [][]string {
	t.Helper()
	data, err := os.ReadFile("/etc/passwd")
	if err != nil {
		t.Fatalf("reading /etc/passwd: %v", err)
	}
	var entries [][]string
	for line := range strings.Lines(string(data)) {
		if fields := strings.Split(strings.TrimRight(line, "\n"), ":"); len(fields) == 7 {
			entries = append(entries, fields)
		}
	}
	return entries
}

// execUserStatusLine returns the value of a line of /proc/PID/status, such
// as "0" for "NoNewPrivs:".
func execUserStatusLine(t *testing.T, pid, name string) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%s/status", pid))
	if err != nil {
		t.Fatalf("reading /proc/%s/status: %v", pid, err)
	}
	for line := range strings.Lines(string(data)) {
		if fields := strings.Fields(line); len(fields) > 1 && fields[0] == name {
			return fields[1]
		}
	}
	t.Fatalf("no %s line in /proc/%s/status", name, pid)
	return ""
}

// fief exec-as-user runs the usual command lines from an init function in
// fief/asuser/fastpath and all others through main's flag parsing. A "--"
// before the user selects main's path, and both paths must give the same
// result, on success and on failure.
func TestExecAsUserFastPathAgrees(t *testing.T) {
	t.Parallel()
	fief := containerFief(t)

	for _, flags := range [][]string{nil, {"--no-new-privs"}} {
		for _, spec := range []string{"root", "nobody", "nobody:nogroup", "1234", "1234:50", "daemon:0",
			"fief-test-no-such-user", "nobody:fief-test-no-such-group", ""} {
			fast := execUserSwitch(t, append([]string{fief, "exec-as-user"}, flags...), spec)
			slow := execUserSwitch(t, append(append([]string{fief, "exec-as-user"}, flags...), "--"), spec)
			if fast.code != slow.code {
				t.Errorf("fief exec-as-user %v %q: the fast path exited with %d, main's path with %d", flags, spec, fast.code, slow.code)
			}
			if fast.stdout != slow.stdout {
				t.Errorf("fief exec-as-user %v %q: the fast path printed stdout %q, main's path %q", flags, spec, fast.stdout, slow.stdout)
			}
			if fast.stderr != slow.stderr {
				t.Errorf("fief exec-as-user %v %q: the fast path printed stderr %q, main's path %q", flags, spec, fast.stderr, slow.stderr)
			}
		}
	}

	// Programs that are not executable or not found.
	dir := containerTempDir(t)
	script := filepath.Join(dir, "not-executable")
	containerWriteFile(t, script, "#!/bin/sh\n", 0o644)
	for _, program := range []string{script, filepath.Join(dir, "missing"), "fief-test-no-such-program"} {
		run := func(options ...string) containerResult {
			cmd := exec.Command(fief, append(append([]string{"exec-as-user"}, options...), "nobody", program)...)
			cmd.Env = execUserEnv
			return containerRun(t, cmd)
		}
		fast, slow := run(), run("--")
		if fast.code < 126 {
			t.Errorf("fief exec-as-user nobody %s: expected exit code 126 (not executable) or 127 (not found), got %d", program, fast.code)
		}
		if fast.code != slow.code {
			t.Errorf("fief exec-as-user nobody %s: the fast path exited with %d, main's path with %d", program, fast.code, slow.code)
		}
		if fast.stderr != slow.stderr {
			t.Errorf("fief exec-as-user nobody %s: the fast path printed stderr %q, main's path %q", program, fast.stderr, slow.stderr)
		}
	}
}
