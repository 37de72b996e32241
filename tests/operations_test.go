package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// These tests cover the operator's side of the emperor: reloads by signal,
// tyrant mode, fief status, fief check, a vassal in its own network
// namespace, and 200 vassals at once.

// opsWebVassal is a fuse-zip vassal whose as-root steps record each start
// of its program: "fresh" from an if-not-reload block, "reload" from an
// if-reload block.
type opsWebVassal struct {
	file   string // the vassal file's name, such as "a.ini"
	app    zipApp
	port   int
	starts string // the file that the as-root steps append to
	atexit string // the file that the exec-as-root-atexit step creates
}

func opsNewWebVassal(e *testEnv, name string) opsWebVassal {
	e.t.Helper()
	v := opsWebVassal{
		file:   name + ".ini",
		app:    e.newApp(name, "served by vassal "+name+"\n"),
		port:   freePort(e.t),
		starts: e.path(name + "-starts"),
		atexit: e.path(name + "-atexit-ran"),
	}
	// The recording steps run as the vassal's user, in the phase that
	// runs on a fresh start and on a reload alike.
	if err := os.WriteFile(v.starts, nil, 0o666); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Chmod(v.starts, 0o666); err != nil {
		e.t.Fatal(err)
	}
	return v
}

// content returns the vassal file: webVassal with the recording steps and
// extra lines appended.
func (v opsWebVassal) content(extra ...string) string {
	lines := []string{
		"if-not-reload =",
		fmt.Sprintf(`exec-as-user = busybox sh -c "echo fresh >> %s"`, v.starts),
		"endif =",
		"if-reload =",
		fmt.Sprintf(`exec-as-user = busybox sh -c "echo reload >> %s"`, v.starts),
		"endif =",
		"exec-as-root-atexit = busybox touch " + v.atexit,
	}
	return webVassal(v.app, v.port, append(lines, extra...)...)
}

// opsVassalPids are the processes of one running web vassal.
type opsVassalPids struct {
	init, fuseZip, httpd int
}

// waitRunning waits until the emperor has started the vassal init starts
// times and the program programs times and the app is served. It returns
// the pids of the latest vassal init, fuse-zip daemon and httpd.
func (v opsWebVassal) waitRunning(e *testEnv, emperor *fiefProcess, starts, programs int) opsVassalPids {
	e.t.Helper()
	initPid := emperor.waitVassalStarted(v.file, starts)
	emperor.waitLog(programs, fmt.Sprintf("program started (%s, %d times)", v.file, programs), matchLog("program started", "vassal", v.file))
	emperor.mustServe(v.port, v.app.index)

	fuseZips := opsFuseZipPids(e, v.app.zip)
	httpds := opsHttpdPids(e, v.app.mountPoint)
	if len(fuseZips) != 1 || len(httpds) != 1 {
		e.t.Fatalf("expected one fuse-zip and one httpd for %s, found fuse-zip %v and httpd %v among:\n%s%s",
			v.file, fuseZips, httpds, formatProcesses(e.processes()), emperor.tail())
	}
	return opsVassalPids{init: initPid, fuseZip: fuseZips[0], httpd: httpds[0]}
}

// checkReloaded checks that a reload kept the vassal init and the fuse-zip
// daemon of before, replaced httpd, and ran no atexit step.
func (v opsWebVassal) checkReloaded(t *testing.T, emperor *fiefProcess, before, after opsVassalPids) {
	t.Helper()
	if after.init != before.init || !opsAlive(before.init) {
		t.Errorf("expected %s to keep vassal init %d after the reload, found %d (old init alive: %v)\n%s",
			v.file, before.init, after.init, opsAlive(before.init), emperor.tail())
	}
	if after.fuseZip != before.fuseZip {
		t.Errorf("expected %s to keep fuse-zip %d after the reload (the if-not-reload block is skipped), found %d\n%s",
			v.file, before.fuseZip, after.fuseZip, emperor.tail())
	}
	if after.httpd == before.httpd {
		t.Errorf("expected the reload of %s to replace httpd %d, found the same pid\n%s", v.file, before.httpd, emperor.tail())
	}
	if opsAlive(before.httpd) {
		t.Errorf("expected the old httpd %d of %s to be gone after the reload, it still runs\n%s", before.httpd, v.file, emperor.tail())
	}
	if _, err := os.Stat(v.atexit); err == nil {
		t.Errorf("expected a reload of %s to run no atexit step, found %s\n%s", v.file, v.atexit, emperor.tail())
	}
}

func TestReloadKeepsInitAndFuseDaemon(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b := opsNewWebVassal(e, "a"), opsNewWebVassal(e, "b")
	e.writeVassal(a.file, a.content())
	e.writeVassal(b.file, b.content())
	emperor, socket := opsStartEmperor(e)

	a0 := a.waitRunning(e, emperor, 1, 1)
	b0 := b.waitRunning(e, emperor, 1, 1)
	if got, want := opsReadWords(t, a.starts), []string{"fresh"}; !slices.Equal(got, want) {
		t.Errorf("expected the first start of a.ini to record %v, found %v\n%s", want, got, emperor.tail())
	}

	// SIGHUP to the vassal init itself reloads that vassal only.
	if err := syscall.Kill(a0.init, syscall.SIGHUP); err != nil {
		t.Fatalf("kill -HUP %d (vassal init of a.ini): %v", a0.init, err)
	}
	emperor.waitLogOnce("a.ini reloading", matchLog("reloading: restarting the program inside the existing namespaces", "vassal", a.file, "pid", fmt.Sprint(a0.init)))
	a1 := a.waitRunning(e, emperor, 1, 2)
	a.checkReloaded(t, emperor, a0, a1)
	if got, want := opsReadWords(t, a.starts), []string{"fresh", "reload"}; !slices.Equal(got, want) {
		t.Errorf("expected SIGHUP to the vassal init to run the if-reload block and skip the if-not-reload block of a.ini: want %v, found %v\n%s", want, got, emperor.tail())
	}
	if n := len(emperor.find(matchLog("FUSE filesystem mounted", "vassal", a.file))); n != 1 {
		t.Errorf("expected fuse-zip of a.ini to be mounted once, found %d mounts\n%s", n, emperor.tail())
	}
	if got := opsHttpdPids(e, b.app.mountPoint); !slices.Equal(got, []int{b0.httpd}) {
		t.Errorf("expected SIGHUP to the vassal init of a.ini to leave b.ini's httpd %d alone, found %v\n%s", b0.httpd, got, emperor.tail())
	}
	if n := len(emperor.find(matchLog("program started", "vassal", b.file))); n != 1 {
		t.Errorf("expected b.ini's program to be started once so far, found %d starts\n%s", n, emperor.tail())
	}

	// SIGHUP to the emperor reloads every vassal.
	emperor.signal(syscall.SIGHUP)
	emperor.waitLogOnce("SIGHUP to the emperor", matchLog("SIGHUP: reloading every vassal"))
	a2 := a.waitRunning(e, emperor, 1, 3)
	b2 := b.waitRunning(e, emperor, 1, 2)
	a.checkReloaded(t, emperor, a1, a2)
	b.checkReloaded(t, emperor, b0, b2)
	if got, want := opsReadWords(t, a.starts), []string{"fresh", "reload", "reload"}; !slices.Equal(got, want) {
		t.Errorf("expected a.ini to record %v after the emperor's SIGHUP, found %v\n%s", want, got, emperor.tail())
	}
	if got, want := opsReadWords(t, b.starts), []string{"fresh", "reload"}; !slices.Equal(got, want) {
		t.Errorf("expected b.ini to record %v after the emperor's SIGHUP, found %v\n%s", want, got, emperor.tail())
	}
	report, raw, err := opsFetchReport(t, socket)
	if err != nil {
		t.Fatalf("%v\n%s", err, raw)
	}
	for _, check := range []struct {
		v    opsWebVassal
		init int
	}{{a, a0.init}, {b, b0.init}} {
		status, ok := report.vassal(check.v.file)
		if !ok || status.State != "running" || status.Pid != check.init || status.Restarts != 0 {
			t.Errorf("expected fief status to show %s running as pid %d with 0 restarts after the reloads, found %+v (present: %v)\n%s", check.v.file, check.init, status, ok, emperor.tail())
		}
	}

	// A content change is a full restart: new namespaces, a new vassal
	// init and a new fuse-zip daemon, after the old atexit steps.
	e.writeVassal(a.file, a.content("; changed: a full restart"))
	emperor.waitLogOnce("a.ini changed", matchLog("vassal file changed; restarting with fresh namespaces", "vassal", a.file))
	a3 := a.waitRunning(e, emperor, 2, 4)
	if a3.init == a2.init || opsAlive(a2.init) {
		t.Errorf("expected the change of a.ini to replace vassal init %d, found %d (old init alive: %v)\n%s", a2.init, a3.init, opsAlive(a2.init), emperor.tail())
	}
	if a3.fuseZip == a2.fuseZip || opsAlive(a2.fuseZip) {
		t.Errorf("expected the change of a.ini to start a new fuse-zip instead of %d, found %d (old fuse-zip alive: %v)\n%s", a2.fuseZip, a3.fuseZip, opsAlive(a2.fuseZip), emperor.tail())
	}
	if _, err := os.Stat(a.atexit); err != nil {
		t.Errorf("expected the restart of a.ini to run its exec-as-root-atexit step: %v\n%s", err, emperor.tail())
	}
	if got, want := opsReadWords(t, a.starts), []string{"fresh", "reload", "reload", "fresh"}; !slices.Equal(got, want) {
		t.Errorf("expected the restart of a.ini to run the if-not-reload block: want %v, found %v\n%s", want, got, emperor.tail())
	}
	if got := opsHttpdPids(e, b.app.mountPoint); !slices.Equal(got, []int{b2.httpd}) {
		t.Errorf("expected the change of a.ini to leave b.ini's httpd %d alone, found %v\n%s", b2.httpd, got, emperor.tail())
	}
	if _, err := os.Stat(b.atexit); err == nil {
		t.Errorf("expected no atexit step of b.ini to run, found %s\n%s", b.atexit, emperor.tail())
	}
}

func TestTyrantRunsVassalsAsFileOwners(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	user1 := opsRequireUser(t, "fieftest1")
	user2 := opsRequireUser(t, "fieftest2")

	// The program writes its uid into its document root and serves it, so
	// each vassal shows on its port whom it runs as.
	type served struct {
		file, www string
		port      int
	}
	newServed := func(name string) served {
		www := e.path("www-" + name)
		if err := os.Mkdir(www, 0o777); err != nil {
			t.Fatalf("creating %s: %v", www, err)
		}
		if err := os.Chmod(www, 0o777); err != nil {
			t.Fatalf("chmod 0777 %s: %v", www, err)
		}
		return served{file: name + ".ini", www: www, port: freePort(t)}
	}
	content := func(s served) string {
		return fmt.Sprintf("[uwsgi]\nexec = busybox sh -c \"busybox id -u > %s/index.html; exec busybox httpd -f -p 127.0.0.1:%d -h %s\"\nstop-timeout = 1s\n", s.www, s.port, s.www)
	}
	first, second, numeric := newServed("first"), newServed("second"), newServed("numeric")
	opsInstallVassal(e, first.file, content(first), user1.uid, user1.gid, 0o644)
	opsInstallVassal(e, second.file, content(second), user2.uid, user2.gid, 0o644)
	// An owner without a passwd entry runs with the file's gid.
	nameless := opsUnusedIDs(t)
	opsInstallVassal(e, numeric.file, content(numeric), nameless.uid, nameless.gid, 0o644)
	// A uid line must name the file's owner.
	mismatch := opsInstallVassal(e, "uid-mismatch.ini", "[uwsgi]\nuid = "+user2.name+"\nexec = busybox sleep 600\n", user1.uid, user1.gid, 0o644)

	rejectedContent := "[uwsgi]\nexec = busybox sleep 600\n"
	rootOwned := opsInstallVassal(e, "root-owned.ini", rejectedContent, 0, 0, 0o644)
	groupWritable := opsInstallVassal(e, "group-writable.ini", rejectedContent, user1.uid, user1.gid, 0o664)
	worldWritable := opsInstallVassal(e, "world-writable.ini", rejectedContent, user1.uid, user1.gid, 0o646)
	asRoot := opsInstallVassal(e, "as-root.ini", "[uwsgi]\nexec = busybox sleep 600\nexec-as-root = busybox true\n", user2.uid, user2.gid, 0o644)
	target := e.path("symlink-target.ini")
	if err := os.WriteFile(target, []byte(rejectedContent), 0o644); err != nil {
		t.Fatalf("writing %s: %v", target, err)
	}
	if err := os.Chown(target, user2.uid, user2.gid); err != nil {
		t.Fatalf("chown %s: %v", target, err)
	}
	symlink := filepath.Join(e.vassalDir, "symlink.ini")
	if err := os.Symlink(target, symlink); err != nil {
		t.Fatalf("creating the symlink %s: %v", symlink, err)
	}

	emperor, socket := opsStartEmperor(e, "--tyrant")

	checkRunsAs := func(s served, owner opsUser, starts int) {
		t.Helper()
		emperor.waitVassalStarted(s.file, starts)
		emperor.mustServe(s.port, fmt.Sprintf("%d\n", owner.uid))
		httpds := opsHttpdPids(e, fmt.Sprintf("127.0.0.1:%d", s.port))
		if len(httpds) != 1 {
			t.Fatalf("expected one httpd of %s, found %v\n%s", s.file, httpds, emperor.tail())
		}
		if uid, err := realUID(httpds[0]); err != nil || uid != owner.uid {
			t.Errorf("expected the program of %s to run as %s (uid %d), found uid %d (err %v)\n%s", s.file, owner.name, owner.uid, uid, err, emperor.tail())
		}
		if gid, err := statusField(httpds[0], "Gid:"); err != nil || gid != owner.gid {
			t.Errorf("expected the program of %s to run with %s's primary group %d, found gid %d (err %v)\n%s", s.file, owner.name, owner.gid, gid, err, emperor.tail())
		}
	}
	checkRunsAs(first, user1, 1)
	checkRunsAs(second, user2, 1)
	checkRunsAs(numeric, nameless, 1)

	failed := emperor.waitLogOnce("uid-mismatch.ini failing to start", matchLog("vassal start failed", "vassal", "uid-mismatch.ini"))
	wantMismatch := fmt.Sprintf("%s:2: in tyrant mode the vassal runs as the file's owner %d:%d; remove the uid and gid lines or make them name that user", mismatch, user1.uid, user1.gid)
	if failed.attr("err") != wantMismatch {
		t.Errorf("expected the start of uid-mismatch.ini to fail with %q, found err=%q\n%s", wantMismatch, failed.attr("err"), emperor.tail())
	}
	emperor.waitLogOnce("uid-mismatch.ini broken", matchLog("vassal stopped on a configuration error; fix the file and save it to retry", "vassal", "uid-mismatch.ini"))

	rejections := []struct {
		path, want string
	}{
		{rootOwned, fmt.Sprintf("tyrant mode rejects %q: it is owned by 0:0, and a vassal must not run as root", rootOwned)},
		{groupWritable, fmt.Sprintf("tyrant mode rejects %q: mode 0664 lets group or others change it", groupWritable)},
		{worldWritable, fmt.Sprintf("tyrant mode rejects %q: mode 0646 lets group or others change it", worldWritable)},
		{symlink, fmt.Sprintf("tyrant mode rejects %q: it is a symlink", symlink)},
		{asRoot, fmt.Sprintf("%s:3: as-root steps run as root, which a vassal file owned by uid %d may not do in tyrant mode", asRoot, user2.uid)},
	}
	for _, rejection := range rejections {
		name := filepath.Base(rejection.path)
		record := emperor.waitLogOnce(name+" rejected", matchLog("vassal file is invalid; fix it and save it to retry", "vassal", name))
		if !strings.Contains(record.attr("err"), rejection.want) {
			t.Errorf("expected the rejection of %s to say %q, found err=%q\n%s", name, rejection.want, record.attr("err"), emperor.tail())
		}
		if n := len(emperor.find(matchLog("vassal started", "vassal", name))); n != 0 {
			t.Errorf("expected no vassal init for the rejected %s, found %d starts\n%s", name, n, emperor.tail())
		}
	}
	// uid-mismatch.ini is broken too, after its vassal init exited 2.
	report := opsWaitReport(t, emperor, socket, logTimeout, "the rejected files and uid-mismatch.ini as broken", func(r opsReport) bool {
		return r.count("broken") == len(rejections)+1
	})
	for _, rejection := range rejections {
		name := filepath.Base(rejection.path)
		if status, ok := report.vassal(name); !ok || status.State != "broken" || !strings.Contains(status.Error, rejection.want) {
			t.Errorf("expected fief status to show %s broken with error %q, found %+v\n%s", name, rejection.want, status, emperor.tail())
		}
	}

	// A change of owner restarts the vassal as the new owner. The old
	// program's index.html belongs to user1, so it goes first.
	firstInit := emperor.waitVassalStarted(first.file, 1)
	if err := os.Remove(filepath.Join(first.www, "index.html")); err != nil {
		t.Fatalf("removing the old index.html: %v", err)
	}
	if err := os.Chown(filepath.Join(e.vassalDir, first.file), user2.uid, user2.gid); err != nil {
		t.Fatalf("chown %s %s: %v", user2.name, first.file, err)
	}
	emperor.waitLogOnce("first.ini restarted after chown", matchLog("vassal file changed; restarting with fresh namespaces", "vassal", first.file, "pid", fmt.Sprint(firstInit)))
	checkRunsAs(first, user2, 2)
}

func TestStatusReportsVassalStates(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	app := e.newApp("app", "status of a good vassal\n")
	port := freePort(t)
	e.writeVassal("good.ini", webVassal(app, port, "mountpoint-check-timeout = 1s", "mountpoint-check-interval = 500ms"))
	e.writeVassal("crash.ini", "[uwsgi]\nexec = busybox false\n")
	broken := e.writeVassal("broken.ini", "[uwsgi]\nexec = busybox true\nmountpont-check = /app\n")
	// stop-timeout = 1s and a program that ignores SIGTERM keep the
	// vassal in the stopping state for about a second.
	e.writeVassal("stubborn.ini", strings.Join([]string{
		"[uwsgi]",
		fmt.Sprintf(`exec = busybox sh -c "trap '' TERM; while :; do busybox sleep 1; done" %s`, e.path("stubborn")),
		"stop-timeout = 1s",
	}, "\n")+"\n")

	emperor, socket := opsStartEmperor(e)
	emperor.mustServe(port, app.index)
	goodInit := emperor.waitVassalStarted("good.ini", 1)

	info, err := os.Stat(socket)
	if err != nil {
		t.Fatalf("stat %s: %v", socket, err)
	}
	if info.Mode().Type() != os.ModeSocket || info.Mode().Perm() != 0o600 {
		t.Errorf("expected the status socket to be a socket with mode 0600, found %v\n%s", info.Mode(), emperor.tail())
	}

	brokenError := fmt.Sprintf(`%s:3: unknown key "mountpont-check"; did you mean "mountpoint-check"?`, broken)
	report := opsWaitReport(t, emperor, socket, logTimeout, "good running with its mount ok, crash backing off, broken broken", func(r opsReport) bool {
		good, _ := r.vassal("good.ini")
		crash, _ := r.vassal("crash.ini")
		brokenStatus, _ := r.vassal("broken.ini")
		return good.State == "running" && len(good.Mounts) == 1 &&
			crash.State == "backoff" && crash.Restarts > 0 && brokenStatus.State == "broken"
	})
	good, _ := report.vassal("good.ini")
	if good.Pid != goodInit || good.Restarts != 0 || good.LastExit != "" {
		t.Errorf("expected good.ini with pid %d, 0 restarts and no last exit, found %+v\n%s", goodInit, good, emperor.tail())
	}
	if want := []opsMountStatus{{Path: app.mountPoint, Healthy: true}}; !slices.Equal(good.Mounts, want) {
		t.Errorf("expected good.ini's mounts to be %+v, found %+v\n%s", want, good.Mounts, emperor.tail())
	}
	if good.UptimeSeconds <= 0 {
		t.Errorf("expected good.ini to have a positive uptime, found %v\n%s", good.UptimeSeconds, emperor.tail())
	}
	crash, _ := report.vassal("crash.ini")
	if crash.LastExit != "exit status 1" || crash.Pid != 0 {
		t.Errorf("expected crash.ini to back off with no pid and last exit \"exit status 1\", found %+v\n%s", crash, emperor.tail())
	}
	brokenStatus, _ := report.vassal("broken.ini")
	if brokenStatus.Error != brokenError || brokenStatus.Pid != 0 {
		t.Errorf("expected broken.ini with no pid and error %q, found %+v\n%s", brokenError, brokenStatus, emperor.tail())
	}
	if report.Pid != emperor.pid() || report.Dir != e.vassalDir || len(report.Vassals) != 4 {
		t.Errorf("expected the report of emperor %d on %s with 4 vassals, found pid %d, dir %s, %d vassals\n%s", emperor.pid(), e.vassalDir, report.Pid, report.Dir, len(report.Vassals), emperor.tail())
	}

	checkJSONFields(t, socket)

	table := opsWaitTable(t, emperor, socket, logTimeout, "crash.ini backing off", func(table opsTable) bool {
		return table.rows["crash.ini"]["STATE"] == "backoff"
	})
	wantSummary := fmt.Sprintf("emperor pid %d, %s, up ", emperor.pid(), e.vassalDir)
	if !strings.HasPrefix(table.summary, wantSummary) || !strings.HasSuffix(table.summary, ", 4 vassal(s)") {
		t.Errorf("expected the summary line %q...\", 4 vassal(s)\", found %q\n%s", wantSummary, table.summary, emperor.tail())
	}
	wantRows := map[string]map[string]string{
		"good.ini":   {"STATE": "running", "PID": fmt.Sprint(goodInit), "RESTARTS": "0", "LAST EXIT": "-", "MOUNTS": app.mountPoint + " ok"},
		"crash.ini":  {"STATE": "backoff", "PID": "-", "UPTIME": "-", "LAST EXIT": "exit status 1", "MOUNTS": "-"},
		"broken.ini": {"STATE": "broken", "PID": "-", "UPTIME": "-", "RESTARTS": "0", "LAST EXIT": "-", "MOUNTS": "-"},
	}
	for name, want := range wantRows {
		row, ok := table.rows[name]
		if !ok {
			t.Errorf("expected a row for %s in the table, found rows %v\n%s", name, table.rows, emperor.tail())
			continue
		}
		var wrong []string
		for column, cell := range want {
			if row[column] != cell {
				wrong = append(wrong, fmt.Sprintf("%s %q instead of %q", column, row[column], cell))
			}
		}
		if len(wrong) > 0 {
			slices.Sort(wrong)
			t.Errorf("expected the table row of %s to have %v, found %s\nrow: %v\n%s", name, want, strings.Join(wrong, ", "), row, emperor.tail())
		}
	}
	if restarts, err := strconv.Atoi(table.rows["crash.ini"]["RESTARTS"]); err != nil || restarts < 1 {
		t.Errorf("expected crash.ini to have at least 1 restart in the table, found %q\n%s", table.rows["crash.ini"]["RESTARTS"], emperor.tail())
	}
	// A vassal init that fails reports why, so the crash loop is
	// explained after the table too.
	if want := []string{"broken.ini: " + brokenError, "crash.ini: the program exited unexpectedly: exit status 1"}; !slices.Equal(table.after, want) {
		t.Errorf("expected the lines after the table to be %q, found %q\n%s", want, table.after, emperor.tail())
	}

	checkStatusOnHungMount(t, e, emperor, socket, app, port)

	// Removing a file shows its vassal stopping, then drops it.
	if err := os.Remove(filepath.Join(e.vassalDir, "stubborn.ini")); err != nil {
		t.Fatalf("removing stubborn.ini: %v", err)
	}
	opsWaitReport(t, emperor, socket, logTimeout, "stubborn.ini stopping", func(r opsReport) bool {
		status, _ := r.vassal("stubborn.ini")
		return status.State == "stopping"
	})
	opsWaitReport(t, emperor, socket, logTimeout, "stubborn.ini gone from the report", func(r opsReport) bool {
		_, ok := r.vassal("stubborn.ini")
		return !ok
	})

	missing := e.path("missing.sock")
	code, stdout, stderr := opsRunFief(t, "status", "--socket", missing)
	wantStderr := fmt.Sprintf("fief status: connecting to status socket %q (is the emperor running? give its --status-socket): no such file or directory\n", missing)
	if code != 1 || stdout != "" || stderr != wantStderr {
		t.Errorf("expected fief status on a missing socket to exit 1 with stderr %q, found exit %d, stdout %q, stderr %q", wantStderr, code, stdout, stderr)
	}

	emperor.signal(syscall.SIGTERM)
	if state := emperor.waitExit(exitTimeout); state == nil {
		t.Fatalf("expected the emperor to exit within %v of SIGTERM\n%s", exitTimeout, emperor.tail())
	}
	if _, err := os.Lstat(socket); err == nil {
		t.Errorf("expected the emperor to remove its status socket %s when it exits, it is still there\n%s", socket, emperor.tail())
	}
	if code, _, stderr := opsRunFief(t, "status", "--socket", socket); code != 1 {
		t.Errorf("expected fief status to exit 1 once the emperor is gone, found %d, stderr %q", code, stderr)
	}
}

// checkJSONFields checks that fief status --json has the report's fields
// with their JSON types, for a vassal with a mount check and for one that
// exited.
func checkJSONFields(t *testing.T, socket string) {
	t.Helper()
	code, stdout, stderr := opsRunFief(t, "status", "--socket", socket, "--json")
	if code != 0 {
		t.Fatalf("expected fief status --json to exit 0, found %d: %s", code, stderr)
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(stdout), &raw); err != nil {
		t.Fatalf("expected fief status --json to print JSON: %v\n%s", err, stdout)
	}
	checkTypes := func(where string, object map[string]any, fields map[string]string) {
		for field, wantType := range fields {
			value, ok := object[field]
			if !ok {
				t.Errorf("expected the field %q in %s, found %v", field, where, object)
				continue
			}
			if got := fmt.Sprintf("%T", value); got != wantType {
				t.Errorf("expected %s.%s to be a JSON %s, found %s %v", where, field, wantType, got, value)
			}
		}
	}
	checkTypes("the report", raw, map[string]string{"pid": "float64", "dir": "string", "uptime_seconds": "float64", "vassals": "[]interface {}"})
	vassals, _ := raw["vassals"].([]any)
	for _, item := range vassals {
		vassal, _ := item.(map[string]any)
		name, _ := vassal["name"].(string)
		checkTypes(name, vassal, map[string]string{"name": "string", "state": "string", "pid": "float64", "uptime_seconds": "float64", "restarts": "float64", "mounts": "[]interface {}"})
		switch name {
		case "crash.ini":
			checkTypes(name, vassal, map[string]string{"last_exit": "string"})
		case "good.ini":
			mounts, _ := vassal["mounts"].([]any)
			if len(mounts) != 1 {
				t.Errorf("expected one mount of good.ini, found %v", mounts)
				continue
			}
			mount, _ := mounts[0].(map[string]any)
			checkTypes("good.ini mounts[0]", mount, map[string]string{"path": "string", "healthy": "bool"})
		}
	}
}

// checkStatusOnHungMount stops the fuse-zip daemon of good.ini with SIGSTOP
// and checks that fief status shows the failed mount or the restart, and
// then the vassal running again.
func checkStatusOnHungMount(t *testing.T, e *testEnv, emperor *fiefProcess, socket string, app zipApp, port int) {
	t.Helper()
	pids := opsFuseZipPids(e, app.zip)
	if len(pids) != 1 {
		t.Fatalf("expected one fuse-zip daemon of good.ini, found %v\n%s", pids, emperor.tail())
	}
	before, raw, err := opsFetchReport(t, socket)
	if err != nil {
		t.Fatalf("%v\n%s", err, raw)
	}
	goodBefore, _ := before.vassal("good.ini")

	stopped := time.Now()
	if err := syscall.Kill(pids[0], syscall.SIGSTOP); err != nil {
		t.Fatalf("kill -STOP fuse-zip (pid %d): %v", pids[0], err)
	}
	// The window between the failed check and the vassal's exit is short,
	// so both signs count: a failed mount, or a higher restart count.
	var sawFailed, sawRestart bool
	opsWaitReport(t, emperor, socket, serveTimeout, "good.ini's mount failed or the vassal restarted", func(r opsReport) bool {
		good, _ := r.vassal("good.ini")
		for _, m := range good.Mounts {
			if m.Path == app.mountPoint && !m.Healthy {
				sawFailed = true
			}
		}
		sawRestart = sawRestart || good.Restarts > goodBefore.Restarts
		return sawFailed || sawRestart
	})
	t.Logf("fief status showed the hung mount %v after SIGSTOP: failed mount seen %v, restart seen %v",
		time.Since(stopped).Round(time.Millisecond), sawFailed, sawRestart)

	emperor.mustServe(port, app.index)
	after := opsWaitReport(t, emperor, socket, serveTimeout, "good.ini running again with its mount ok", func(r opsReport) bool {
		good, _ := r.vassal("good.ini")
		return good.State == "running" && good.Pid != goodBefore.Pid && len(good.Mounts) == 1 && good.Mounts[0].Healthy
	})
	good, _ := after.vassal("good.ini")
	if good.Restarts != goodBefore.Restarts+1 || good.LastExit != "exit status 1" {
		t.Errorf("expected good.ini to show %d restart(s) and last exit \"exit status 1\" after the hung mount, found %+v\n%s", goodBefore.Restarts+1, good, emperor.tail())
	}
}

func TestStatusShowsFailedMount(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	app := e.newApp("app", "mounted for a failed check\n")
	// The program ignores SIGTERM, so the teardown after the failed check
	// waits for the 2 s stop-timeout, and the report shows the failed mount
	// for that long.
	e.writeVassal("slow.ini", strings.Join([]string{
		"[uwsgi]",
		"uid = nobody",
		"if-not-reload =",
		fmt.Sprintf("exec-as-user = fuse-zip -r %s %s", app.zip, app.mountPoint),
		"endif =",
		fmt.Sprintf(`exec = busybox sh -c "trap '' TERM; while :; do busybox sleep 1; done" %s`, app.mountPoint),
		"mountpoint-check = " + app.mountPoint,
		"mountpoint-check-timeout = 1s",
		"mountpoint-check-interval = 500ms",
		"stop-timeout = 2s",
	}, "\n")+"\n")
	emperor, socket := opsStartEmperor(e)
	initPid := emperor.waitVassalStarted("slow.ini", 1)
	opsWaitReport(t, emperor, socket, serveTimeout, "slow.ini running with its mount ok", func(r opsReport) bool {
		slow, _ := r.vassal("slow.ini")
		return slow.State == "running" && len(slow.Mounts) == 1 && slow.Mounts[0].Healthy
	})

	pids := opsFuseZipPids(e, app.zip)
	if len(pids) != 1 {
		t.Fatalf("expected one fuse-zip daemon of slow.ini, found %v\n%s", pids, emperor.tail())
	}
	if err := syscall.Kill(pids[0], syscall.SIGSTOP); err != nil {
		t.Fatalf("kill -STOP fuse-zip (pid %d): %v", pids[0], err)
	}

	report := opsWaitReport(t, emperor, socket, serveTimeout, "slow.ini's mount failed", func(r opsReport) bool {
		slow, _ := r.vassal("slow.ini")
		return len(slow.Mounts) == 1 && !slow.Mounts[0].Healthy
	})
	slow, _ := report.vassal("slow.ini")
	if slow.State != "running" || slow.Pid != initPid || slow.Mounts[0].Path != app.mountPoint {
		t.Errorf("expected slow.ini running as pid %d with the failed mount %s during its teardown, found %+v\n%s", initPid, app.mountPoint, slow, emperor.tail())
	}
	if want := "the FUSE daemon hangs; aborted connection"; !strings.Contains(slow.Mounts[0].Detail, want) {
		t.Errorf("expected the detail of the failed mount to contain %q, found %q\n%s", want, slow.Mounts[0].Detail, emperor.tail())
	}
	table := opsWaitTable(t, emperor, socket, serveTimeout, "the failed mount of slow.ini", func(table opsTable) bool {
		return table.rows["slow.ini"]["MOUNTS"] != app.mountPoint+" ok"
	})
	if got, want := table.rows["slow.ini"]["MOUNTS"], app.mountPoint+" failed"; got != want {
		t.Errorf("expected the MOUNTS cell of slow.ini to be %q during the teardown, found %q\nrow: %v\n%s", want, got, table.rows["slow.ini"], emperor.tail())
	}

	after := opsWaitReport(t, emperor, socket, serveTimeout, "slow.ini running again with its mount ok", func(r opsReport) bool {
		slow, _ := r.vassal("slow.ini")
		return slow.State == "running" && slow.Pid != initPid && len(slow.Mounts) == 1 && slow.Mounts[0].Healthy
	})
	slow, _ = after.vassal("slow.ini")
	if slow.Restarts != 1 || slow.LastExit != "exit status 1" {
		t.Errorf("expected slow.ini to show 1 restart and last exit \"exit status 1\" after the failed mount, found %+v\n%s", slow, emperor.tail())
	}
}

// A vassal init that exits 2 because its uid names no user is broken, as
// an invalid file is, and fief status should give the reason after the
// table.
// NOTE: the emperor keeps only the errors it finds itself, not the vassal
// init's, so the report shows "broken" without a reason and this test fails.
func TestStatusExplainsBrokenStart(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	file := e.writeVassal("nouser.ini", "[uwsgi]\nuid = fieftest-no-such-user\nexec = busybox sleep 600\n")
	emperor, socket := opsStartEmperor(e)
	emperor.waitLogOnce("nouser.ini broken", matchLog("vassal stopped on a configuration error; fix the file and save it to retry", "vassal", "nouser.ini"))

	table := opsWaitTable(t, emperor, socket, logTimeout, "nouser.ini broken", func(table opsTable) bool {
		return table.rows["nouser.ini"]["STATE"] == "broken"
	})
	wantPrefix := fmt.Sprintf("nouser.ini: %s:2: unknown user \"fieftest-no-such-user\"", file)
	found := slices.ContainsFunc(table.after, func(line string) bool { return strings.HasPrefix(line, wantPrefix) })
	if !found {
		t.Errorf("expected a line starting with %q after the table, found %q\n%s", wantPrefix, table.after, emperor.tail())
	}
}

func TestCheckPrintsExactPlan(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dir := e.path("check")
	bad := e.path("check-bad")
	empty := e.path("check-empty")
	for _, d := range []string{dir, bad, empty} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatalf("creating %s: %v", d, err)
		}
	}
	write := func(path string, lines ...string) string {
		t.Helper()
		if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatalf("writing %s: %v", path, err)
		}
		return path
	}
	// A file that is not *.ini is no vassal.
	write(filepath.Join(empty, "README"), "not a vassal")

	app, mnt := e.path("app.zip"), e.path("app")
	web := write(filepath.Join(dir, "web.ini"),
		"[uwsgi]",
		"uid = nobody",
		"",
		"if-not-reload =",
		"exec-as-user = fuse-zip -r "+app+" "+mnt,
		"endif =",
		"",
		"exec = busybox httpd -f -p 127.0.0.1:9090 -h "+mnt,
		"mountpoint-check = "+mnt,
		"mountpoint-check-interval = 500ms",
		"mountpoint-check-timeout = 2s",
		"stop-timeout = 3s",
		"exec-as-user-atexit = fusermount -u "+mnt,
		`exec-as-root-atexit = busybox touch "`+e.path("atexit ran")+`"`,
	)
	ns, ufs := e.path("ns"), e.path("ufs")
	union := write(filepath.Join(dir, "union.ini"),
		"[uwsgi]",
		"uid = user001",
		"gid = user001",
		"hook-pre-jail = callret:chdir /",
		"hook-pre-jail = exec:unionfs-fuse -ocow,chroot="+ns+",default_permissions,allow_other /base=RO:/cow/%(uid)=RW "+ufs,
		"pivot_root = "+ufs+" "+ufs+"/.old_root",
		"hook-as-root = mount:proc none /proc",
		"hook-as-root = mount:none /.old_root/dev /dev bind",
		"hook-as-root = umount:/.old_root rec,detach",
		"hook-as-user = mkdir:/tmp/cache",
		"exec = /bin/busybox sh -c 'echo started >> /www/starts.txt; exec /bin/busybox httpd -f -p 127.0.0.1:9091 -h /www'",
		"mountpoint-check = /",
		"env = LANG=C.UTF-8",
		"chdir = /www",
	)
	uwsgiApp := write(filepath.Join(dir, "app.ini"),
		"[uwsgi]",
		"unshare = net,uts",
		"http-socket = 127.0.0.1:9092",
		"wsgi-file = %d%n.py",
		"master = true",
		"processes = 2",
	)

	webPlan := fmt.Sprintf(`%s: valid
  namespaces:      fs,pid
  user:            uid="nobody", the user's primary group (looked up in the vassal's root at start)
  as-user:         line 5: exec fuse-zip -r %s %s
  program:         line 8: busybox httpd -f -p 127.0.0.1:9090 -h %s
  check:           line 9: %s every 500ms, timeout 2s
  stop-timeout:    3s
  reload:          keeps the namespaces and mounts; starts the program of line 8; skips line 5 (if-not-reload)
  as-user-atexit:  line 13: exec fusermount -u %s
  as-root-atexit:  line 14: exec busybox touch "%s"
`, web, app, mnt, mnt, mnt, mnt, e.path("atexit ran"))
	unionPlan := fmt.Sprintf(`%s: valid
  namespaces:      fs,pid
  user:            uid="user001", gid="user001" (looked up in the vassal's root at start)
  pre-jail:        line 4: hook callret:chdir /
  pre-jail:        line 5: hook exec:unionfs-fuse -ocow,chroot=%s,default_permissions,allow_other /base=RO:/cow/user001=RW %s
  pivot_root:      line 6: into %s, old root at %s/.old_root
  as-root:         line 7: hook mount:proc none /proc
  as-root:         line 8: hook mount:none /.old_root/dev /dev bind
  as-root:         line 9: hook umount:/.old_root rec,detach
  as-user:         line 10: hook mkdir:/tmp/cache
  program:         line 11: /bin/busybox sh -c "echo started >> /www/starts.txt; exec /bin/busybox httpd -f -p 127.0.0.1:9091 -h /www"
  chdir:           /www
  env:             LANG=C.UTF-8
  check:           line 12: / every 1s, timeout 5s
  stop-timeout:    10s
  reload:          keeps the namespaces and mounts; runs as-user line 10; starts the program of line 11
`, union, ns, ufs, ufs, ufs)
	appPlan := fmt.Sprintf(`%s: valid
  namespaces:      fs,pid,net,uts
  user:            root
  program:         uwsgi --ini fd://3 with 4 uWSGI option(s)
  stop-timeout:    10s
  reload:          keeps the namespaces and mounts; starts uwsgi
`, uwsgiApp)

	type badFile struct {
		name   string
		lines  []string
		format string // the stderr line, with %s for the file's path
		stderr string // the stderr line, set once the file is written
	}
	badFiles := []badFile{
		{"unknown-key.ini", []string{"[uwsgi]", "exec = busybox true", "mountpont-check = /app"},
			`%s:3: unknown key "mountpont-check"; did you mean "mountpoint-check"?`, ""},
		{"two-execs.ini", []string{"[uwsgi]", "exec = busybox true", "exec = busybox false"},
			`%s:3: exec is set twice, on lines 2 and 3: a vassal runs one program, so remove one of them`, ""},
		{"no-exec.ini", []string{"[uwsgi]", "uid = nobody"},
			`%s: missing "exec": name the program to run, e.g. exec = /usr/bin/busybox httpd -f -p 8080`, ""},
		{"shell.ini", []string{"[uwsgi]", "exec = busybox httpd -f ; echo"},
			`%s:2: invalid exec value "busybox httpd -f ; echo": shell syntax ";" is not run by a shell; write sh -c '...' to use a shell`, ""},
		{"unclosed.ini", []string{"[uwsgi]", "if-not-reload =", "exec = busybox true"},
			`%s:2: the if-not-reload block is not closed: add "endif =" after its last line`, ""},
		{"chroot.ini", []string{"[uwsgi]", "exec = busybox true", "chroot = /srv"},
			`%s:3: unsupported uWSGI option "chroot": fief does not chroot; use pivot-root = NEW OLD instead`, ""},
		// A first start skips the if-reload block, but a reload reads it.
		{"reload-shell.ini", []string{"[uwsgi]", "exec = busybox true", "if-reload =", "exec-as-user = busybox true ; echo", "endif ="},
			`%s:4: invalid exec-as-user value "busybox true ; echo": shell syntax ";" is not run by a shell; write sh -c '...' to use a shell (when the vassal is reloaded)`, ""},
	}
	for i, b := range badFiles {
		path := write(filepath.Join(bad, b.name), b.lines...)
		badFiles[i].stderr = fmt.Sprintf(b.format, path) + "\n"
	}
	// The files of a directory are checked in the sorted order of their
	// names.
	sortedBad := slices.Clone(badFiles)
	slices.SortFunc(sortedBad, func(x, y badFile) int { return strings.Compare(x.name, y.name) })
	var dirStderr strings.Builder
	for _, b := range sortedBad {
		dirStderr.WriteString(b.stderr)
	}

	type checkCase struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}
	tests := []checkCase{
		{"three valid files", []string{web, union, uwsgiApp}, 0, webPlan + unionPlan + appPlan, ""},
		{"directory of valid files", []string{dir}, 0, appPlan + unionPlan + webPlan, ""},
		{"directory of invalid files", []string{bad}, 1, "", dirStderr.String()},
		{"valid and invalid file", []string{web, filepath.Join(bad, badFiles[0].name)}, 1, webPlan, badFiles[0].stderr},
		{"directory without vassal files", []string{empty}, 1, "", empty + ": no vassal files (*.ini) to check\n"},
	}
	for _, b := range badFiles {
		tests = append(tests, checkCase{b.name, []string{filepath.Join(bad, b.name)}, 1, "", b.stderr})
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			code, stdout, stderr := opsRunFief(t, append([]string{"check"}, test.args...)...)
			if code != test.wantCode {
				t.Errorf("expected fief check to exit %d, found %d\nstderr:\n%s", test.wantCode, code, stderr)
			}
			if stdout != test.wantStdout {
				t.Errorf("expected stdout:\n%s\nfound:\n%s", test.wantStdout, stdout)
			}
			if stderr != test.wantStderr {
				t.Errorf("expected stderr:\n%s\nfound:\n%s", test.wantStderr, stderr)
			}
		})
	}
}

func TestUnshareNetIsolatesVassal(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	nsenter := e.requireProgram("nsenter")
	busybox := e.requireProgram("busybox")
	www := e.path("www")
	if err := os.Mkdir(www, 0o755); err != nil {
		t.Fatalf("creating %s: %v", www, err)
	}
	index := "served inside the vassal's network namespace\n"
	if err := os.WriteFile(filepath.Join(www, "index.html"), []byte(index), 0o644); err != nil {
		t.Fatalf("writing index.html: %v", err)
	}
	port := freePort(t)
	e.writeVassal("net.ini", fmt.Sprintf("[uwsgi]\nunshare = net\nexec = busybox httpd -f -p 127.0.0.1:%d -h %s\nstop-timeout = 1s\n", port, www))

	emperor, _ := opsStartEmperor(e)
	initPid := emperor.waitVassalStarted("net.ini", 1)
	emperor.waitLogOnce("program started", matchLog("program started", "vassal", "net.ini"))

	if host, vassal := namespace(os.Getpid(), "net"), namespace(initPid, "net"); host == vassal {
		t.Fatalf("expected vassal init %d in a new network namespace, found the host's %s\n%s", initPid, host, emperor.tail())
	}
	httpds := opsHttpdPids(e, www)
	if len(httpds) != 1 {
		t.Fatalf("expected one httpd, found %v\n%s", httpds, emperor.tail())
	}
	if got, want := namespace(httpds[0], "net"), namespace(initPid, "net"); got != want {
		t.Errorf("expected httpd %d in the vassal's network namespace %s, found %s\n%s", httpds[0], want, got, emperor.tail())
	}

	// nsenter enters only the network namespace, so busybox comes from the
	// host. A bare environment keeps proxy variables away from wget.
	inVassal := func(args ...string) (string, error) {
		cmd := exec.Command(nsenter, append([]string{"--net=/proc/" + strconv.Itoa(initPid) + "/ns/net", busybox}, args...)...)
		cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/index.html", port)
	var body string
	var fetchErr error
	deadline := time.Now().Add(serveTimeout)
	for time.Now().Before(deadline) {
		body, fetchErr = inVassal("wget", "-qO-", url)
		if fetchErr == nil && body == index {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if fetchErr != nil || body != index {
		t.Errorf("expected %s to return %q inside the vassal's network namespace, found %q (err %v)\n%s", url, index, body, fetchErr, emperor.tail())
	}

	link, err := inVassal("ip", "link", "show", "lo")
	if err != nil {
		t.Errorf("busybox ip link show lo in the vassal's network namespace failed: %v\n%s\n%s", err, link, emperor.tail())
	}
	if !strings.Contains(link, "<LOOPBACK,UP,LOWER_UP>") {
		t.Errorf("expected lo to be up inside the vassal (flags <LOOPBACK,UP,LOWER_UP>), found:\n%s\n%s", link, emperor.tail())
	}

	if !refusesConnections(port) {
		t.Errorf("expected 127.0.0.1:%d to refuse connections on the host's loopback, since httpd listens in the vassal's network namespace\n%s", port, emperor.tail())
	}
}

func TestTwoHundredVassals(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const count = 200
	const bound = 30 * time.Second
	emperor, socket := opsStartEmperor(e)

	type web struct {
		file, index string
		port        int
	}
	webs := make([]web, count)
	staged := make([]string, 0, count+1)
	stage := func(name, content string) {
		path := e.path(".staging-" + name)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatalf("writing %s: %v", path, err)
		}
		staged = append(staged, name)
	}
	for i := range webs {
		name := fmt.Sprintf("web%03d", i)
		www := e.path("www", name)
		if err := os.MkdirAll(www, 0o755); err != nil {
			t.Fatalf("creating %s: %v", www, err)
		}
		webs[i] = web{file: name + ".ini", index: "vassal " + name + "\n", port: freePort(t)}
		if err := os.WriteFile(filepath.Join(www, "index.html"), []byte(webs[i].index), 0o644); err != nil {
			t.Fatalf("writing index.html of %s: %v", name, err)
		}
		stage(webs[i].file, fmt.Sprintf("[uwsgi]\nexec = busybox httpd -f -p 127.0.0.1:%d -h %s\nstop-timeout = 1s\n", webs[i].port, www))
		if i == count/2 {
			stage("crash.ini", "[uwsgi]\nexec = busybox false\nstop-timeout = 1s\n")
		}
	}

	first := time.Now()
	for _, name := range staged {
		if err := os.Rename(e.path(".staging-"+name), filepath.Join(e.vassalDir, name)); err != nil {
			t.Fatalf("renaming %s into the vassal directory: %v", name, err)
		}
	}

	pending := slices.Clone(webs)
	for len(pending) > 0 && time.Since(first) < bound {
		pending = slices.DeleteFunc(pending, func(w web) bool { return serves(w.port, w.index) })
		time.Sleep(50 * time.Millisecond)
	}
	if len(pending) > 0 {
		t.Fatalf("expected all %d vassals to serve within %v of the first file, %d do not, such as %s on port %d\n%s",
			count, bound, len(pending), pending[0].file, pending[0].port, emperor.tail())
	}
	t.Logf("from the first file to all %d vassals serving: %v", count, time.Since(first).Round(time.Millisecond))

	report := opsWaitReport(t, emperor, socket, logTimeout, fmt.Sprintf("%d web vassals running", count), func(r opsReport) bool {
		running := 0
		for _, w := range webs {
			if status, ok := r.vassal(w.file); ok && status.State == "running" {
				running++
			}
		}
		return running == count
	})
	if len(report.Vassals) != count+1 {
		t.Errorf("expected %d vassals in fief status --json, found %d\n%s", count+1, len(report.Vassals), emperor.tail())
	}
	table := opsWaitTable(t, emperor, socket, logTimeout, fmt.Sprintf("%d web vassals running", count), func(table opsTable) bool {
		running := 0
		for _, w := range webs {
			if table.rows[w.file]["STATE"] == "running" {
				running++
			}
		}
		return running == count
	})
	if len(table.rows) != count+1 || !strings.HasSuffix(table.summary, fmt.Sprintf(", %d vassal(s)", count+1)) {
		t.Errorf("expected the fief status table to list %d vassals, found %d rows and the summary %q\n%s", count+1, len(table.rows), table.summary, emperor.tail())
	}

	// The crash loop keeps its own backoff beside the others.
	died := matchLog("vassal died; respawning", "vassal", "crash.ini")
	deaths := emperor.waitLog(3, "crash.ini dying three times", died)[:3]
	var delays []string
	for _, death := range deaths {
		delays = append(delays, death.attr("delay"))
	}
	if want := []string{"0s", "1s", "2s"}; !slices.Equal(delays, want) {
		t.Errorf("expected the respawn delays of crash.ini to be %v, found %v\n%s", want, delays, emperor.tail())
	}
	starts := map[string]int{}
	for _, record := range emperor.find(matchLog("vassal started")) {
		starts[record.attr("vassal")]++
	}
	var restarted []string
	for _, w := range webs {
		if n := starts[w.file]; n != 1 {
			restarted = append(restarted, fmt.Sprintf("%s (%d starts)", w.file, n))
		}
	}
	if len(restarted) > 0 {
		t.Errorf("expected each web vassal to be started once, found %d that were not: %s\n%s", len(restarted), strings.Join(restarted, ", "), emperor.tail())
	}

	sent := time.Now()
	emperor.signal(syscall.SIGTERM)
	state := emperor.waitExit(exitTimeout + 10*time.Second)
	if state == nil {
		t.Fatalf("expected the emperor to stop %d vassals and exit within %v of SIGTERM\n%s", count+1, exitTimeout+10*time.Second, emperor.tail())
	}
	t.Logf("the emperor stopped %d vassals and exited %v after SIGTERM", count+1, time.Since(sent).Round(time.Millisecond))
	if state.ExitCode() != 0 {
		t.Errorf("expected the emperor to exit 0 after SIGTERM, found %v\n%s", state, emperor.tail())
	}
	if _, left := e.waitNoProcesses(time.Second); len(left) > 0 {
		t.Errorf("expected no process of the test after the emperor exited, found %d:\n%s", len(left), formatProcesses(left))
	}
	var listening []string
	for _, w := range webs {
		if !refusesConnections(w.port) {
			listening = append(listening, fmt.Sprintf("%s on port %d", w.file, w.port))
		}
	}
	if len(listening) > 0 {
		t.Errorf("expected every port to refuse connections after the emperor exited, found %d accepting: %s\n%s", len(listening), strings.Join(listening, ", "), emperor.tail())
	}
}
