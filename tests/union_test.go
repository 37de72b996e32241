package tests

import (
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// These tests run the copy-on-write root of the uWSGI tutorial: unionfs-fuse
// merges a read-only base root with one writable folder per user, each vassal
// pivot_roots into its own union, and busybox httpd serves files through it.

// unionUser is a user of the base root. Its vassal runs as it, and its writes
// land in cow/NAME.
type unionUser struct {
	name string
	uid  int
}

var (
	unionUser1 = unionUser{name: "user001", uid: 1001}
	unionUser2 = unionUser{name: "user002", uid: 1002}
)

// unionApplets are the busybox symlinks in the base's /bin.
var unionApplets = []string{"sh", "httpd", "ls", "cat", "id", "ps", "mount", "echo", "touch"}

// unionIndex is the content of /www/index.html in the base.
const unionIndex = "served from the shared base root\n"

// Lines of the vassal file that unionVassalLines returns, counted from 1.
const (
	unionLineUnionfs = 5
	unionLinePivot   = 6
	unionLineDevBind = 8
	unionLineUmount  = 9
	unionLineCheck   = 11
)

// unionRoot is the tutorial's layout below a test directory U. U/ns is the
// chroot of unionfs-fuse, U/ns/base the read-only root that every vassal
// shares, U/ns/cow/USER the writable folder of each user, and U/ufs the
// mount point of every union, each in its own vassal's mount namespace.
type unionRoot struct {
	ns, base, cow, mountPoint string
}

// userCow returns the copy-on-write folder of user on the host.
func (r unionRoot) userCow(user unionUser) string {
	return filepath.Join(r.cow, user.name)
}

// requireUnionComponents fails the test when unionfs-fuse or a static
// busybox in /bin is missing: the base root has no shared libraries.
func requireUnionComponents(e *testEnv) {
	e.t.Helper()
	e.requireProgram("unionfs-fuse")

	binary, err := elf.Open("/bin/busybox")
	if err != nil {
		e.t.Fatalf("a static /bin/busybox is required for the base root: %v; install the Debian package busybox-static", err)
	}
	defer binary.Close()
	for _, prog := range binary.Progs {
		if prog.Type == elf.PT_INTERP {
			e.t.Fatalf("/bin/busybox is dynamically linked, but the base root has no shared libraries; install the Debian package busybox-static")
		}
	}
}

// newUnionRoot builds the base root and the copy-on-write folders of both
// users below the test directory.
func newUnionRoot(e *testEnv) unionRoot {
	e.t.Helper()
	ns := e.path("ns")
	root := unionRoot{
		ns:         ns,
		base:       filepath.Join(ns, "base"),
		cow:        filepath.Join(ns, "cow"),
		mountPoint: e.path("ufs"),
	}

	dirs := map[string]os.FileMode{
		"bin": 0o755, "etc": 0o755, "www": 0o777, ".old_root": 0o755,
		"proc": 0o555, "dev": 0o755, "tmp": 0o1777,
	}
	for dir, mode := range dirs {
		path := filepath.Join(root.base, dir)
		if err := os.MkdirAll(path, 0o755); err != nil {
			e.t.Fatalf("creating %s: %v", path, err)
		}
		// Chmod, because the umask applies to MkdirAll.
		if err := os.Chmod(path, mode); err != nil {
			e.t.Fatalf("chmod %o %s: %v", mode, path, err)
		}
	}

	unionCopyFile(e, "/bin/busybox", filepath.Join(root.base, "bin", "busybox"))
	for _, applet := range unionApplets {
		link := filepath.Join(root.base, "bin", applet)
		if err := os.Symlink("busybox", link); err != nil {
			e.t.Fatalf("creating the symlink %s: %v", link, err)
		}
	}
	unionCopyFile(e, fiefBinary, filepath.Join(root.base, "fief"))

	passwd := "root:x:0:0:root:/root:/bin/sh\n"
	group := "root:x:0:\n"
	for _, user := range []unionUser{unionUser1, unionUser2} {
		passwd += fmt.Sprintf("%s:x:%d:%d:%s:/tmp:/bin/sh\n", user.name, user.uid, user.uid, user.name)
		group += fmt.Sprintf("%s:x:%d:\n", user.name, user.uid)
	}
	unionWriteFile(e, filepath.Join(root.base, "etc", "passwd"), passwd)
	unionWriteFile(e, filepath.Join(root.base, "etc", "group"), group)
	unionWriteFile(e, filepath.Join(root.base, "www", "index.html"), unionIndex)

	for _, user := range []unionUser{unionUser1, unionUser2} {
		cow := root.userCow(user)
		if err := os.MkdirAll(cow, 0o755); err != nil {
			e.t.Fatalf("creating the copy-on-write folder %s: %v", cow, err)
		}
		if err := os.Chown(cow, user.uid, user.uid); err != nil {
			e.t.Fatalf("chown %d:%d %s: %v", user.uid, user.uid, cow, err)
		}
	}
	if err := os.Mkdir(root.mountPoint, 0o755); err != nil {
		e.t.Fatalf("creating the union mount point %s: %v", root.mountPoint, err)
	}
	return root
}

func unionCopyFile(e *testEnv, source, target string) {
	e.t.Helper()
	data, err := os.ReadFile(source)
	if err != nil {
		e.t.Fatalf("reading %s: %v", source, err)
	}
	if err := os.WriteFile(target, data, 0o755); err != nil {
		e.t.Fatalf("writing %s: %v", target, err)
	}
}

func unionWriteFile(e *testEnv, path, content string) {
	e.t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		e.t.Fatalf("writing %s: %v", path, err)
	}
}

// unionAppText is what the program of user's vassal writes to /www/app.txt.
func unionAppText(user unionUser) string {
	return "written by " + user.name + "\n"
}

// unionVassalLines returns the tutorial's union vassal for user, serving
// /www of its union on 127.0.0.1:port. Before httpd starts, the program
// writes app.txt, appends a line to starts.txt, and saves the output of
// ls /proc, ps, cat /proc/1/cmdline and id in /www.
func unionVassalLines(root unionRoot, user unionUser, port int) []string {
	script := strings.Join([]string{
		fmt.Sprintf("echo written by %s > /www/app.txt", user.name),
		"echo started >> /www/starts.txt",
		"ls /proc > /www/proc.txt",
		"ps > /www/ps.txt",
		"cat /proc/1/cmdline > /www/init-cmdline.txt",
		"id > /www/id.txt",
		fmt.Sprintf("exec /bin/busybox httpd -f -p 127.0.0.1:%d -h /www", port),
	}, "; ")
	return []string{
		"[uwsgi]",
		"uid = " + user.name,
		"gid = " + user.name,
		"hook-pre-jail = callret:chdir /",
		fmt.Sprintf("hook-pre-jail = exec:unionfs-fuse -ocow,chroot=%s,default_permissions,allow_other /base=RO:/cow/%%(uid)=RW %s", root.ns, root.mountPoint),
		fmt.Sprintf("pivot_root = %s %s/.old_root", root.mountPoint, root.mountPoint),
		"hook-as-root = mount:proc none /proc",
		"hook-as-root = mount:none /.old_root/dev /dev bind",
		"hook-as-root = umount:/.old_root rec,detach",
		fmt.Sprintf("exec = /bin/busybox sh -c '%s'", script),
		"mountpoint-check = /",
		"stop-timeout = 2s",
	}
}

func unionJoinLines(lines []string) string {
	return strings.Join(lines, "\n") + "\n"
}

// unionVassal returns unionVassalLines as file content.
func unionVassal(root unionRoot, user unionUser, port int) string {
	return unionJoinLines(unionVassalLines(root, user, port))
}

// unionReplaceLine returns a copy of lines with line number (from 1) set to text.
func unionReplaceLine(lines []string, number int, text string) []string {
	changed := slices.Clone(lines)
	changed[number-1] = text
	return changed
}

// unionInsertLine returns a copy of lines with text inserted so that it
// becomes line number (from 1).
func unionInsertLine(lines []string, number int, text string) []string {
	return slices.Insert(slices.Clone(lines), number-1, text)
}

// unionGet requests path on 127.0.0.1:port.
func unionGet(port int, path string) (status int, body string, err error) {
	resp, err := httpClient.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data), err
}

// unionCheckServed checks that path on port returns 200 with body want.
func unionCheckServed(t *testing.T, port int, path, want string, emperor *fiefProcess) {
	t.Helper()
	status, body, err := unionGet(port, path)
	if err != nil {
		t.Errorf("GET %s on 127.0.0.1:%d: expected 200 with %q, the request failed: %v\n%s", path, port, want, err, emperor.tail())
		return
	}
	if status != http.StatusOK || body != want {
		t.Errorf("GET %s on 127.0.0.1:%d: expected 200 with %q, found status %d with %q\n%s", path, port, want, status, body, emperor.tail())
	}
}

// unionPoller requests one path in the background every 20 ms and records
// each request that does not return 200 with the expected body.
type unionPoller struct {
	stop     chan struct{}
	done     chan struct{}
	requests int
	failures []string
}

func unionPollServing(t *testing.T, port int, path, want string) *unionPoller {
	p := &unionPoller{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			status, body, err := unionGet(port, path)
			p.requests++
			switch {
			case err != nil:
				p.failures = append(p.failures, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
			case status != http.StatusOK || body != want:
				p.failures = append(p.failures, fmt.Sprintf("%s: status %d, body %q", time.Now().Format("15:04:05.000"), status, body))
			}
			select {
			case <-p.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(p.stopOnce)
	return p
}

func (p *unionPoller) stopOnce() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

// finish stops polling and returns the number of requests and the failures.
func (p *unionPoller) finish() (int, []string) {
	p.stopOnce()
	return p.requests, p.failures
}

// checkUnionPoller fails t unless the poller made requests and every one
// returned the expected body.
func checkUnionPoller(t *testing.T, p *unionPoller, what string, emperor *fiefProcess) {
	t.Helper()
	requests, failures := p.finish()
	if requests == 0 {
		t.Errorf("expected %s to be polled, no request was made", what)
	}
	if len(failures) > 0 {
		t.Errorf("expected %s to serve every request, %d of %d failed:\n%s\n%s", what, len(failures), requests, strings.Join(failures, "\n"), emperor.tail())
	}
}

// unionDaemons returns the pids of the test's unionfs-fuse daemons that
// serve the copy-on-write folder of user.
func unionDaemons(e *testEnv, user unionUser) []int {
	var pids []int
	for _, p := range e.processes() {
		if filepath.Base(p.argv[0]) == "unionfs-fuse" && strings.Contains(strings.Join(p.argv, " "), "/cow/"+user.name+"=RW") {
			pids = append(pids, p.pid)
		}
	}
	return pids
}

// unionSnapshot lists every entry below dir with its type, mode, owner,
// size and modification time. A regular file also gets the SHA-256 of its
// content, and a symlink its target.
func unionSnapshot(t *testing.T, dir string) []string {
	t.Helper()
	var entries []string
	err := filepath.WalkDir(dir, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := os.Lstat(path)
		if err != nil {
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		rel, _ := filepath.Rel(dir, path)
		entry := fmt.Sprintf("%s %v %d:%d size=%d mtime=%d", rel, info.Mode(), st.Uid, st.Gid, info.Size(), info.ModTime().UnixNano())
		switch {
		case info.Mode().IsRegular():
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(data)
			entry += " sha256=" + hex.EncodeToString(sum[:])
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			entry += " -> " + target
		}
		entries = append(entries, entry)
		return nil
	})
	if err != nil {
		t.Fatalf("listing %s: %v", dir, err)
	}
	return entries
}

// checkUnionBaseUnchanged fails t when the base differs from the snapshot before
// the vassals started, or contains an app.txt.
func checkUnionBaseUnchanged(t *testing.T, root unionRoot, before []string) {
	t.Helper()
	after := unionSnapshot(t, root.base)
	if !slices.Equal(before, after) {
		var removed, added []string
		for _, entry := range before {
			if !slices.Contains(after, entry) {
				removed = append(removed, "  - "+entry)
			}
		}
		for _, entry := range after {
			if !slices.Contains(before, entry) {
				added = append(added, "  + "+entry)
			}
		}
		t.Errorf("expected the read-only base %s to be unchanged, found differences:\n%s", root.base, strings.Join(append(removed, added...), "\n"))
	}
	if _, err := os.Lstat(filepath.Join(root.base, "www", "app.txt")); !os.IsNotExist(err) {
		t.Errorf("expected no app.txt in the base's www, Lstat returned %v", err)
	}
}

// unionFilesNamed returns every regular file called name below dir, mapped
// to its content.
func unionFilesNamed(t *testing.T, dir, name string) map[string]string {
	t.Helper()
	found := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, entry fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if entry.Name() == name && entry.Type().IsRegular() {
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			found[path] = string(data)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("searching %s for %s: %v", dir, name, err)
	}
	return found
}

// unionLogView returns a copy of the fief process whose helpers fail t, for
// use in a subtest. The copy must not call waitExit: its exit state is the
// one copied.
func unionLogView(p *fiefProcess, t *testing.T) *fiefProcess {
	view := *p
	view.e = p.e.forSubtest(t)
	return &view
}

// unionMatchInvalid matches the emperor's record for an invalid vassal file
// whose error contains fragment.
func unionMatchInvalid(vassal, fragment string) func(logRecord) bool {
	invalid := matchLog("vassal file is invalid; fix it and save it to retry", "vassal", vassal)
	return func(r logRecord) bool {
		return invalid(r) && strings.Contains(r.attr("err"), fragment)
	}
}

// unionMountWatch reads one process's mount table every 5 ms and records
// every line, absent from the first read, that names the test directory, is
// a proc or unionfs-fuse mount, or is mounted on /proc or /dev.
type unionMountWatch struct {
	stop     chan struct{}
	done     chan struct{}
	samples  int
	baseline map[string]bool
	leaks    []string
	readErr  error
}

func unionWatchMounts(e *testEnv, pid string) *unionMountWatch {
	e.t.Helper()
	first, err := mountLines(pid, "")
	if err != nil {
		e.t.Fatalf("reading /proc/%s/mountinfo: %v", pid, err)
	}
	w := &unionMountWatch{stop: make(chan struct{}), done: make(chan struct{}), baseline: map[string]bool{}}
	for _, line := range first {
		w.baseline[line] = true
	}
	go func() {
		defer close(w.done)
		ticker := time.NewTicker(5 * time.Millisecond)
		defer ticker.Stop()
		for {
			lines, err := mountLines(pid, "")
			if err != nil {
				w.readErr = err
				return
			}
			w.samples++
			for _, line := range lines {
				if !w.baseline[line] && unionSuspectMount(line, e.dir) && !slices.Contains(w.leaks, line) {
					w.leaks = append(w.leaks, line)
				}
			}
			select {
			case <-w.stop:
				return
			case <-ticker.C:
			}
		}
	}()
	e.t.Cleanup(w.stopOnce)
	return w
}

// unionSuspectMount reports whether a mountinfo line is a mount that a
// union vassal makes: below dir, a proc or unionfs-fuse mount, or a mount on
// /proc or /dev.
func unionSuspectMount(line, dir string) bool {
	if strings.Contains(line, dir+"/") {
		return true
	}
	mountPoint := mountinfoField(line, 4)
	if mountPoint == "/proc" || mountPoint == "/dev" {
		return true
	}
	_, after, found := strings.Cut(line, " - ")
	if !found {
		return false
	}
	fstype, _, _ := strings.Cut(after, " ")
	return fstype == "proc" || strings.HasPrefix(fstype, "fuse.unionfs")
}

func (w *unionMountWatch) stopOnce() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// checkUnionMountWatch stops the watch and fails t when it saw a leak.
func checkUnionMountWatch(t *testing.T, w *unionMountWatch, table string) {
	t.Helper()
	w.stopOnce()
	if w.samples == 0 {
		t.Errorf("expected %s to be sampled, it never was (read error: %v)", table, w.readErr)
	}
	if len(w.leaks) > 0 {
		t.Errorf("expected %s never to list a mount of the vassals (the union, /proc, /dev), found in %d samples:\n%s", table, w.samples, strings.Join(w.leaks, "\n"))
	}
}

// unionProcessState returns the state letter of /proc/PID/stat, such as R,
// S or D, or "" when the process is gone. For a thread, pass
// "PID/task/TID".
func unionProcessState(pid string) string {
	data, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return ""
	}
	// The command name in brackets may contain blanks and brackets, so
	// the state is the field after the last ')'.
	end := strings.LastIndexByte(string(data), ')')
	if end < 0 {
		return ""
	}
	fields := strings.Fields(string(data[end+1:]))
	if len(fields) == 0 {
		return ""
	}
	return fields[0]
}

// unionThreadsInD returns the threads, as "PID/task/TID", of the test's
// processes that are in state D (uninterruptible sleep), mapped to their
// process.
func unionThreadsInD(e *testEnv) map[string]process {
	found := map[string]process{}
	for _, p := range e.processes() {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", p.pid))
		if err != nil {
			continue
		}
		for _, task := range tasks {
			thread := fmt.Sprintf("%d/task/%s", p.pid, task.Name())
			if unionProcessState(thread) == "D" {
				found[thread] = p
			}
		}
	}
	return found
}

// unionStuckInD samples the threads of the test's processes for period and
// returns the processes with a thread in state D (uninterruptible sleep) in
// every sample. A FUSE request in flight puts its caller in state D for a
// moment, so a single sample proves nothing.
func unionStuckInD(e *testEnv, period time.Duration) []process {
	candidates := unionThreadsInD(e)
	deadline := time.Now().Add(period)
	for len(candidates) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		for thread := range candidates {
			if unionProcessState(thread) != "D" {
				delete(candidates, thread)
			}
		}
	}
	var stuck []process
	for _, p := range candidates {
		if !slices.ContainsFunc(stuck, func(q process) bool { return q.pid == p.pid }) {
			stuck = append(stuck, p)
		}
	}
	return stuck
}

// unionVassalRun is one vassal of the scenario.
type unionVassalRun struct {
	user unionUser
	port int
}

func (v unionVassalRun) file() string {
	return v.user.name + ".ini"
}

func TestUnionRootTwoVassals(t *testing.T) {
	t.Parallel()
	runUnionScenario(t, false)
}

func TestUnionRootSharedPropagation(t *testing.T) {
	t.Parallel()
	runUnionScenario(t, true)
}

// runUnionScenario runs two union vassals that share the base and the
// mount point path under one emperor, in steps that build on each other.
// With sharedEmperor the emperor runs in a mount namespace whose mounts are
// all shared, and its mount table is watched; otherwise the host's is.
func runUnionScenario(t *testing.T, sharedEmperor bool) {
	e := newEnv(t)
	requireUnionComponents(e)
	var unshare string
	if sharedEmperor {
		unshare = e.requireProgram("unshare")
	}
	root := newUnionRoot(e)
	baseBefore := unionSnapshot(t, root.base)

	// The emperor starts with an empty directory, so the first read of
	// the watched mount table comes before any vassal mount.
	var emperor *fiefProcess
	var mounts *unionMountWatch
	table := "the host mount table"
	if sharedEmperor {
		// unshare execs fief without forking, so the pid started here is
		// the emperor's.
		emperor = e.start("emperor", unshare, "--mount", "--propagation", "shared", "--", fiefBinary, "emperor", e.vassalDir)
		started := emperor.waitLogOnce("emperor started", matchLog("emperor started"))
		if started.attr("pid") != fmt.Sprint(emperor.pid()) {
			t.Fatalf("expected the emperor to run as pid %d (unshare execs it), the log says pid=%s\n%s", emperor.pid(), started.attr("pid"), emperor.tail())
		}
		emperorPid := fmt.Sprint(emperor.pid())
		roots, err := mountLines(emperorPid, " / / ")
		if err != nil || len(roots) == 0 {
			t.Fatalf("reading the root mount of the emperor's mount namespace: lines %q, err %v", roots, err)
		}
		if !strings.Contains(roots[0], "shared:") {
			t.Fatalf("expected / to be shared in the emperor's mount namespace, found %q", roots[0])
		}
		mounts = unionWatchMounts(e, emperorPid)
		table = fmt.Sprintf("the emperor's mount table (/proc/%s/mountinfo)", emperorPid)
	} else {
		mounts = unionWatchMounts(e, "self")
		emperor = e.startEmperor()
		emperor.waitLogOnce("emperor started", matchLog("emperor started"))
	}
	// A cleanup, so that a leak is reported also when a step stops the
	// test early, as a leaked /proc would.
	t.Cleanup(func() { checkUnionMountWatch(t, mounts, table) })

	vassals := []unionVassalRun{
		{user: unionUser1, port: freePort(t)},
		{user: unionUser2, port: freePort(t)},
	}
	for _, v := range vassals {
		e.writeVassal(v.file(), unionVassal(root, v.user, v.port))
	}
	for _, v := range vassals {
		took := emperor.mustServe(v.port, unionIndex)
		t.Logf("%s served index.html through its union %v after its file was written", v.file(), took.Round(time.Millisecond))
	}

	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"writes land in own cow folder", func(t *testing.T) {
			checkUnionWrites(t, root, vassals, baseBefore, emperor)
		}},
		{"apps served through union", func(t *testing.T) {
			for _, v := range vassals {
				unionCheckServed(t, v.port, "/index.html", unionIndex, emperor)
				unionCheckServed(t, v.port, "/app.txt", unionAppText(v.user), emperor)
			}
		}},
		{"each vassal sees own proc", func(t *testing.T) {
			checkUnionProc(t, e, root, vassals, emperor)
		}},
		{"unionfs kill recovers", func(t *testing.T) {
			checkUnionKillRecovers(t, e.forSubtest(t), unionLogView(emperor, t), root, vassals, baseBefore)
		}},
		{"file removal leaves nothing", func(t *testing.T) {
			checkUnionRemoval(t, e.forSubtest(t), unionLogView(emperor, t), root, vassals, baseBefore)
		}},
	}
	for _, step := range steps {
		if !t.Run(step.name, step.run) {
			t.Errorf("step %q failed, so the later steps did not run", step.name)
			break
		}
	}
}

// checkUnionWrites checks that each app's app.txt is in its own
// copy-on-write folder only, owned by its user, and that the base is
// unchanged.
func checkUnionWrites(t *testing.T, root unionRoot, vassals []unionVassalRun, baseBefore []string, emperor *fiefProcess) {
	want := map[string]string{}
	for _, v := range vassals {
		want[filepath.Join(root.userCow(v.user), "www", "app.txt")] = unionAppText(v.user)
	}
	if found := unionFilesNamed(t, root.ns, "app.txt"); !maps.Equal(found, want) {
		t.Errorf("expected the app.txt files below %s to be exactly %q, found %q\n%s", root.ns, want, found, emperor.tail())
	}

	for _, v := range vassals {
		path := filepath.Join(root.userCow(v.user), "www", "app.txt")
		info, err := os.Stat(path)
		if err != nil {
			t.Errorf("stat %s: %v", path, err)
			continue
		}
		if uid := info.Sys().(*syscall.Stat_t).Uid; int(uid) != v.user.uid {
			t.Errorf("expected %s to be owned by uid %d, the user of %s, found uid %d", path, v.user.uid, v.file(), uid)
		}
	}
	checkUnionBaseUnchanged(t, root, baseBefore)
}

// checkUnionProc checks what each program saw before httpd started: a
// /proc with only its vassal's processes, pid 1 the vassal init, and its
// own user, resolved from the base's /etc/passwd, which the host lacks.
func checkUnionProc(t *testing.T, e *testEnv, root unionRoot, vassals []unionVassalRun, emperor *fiefProcess) {
	for i, v := range vassals {
		other := vassals[1-i]
		www := filepath.Join(root.userCow(v.user), "www")
		read := func(name string) string {
			t.Helper()
			data, err := os.ReadFile(filepath.Join(www, name))
			if err != nil {
				t.Errorf("reading what the program of %s wrote: %v\n%s", v.file(), err, emperor.tail())
			}
			return string(data)
		}

		var pids []int
		for _, name := range strings.Fields(read("proc.txt")) {
			if pid, err := strconv.Atoi(name); err == nil {
				pids = append(pids, pid)
			}
		}
		// The init, unionfs-fuse, the program's shell and ls, and room
		// for two more.
		if len(pids) == 0 || len(pids) > 6 {
			t.Errorf("expected the fresh /proc of %s to list at most 6 processes (the init, unionfs-fuse, the shell and ls), found %d: %v", v.file(), len(pids), pids)
		}
		if !slices.Contains(pids, 1) {
			t.Errorf("expected the /proc of %s to list pid 1, the vassal init, found %v", v.file(), pids)
		}

		initArgv := strings.Split(strings.TrimRight(read("init-cmdline.txt"), "\x00"), "\x00")
		if initArgv[0] != "fief-vassal-init" {
			t.Errorf("expected pid 1 of %s to be fief-vassal-init, its command line is %q", v.file(), initArgv)
		}
		if wantFile := filepath.Join(e.vassalDir, v.file()); !slices.Contains(initArgv, wantFile) {
			t.Errorf("expected pid 1 of %s to be the init of %s, its command line is %q", v.file(), wantFile, initArgv)
		}

		ps := read("ps.txt")
		if own := "/cow/" + v.user.name + "=RW"; !strings.Contains(ps, own) {
			t.Errorf("expected ps in %s to show its own unionfs-fuse (%s), found:\n%s", v.file(), own, ps)
		}
		if strings.Contains(ps, other.user.name) || strings.Contains(ps, fmt.Sprintf("127.0.0.1:%d", other.port)) {
			t.Errorf("expected ps in %s to show none of the processes of %s, found:\n%s", v.file(), other.file(), ps)
		}

		wantID := fmt.Sprintf("uid=%d(%s) gid=%d(%s)", v.user.uid, v.user.name, v.user.uid, v.user.name)
		if id := read("id.txt"); !strings.HasPrefix(id, wantID) {
			t.Errorf("expected the program of %s to run as %s, id printed %q", v.file(), wantID, id)
		}
	}
}

// checkUnionKillRecovers kills the unionfs-fuse daemon of the first vassal
// and checks that it is respawned with its earlier writes, while the second
// vassal keeps serving with the same init.
func checkUnionKillRecovers(t *testing.T, e *testEnv, emperor *fiefProcess, root unionRoot, vassals []unionVassalRun, baseBefore []string) {
	victim, bystander := vassals[0], vassals[1]
	victimInit := emperor.waitVassalStarted(victim.file(), 1)
	bystanderInit := emperor.waitVassalStarted(bystander.file(), 1)
	bystanderDaemons := unionDaemons(e, bystander.user)
	poller := unionPollServing(t, bystander.port, "/app.txt", unionAppText(bystander.user))

	daemons := unionDaemons(e, victim.user)
	if len(daemons) != 1 {
		t.Fatalf("expected one unionfs-fuse daemon for %s, found %v among:\n%s%s", victim.user.name, daemons, formatProcesses(e.processes()), emperor.tail())
	}
	killed := time.Now()
	if err := syscall.Kill(daemons[0], syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 unionfs-fuse (pid %d): %v", daemons[0], err)
	}

	var newDaemons []int
	recovered := false
	for time.Since(killed) < serveTimeout {
		newDaemons = unionDaemons(e, victim.user)
		status, body, err := unionGet(victim.port, "/app.txt")
		if len(newDaemons) == 1 && newDaemons[0] != daemons[0] && err == nil && status == http.StatusOK && body == unionAppText(victim.user) {
			recovered = true
			break
		}
		time.Sleep(pollPeriod)
	}
	if !recovered {
		t.Fatalf("expected a new unionfs-fuse daemon for %s and a 200 with its app.txt within %v of killing pid %d; daemons now %v\n%s",
			victim.user.name, serveTimeout, daemons[0], newDaemons, emperor.tail())
	}
	recovery := time.Since(killed)
	t.Logf("recovery from kill -9 of unionfs-fuse to the next 200: %v", recovery.Round(time.Millisecond))
	if recovery > 5*time.Second {
		t.Errorf("expected recovery within 5s of killing unionfs-fuse, took %v\n%s", recovery, emperor.tail())
	}

	failure := emperor.waitLogOnce("mount check failed", matchLog("mount check failed; tearing the vassal down", "vassal", victim.file()))
	if where := fmt.Sprintf("%s:%d:", victim.file(), unionLineCheck); !strings.Contains(failure.attr("err"), where) {
		t.Errorf("expected the mount check failure to name %s, found err=%q", where, failure.attr("err"))
	}
	if newInit := emperor.waitVassalStarted(victim.file(), 2); newInit == victimInit {
		t.Errorf("expected a new vassal init for %s after the failure, found the same pid %d", victim.file(), victimInit)
	}

	// The program appends to starts.txt on each start, so two lines mean
	// the first run's file survived in the copy-on-write folder.
	starts := filepath.Join(root.userCow(victim.user), "www", "starts.txt")
	if data, err := os.ReadFile(starts); err != nil || string(data) != "started\nstarted\n" {
		t.Errorf("expected %s to contain one line per start, 2 in all, found %q (err %v)", starts, data, err)
	}
	unionCheckServed(t, victim.port, "/starts.txt", "started\nstarted\n", emperor)
	unionCheckServed(t, victim.port, "/app.txt", unionAppText(victim.user), emperor)

	checkUnionPoller(t, poller, fmt.Sprintf("%s on port %d during the recovery of %s", bystander.file(), bystander.port, victim.file()), emperor)
	if starts := emperor.find(matchLog("vassal started", "vassal", bystander.file())); len(starts) != 1 {
		t.Errorf("expected %s to be started once, found %d starts\n%s", bystander.file(), len(starts), emperor.tail())
	}
	if state := unionProcessState(fmt.Sprint(bystanderInit)); state == "" || state == "Z" {
		t.Errorf("expected the vassal init of %s (pid %d) to keep running, its state is %q", bystander.file(), bystanderInit, state)
	}
	if now := unionDaemons(e, bystander.user); !slices.Equal(now, bystanderDaemons) {
		t.Errorf("expected the unionfs-fuse daemon of %s to stay %v, found %v", bystander.user.name, bystanderDaemons, now)
	}
	checkUnionBaseUnchanged(t, root, baseBefore)
}

// checkUnionRemoval removes both vassal files and checks that no process
// and no mount of the test is left, while the copy-on-write folders keep
// the apps' files.
func checkUnionRemoval(t *testing.T, e *testEnv, emperor *fiefProcess, root unionRoot, vassals []unionVassalRun, baseBefore []string) {
	for _, v := range vassals {
		if err := os.Remove(filepath.Join(e.vassalDir, v.file())); err != nil {
			t.Fatalf("removing %s: %v", v.file(), err)
		}
	}
	for _, v := range vassals {
		stopped := emperor.waitLogOnce("vassal stopped", matchLog("vassal stopped", "vassal", v.file()))
		if stopped.attr("status") != "exit status 0" {
			t.Errorf("expected the vassal init of %s to exit 0 after its file was removed, found status=%q", v.file(), stopped.attr("status"))
		}
	}

	if _, left := e.waitNoProcesses(exitTimeout, emperor.pid()); len(left) > 0 {
		t.Errorf("expected no process of the vassals within %v of removing their files, found:\n%s%s", exitTimeout, formatProcesses(left), emperor.tail())
	}
	if mounts := mountsInAnyNamespace(e.dir + "/"); len(mounts) > 0 {
		t.Errorf("expected no mount of the test directory in any mount namespace after the stop, found:\n%s", strings.Join(mounts, "\n"))
	}
	if lines, err := mountLines("self", e.dir); err != nil || len(lines) > 0 {
		t.Errorf("expected the host mount table to name nothing below %s, found %q (err %v)", e.dir, lines, err)
	}
	for _, v := range vassals {
		if !refusesConnections(v.port) {
			t.Errorf("expected port %d of %s to refuse connections after the stop", v.port, v.file())
		}
		app := filepath.Join(root.userCow(v.user), "www", "app.txt")
		if data, err := os.ReadFile(app); err != nil || string(data) != unionAppText(v.user) {
			t.Errorf("expected %s to keep %q after the stop, found %q (err %v)", app, unionAppText(v.user), data, err)
		}
	}
	if !emperor.running() {
		t.Errorf("expected the emperor to keep running after the vassal files were removed\n%s", emperor.tail())
	}
	checkUnionBaseUnchanged(t, root, baseBefore)
}

// unionWordsAfter reports which of names are missing as whole words from
// the text after marker in text; all of them when marker is absent.
func unionWordsAfter(text, marker string, names []string) []string {
	_, after, found := strings.Cut(text, marker)
	if !found {
		return names
	}
	var missing []string
	for _, name := range names {
		if !regexp.MustCompile(`\b` + regexp.QuoteMeta(name) + `\b`).MatchString(after) {
			missing = append(missing, name)
		}
	}
	return missing
}

func TestUnionBadHookLines(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	requireUnionComponents(e)
	root := newUnionRoot(e)

	good := unionVassalRun{user: unionUser1, port: freePort(t)}
	e.writeVassal("good.ini", unionVassal(root, good.user, good.port))
	emperor := e.startEmperor()
	emperor.mustServe(good.port, unionIndex)
	poller := unionPollServing(t, good.port, "/app.txt", unionAppText(good.user))

	fixedPort := freePort(t)
	fixed := unionVassalLines(root, unionUser2, fixedPort)
	brokenFile := filepath.Join(e.vassalDir, "broken.ini")

	cases := []struct {
		name     string
		lines    []string
		line     int
		fragment string   // identifies this case's log record
		want     []string // more text the error must contain
		marker   string   // the text that introduces the supported names
		names    []string // the supported names
	}{
		{
			name:     "unknown action",
			lines:    unionInsertLine(fixed, unionLineUmount+1, "hook-as-root = frobnicate:/x"),
			line:     unionLineUmount + 1,
			fragment: `unknown hook action "frobnicate"`,
			want:     []string{"hook-as-root"},
			marker:   "supported actions are",
			names:    []string{"exec", "mount", "umount", "mkdir", "chdir", "call", "callret"},
		},
		{
			name:     "bad mount flag",
			lines:    unionReplaceLine(fixed, unionLineDevBind, "hook-as-root = mount:none /a /b bind,bogus"),
			line:     unionLineDevBind,
			fragment: `unknown mount flag "bogus"`,
			want:     []string{"hook-as-root"},
			marker:   "supported flags are",
			names:    []string{"bind", "rec", "ro", "private", "slave", "shared", "nosuid", "nodev", "noexec"},
		},
		{
			name:     "pivot_root old outside new",
			lines:    unionReplaceLine(fixed, unionLinePivot, fmt.Sprintf("pivot_root = %s /elsewhere", root.mountPoint)),
			line:     unionLinePivot,
			fragment: `"/elsewhere"`,
			want:     []string{"pivot_root", "inside", fmt.Sprintf("%q", root.mountPoint)},
		},
		{
			name:     "mount in as-user phase",
			lines:    unionInsertLine(fixed, unionLineUmount+1, "hook-as-user = mount:proc none /proc"),
			line:     unionLineUmount + 1,
			fragment: "hook-as-user",
			want:     []string{"mount needs root", "hook-as-root"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			view := unionLogView(emperor, t)
			e.forSubtest(t).writeVassal("broken.ini", unionJoinLines(c.lines))
			record := view.waitLogOnce(fmt.Sprintf("naming broken.ini as invalid with %s", c.fragment), unionMatchInvalid("broken.ini", c.fragment))
			errText := record.attr("err")

			if record.level != "ERROR" {
				t.Errorf("expected the invalid file to be logged at ERROR, found level=%s: %s", record.level, record.raw)
			}
			if where := fmt.Sprintf("%s:%d:", brokenFile, c.line); !strings.Contains(errText, where) {
				t.Errorf("expected the error to name %s, found err=%q", where, errText)
			}
			for _, want := range c.want {
				if !strings.Contains(errText, want) {
					t.Errorf("expected the error to contain %q, found err=%q", want, errText)
				}
			}
			if c.marker != "" {
				if missing := unionWordsAfter(errText, c.marker, c.names); len(missing) > 0 {
					t.Errorf("expected the error to list the supported names after %q, missing %q in err=%q", c.marker, missing, errText)
				}
			}
			if starts := emperor.find(matchLog("vassal started", "vassal", "broken.ini")); len(starts) != 0 {
				t.Errorf("expected no vassal init for the invalid broken.ini, found %d starts\n%s", len(starts), emperor.tail())
			}
			if !emperor.running() {
				t.Fatalf("expected the emperor to keep running beside an invalid file\n%s", emperor.tail())
			}
		})
	}

	e.writeVassal("broken.ini", unionJoinLines(fixed))
	emperor.waitVassalStarted("broken.ini", 1)
	emperor.mustServe(fixedPort, unionIndex)
	unionCheckServed(t, fixedPort, "/app.txt", unionAppText(unionUser2), emperor)

	checkUnionPoller(t, poller, fmt.Sprintf("good.ini on port %d while broken.ini was invalid", good.port), emperor)
	if starts := emperor.find(matchLog("vassal started", "vassal", "good.ini")); len(starts) != 1 {
		t.Errorf("expected good.ini to be started once, found %d starts\n%s", len(starts), emperor.tail())
	}
}

func TestUnionDeadlockGuard(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	requireUnionComponents(e)
	root := newUnionRoot(e)

	good := unionVassalRun{user: unionUser1, port: freePort(t)}
	e.writeVassal("good.ini", unionVassal(root, good.user, good.port))
	emperor := e.startEmperor()
	emperor.mustServe(good.port, unionIndex)
	poller := unionPollServing(t, good.port, "/app.txt", unionAppText(good.user))

	// Without chroot= the daemon's root is the old /, and it names its
	// branches by host paths. Its own mount point keeps its mounts apart
	// from the good vassal's union in the checks below.
	mountPoint := e.path("ufs-nochroot")
	if err := os.Mkdir(mountPoint, 0o755); err != nil {
		t.Fatalf("creating %s: %v", mountPoint, err)
	}
	badPort := freePort(t)
	lines := unionVassalLines(root, unionUser2, badPort)
	lines = unionReplaceLine(lines, unionLineUnionfs, fmt.Sprintf("hook-pre-jail = exec:unionfs-fuse -ocow,default_permissions,allow_other %s=RO:%s/%%(uid)=RW %s", root.base, root.cow, mountPoint))
	lines = unionReplaceLine(lines, unionLinePivot, fmt.Sprintf("pivot_root = %s %s/.old_root", mountPoint, mountPoint))
	e.writeVassal("nochroot.ini", unionJoinLines(lines))

	failed := matchLog("vassal start failed", "vassal", "nochroot.ini")
	// The first death respawns at once, so a second failure follows
	// quickly and shows that the retry is guarded too.
	var records []logRecord
	for begin := time.Now(); len(records) < 2; {
		records = emperor.find(failed)
		if time.Since(begin) > logTimeout {
			// Without the guard, the daemon waits on its own mount, and
			// one of its threads stays in state D.
			t.Fatalf("expected 2 log lines %q for nochroot.ini within %v, found %d; processes of the test stuck in state D:\n%s%s",
				"vassal start failed", logTimeout, len(records), formatProcesses(unionStuckInD(e, time.Second)), emperor.tail())
		}
		time.Sleep(pollPeriod)
	}
	for _, record := range records {
		errText := record.attr("err")
		if where := fmt.Sprintf("%s:%d:", filepath.Join(e.vassalDir, "nochroot.ini"), unionLinePivot); !strings.Contains(errText, where) {
			t.Errorf("expected the start failure to name the pivot_root line %s, found err=%q", where, errText)
		}
		for _, want := range []string{"deadlock", "unionfs-fuse", "chroot="} {
			if !strings.Contains(errText, want) {
				t.Errorf("expected the start failure to contain %q, found err=%q", want, errText)
			}
		}
	}
	if started := emperor.find(matchLog("program started", "vassal", "nochroot.ini")); len(started) != 0 {
		t.Errorf("expected the program of nochroot.ini never to start, found %d starts\n%s", len(started), emperor.tail())
	}
	if stuck := unionStuckInD(e, time.Second); len(stuck) > 0 {
		t.Errorf("expected no process of the test in state D for 1s after the failed starts, found:\n%s%s", formatProcesses(stuck), emperor.tail())
	}
	if !emperor.running() {
		t.Fatalf("expected the emperor to keep running after the failed starts\n%s", emperor.tail())
	}

	if err := os.Remove(filepath.Join(e.vassalDir, "nochroot.ini")); err != nil {
		t.Fatalf("removing nochroot.ini: %v", err)
	}
	emperor.waitLogOnce("vassal file removed", func(r logRecord) bool {
		return r.attr("vassal") == "nochroot.ini" && strings.HasPrefix(r.msg, "vassal file removed")
	})

	deadline := time.Now().Add(exitTimeout)
	var leftProcesses []process
	var leftMounts []string
	for {
		leftProcesses = processesMentioning(mountPoint)
		leftProcesses = append(leftProcesses, processesMentioning(filepath.Join(e.vassalDir, "nochroot.ini"))...)
		leftMounts = mountsInAnyNamespace(mountPoint)
		if len(leftProcesses) == 0 && len(leftMounts) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(pollPeriod)
	}
	if len(leftProcesses) > 0 {
		t.Errorf("expected no process of nochroot.ini within %v of removing it, found:\n%s%s", exitTimeout, formatProcesses(leftProcesses), emperor.tail())
	}
	if len(leftMounts) > 0 {
		t.Errorf("expected no mount on %s in any mount namespace after nochroot.ini was removed, found:\n%s", mountPoint, strings.Join(leftMounts, "\n"))
	}
	if stuck := unionStuckInD(e, time.Second); len(stuck) > 0 {
		t.Errorf("expected no process of the test in state D after nochroot.ini was removed, found:\n%s%s", formatProcesses(stuck), emperor.tail())
	}

	checkUnionPoller(t, poller, fmt.Sprintf("good.ini on port %d while nochroot.ini failed", good.port), emperor)
	if starts := emperor.find(matchLog("vassal started", "vassal", "good.ini")); len(starts) != 1 {
		t.Errorf("expected good.ini to be started once, found %d starts\n%s", len(starts), emperor.tail())
	}
}
