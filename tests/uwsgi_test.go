package tests

import (
	"fmt"
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

// These tests run the vassal files of the uWSGI tutorial "Reliably use FUSE
// filesystems for uWSGI vassals" with uWSGI and its PSGI plugin as the
// program. fief does the namespaces, the user switch, the hooks, the FUSE
// mounts, pivot_root and the mount checks, then runs `uwsgi --ini fd://3`.

// uwsgiFullEnv is the environment variable that enables TestUWSGIUnionRoot.
const uwsgiFullEnv = "FIEF_TEST_FULL"

// uwsgiStep is one step of a scenario. Later steps build on earlier ones.
type uwsgiStep struct {
	name string
	run  func(t *testing.T)
}

// uwsgiRunSteps runs the steps as subtests in order and stops at the first
// that fails.
func uwsgiRunSteps(t *testing.T, steps []uwsgiStep) {
	t.Helper()
	for _, step := range steps {
		if !t.Run(step.name, step.run) {
			t.Errorf("step %q failed, so the later steps did not run", step.name)
			return
		}
	}
}

// uwsgiCheckPlan runs fief check on file and checks that it exits 0 with
// nothing on stderr and that the plan contains each of want, compared with
// single spaces.
func uwsgiCheckPlan(t *testing.T, file string, want []string) {
	t.Helper()
	code, stdout, stderr := runCheck(t, file)
	if code != 0 {
		t.Errorf("expected fief check %s to exit 0, found %d\nstdout:\n%s\nstderr:\n%s", file, code, stdout, stderr)
	}
	if stderr != "" {
		t.Errorf("expected nothing on stderr from fief check, found:\n%s", stderr)
	}
	plan := strings.Join(strings.Fields(stdout), " ")
	for _, line := range want {
		if !strings.Contains(plan, line) {
			t.Errorf("expected the plan to contain %q, found:\n%s", line, stdout)
		}
	}
}

func TestUWSGIZipApp(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	uwsgiRequireHost(e)
	user := opsRequireUser(t, "user001")
	app := uwsgiNewZipApp(e, user)
	port := freePort(t)
	lines := uwsgiZipVassalLines(app, port)
	file := e.writeVassal("app.ini", unionJoinLines(lines))
	checkLine := uwsgiLineNumber(t, lines, "mountpoint-check")

	uwsgiCheckPlan(t, file, []string{
		file + ": valid",
		`user: uid="user001", gid="user001"`,
		fmt.Sprintf("as-user: line %d: exec fuse-zip -r %s %s", uwsgiLineNumber(t, lines, "exec-as-user"), app.zip, app.mountPoint),
		// plugin, http-socket and psgi.
		"program: uwsgi --ini fd://3 with 3 uWSGI option(s)",
		fmt.Sprintf("check: line %d: %s every", checkLine, app.mountPoint),
	})

	emperor := e.startEmperor()
	scenario := t
	var first, second uwsgiVassal
	var firstProgram int

	uwsgiRunSteps(t, []uwsgiStep{
		{"serves psgi app from zip", func(t *testing.T) {
			view := unionLogView(emperor, t)
			first = uwsgiVassalOf(t, scenario, view.waitVassalStarted("app.ini", 1))
			took := view.mustServe(port, uwsgiZipBody)
			t.Logf("uwsgi served the app from the zip %v after the emperor started", took.Round(time.Millisecond))
			firstProgram = uwsgiCheckProgram(t, first, user.uid, emperor)

			daemons := e.fuseZipPids()
			if len(daemons) != 1 {
				t.Fatalf("expected one fuse-zip daemon, found %v among:\n%s", daemons, formatProcesses(e.processes()))
			}
			if uid, err := realUID(daemons[0]); err != nil || uid != user.uid {
				t.Errorf("expected fuse-zip (pid %d) to run as %s, uid %d, found uid %d (err %v)", daemons[0], user.name, user.uid, uid, err)
			}
			if ns := namespace(daemons[0], "pid"); ns != first.pidNS {
				t.Errorf("expected fuse-zip in the vassal's pid namespace %s, found %s", first.pidNS, ns)
			}
			vassalMounts, err := mountLines(strconv.Itoa(first.init), " "+app.mountPoint+" ")
			if err != nil || len(vassalMounts) != 1 || !strings.HasPrefix(uwsgiMountType(vassalMounts[0]), "fuse") {
				t.Errorf("expected one FUSE mount on %s in the vassal's mount table, found %q (err %v)", app.mountPoint, vassalMounts, err)
			}
			if hostMounts, err := mountLines("self", app.mountPoint); err != nil || len(hostMounts) > 0 {
				t.Errorf("expected no mount on %s in the host's mount table, found %q (err %v)", app.mountPoint, hostMounts, err)
			}

			started := view.waitLogOnce("program started", matchLog("program started", "vassal", "app.ini"))
			if argv := started.attr("argv"); argv != "[uwsgi --ini fd://3]" {
				t.Errorf("expected the program started line to show argv=[uwsgi --ini fd://3], found argv=%q", argv)
			}
			if log := emperor.log(); !strings.Contains(log, "getting INI configuration from fd://3") {
				t.Errorf("expected uWSGI to log that it reads its configuration from fd://3\n%s", emperor.tail())
			}
		}},
		{"fuse-zip kill recovers", func(t *testing.T) {
			view := unionLogView(emperor, t)
			daemons := e.fuseZipPids()
			if len(daemons) != 1 {
				t.Fatalf("expected one fuse-zip daemon, found %v among:\n%s", daemons, formatProcesses(e.processes()))
			}
			killed := time.Now()
			if err := syscall.Kill(daemons[0], syscall.SIGKILL); err != nil {
				t.Fatalf("kill -9 fuse-zip (pid %d): %v", daemons[0], err)
			}
			recovery := uwsgiWaitRecovery(t, port, "/", uwsgiZipBody, daemons[0], e.fuseZipPids, killed, emperor)
			t.Logf("recovery from kill -9 of fuse-zip to the next 200 from uwsgi: %v", recovery.Round(time.Millisecond))

			failure := view.waitLogOnce("mount check failed", matchLog("mount check failed; tearing the vassal down", "vassal", "app.ini"))
			if where := fmt.Sprintf("%s:%d:", file, checkLine); !strings.Contains(failure.attr("err"), where) {
				t.Errorf("expected the mount check failure to name %s, found err=%q", where, failure.attr("err"))
			}
			second = uwsgiVassalOf(t, scenario, view.waitVassalStarted("app.ini", 2))
			if second.init == first.init || second.pidNS == first.pidNS {
				t.Errorf("expected a new vassal init in a new pid namespace, found init %d in %s before and init %d in %s after", first.init, first.pidNS, second.init, second.pidNS)
			}
			if left := first.waitGone(exitTimeout); len(left) > 0 {
				t.Errorf("expected no process left in the namespaces of the first vassal within %v, found:\n%s", exitTimeout, formatProcesses(left))
			}
			if program := uwsgiCheckProgram(t, second, user.uid, emperor); program == firstProgram {
				t.Errorf("expected a new uwsgi process after the respawn, found pid %d again", program)
			}
		}},
		{"file removal leaves nothing", func(t *testing.T) {
			view := unionLogView(emperor, t)
			if err := os.Remove(file); err != nil {
				t.Fatalf("removing %s: %v", file, err)
			}
			stopped := view.waitLogOnce("vassal stopped", matchLog("vassal stopped", "vassal", "app.ini"))
			if stopped.attr("status") != "exit status 0" {
				t.Errorf("expected the vassal init to exit 0 after its file was removed, found status=%q", stopped.attr("status"))
			}
			t.Logf("the vassal stopped %s after its file was removed", stopped.attr("took"))
			uwsgiCheckNoStopKill(t, emperor)

			if left := second.waitGone(exitTimeout); len(left) > 0 {
				t.Errorf("expected no process left in the vassal's namespaces within %v of the removal, found:\n%s", exitTimeout, formatProcesses(left))
			}
			if _, left := e.waitNoProcesses(exitTimeout, emperor.pid()); len(left) > 0 {
				t.Errorf("expected no process of the test but the emperor after the removal, found:\n%s", formatProcesses(left))
			}
			if mounts := mountsInAnyNamespace(e.dir + "/"); len(mounts) > 0 {
				t.Errorf("expected no mount of the test directory in any mount namespace after the removal, found:\n%s", strings.Join(mounts, "\n"))
			}
			if !refusesConnections(port) {
				t.Errorf("expected port %d to refuse connections after the removal", port)
			}
			if !emperor.running() {
				t.Errorf("expected the emperor to keep running after the vassal file was removed\n%s", emperor.tail())
			}
		}},
	})
}

// uwsgiHitPattern matches a line that uwsgiUnionPSGI appends to hits.txt
// when it runs as the base root's user001.
var uwsgiHitPattern = regexp.MustCompile(`^uid ` + strconv.Itoa(uwsgiBaseUser.uid) + ` /\S*$`)

// uwsgiCheckHits checks that every line of hits is one that the app wrote
// as user001 and that hits contains want.
func uwsgiCheckHits(t *testing.T, hits []string, want string) {
	t.Helper()
	for _, line := range hits {
		if !uwsgiHitPattern.MatchString(line) {
			t.Errorf("expected each line of hits.txt to match %s, found %q", uwsgiHitPattern, line)
		}
	}
	if !slices.Contains(hits, want) {
		t.Errorf("expected hits.txt to contain the line %q, found %q", want, hits)
	}
}

// TestUWSGIUnionRoot debootstraps a Debian root the first time, so it runs
// only when FIEF_TEST_FULL is set, as make test-full sets it.
func TestUWSGIUnionRoot(t *testing.T) {
	if os.Getenv(uwsgiFullEnv) == "" {
		t.Skipf("runs only in make test-full, because its first run builds a Debian bookworm root with debootstrap: run make test-full, or set %s=1", uwsgiFullEnv)
	}
	begin := time.Now()
	var buildTime time.Duration
	// Registered first, so it runs last, after the teardown.
	t.Cleanup(func() {
		t.Logf("TestUWSGIUnionRoot ran for %v in all, of which building the cached base root took %v", time.Since(begin).Round(time.Millisecond), buildTime.Round(time.Second))
	})

	e := newEnv(t)
	uwsgiRequireHost(e)
	e.requireProgram("unionfs-fuse")
	uwsgiLockCache(t)
	base, took := uwsgiCachedBase(t, e)
	buildTime = took
	u := uwsgiNewUnion(e, base)
	baseHits := filepath.Join(base, "var", "www", "hits.txt")

	port := freePort(t)
	lines := uwsgiUnionVassalLines(u, port)
	file := e.writeVassal("union.ini", unionJoinLines(lines))
	checkLine := uwsgiLineNumber(t, lines, "mountpoint-check")
	uwsgiCheckPlan(t, file, []string{
		file + ": valid",
		fmt.Sprintf("pivot_root: line %d: into %s, old root at %s/.old_root", uwsgiLineNumber(t, lines, "pivot_root"), u.mountPoint, u.mountPoint),
		// plugins-dir twice, plugin, http-socket and psgi.
		"program: uwsgi --ini fd://3 with 5 uWSGI option(s)",
		fmt.Sprintf("check: line %d: / every", checkLine),
	})

	emperor := e.startEmperor()
	scenario := t
	var first, second uwsgiVassal
	var firstProgram int
	var hitsAfterKill []string

	uwsgiRunSteps(t, []uwsgiStep{
		{"serves psgi app from union root", func(t *testing.T) {
			view := unionLogView(emperor, t)
			first = uwsgiVassalOf(t, scenario, view.waitVassalStarted("union.ini", 1))
			took := view.mustServe(port, uwsgiUnionBody)
			t.Logf("uwsgi served the app from the union root %v after the emperor started", took.Round(time.Millisecond))
			firstProgram = uwsgiCheckProgram(t, first, uwsgiBaseUser.uid, emperor)

			root, err := uwsgiRootMount(firstProgram)
			if err != nil {
				t.Errorf("reading the root mount of uwsgi: %v", err)
			} else if !strings.HasPrefix(uwsgiMountType(root), "fuse.unionfs") {
				t.Errorf("expected / of uwsgi to be the unionfs-fuse mount, found %q", root)
			}
			if old, err := mountLines(strconv.Itoa(firstProgram), " /.old_root"); err != nil || len(old) > 0 {
				t.Errorf("expected the old root to be detached in the vassal, found %q (err %v)", old, err)
			}

			status, body, err := unionGet(port, "/first")
			if err != nil || status != 200 || body != uwsgiUnionBody {
				t.Fatalf("GET /first: expected 200 with %q, found status %d, body %q, err %v\n%s", uwsgiUnionBody, status, body, err, emperor.tail())
			}
			uwsgiCheckHits(t, uwsgiHits(t, u), fmt.Sprintf("uid %d /first", uwsgiBaseUser.uid))
			hitsFile := filepath.Join(u.cow, "var", "www", "hits.txt")
			if info, err := os.Stat(hitsFile); err != nil || info.Sys().(*syscall.Stat_t).Uid != uint32(uwsgiBaseUser.uid) {
				t.Errorf("expected %s to be owned by uid %d, stat returned %v (err %v)", hitsFile, uwsgiBaseUser.uid, info, err)
			}
			if _, err := os.Lstat(baseHits); !os.IsNotExist(err) {
				t.Errorf("expected no hits.txt in the read-only base root, Lstat %s returned %v", baseHits, err)
			}
		}},
		{"unionfs kill recovers", func(t *testing.T) {
			view := unionLogView(emperor, t)
			daemons := unionDaemons(e, uwsgiBaseUser)
			if len(daemons) != 1 {
				t.Fatalf("expected one unionfs-fuse daemon, found %v among:\n%s", daemons, formatProcesses(e.processes()))
			}
			hitsBefore := uwsgiHits(t, u)
			killed := time.Now()
			if err := syscall.Kill(daemons[0], syscall.SIGKILL); err != nil {
				t.Fatalf("kill -9 unionfs-fuse (pid %d): %v", daemons[0], err)
			}
			daemonsOf := func() []int { return unionDaemons(e, uwsgiBaseUser) }
			recovery := uwsgiWaitRecovery(t, port, "/after-kill", uwsgiUnionBody, daemons[0], daemonsOf, killed, emperor)
			t.Logf("recovery from kill -9 of unionfs-fuse to the next 200 from uwsgi: %v", recovery.Round(time.Millisecond))

			failure := view.waitLogOnce("mount check failed", matchLog("mount check failed; tearing the vassal down", "vassal", "union.ini"))
			if where := fmt.Sprintf("%s:%d:", file, checkLine); !strings.Contains(failure.attr("err"), where) {
				t.Errorf("expected the mount check failure to name %s, found err=%q", where, failure.attr("err"))
			}
			second = uwsgiVassalOf(t, scenario, view.waitVassalStarted("union.ini", 2))
			if second.init == first.init || second.pidNS == first.pidNS {
				t.Errorf("expected a new vassal init in a new pid namespace, found init %d in %s before and init %d in %s after", first.init, first.pidNS, second.init, second.pidNS)
			}
			if left := first.waitGone(exitTimeout); len(left) > 0 {
				t.Errorf("expected no process left in the namespaces of the first vassal within %v, found:\n%s", exitTimeout, formatProcesses(left))
			}
			if program := uwsgiCheckProgram(t, second, uwsgiBaseUser.uid, emperor); program == firstProgram {
				t.Errorf("expected a new uwsgi process after the respawn, found pid %d again", program)
			}

			// The new union has the same copy-on-write folder, so the
			// lines written before the kill are still there.
			hitsAfterKill = uwsgiHits(t, u)
			if len(hitsAfterKill) < len(hitsBefore) || strings.Join(hitsAfterKill[:len(hitsBefore)], "\n") != strings.Join(hitsBefore, "\n") {
				t.Errorf("expected hits.txt to keep its %d lines from before the kill and grow, found %d lines:\n%s", len(hitsBefore), len(hitsAfterKill), strings.Join(hitsAfterKill, "\n"))
			}
			uwsgiCheckHits(t, hitsAfterKill, fmt.Sprintf("uid %d /after-kill", uwsgiBaseUser.uid))
		}},
		{"file removal leaves nothing", func(t *testing.T) {
			view := unionLogView(emperor, t)
			if err := os.Remove(file); err != nil {
				t.Fatalf("removing %s: %v", file, err)
			}
			stopped := view.waitLogOnce("vassal stopped", matchLog("vassal stopped", "vassal", "union.ini"))
			if stopped.attr("status") != "exit status 0" {
				t.Errorf("expected the vassal init to exit 0 after its file was removed, found status=%q", stopped.attr("status"))
			}
			t.Logf("the vassal stopped %s after its file was removed", stopped.attr("took"))
			uwsgiCheckNoStopKill(t, emperor)

			if left := second.waitGone(exitTimeout); len(left) > 0 {
				t.Errorf("expected no process left in the vassal's namespaces within %v of the removal, found:\n%s", exitTimeout, formatProcesses(left))
			}
			if _, left := e.waitNoProcesses(exitTimeout, emperor.pid()); len(left) > 0 {
				t.Errorf("expected no process of the test but the emperor after the removal, found:\n%s", formatProcesses(left))
			}
			for _, dir := range []string{e.dir, u.ns} {
				if mounts := mountsInAnyNamespace(dir + "/"); len(mounts) > 0 {
					t.Errorf("expected no mount below %s in any mount namespace after the removal, found:\n%s", dir, strings.Join(mounts, "\n"))
				}
			}
			if !refusesConnections(port) {
				t.Errorf("expected port %d to refuse connections after the removal", port)
			}

			hits := uwsgiHits(t, u)
			if strings.Join(hits, "\n") != strings.Join(hitsAfterKill, "\n") {
				t.Errorf("expected hits.txt in the copy-on-write folder to keep its %d lines after the removal, found %d:\n%s", len(hitsAfterKill), len(hits), strings.Join(hits, "\n"))
			}
			if _, err := os.Lstat(baseHits); !os.IsNotExist(err) {
				t.Errorf("expected no hits.txt in the read-only base root, Lstat %s returned %v", baseHits, err)
			}
			if !emperor.running() {
				t.Errorf("expected the emperor to keep running after the vassal file was removed\n%s", emperor.tail())
			}
		}},
	})
}
