package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startWebEmperor installs the web vassal web.ini for a new app, starts the
// emperor and waits until the app is served. It returns the emperor, the app,
// the port and the pid of the vassal init.
func startWebEmperor(t *testing.T, e *testEnv, extra ...string) (*fiefProcess, zipApp, int, int) {
	t.Helper()
	app := e.newApp("app", "hello from "+t.Name()+"\n")
	port := freePort(t)
	e.writeVassal("web.ini", webVassal(app, port, extra...))

	emperor := e.startEmperor()
	took := emperor.mustServe(port, app.index)
	t.Logf("the emperor served the app %v after it started", took.Round(time.Millisecond))
	return emperor, app, port, emperor.waitVassalStarted("web.ini", 1)
}

func TestEmperorServesZip(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	hostMounts := e.sampleMounts("self")
	emperor, app, port, initPid := startWebEmperor(t, e)

	fuseZips := e.fuseZipPids()
	if len(fuseZips) != 1 {
		t.Fatalf("expected one fuse-zip daemon, found %d: %v\n%s", len(fuseZips), e.processes(), emperor.tail())
	}
	fuseZip := fuseZips[0]

	// The mount exists inside the vassal, so its absence on the host below
	// means something.
	inVassal, err := mountLines(fmt.Sprint(fuseZip), app.mountPoint+" ")
	if err != nil {
		t.Fatalf("reading the mount table of fuse-zip (pid %d): %v", fuseZip, err)
	}
	if len(inVassal) != 1 || !strings.Contains(inVassal[0], "fuse.fuse-zip") {
		t.Errorf("expected one fuse.fuse-zip mount on %s in the vassal's mount table, found %q", app.mountPoint, inVassal)
	}

	if uid, err := realUID(fuseZip); err != nil || uid != e.nobody {
		t.Errorf("expected fuse-zip to run as nobody (uid %d), found uid %d (err %v)", e.nobody, uid, err)
	}
	for _, kind := range []string{"mnt", "pid"} {
		if mine, vassal := namespace(os.Getpid(), kind), namespace(initPid, kind); mine == vassal {
			t.Errorf("expected the vassal init (pid %d) in a new %s namespace, found the host's %s", initPid, kind, vassal)
		}
	}
	checkHttpdBesideFuseZip(t, e, fuseZip)

	// Serve a few more requests while the sampler watches the host.
	for range 5 {
		if !serves(port, app.index) {
			t.Errorf("expected port %d to keep serving the zip's index.html", port)
		}
		time.Sleep(20 * time.Millisecond)
	}

	samples, leaks := hostMounts.finish()
	if samples == 0 {
		t.Errorf("expected the host mount table to be sampled, it never was")
	}
	if len(leaks) > 0 {
		t.Errorf("expected the host mount table never to list the vassal's mount, found in %d samples:\n%s", samples, strings.Join(leaks, "\n"))
	}
}

// killFuseZip kills the only fuse-zip daemon of the test and returns its pid
// and when it was killed.
func killFuseZip(t *testing.T, e *testEnv, emperor *fiefProcess) (int, time.Time) {
	t.Helper()
	pids := e.fuseZipPids()
	if len(pids) != 1 {
		t.Fatalf("expected one fuse-zip daemon to kill, found %d: %v\n%s", len(pids), e.processes(), emperor.tail())
	}
	killed := time.Now()
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 fuse-zip (pid %d): %v", pids[0], err)
	}
	return pids[0], killed
}

// waitRecovery waits until a fuse-zip daemon other than the failed one runs
// and port serves want again. It returns the new daemon's pid and the time
// since the failure.
func waitRecovery(t *testing.T, e *testEnv, emperor *fiefProcess, failedPid int, failed time.Time, port int, want string) (int, time.Duration) {
	t.Helper()
	for time.Since(failed) < serveTimeout {
		pids := e.fuseZipPids()
		if len(pids) == 1 && pids[0] != failedPid && serves(port, want) {
			return pids[0], time.Since(failed)
		}
		time.Sleep(pollPeriod)
	}
	t.Fatalf("expected a new fuse-zip daemon and a 200 with %q on port %d within %v of the failure of fuse-zip (pid %d); fuse-zip pids now %v\n%s",
		want, port, serveTimeout, failedPid, e.fuseZipPids(), emperor.tail())
	return 0, 0
}

// checkHttpdBesideFuseZip checks that one httpd listens and that it shares
// the mount namespace of the fuse-zip daemon, so it serves that mount.
func checkHttpdBesideFuseZip(t *testing.T, e *testEnv, fuseZip int) {
	t.Helper()
	httpds := e.httpdPids()
	if len(httpds) != 1 {
		t.Errorf("expected one listening httpd, found %v among %v", httpds, e.processes())
		return
	}
	if got, want := namespace(httpds[0], "mnt"), namespace(fuseZip, "mnt"); got != want {
		t.Errorf("expected httpd (pid %d) in the mount namespace %s of fuse-zip (pid %d), found %s", httpds[0], want, fuseZip, got)
	}
}

func TestFuseDaemonKillRecovers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	hostMounts := e.sampleMounts("self")
	emperor, app, port, firstInit := startWebEmperor(t, e)

	oldFuseZip, killed := killFuseZip(t, e, emperor)
	newFuseZip, recovery := waitRecovery(t, e, emperor, oldFuseZip, killed, port, app.index)
	t.Logf("recovery from kill -9 of fuse-zip to the next 200: %v", recovery.Round(time.Millisecond))
	if recovery > 5*time.Second {
		t.Errorf("expected recovery within 5s of killing fuse-zip, took %v\n%s", recovery, emperor.tail())
	}

	failure := emperor.waitLogOnce("mount check failed", matchLog("mount check failed; tearing the vassal down", "vassal", "web.ini"))
	t.Logf("the vassal logged the mount failure %v after the kill", failure.time.Sub(killed).Round(time.Millisecond))
	wantWhere := fmt.Sprintf("web.ini:%d:", webVassalCheckLine)
	if !strings.Contains(failure.attr("err"), wantWhere) {
		t.Errorf("expected the mount check failure to name %s, found err=%q", wantWhere, failure.attr("err"))
	}

	died := emperor.waitLogOnce("vassal died", matchLog("vassal died; respawning", "vassal", "web.ini"))
	if died.attr("delay") != "0s" {
		t.Errorf("expected the first death to respawn at once (delay=0s), found delay=%s", died.attr("delay"))
	}
	secondInit := emperor.waitVassalStarted("web.ini", 2)
	if secondInit == firstInit {
		t.Errorf("expected a new vassal init after the failure, found the same pid %d", firstInit)
	}

	checkHttpdBesideFuseZip(t, e, newFuseZip)

	samples, leaks := hostMounts.finish()
	if len(leaks) > 0 {
		t.Errorf("expected the host mount table never to list the vassal's mount, found in %d samples:\n%s", samples, strings.Join(leaks, "\n"))
	}
}

func TestSharedRootEmperorKeepsMountsPrivate(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	unshare := e.requireProgram("unshare")
	app := e.newApp("app", "hello from a shared root\n")
	port := freePort(t)
	e.writeVassal("web.ini", webVassal(app, port))

	// unshare execs fief without forking, so the pid started here is the
	// emperor's, in a mount namespace whose mounts are all shared.
	emperor := e.start("emperor", unshare, "--mount", "--propagation", "shared", "--", fiefBinary, "emperor", e.vassalDir)
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
	if namespace(emperor.pid(), "mnt") == namespace(os.Getpid(), "mnt") {
		t.Fatalf("expected the emperor in its own mount namespace, found the host's")
	}

	emperorMounts := e.sampleMounts(emperorPid)
	emperor.mustServe(port, app.index)
	checkEmperorMounts := func(when string) {
		t.Helper()
		for range 5 {
			lines, err := mountLines(emperorPid, e.dir+"/")
			if err != nil {
				t.Fatalf("reading the emperor's mount table %s: %v", when, err)
			}
			if len(lines) > 0 {
				t.Errorf("expected the emperor's mount table never to list the vassal's mount %s, found:\n%s", when, strings.Join(lines, "\n"))
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	checkEmperorMounts("while the vassal serves")

	oldFuseZip, killed := killFuseZip(t, e, emperor)
	_, recovery := waitRecovery(t, e, emperor, oldFuseZip, killed, port, app.index)
	t.Logf("recovery from kill -9 of fuse-zip with a shared emperor root: %v", recovery.Round(time.Millisecond))
	if recovery > 5*time.Second {
		t.Errorf("expected recovery within 5s of killing fuse-zip, took %v\n%s", recovery, emperor.tail())
	}
	checkEmperorMounts("after a recovery")

	samples, leaks := emperorMounts.finish()
	if samples == 0 {
		t.Errorf("expected the emperor's mount table to be sampled, it never was")
	}
	if len(leaks) > 0 {
		t.Errorf("expected the emperor's mount table never to list the vassal's mount, found in %d samples:\n%s", samples, strings.Join(leaks, "\n"))
	}
}

func TestRemovingFileStopsVassal(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	emperor, _, port, initPid := startWebEmperor(t, e)

	removed := time.Now()
	if err := os.Remove(filepath.Join(e.vassalDir, "web.ini")); err != nil {
		t.Fatalf("removing the vassal file: %v", err)
	}
	emperor.waitLogOnce("vassal file removed", matchLog("vassal file removed; stopping", "vassal", "web.ini", "pid", fmt.Sprint(initPid)))
	stopped := emperor.waitLogOnce("vassal stopped", matchLog("vassal stopped", "vassal", "web.ini", "pid", fmt.Sprint(initPid)))
	if stopped.attr("status") != "exit status 0" {
		t.Errorf("expected the vassal init to exit 0 after a removal, found status=%q", stopped.attr("status"))
	}

	if _, left := e.waitNoProcesses(exitTimeout, emperor.pid()); len(left) > 0 {
		t.Fatalf("expected no process of the vassal within %v of removing its file, found:\n%s%s", exitTimeout, formatProcesses(left), emperor.tail())
	}
	t.Logf("the vassal's processes were gone %v after its file was removed", time.Since(removed).Round(time.Millisecond))

	if mounts := mountsInAnyNamespace(e.dir + "/"); len(mounts) > 0 {
		t.Errorf("expected no mount of the test directory in any mount namespace after the stop, found:\n%s", strings.Join(mounts, "\n"))
	}
	if !refusesConnections(port) {
		t.Errorf("expected port %d to refuse connections after the stop", port)
	}
	if !emperor.running() {
		t.Errorf("expected the emperor to keep running after a vassal file was removed\n%s", emperor.tail())
	}
}

func TestRecreatedFileStartsAfterStop(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// The program ignores SIGTERM, so the stop takes the whole 2 s
	// stop-timeout and the file comes back while the old vassal stops.
	e.writeVassal("web.ini", strings.Join([]string{
		"[uwsgi]",
		fmt.Sprintf(`exec = busybox sh -c "trap '' TERM; while :; do busybox sleep 1; done" %s`, e.path("stubborn")),
		"stop-timeout = 2s",
	}, "\n")+"\n")
	emperor := e.startEmperor()
	firstInit := emperor.waitVassalStarted("web.ini", 1)
	emperor.waitLogOnce("program started", matchLog("program started", "vassal", "web.ini"))

	if err := os.Remove(filepath.Join(e.vassalDir, "web.ini")); err != nil {
		t.Fatalf("removing the vassal file: %v", err)
	}
	emperor.waitLogOnce("vassal file removed", matchLog("vassal file removed; stopping", "vassal", "web.ini"))
	app := e.newApp("app", "the file came back\n")
	port := freePort(t)
	e.writeVassal("web.ini", webVassal(app, port))

	emperor.waitLogOnce("old vassal stopped", matchLog("vassal stopped", "vassal", "web.ini", "pid", fmt.Sprint(firstInit)))
	secondInit := emperor.waitVassalStarted("web.ini", 2)
	if secondInit == firstInit {
		t.Errorf("expected a new vassal init for the new file, found the old pid %d", firstInit)
	}
	emperor.mustServe(port, app.index)
	if left := processesMentioning(e.path("stubborn")); len(left) > 0 {
		t.Errorf("expected the old program to be gone, found:\n%s", formatProcesses(left))
	}
}

func TestBrokenFileBesideGood(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	good := e.newApp("good", "the good vassal\n")
	goodPort := freePort(t)
	e.writeVassal("good.ini", webVassal(good, goodPort))

	fixed := e.newApp("fixed", "the fixed vassal\n")
	fixedPort := freePort(t)
	broken := strings.Join([]string{
		"[uwsgi]",
		fmt.Sprintf("exec = busybox httpd -f -p 127.0.0.1:%d -h %s", fixedPort, fixed.mountPoint),
		fmt.Sprintf("mountpont-check = %s", fixed.mountPoint),
	}, "\n") + "\n"
	e.writeVassal("broken.ini", broken)

	emperor := e.startEmperor()
	emperor.mustServe(goodPort, good.index)

	invalid := matchLog("vassal file is invalid; fix it and save it to retry", "vassal", "broken.ini")
	record := emperor.waitLogOnce("naming broken.ini as invalid", invalid)
	if record.level != "ERROR" {
		t.Errorf("expected the invalid file to be logged at ERROR, found level=%s", record.level)
	}
	if want := filepath.Join(e.vassalDir, "broken.ini") + ":3:"; !strings.Contains(record.attr("err"), want) {
		t.Errorf("expected the error to name %s, found err=%q", want, record.attr("err"))
	}
	if want := `"mountpont-check"`; !strings.Contains(record.attr("err"), want) {
		t.Errorf("expected the error to quote the unknown key %s, found err=%q", want, record.attr("err"))
	}
	if want := `did you mean "mountpoint-check"`; !strings.Contains(record.attr("err"), want) {
		t.Errorf("expected the error to suggest %s, found err=%q", want, record.attr("err"))
	}

	// A broken file is retried when it changes, never in a loop.
	time.Sleep(time.Second)
	if n := len(emperor.find(invalid)); n != 1 {
		t.Errorf("expected the invalid file to be reported once while unchanged, found %d reports\n%s", n, emperor.tail())
	}
	if n := len(emperor.find(matchLog("vassal started", "vassal", "broken.ini"))); n != 0 {
		t.Errorf("expected no vassal init for the invalid file, found %d starts", n)
	}
	if !emperor.running() {
		t.Fatalf("expected the emperor to keep running beside an invalid file\n%s", emperor.tail())
	}

	e.writeVassalInPlace("broken.ini", webVassal(fixed, fixedPort))
	emperor.waitVassalStarted("broken.ini", 1)
	emperor.mustServe(fixedPort, fixed.index)

	if !serves(goodPort, good.index) {
		t.Errorf("expected the good vassal to keep serving on port %d\n%s", goodPort, emperor.tail())
	}
	if n := len(emperor.find(matchLog("vassal started", "vassal", "good.ini"))); n != 1 {
		t.Errorf("expected the good vassal to be started once, found %d starts\n%s", n, emperor.tail())
	}
}

func TestEmperorSIGTERMStopsAll(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// Two programs that ignore SIGTERM each take their whole 2 s
	// stop-timeout, so a stop in series would take at least 4 s.
	for _, name := range []string{"stubborn-1", "stubborn-2"} {
		e.writeVassal(name+".ini", strings.Join([]string{
			"[uwsgi]",
			fmt.Sprintf(`exec = busybox sh -c "trap '' TERM; while :; do busybox sleep 1; done" %s`, e.path(name)),
			"stop-timeout = 2s",
		}, "\n")+"\n")
	}
	emperor, _, port, _ := startWebEmperor(t, e, "exec-as-root-atexit = busybox touch "+e.path("atexit-ran"))
	emperor.waitVassalStarted("stubborn-1.ini", 1)
	emperor.waitVassalStarted("stubborn-2.ini", 1)
	emperor.waitLog(3, "program started (three vassals)", matchLog("program started"))

	sent := time.Now()
	emperor.signal(syscall.SIGTERM)
	state := emperor.waitExit(exitTimeout)
	if state == nil {
		t.Fatalf("expected the emperor to exit within %v of SIGTERM, it is still running\n%s", exitTimeout, emperor.tail())
	}
	took := time.Since(sent)
	t.Logf("the emperor exited %v after SIGTERM", took.Round(time.Millisecond))
	if state.ExitCode() != 0 {
		t.Errorf("expected exit code 0 after SIGTERM, found %v\n%s", state, emperor.tail())
	}
	if took > 3500*time.Millisecond {
		t.Errorf("expected the two 2 s stop-timeouts to run in parallel (under 3.5 s), the stop took %v\n%s", took, emperor.tail())
	}

	if left := e.processes(); len(left) > 0 {
		t.Errorf("expected no process of the test after the emperor exited, found:\n%s", formatProcesses(left))
	}
	if mounts := mountsInAnyNamespace(e.dir + "/"); len(mounts) > 0 {
		t.Errorf("expected no mount of the test directory in any mount namespace, found:\n%s", strings.Join(mounts, "\n"))
	}
	if _, err := os.Stat(e.path("atexit-ran")); err != nil {
		t.Errorf("expected the exec-as-root-atexit step to run when the emperor stopped: %v\n%s", err, emperor.tail())
	}
	if n := len(emperor.find(matchLog("program ignored SIGTERM; sending SIGKILL"))); n != 2 {
		t.Errorf("expected both stubborn programs to get SIGKILL after their stop-timeout, found %d\n%s", n, emperor.tail())
	}
	emperor.waitLogOnce("emperor stopped", matchLog("emperor stopped"))
	if !refusesConnections(port) {
		t.Errorf("expected port %d to refuse connections after the emperor exited", port)
	}
}

func TestEmperorSIGKILLKillsVassals(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	emperor, _, _, _ := startWebEmperor(t, e)

	// The vassal init, fuse-zip and httpd run beside the emperor.
	if before := e.processes(emperor.pid()); len(before) < 3 {
		t.Fatalf("expected at least 3 vassal processes before the kill, found:\n%s", formatProcesses(before))
	}

	emperor.signal(syscall.SIGKILL)
	took, left := e.waitNoProcesses(time.Second)
	if len(left) > 0 {
		t.Fatalf("expected the vassal to die with the emperor within 1s (parent-death signal), found after %v:\n%s", took, formatProcesses(left))
	}
	t.Logf("no vassal process was left %v after SIGKILL to the emperor", took.Round(time.Millisecond))
	if mounts := mountsInAnyNamespace(e.dir + "/"); len(mounts) > 0 {
		t.Errorf("expected no mount of the test directory in any mount namespace, found:\n%s", strings.Join(mounts, "\n"))
	}
}

func TestNewFileStartsQuickly(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	app := e.newApp("app", "started from a new file\n")
	port := freePort(t)
	emperor := e.startEmperor()
	emperor.waitLogOnce("emperor started", matchLog("emperor started"))

	created := time.Now()
	e.writeVassalInPlace("new.ini", webVassal(app, port))
	started := emperor.waitLogOnce("vassal started", matchLog("vassal started", "vassal", "new.ini"))
	seen := time.Since(created)

	// Log times have millisecond precision.
	latency := max(started.time.Sub(created), 0)
	t.Logf("file creation to the vassal started line: %v by the log's clock, seen by the test after %v",
		latency.Round(time.Millisecond), seen.Round(time.Millisecond))
	if latency > time.Second {
		t.Errorf("expected the vassal to start within 1s of its file's creation, took %v\n%s", latency, emperor.tail())
	}
	emperor.mustServe(port, app.index)
}

func TestContentChangeRestarts(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	emperor, first, firstPort, firstInit := startWebEmperor(t, e)

	second := e.newApp("second", "the second version\n")
	third := e.newApp("third", "the third version\n")
	secondPort, thirdPort := freePort(t), freePort(t)

	// Two writes 200 ms apart: the last content must run.
	e.writeVassalInPlace("web.ini", webVassal(second, secondPort))
	time.Sleep(200 * time.Millisecond)
	e.writeVassalInPlace("web.ini", webVassal(third, thirdPort))

	emperor.mustServe(thirdPort, third.index)
	changes := emperor.waitLog(2, "vassal file changed (two writes)", matchLog("vassal file changed; restarting with fresh namespaces", "vassal", "web.ini"))
	if len(changes) != 2 {
		t.Errorf("expected 2 restarts for 2 writes, found %d\n%s", len(changes), emperor.tail())
	}
	lastInit := emperor.waitVassalStarted("web.ini", 3)
	if lastInit == firstInit {
		t.Errorf("expected a new vassal init after the change, found the first pid %d", firstInit)
	}

	if !refusesConnections(firstPort) {
		t.Errorf("expected the first version's port %d to refuse connections after the change", firstPort)
	}
	if !refusesConnections(secondPort) {
		t.Errorf("expected the second version's port %d to refuse connections once the third runs", secondPort)
	}
	if pids := e.fuseZipPids(); len(pids) != 1 {
		t.Errorf("expected one fuse-zip daemon after the restarts, found %d: %v", len(pids), e.processes())
	}
	for _, old := range []zipApp{first, second} {
		if left := processesMentioning(old.mountPoint); len(left) > 0 {
			t.Errorf("expected no process of the version mounted on %s once the third runs, found:\n%s", old.mountPoint, formatProcesses(left))
		}
	}
}

func TestCrashLoopBacksOff(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.writeVassal("crash.ini", strings.Join([]string{
		"[uwsgi]",
		fmt.Sprintf(`exec = busybox sh -c "exit 3" %s`, e.path("crash")),
	}, "\n")+"\n")
	emperor, app, port, _ := startWebEmperor(t, e)

	// The emperor logs "emperor started" after its first scan's spawns, so
	// the delay counts from its subreaper line, which comes before the scan.
	emperorSetUp := emperor.waitLogOnce("subreaper line", matchLog("not running as pid 1; registered as a child subreaper so orphans of fief's children are reaped here"))
	goodStarted := emperor.waitLogOnce("good vassal started", matchLog("vassal started", "vassal", "web.ini"))
	if delay := goodStarted.time.Sub(emperorSetUp.time); delay > time.Second {
		t.Errorf("expected the good vassal to start within 1s of the emperor's set-up beside a crashing one, took %v", delay)
	}

	// Deaths 1 to 4 come within about 3 s: delays 0s, 1s, 2s, then 4s.
	wantDelays := []string{"0s", "1s", "2s", "4s"}
	died := matchLog("vassal died; respawning", "vassal", "crash.ini")
	for i := range wantDelays {
		emperor.waitLog(i+1, fmt.Sprintf("crash.ini death %d", i+1), died)
		if !serves(port, app.index) {
			t.Errorf("expected the good vassal to keep serving during crash %d of the other\n%s", i+1, emperor.tail())
		}
	}
	deaths := emperor.find(died)[:len(wantDelays)]
	var delays []string
	for i, death := range deaths {
		delays = append(delays, death.attr("delay"))
		if want := fmt.Sprint(i + 1); death.attr("deaths_in_a_row") != want {
			t.Errorf("expected death %d to have deaths_in_a_row=%s, found %s", i+1, want, death.attr("deaths_in_a_row"))
		}
	}
	if !slices.Equal(delays, wantDelays) {
		t.Errorf("expected respawn delays %v, found %v\n%s", wantDelays, delays, emperor.tail())
	}

	// The respawns honour the delays: each start comes at least the
	// logged delay after the death before it.
	starts := emperor.find(matchLog("vassal started", "vassal", "crash.ini"))
	for i := 1; i < len(deaths) && i+1 < len(starts); i++ {
		delay, err := time.ParseDuration(deaths[i].attr("delay"))
		if err != nil {
			t.Fatalf("invalid delay in %q: %v", deaths[i].raw, err)
		}
		gap := starts[i+1].time.Sub(deaths[i].time)
		if gap < delay-10*time.Millisecond {
			t.Errorf("expected respawn %d at least %v after death %d, it came after %v", i+1, delay, i+1, gap)
		}
		t.Logf("death %d: delay=%v, respawned after %v", i+1, delay, gap.Round(time.Millisecond))
	}

	exits := emperor.find(matchLog("program exited unexpectedly", "vassal", "crash.ini"))
	if len(exits) == 0 || exits[0].attr("status") != "exit status 3" {
		t.Errorf("expected the crashing program's exit status 3 in the log, found %d lines, first %v", len(exits), exits)
	}
	if n := len(emperor.find(matchLog("vassal started", "vassal", "web.ini"))); n != 1 {
		t.Errorf("expected the good vassal to be started once, found %d starts\n%s", n, emperor.tail())
	}

	// A change of the file ends the 4 s backoff and starts the new
	// content at once.
	static := e.path("static")
	if err := os.Mkdir(static, 0o755); err != nil {
		t.Fatalf("creating %s: %v", static, err)
	}
	if err := os.WriteFile(filepath.Join(static, "index.html"), []byte("fixed\n"), 0o644); err != nil {
		t.Fatalf("writing index.html: %v", err)
	}
	fixedPort := freePort(t)
	startsBefore := len(emperor.find(matchLog("vassal started", "vassal", "crash.ini")))
	changed := time.Now()
	e.writeVassalInPlace("crash.ini", fmt.Sprintf("[uwsgi]\nexec = busybox httpd -f -p 127.0.0.1:%d -h %s\n", fixedPort, static))
	emperor.waitLogOnce("crash.ini changed", matchLog("vassal file changed; restarting with fresh namespaces", "vassal", "crash.ini"))
	restarted := emperor.waitLog(startsBefore+1, "crash.ini started after the change", matchLog("vassal started", "vassal", "crash.ini"))[startsBefore]
	if delay := restarted.time.Sub(changed); delay > time.Second {
		t.Errorf("expected the changed file to start within 1s instead of after the 4s backoff, it started after %v\n%s", delay, emperor.tail())
	}
	emperor.mustServe(fixedPort, "fixed\n")
}

func TestAtexitStepsRunInOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.requireProgram("fusermount")
	order := e.path("order")
	if err := os.WriteFile(order, nil, 0o666); err != nil {
		t.Fatalf("creating %s: %v", order, err)
	}
	// The as-user steps append to the file as the user nobody.
	if err := os.Chmod(order, 0o666); err != nil {
		t.Fatalf("chmod 0666 %s: %v", order, err)
	}
	appendStep := func(key, label string) string {
		return fmt.Sprintf(`%s = busybox sh -c "echo %s >> %s; busybox id -u >> %s"`, key, label, order, order)
	}

	app := e.newApp("app", "atexit steps\n")
	port := freePort(t)
	lines := strings.Split(strings.TrimSuffix(webVassal(app, port), "\n"), "\n")
	lines = append(lines,
		appendStep("exec-as-root", "as-root"),
		appendStep("exec-as-user", "as-user"),
		appendStep("exec-as-user-atexit", "user-atexit"),
		"exec-as-user-atexit = fusermount -u "+app.mountPoint,
		appendStep("exec-as-root-atexit", "root-atexit"),
		fmt.Sprintf(`exec-as-root-atexit = busybox sh -c "if busybox grep -q ' %s ' /proc/self/mountinfo; then echo mounted; else echo unmounted; fi >> %s"`, app.mountPoint, order),
		"exec-as-root-atexit = busybox touch "+e.path("atexit-ran"),
	)
	e.writeVassal("web.ini", strings.Join(lines, "\n")+"\n")

	emperor := e.startEmperor()
	emperor.mustServe(port, app.index)
	initPid := emperor.waitVassalStarted("web.ini", 1)

	nobody := fmt.Sprint(e.nobody)
	readOrder := func() []string {
		data, err := os.ReadFile(order)
		if err != nil {
			t.Fatalf("reading %s: %v", order, err)
		}
		return strings.Fields(string(data))
	}
	if got, want := readOrder(), []string{"as-root", "0", "as-user", nobody}; !slices.Equal(got, want) {
		t.Errorf("expected the start-up steps to record %v, found %v\n%s", want, got, emperor.tail())
	}
	if _, err := os.Stat(e.path("atexit-ran")); err == nil {
		t.Errorf("expected no atexit step to run before the stop, found %s", e.path("atexit-ran"))
	}

	if err := os.Remove(filepath.Join(e.vassalDir, "web.ini")); err != nil {
		t.Fatalf("removing the vassal file: %v", err)
	}
	emperor.waitLogOnce("vassal stopped", matchLog("vassal stopped", "vassal", "web.ini", "pid", fmt.Sprint(initPid)))

	want := []string{"as-root", "0", "as-user", nobody, "user-atexit", nobody, "root-atexit", "0", "unmounted"}
	if got := readOrder(); !slices.Equal(got, want) {
		t.Errorf("expected the steps to record %v (user atexit before root atexit, fusermount -u done), found %v\n%s", want, got, emperor.tail())
	}
	if _, err := os.Stat(e.path("atexit-ran")); err != nil {
		t.Errorf("expected the exec-as-root-atexit touch to run: %v\n%s", err, emperor.tail())
	}
	if failed := emperor.find(matchLog("atexit step failed")); len(failed) > 0 {
		t.Errorf("expected every atexit step to succeed, found %d failures, first: %s", len(failed), failed[0].raw)
	}
}

func TestTouchReloadsProgramOnly(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	emperor, app, port, initPid := startWebEmperor(t, e)
	fuseZips, httpds := e.fuseZipPids(), e.httpdPids()
	if len(fuseZips) != 1 || len(httpds) != 1 {
		t.Fatalf("expected one fuse-zip and one httpd, found %v and %v", fuseZips, httpds)
	}

	// Same content, new mtime: a reload keeps the namespaces and the
	// if-not-reload mount, and restarts only the program.
	now := time.Now()
	if err := os.Chtimes(filepath.Join(e.vassalDir, "web.ini"), now, now); err != nil {
		t.Fatalf("touching the vassal file: %v", err)
	}
	emperor.waitLogOnce("reloading vassal", matchLog("reloading vassal", "vassal", "web.ini", "pid", fmt.Sprint(initPid)))
	emperor.waitLog(2, "program started twice", matchLog("program started", "vassal", "web.ini"))
	emperor.mustServe(port, app.index)

	if got := e.fuseZipPids(); !slices.Equal(got, fuseZips) {
		t.Errorf("expected the reload to keep fuse-zip %v, found %v\n%s", fuseZips, got, emperor.tail())
	}
	if got := e.httpdPids(); len(got) != 1 || got[0] == httpds[0] {
		t.Errorf("expected the reload to replace httpd %v with a new one, found %v\n%s", httpds, got, emperor.tail())
	}
	if n := len(emperor.find(matchLog("vassal started", "vassal", "web.ini"))); n != 1 {
		t.Errorf("expected the reload to keep the vassal init, found %d vassal starts\n%s", n, emperor.tail())
	}
}

func TestHungFuseDaemonIsAborted(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	emperor, app, port, firstInit := startWebEmperor(t, e,
		"mountpoint-check-interval = 200ms",
		"mountpoint-check-timeout = 1s",
	)

	pids := e.fuseZipPids()
	if len(pids) != 1 {
		t.Fatalf("expected one fuse-zip daemon to stop, found %d: %v\n%s", len(pids), e.processes(), emperor.tail())
	}
	hung := pids[0]
	stopped := time.Now()
	// A stopped daemon handles no request, as a hung one would. SIGKILL
	// from the vassal's teardown still ends it.
	if err := syscall.Kill(hung, syscall.SIGSTOP); err != nil {
		t.Fatalf("kill -STOP fuse-zip (pid %d): %v", hung, err)
	}

	failure := emperor.waitLogOnce("mount check failed", matchLog("mount check failed; tearing the vassal down", "vassal", "web.ini", "pid", fmt.Sprint(firstInit)))
	t.Logf("the hung daemon was detected %v after SIGSTOP", failure.time.Sub(stopped).Round(time.Millisecond))
	if !strings.Contains(failure.attr("err"), "aborted connection") {
		t.Errorf("expected the failure to say the hung connection was aborted, found err=%q", failure.attr("err"))
	}

	_, recovery := waitRecovery(t, e, emperor, hung, stopped, port, app.index)
	t.Logf("recovery from a hung fuse-zip to the next 200: %v", recovery.Round(time.Millisecond))
	if recovery > 10*time.Second {
		t.Errorf("expected recovery within 10s of the hang (1s probe timeout), took %v\n%s", recovery, emperor.tail())
	}
	// A zombie waiting for its reaper counts as gone.
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", hung))
	if err == nil && !strings.Contains(string(stat), ") Z ") {
		t.Errorf("expected the hung fuse-zip (pid %d) to be gone with its vassal, found /proc/%d/stat: %s", hung, hung, stat)
	}
}

func TestReloadRemountsWithFusermount(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.requireProgram("fusermount")
	app := e.newApp("app", "remounted on reload\n")
	port := freePort(t)
	// On a reload, fusermount -u unmounts the old filesystem and fuse-zip
	// mounts the archive again inside the same namespaces.
	e.writeVassal("web.ini", strings.Join([]string{
		"[uwsgi]",
		"uid = nobody",
		"if-reload =",
		"exec-as-user = fusermount -u " + app.mountPoint,
		"endif =",
		fmt.Sprintf("exec-as-user = fuse-zip -r %s %s", app.zip, app.mountPoint),
		fmt.Sprintf("exec = busybox httpd -f -p 127.0.0.1:%d -h %s", port, app.mountPoint),
		"stop-timeout = 2s",
	}, "\n")+"\n")

	emperor := e.startEmperor()
	emperor.mustServe(port, app.index)
	initPid := emperor.waitVassalStarted("web.ini", 1)
	oldFuseZips := e.fuseZipPids()
	if len(oldFuseZips) != 1 {
		t.Fatalf("expected one fuse-zip daemon before the reload, found %v", e.processes())
	}

	touched := time.Now()
	now := time.Now()
	if err := os.Chtimes(filepath.Join(e.vassalDir, "web.ini"), now, now); err != nil {
		t.Fatalf("touching the vassal file: %v", err)
	}
	emperor.waitLogOnce("reloading vassal", matchLog("reloading vassal", "vassal", "web.ini"))

	// fusermount -u mounts nothing, so no start-up step may wait for a
	// mount after it. The wait outlasts fief's 10 s fuse-mount-timeout, so
	// a failure shows in the log tail.
	_, took := waitRecovery(t, e, emperor, oldFuseZips[0], touched, port, app.index)
	t.Logf("the reload remounted and served after %v", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("expected the reload to remount and serve within 5s, took %v\n%s", took, emperor.tail())
	}
	if failed := emperor.find(matchLog("vassal start failed")); len(failed) > 0 {
		t.Errorf("expected the reload's start-up steps to succeed, found: %s", failed[0].raw)
	}
	if n := len(emperor.find(matchLog("vassal started", "vassal", "web.ini"))); n != 1 {
		t.Errorf("expected the reload to keep vassal init %d, found %d vassal starts\n%s", initPid, n, emperor.tail())
	}
}

func TestUnmountedCheckPathRecovers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	nsenter := e.requireProgram("nsenter")
	busybox := e.requireProgram("busybox")
	emperor, app, port, firstInit := startWebEmperor(t, e)

	pids := e.fuseZipPids()
	if len(pids) != 1 {
		t.Fatalf("expected one fuse-zip daemon, found %d: %v\n%s", len(pids), e.processes(), emperor.tail())
	}
	// Detach the mount inside the vassal's mount namespace, as an operator
	// or a stray fusermount -uz would. A plain unmount fails because httpd's
	// working directory keeps the mount busy. busybox umount is used
	// because it needs no /proc/self, and the vassal's /proc has no entry
	// for a process of the host's pid namespace.
	unmounted := time.Now()
	out, err := exec.Command(nsenter, "--target", fmt.Sprint(pids[0]), "--mount", busybox, "umount", "-l", app.mountPoint).CombinedOutput()
	if err != nil {
		t.Fatalf("unmounting %s in the vassal's mount namespace: %v\n%s", app.mountPoint, err, out)
	}

	failure := emperor.waitLogOnce("mount check failed", matchLog("mount check failed; tearing the vassal down", "vassal", "web.ini", "pid", fmt.Sprint(firstInit)))
	t.Logf("the unmount was detected %v after it happened", failure.time.Sub(unmounted).Round(time.Millisecond))
	_, recovery := waitRecovery(t, e, emperor, pids[0], unmounted, port, app.index)
	t.Logf("recovery from the unmount to the next 200: %v", recovery.Round(time.Millisecond))
	if recovery > 5*time.Second {
		t.Errorf("expected recovery within 5s of the unmount, took %v\n%s", recovery, emperor.tail())
	}
}

// A pid namespace's init receives only the signals it has a handler for
// (pid_namespaces(7)), so a SIGTERM that reaches a vassal init before the Go
// runtime has installed its handlers is dropped.
func TestStopRightAfterSpawn(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// The first version ignores SIGTERM, so its stop takes the whole 2 s
	// stop-timeout. Both later versions arrive during that stop, so the
	// emperor spawns a vassal init for the second and, with the third
	// already pending, sends it SIGTERM at once.
	e.writeVassal("web.ini", strings.Join([]string{
		"[uwsgi]",
		fmt.Sprintf(`exec = busybox sh -c "trap '' TERM; while :; do busybox sleep 1; done" %s`, e.path("stubborn")),
		"stop-timeout = 2s",
	}, "\n")+"\n")
	emperor := e.startEmperor()
	emperor.waitLogOnce("program started", matchLog("program started", "vassal", "web.ini"))

	second := e.newApp("second", "the second version\n")
	third := e.newApp("third", "the third version\n")
	secondPort, thirdPort := freePort(t), freePort(t)
	changed := time.Now()
	e.writeVassalInPlace("web.ini", webVassal(second, secondPort))
	time.Sleep(100 * time.Millisecond)
	e.writeVassalInPlace("web.ini", webVassal(third, thirdPort))

	// 2 s for the first version's stop, then a prompt stop of the
	// second init, which has run no step yet.
	const bound = 6 * time.Second
	started := matchLog("vassal started", "vassal", "web.ini")
	for len(emperor.find(started)) < 3 {
		if time.Since(changed) > bound {
			t.Fatalf("expected the emperor to stop the just-spawned second vassal init and start the third within %v of the changes, found %d starts\n%s",
				bound, len(emperor.find(started)), emperor.tail())
		}
		time.Sleep(pollPeriod)
	}
	t.Logf("the third vassal init started %v after the first change", time.Since(changed).Round(time.Millisecond))
	emperor.mustServe(thirdPort, third.index)
	if killed := emperor.find(matchLog("vassal init did not stop in time; sending SIGKILL")); len(killed) > 0 {
		t.Errorf("expected every vassal init to stop on SIGTERM, found: %s", killed[0].raw)
	}
}

func TestChangeStopsOldWithItsTimeout(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// The old version's program ignores SIGTERM and has a 17 s
	// stop-timeout, then an atexit step. The new version has a 1 s
	// stop-timeout. The emperor gives a stopping vassal init its
	// stop-timeout plus 15 s for the atexit steps before SIGKILL, so it
	// must use the old version's 17 s, not the new 1 s.
	atexitRan := e.path("atexit-ran")
	e.writeVassal("web.ini", strings.Join([]string{
		"[uwsgi]",
		fmt.Sprintf(`exec = busybox sh -c "trap '' TERM; while :; do busybox sleep 1; done" %s`, e.path("stubborn")),
		"stop-timeout = 17s",
		"exec-as-root = busybox true",
		"exec-as-root-atexit = busybox touch " + atexitRan,
	}, "\n")+"\n")
	emperor := e.startEmperor()
	oldInit := emperor.waitVassalStarted("web.ini", 1)
	emperor.waitLogOnce("program started", matchLog("program started", "vassal", "web.ini"))

	app := e.newApp("app", "the new version\n")
	port := freePort(t)
	e.writeVassalInPlace("web.ini", webVassal(app, port, "stop-timeout = 1s"))

	stopped := matchLog("vassal stopped", "vassal", "web.ini", "pid", fmt.Sprint(oldInit))
	deadline := time.Now().Add(30 * time.Second)
	for len(emperor.find(stopped)) == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if killed := emperor.find(matchLog("vassal init did not stop in time; sending SIGKILL", "pid", fmt.Sprint(oldInit))); len(killed) > 0 {
		t.Errorf("expected the old vassal init to finish its 17 s stop-timeout and atexit steps, the emperor killed it: %s", killed[0].raw)
	}
	if _, err := os.Stat(atexitRan); err != nil {
		t.Errorf("expected the old version's exec-as-root-atexit step to run: %v\n%s", err, emperor.tail())
	}
	emperor.mustServe(port, app.index)
}
