package tests

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
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

// Helpers of uwsgi_test.go: PSGI apps, the tutorial's vassal files with
// uWSGI as the program, process lookups by namespace, and the cached Debian
// root of the union scenario.

// uwsgiPluginDir is where Debian's uwsgi-plugin-* packages install their
// plugins. Debian's uwsgi searches it by default, so `plugin = psgi` loads
// uwsgiPluginDir/psgi_plugin.so without a plugins-dir line.
const uwsgiPluginDir = "/usr/lib/uwsgi/plugins"

// uwsgiRequireHost fails the test when the host lacks uwsgi or its PSGI
// plugin.
func uwsgiRequireHost(e *testEnv) {
	e.t.Helper()
	e.requireProgram("uwsgi")
	plugin := filepath.Join(uwsgiPluginDir, "psgi_plugin.so")
	if _, err := os.Stat(plugin); err != nil {
		e.t.Fatalf("the uWSGI PSGI plugin %s is required: %v; install the Debian package uwsgi-plugin-psgi", plugin, err)
	}
}

// uwsgiZipBody is the response body of uwsgiZipPSGI.
const uwsgiZipBody = "hello from psgi\n"

// uwsgiZipPSGI is the app of the fuse-zip scenario. Without Plack
// (Debian's libplack-perl), the psgi plugin loads the file with Perl's do,
// so the value of its last statement must be the app.
const uwsgiZipPSGI = `my $app = sub { return [200, ['Content-Type' => 'text/plain'], ["hello from psgi\n"]]; };` + "\n"

// uwsgiNewZipApp zips app.psgi into dir/app.zip with the zip command and
// creates dir/app, owned by owner, as the mount point. The archive is
// readable by every user.
func uwsgiNewZipApp(e *testEnv, owner opsUser) zipApp {
	e.t.Helper()
	source := e.path("app-src")
	if err := os.Mkdir(source, 0o755); err != nil {
		e.t.Fatalf("creating %s: %v", source, err)
	}
	if err := os.WriteFile(filepath.Join(source, "app.psgi"), []byte(uwsgiZipPSGI), 0o644); err != nil {
		e.t.Fatalf("writing app.psgi: %v", err)
	}
	archive := e.path("app.zip")
	cmd := exec.Command("zip", "-q", archive, "app.psgi")
	cmd.Dir = source
	if out, err := cmd.CombinedOutput(); err != nil {
		e.t.Fatalf("zip -q %s app.psgi failed: %v\n%s", archive, err, out)
	}
	if err := os.Chmod(archive, 0o644); err != nil {
		e.t.Fatalf("chmod 0644 %s: %v", archive, err)
	}

	mountPoint := e.path("app")
	if err := os.Mkdir(mountPoint, 0o755); err != nil {
		e.t.Fatalf("creating the mount point %s: %v", mountPoint, err)
	}
	if err := os.Chown(mountPoint, owner.uid, owner.gid); err != nil {
		e.t.Fatalf("chown %d:%d %s: %v", owner.uid, owner.gid, mountPoint, err)
	}
	return zipApp{zip: archive, mountPoint: mountPoint, index: uwsgiZipBody}
}

// uwsgiZipVassalLines returns the tutorial's vassal with mountpoint-check,
// without a section header, as the tutorial prints it. The zip path, the
// mount point, the address 127.0.0.1:port, the psgi path and the added
// `plugin = psgi` line differ from the tutorial. Its `psgi = /app/` names
// a directory, which the psgi plugin of uWSGI 2.0.21 cannot load ("Is a
// directory", then "unable to find PSGI function entry point"), so psgi
// names the app's file.
func uwsgiZipVassalLines(app zipApp, port int) []string {
	return []string{
		"uid = user001",
		"gid = user001",
		"",
		"; mount FUSE filesystem under /app (but only if it is not a reload)",
		"if-not-reload =",
		fmt.Sprintf("  exec-as-user = fuse-zip -r %s %s", app.zip, app.mountPoint),
		"endif =",
		"",
		"plugin = psgi",
		fmt.Sprintf("http-socket = 127.0.0.1:%d", port),
		fmt.Sprintf("psgi = %s/app.psgi", app.mountPoint),
		"",
		fmt.Sprintf("mountpoint-check = %s", app.mountPoint),
	}
}

// uwsgiLineNumber returns the number, counted from 1, of the first line
// that starts with prefix after leading blanks. It fails the test when no
// line does.
func uwsgiLineNumber(t *testing.T, lines []string, prefix string) int {
	t.Helper()
	for i, line := range lines {
		if strings.HasPrefix(strings.TrimSpace(line), prefix) {
			return i + 1
		}
	}
	t.Fatalf("the vassal file has no line that starts with %q", prefix)
	return 0
}

// uwsgiNamespaceProcesses returns the processes whose pid namespace is ns,
// as namespace returns it. Zombies have an empty command line and are left
// out.
func uwsgiNamespaceProcesses(ns string) []process {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var found []process
	for _, entry := range entries {
		pid, err := strconv.Atoi(entry.Name())
		if err != nil || namespace(pid, "pid") != ns {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", entry.Name(), "cmdline"))
		if err != nil || len(data) == 0 {
			continue
		}
		found = append(found, process{pid: pid, argv: strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")})
	}
	return found
}

// uwsgiVassal is one vassal init: its pid on the host and its pid
// namespace. Every process of the vassal, the ones in its mount namespace
// too, descends from the init and so is in that pid namespace.
type uwsgiVassal struct {
	init  int
	pidNS string
}

// uwsgiVassalOf opens the pid namespace of the vassal init pid, which must
// still run, and keeps it open until the test scenario ends, which may be
// a parent of t. The kernel gives the inode number of a freed namespace to
// the next new one, so without the open descriptor a later vassal could
// get the same namespace id.
func uwsgiVassalOf(t, scenario *testing.T, pid int) uwsgiVassal {
	t.Helper()
	nsFile, err := os.Open(fmt.Sprintf("/proc/%d/ns/pid", pid))
	if err != nil {
		t.Fatalf("opening the pid namespace of the vassal init: %v", err)
	}
	scenario.Cleanup(func() { nsFile.Close() })
	var st syscall.Stat_t
	if err := syscall.Fstat(int(nsFile.Fd()), &st); err != nil {
		t.Fatalf("fstat of the pid namespace of the vassal init: %v", err)
	}
	// The same form as the link /proc/PID/ns/pid, which namespace reads.
	return uwsgiVassal{init: pid, pidNS: fmt.Sprintf("pid:[%d]", st.Ino)}
}

// processes returns every process in the vassal's pid namespace.
func (v uwsgiVassal) processes() []process {
	return uwsgiNamespaceProcesses(v.pidNS)
}

// uwsgiPrograms returns the uwsgi processes of the vassal.
func (v uwsgiVassal) uwsgiPrograms() []process {
	var found []process
	for _, p := range v.processes() {
		if filepath.Base(p.argv[0]) == "uwsgi" {
			found = append(found, p)
		}
	}
	return found
}

// waitGone polls until no process is left in the vassal's pid namespace
// and returns what was left at the deadline.
func (v uwsgiVassal) waitGone(timeout time.Duration) []process {
	deadline := time.Now().Add(timeout)
	for {
		left := v.processes()
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(pollPeriod)
	}
}

// uwsgiCheckProgram checks that the vassal runs exactly one uwsgi, started
// as `uwsgi --ini fd://3` and running as uid, and returns its pid. Without
// `master = true` uWSGI runs its only worker in that one process.
func uwsgiCheckProgram(t *testing.T, v uwsgiVassal, uid int, emperor *fiefProcess) int {
	t.Helper()
	programs := v.uwsgiPrograms()
	if len(programs) != 1 {
		t.Fatalf("expected one uwsgi process in the pid namespace %s of vassal init %d, found %d; the namespace holds:\n%s%s",
			v.pidNS, v.init, len(programs), formatProcesses(v.processes()), emperor.tail())
	}
	program := programs[0]
	if want := []string{"uwsgi", "--ini", "fd://3"}; !slices.Equal(program.argv, want) {
		t.Errorf("expected the program's command line to be %q, found %q", want, program.argv)
	}
	if got, err := realUID(program.pid); err != nil || got != uid {
		t.Errorf("expected uwsgi (pid %d) to run as uid %d, found uid %d (err %v)", program.pid, uid, got, err)
	}
	return program.pid
}

// uwsgiWaitRecovery polls until the test's FUSE daemons (as daemons
// returns them) are exactly one other than old, and GET path on port
// returns 200 with want. It returns how long that took from killed.
func uwsgiWaitRecovery(t *testing.T, port int, path, want string, old int, daemons func() []int, killed time.Time, emperor *fiefProcess) time.Duration {
	t.Helper()
	var now []int
	var last string
	for time.Since(killed) < serveTimeout {
		now = daemons()
		status, body, err := unionGet(port, path)
		switch {
		case err != nil:
			last = err.Error()
		case status != http.StatusOK || body != want:
			last = fmt.Sprintf("status %d, body %q", status, body)
		case len(now) == 1 && now[0] != old:
			return time.Since(killed)
		default:
			last = fmt.Sprintf("200 with the expected body, but the FUSE daemons are %v", now)
		}
		time.Sleep(pollPeriod)
	}
	t.Fatalf("expected a new FUSE daemon in place of pid %d and a 200 with %q for GET %s on 127.0.0.1:%d within %v of the kill; daemons now %v, last response: %s\n%s",
		old, want, path, port, serveTimeout, now, last, emperor.tail())
	return 0
}

// uwsgiCheckNoStopKill fails t when fief had to kill a uwsgi program with
// SIGKILL, which means it ignored SIGTERM for the whole stop-timeout.
func uwsgiCheckNoStopKill(t *testing.T, emperor *fiefProcess) {
	t.Helper()
	if kills := emperor.find(matchLog("program ignored SIGTERM; sending SIGKILL")); len(kills) > 0 {
		t.Errorf("expected uwsgi to exit on SIGTERM, fief had to send SIGKILL %d time(s): %s", len(kills), kills[0].raw)
	}
}

// The union scenario's base root is a Debian bookworm made by debootstrap
// and cached outside the repository, because building it downloads and
// installs a few hundred packages. The cache folder uwsgiUnionNS is also
// the chroot of unionfs-fuse. It contains the base root and the cow folder,
// as the tutorial's /ns contains /precise and /cow.
//
// Both must be plain folders on the chroot's filesystem, not mounts of
// their own. The tutorial's `umount:/.old_root rec,detach` detaches every
// mount below the old root, and the kernel disconnects each detached mount
// from its parent (as seen on Linux 6.18), so the daemon loses it too. A
// base root bind-mounted into the chroot turns into the empty folder
// beneath the bind.
const (
	uwsgiCacheDir    = "/var/cache/fief-test"
	uwsgiUnionNS     = uwsgiCacheDir + "/uwsgi-ns"
	uwsgiLockFile    = uwsgiCacheDir + "/uwsgi-ns.lock"
	uwsgiBaseName    = "bookworm-uwsgi"
	uwsgiSuite       = "bookworm"
	uwsgiIncludes    = "uwsgi-core,uwsgi-plugin-psgi"
	uwsgiRecipeFile  = ".fief-test-recipe"
	uwsgiBuildPrefix = ".build-" + uwsgiBaseName + "-"
)

// uwsgiUnionBody is the response body of uwsgiUnionPSGI.
const uwsgiUnionBody = "hello from psgi in the union root\n"

// uwsgiUnionPSGI is the app of the union scenario, /var/www/app.psgi in the
// base root. Each request appends "uid UID PATH" to /var/www/hits.txt, a
// write that unionfs-fuse puts in the user's copy-on-write folder. A
// failed write returns 500 with the reason.
const uwsgiUnionPSGI = `my $app = sub {
    my $env = shift;
    my $hits;
    open($hits, '>>', '/var/www/hits.txt')
        or return [500, ['Content-Type' => 'text/plain'], ["opening /var/www/hits.txt failed: $!\n"]];
    print $hits "uid $< $env->{PATH_INFO}\n";
    close($hits)
        or return [500, ['Content-Type' => 'text/plain'], ["writing /var/www/hits.txt failed: $!\n"]];
    return [200, ['Content-Type' => 'text/plain'], ["hello from psgi in the union root\n"]];
};
`

// uwsgiBaseUser is the user of the union vassal. It exists only in the base
// root's passwd and group files.
var uwsgiBaseUser = unionUser1

// uwsgiBaseRecipe describes everything that goes into the cached base root.
// The cache stores it in uwsgiRecipeFile, and a cache with another recipe
// is built again.
func uwsgiBaseRecipe() string {
	return fmt.Sprintf("debootstrap --variant=minbase --include=%s %s\n"+
		"root folder mode 0755\n"+
		"passwd and group: %s with uid and gid %d\n"+
		"directories: /.old_root, /var/www owned by %d\n"+
		"/var/www/app.psgi sha256 %x\n",
		uwsgiIncludes, uwsgiSuite, uwsgiBaseUser.name, uwsgiBaseUser.uid, uwsgiBaseUser.uid, sha256.Sum256([]byte(uwsgiUnionPSGI)))
}

// uwsgiLockCache takes an exclusive lock on the cache folder until the test
// ends, so that concurrent runs neither build the base root twice nor share
// the cow folder.
func uwsgiLockCache(t *testing.T) {
	t.Helper()
	if err := os.MkdirAll(uwsgiUnionNS, 0o755); err != nil {
		t.Fatalf("creating the cache folder %s: %v", uwsgiUnionNS, err)
	}
	lock, err := os.OpenFile(uwsgiLockFile, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatalf("opening the lock file %s: %v", uwsgiLockFile, err)
	}
	t.Cleanup(func() { lock.Close() })
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Logf("waiting for another run to release %s", uwsgiLockFile)
		if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
			t.Fatalf("locking %s: %v", uwsgiLockFile, err)
		}
	}
}

// uwsgiCachedBase returns the cached base root and how long building it
// took, 0 when the cache was reused. A missing cache, or one with another
// recipe, is built in a temporary folder beside it and renamed into place,
// so an interrupted build never leaves a partial cache. The caller holds
// the lock of uwsgiLockCache.
func uwsgiCachedBase(t *testing.T, e *testEnv) (string, time.Duration) {
	t.Helper()
	base := filepath.Join(uwsgiUnionNS, uwsgiBaseName)
	recipe := uwsgiBaseRecipe()
	stored, err := os.ReadFile(filepath.Join(base, uwsgiRecipeFile))
	switch {
	case err == nil && string(stored) == recipe:
		t.Logf("reusing the cached base root %s", base)
		return base, 0
	case err == nil:
		t.Logf("the cached base root %s was made by another recipe; building it again\n--- its recipe ---\n%s--- the current recipe ---\n%s", base, stored, recipe)
	case errors.Is(err, fs.ErrNotExist):
		t.Logf("no cached base root at %s; building it, which only the first run does", base)
	default:
		t.Fatalf("reading the recipe of the cached base root: %v", err)
	}

	start := time.Now()
	// A run that was killed during its build leaves its build folder.
	leftovers, err := filepath.Glob(filepath.Join(uwsgiUnionNS, uwsgiBuildPrefix+"*"))
	if err != nil {
		t.Fatalf("listing the build folders of earlier runs: %v", err)
	}
	for _, leftover := range leftovers {
		if err := uwsgiRemoveTree(leftover); err != nil {
			t.Fatalf("removing the build folder of an earlier run: %v", err)
		}
	}
	build, err := os.MkdirTemp(uwsgiUnionNS, uwsgiBuildPrefix)
	if err != nil {
		t.Fatalf("creating a build folder in %s: %v", uwsgiUnionNS, err)
	}
	built := false
	defer func() {
		if !built {
			if err := uwsgiRemoveTree(build); err != nil {
				t.Errorf("removing the failed build %s: %v", build, err)
			}
		}
	}()
	uwsgiDebootstrap(t, e, build)
	uwsgiPrepareBase(t, build)
	if err := os.WriteFile(filepath.Join(build, uwsgiRecipeFile), []byte(recipe), 0o644); err != nil {
		t.Fatalf("writing the recipe file: %v", err)
	}

	if _, err := os.Lstat(base); err == nil {
		stale := base + ".stale"
		if err := uwsgiRemoveTree(stale); err != nil {
			t.Fatalf("removing %s, left by an earlier rebuild: %v", stale, err)
		}
		if err := os.Rename(base, stale); err != nil {
			t.Fatalf("moving the outdated base root aside: %v", err)
		}
		if err := uwsgiRemoveTree(stale); err != nil {
			t.Fatalf("removing the outdated base root %s: %v", stale, err)
		}
	}
	if err := os.Rename(build, base); err != nil {
		t.Fatalf("renaming the new base root %s to %s: %v", build, base, err)
	}
	built = true
	took := time.Since(start)
	t.Logf("built the base root %s in %v", base, took.Round(time.Second))
	return base, took
}

// uwsgiDebootstrap installs a minimal bookworm with uWSGI and its PSGI
// plugin into target, from the Debian mirror of the machine's apt sources.
// Its output goes to debootstrap.log in the test directory.
func uwsgiDebootstrap(t *testing.T, e *testEnv, target string) {
	t.Helper()
	unshare := e.requireProgram("unshare")
	debootstrap := e.requireProgram("debootstrap")
	mirror, err := uwsgiDebianMirror()
	if err != nil {
		t.Fatalf("finding the Debian mirror for debootstrap: %v", err)
	}
	// debootstrap mounts /proc and other filesystems in the target while it
	// configures the packages. In a private mount namespace those mounts
	// reach no other namespace, such as the slave namespaces of vassals
	// that start meanwhile, and vanish with debootstrap even when it fails.
	// unshare execs debootstrap in the same process.
	argv := []string{unshare, "--mount", "--propagation", "private", "--",
		debootstrap, "--variant=minbase", "--include=" + uwsgiIncludes, uwsgiSuite, target, mirror}
	t.Logf("running %s", strings.Join(argv, " "))

	logPath := e.path("debootstrap.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("creating %s: %v", logPath, err)
	}
	defer logFile.Close()

	// A bound for a slow mirror, below the go test -timeout of 30m that
	// make test-full uses.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// debootstrap runs wget, chroot and dpkg as children: on timeout, kill
	// its whole process group, which Setpgid makes its own.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	err = cmd.Run()

	if left, mountErr := uwsgiMountsBelow(target); mountErr != nil || len(left) > 0 {
		t.Errorf("expected no mount below %s in the host's mount table after debootstrap, found %q (err %v)", target, left, mountErr)
	}
	if err != nil {
		t.Fatalf("%s failed: %v (context: %v)\n--- last lines of %s ---\n%s", strings.Join(argv, " "), err, ctx.Err(), logPath, uwsgiTail(logPath, 30))
	}
}

// uwsgiPrepareBase adds to a debootstrapped root what the tutorial's
// vassal needs: the vassal's user, /.old_root for pivot_root, and the app
// in /var/www, a folder the user may write to. The packages downloaded by
// debootstrap are removed, because the base root never installs again.
func uwsgiPrepareBase(t *testing.T, root string) {
	t.Helper()
	// os.MkdirTemp made the folder 0700, but / must let the user in.
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatalf("chmod 0755 %s: %v", root, err)
	}
	user := uwsgiBaseUser
	for _, file := range []string{"passwd", "group"} {
		data, err := os.ReadFile(filepath.Join(root, "etc", file))
		if err != nil {
			t.Fatalf("reading the base root's /etc/%s: %v", file, err)
		}
		for line := range strings.Lines(string(data)) {
			fields := strings.Split(line, ":")
			if fields[0] == user.name || len(fields) > 2 && fields[2] == strconv.Itoa(user.uid) {
				t.Fatalf("the base root's /etc/%s already contains %s or id %d: %q", file, user.name, user.uid, line)
			}
		}
	}
	uwsgiAppendFile(t, filepath.Join(root, "etc", "passwd"), fmt.Sprintf("%s:x:%d:%d:%s:/var/www:/usr/sbin/nologin\n", user.name, user.uid, user.uid, user.name))
	uwsgiAppendFile(t, filepath.Join(root, "etc", "group"), fmt.Sprintf("%s:x:%d:\n", user.name, user.uid))

	if err := os.Mkdir(filepath.Join(root, ".old_root"), 0o755); err != nil {
		t.Fatalf("creating /.old_root in the base root: %v", err)
	}
	www := filepath.Join(root, "var", "www")
	if err := os.MkdirAll(www, 0o755); err != nil {
		t.Fatalf("creating /var/www in the base root: %v", err)
	}
	if err := os.Chown(www, user.uid, user.uid); err != nil {
		t.Fatalf("chown %d:%d %s: %v", user.uid, user.uid, www, err)
	}
	if err := os.WriteFile(filepath.Join(www, "app.psgi"), []byte(uwsgiUnionPSGI), 0o644); err != nil {
		t.Fatalf("writing /var/www/app.psgi in the base root: %v", err)
	}

	debs, err := filepath.Glob(filepath.Join(root, "var", "cache", "apt", "archives", "*.deb"))
	if err != nil {
		t.Fatalf("listing the downloaded packages: %v", err)
	}
	for _, deb := range debs {
		if err := os.Remove(deb); err != nil {
			t.Fatalf("removing %s: %v", deb, err)
		}
	}
}

func uwsgiAppendFile(t *testing.T, path, text string) {
	t.Helper()
	file, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatalf("opening %s: %v", path, err)
	}
	if _, err := file.WriteString(text); err != nil {
		file.Close()
		t.Fatalf("appending to %s: %v", path, err)
	}
	if err := file.Close(); err != nil {
		t.Fatalf("closing %s: %v", path, err)
	}
}

// uwsgiMountsBelow returns the mount points of the test process's mount
// table that are dir or lie below it, deepest first.
func uwsgiMountsBelow(dir string) ([]string, error) {
	lines, err := mountLines("self", dir)
	if err != nil {
		return nil, err
	}
	var found []string
	for _, line := range lines {
		mountPoint := mountinfoField(line, 4)
		if mountPoint == dir || strings.HasPrefix(mountPoint, dir+"/") {
			found = append(found, mountPoint)
		}
	}
	slices.SortFunc(found, func(a, b string) int { return len(b) - len(a) })
	return found, nil
}

// uwsgiUnmountBelow detaches every mount at or below dir, deepest first,
// and returns the mount points that are still there afterwards.
func uwsgiUnmountBelow(dir string) []string {
	mounts, err := uwsgiMountsBelow(dir)
	if err != nil {
		return []string{"reading the mount table: " + err.Error()}
	}
	for _, mountPoint := range mounts {
		_ = syscall.Unmount(mountPoint, syscall.MNT_DETACH)
	}
	left, err := uwsgiMountsBelow(dir)
	if err != nil {
		return []string{"reading the mount table: " + err.Error()}
	}
	return left
}

// uwsgiRemoveTree removes dir after detaching the mounts below it. When a
// mount is left it returns an error and removes nothing, because removing
// files through a bind mount of the host's /dev would remove the host's.
func uwsgiRemoveTree(dir string) error {
	if left := uwsgiUnmountBelow(dir); len(left) > 0 {
		return fmt.Errorf("not removing %s, because mounts below it remain: %q", dir, left)
	}
	return os.RemoveAll(dir)
}

// uwsgiTail returns the last count lines of the file at path.
func uwsgiTail(path string, count int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > count {
		lines = lines[len(lines)-count:]
	}
	return strings.Join(lines, "\n")
}

// uwsgiDebianMirror returns the Debian mirror that the machine's apt uses:
// the URI of the first enabled deb entry of /etc/apt/sources.list and
// /etc/apt/sources.list.d/*.list and *.sources whose path ends in
// /debian, which leaves out debian-security and third-party archives.
func uwsgiDebianMirror() (string, error) {
	files := []string{"/etc/apt/sources.list"}
	for _, pattern := range []string{"*.list", "*.sources"} {
		matches, err := filepath.Glob(filepath.Join("/etc/apt/sources.list.d", pattern))
		if err != nil {
			return "", err
		}
		slices.Sort(matches)
		files = append(files, matches...)
	}

	var read []string
	for _, file := range files {
		data, err := os.ReadFile(file)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		read = append(read, file)
		var uris []string
		if strings.HasSuffix(file, ".sources") {
			uris = uwsgiDeb822URIs(string(data))
		} else {
			uris = uwsgiOneLineURIs(string(data))
		}
		for _, uri := range uris {
			parsed, err := url.Parse(uri)
			if err == nil && (parsed.Scheme == "http" || parsed.Scheme == "https") && strings.HasSuffix(strings.TrimRight(parsed.Path, "/"), "/debian") {
				return strings.TrimRight(uri, "/"), nil
			}
		}
	}
	return "", fmt.Errorf("no enabled deb entry with an http or https URI ending in /debian in %q; add the Debian mirror to the apt sources", read)
}

// uwsgiOneLineURIs returns the URIs of the "deb" lines of a one-line-style
// sources.list.
func uwsgiOneLineURIs(text string) []string {
	var uris []string
	scanner := bufio.NewScanner(strings.NewReader(text))
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) < 3 || fields[0] != "deb" {
			continue
		}
		rest := fields[1:]
		// Options such as [signed-by=...] come in brackets before the URI.
		if strings.HasPrefix(rest[0], "[") {
			for len(rest) > 0 && !strings.HasSuffix(rest[0], "]") {
				rest = rest[1:]
			}
			if len(rest) > 0 {
				rest = rest[1:]
			}
		}
		if len(rest) > 0 {
			uris = append(uris, rest[0])
		}
	}
	return uris
}

// uwsgiDeb822URIs returns the URIs of the enabled stanzas of type deb of a
// deb822-style .sources file.
func uwsgiDeb822URIs(text string) []string {
	var uris []string
	for stanza := range strings.SplitSeq(text, "\n\n") {
		fields := map[string]string{}
		last := ""
		for line := range strings.Lines(stanza) {
			line = strings.TrimRight(line, "\n")
			switch {
			case strings.HasPrefix(strings.TrimSpace(line), "#"):
			case strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t"):
				if last != "" {
					fields[last] += " " + strings.TrimSpace(line)
				}
			default:
				key, value, ok := strings.Cut(line, ":")
				if ok {
					last = strings.ToLower(strings.TrimSpace(key))
					fields[last] = strings.TrimSpace(value)
				}
			}
		}
		if strings.EqualFold(fields["enabled"], "no") || !slices.Contains(strings.Fields(fields["types"]), "deb") {
			continue
		}
		uris = append(uris, strings.Fields(fields["uris"])...)
	}
	return uris
}

// uwsgiUnion is the tutorial's union layout: the cache folder uwsgiUnionNS
// is the chroot of unionfs-fuse, with the base root and cow/user001, the
// user's copy-on-write folder. The union's mount point is U/ufs in the
// test directory U.
type uwsgiUnion struct {
	ns, base, cow, mountPoint string
}

// uwsgiNewUnion creates an empty copy-on-write folder owned by the user,
// after removing the one an interrupted run may have left, and the mount
// point. A cleanup removes the copy-on-write folder again. The caller
// holds the lock of uwsgiLockCache.
func uwsgiNewUnion(e *testEnv, base string) uwsgiUnion {
	e.t.Helper()
	u := uwsgiUnion{
		ns:         uwsgiUnionNS,
		base:       base,
		cow:        filepath.Join(uwsgiUnionNS, "cow", uwsgiBaseUser.name),
		mountPoint: e.path("ufs"),
	}
	if err := uwsgiRemoveTree(u.cow); err != nil {
		e.t.Fatalf("removing the copy-on-write folder of an earlier run: %v", err)
	}
	for _, dir := range []string{u.cow, u.mountPoint} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			e.t.Fatalf("creating %s: %v", dir, err)
		}
	}
	e.t.Cleanup(func() {
		if err := uwsgiRemoveTree(u.cow); err != nil {
			e.t.Errorf("removing the copy-on-write folder: %v", err)
		}
	})
	if err := os.Chown(u.cow, uwsgiBaseUser.uid, uwsgiBaseUser.uid); err != nil {
		e.t.Fatalf("chown %d:%d %s: %v", uwsgiBaseUser.uid, uwsgiBaseUser.uid, u.cow, err)
	}
	return u
}

// uwsgiUnionVassalLines returns the tutorial's union vassal with Debian's
// plugin folder in place of /opt/uwsgi/plugins. The tutorial's comment
// lines are kept as the tutorial prints them, with its paths. fief starts
// uwsgi after pivot_root, so the first plugins-dir, a host path, does not
// exist for it: uWSGI 2.0.21 logs that open() failed and loads the plugin
// from the second.
func uwsgiUnionVassalLines(u uwsgiUnion, port int) []string {
	return []string{
		"; choose the approach that suits you best (plugins loading)",
		"; this will be used for the first run ...",
		fmt.Sprintf("plugins-dir = %s%s", u.base, uwsgiPluginDir),
		"; and this after a reload (where our rootfs is already /ns/precise)",
		"plugins-dir = " + uwsgiPluginDir,
		"plugin = psgi",
		"",
		"; drop privileges",
		"uid = " + uwsgiBaseUser.name,
		"gid = " + uwsgiBaseUser.name,
		"",
		"; chdir to / to avoid problems after pivot_root",
		"hook-pre-jail = callret:chdir /",
		"; run unionfs-fuse using chroot (it is required to avoid deadlocks) and cow (we mount it under /ufs)",
		fmt.Sprintf("hook-pre-jail = exec:unionfs-fuse -ocow,chroot=%s,default_permissions,allow_other /%s=RO:/cow/%%(uid)=RW %s", u.ns, filepath.Base(u.base), u.mountPoint),
		"",
		"; change the rootfs to the unionfs one",
		"; the .old_root directory is where the old rootfs is still available",
		fmt.Sprintf("pivot_root = %s %s/.old_root", u.mountPoint, u.mountPoint),
		"",
		"; now we are in the new rootfs and in 'as-root' phase",
		"; remount the /proc filesystem",
		"hook-as-root = mount:proc none /proc",
		"; bind mount the original /dev in the new rootfs (simplifies things a lot)",
		"hook-as-root = mount:none /.old_root/dev /dev bind",
		"; recursively un-mount the old rootfs",
		"hook-as-root = umount:/.old_root rec,detach",
		"",
		"; common bind",
		fmt.Sprintf("http-socket = 127.0.0.1:%d", port),
		"",
		"; load the app (fix it according to your requirements)",
		"psgi = /var/www/app.psgi",
		"",
		"; constantly check for the rootfs (seems odd but is is very useful)",
		"mountpoint-check = /",
	}
}

// uwsgiHits reads hits.txt from the copy-on-write folder on the host and
// returns its lines.
func uwsgiHits(t *testing.T, u uwsgiUnion) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(u.cow, "var", "www", "hits.txt"))
	if err != nil {
		t.Fatalf("reading hits.txt in the copy-on-write folder: %v", err)
	}
	return strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
}

// uwsgiRootMount returns the mountinfo line of the mount that covers / in
// the mount table of pid: the last one on /, since a later mount on the
// same point hides the earlier ones.
func uwsgiRootMount(pid int) (string, error) {
	lines, err := mountLines(strconv.Itoa(pid), " / ")
	if err != nil {
		return "", err
	}
	root := ""
	for _, line := range lines {
		if mountinfoField(line, 4) == "/" {
			root = line
		}
	}
	if root == "" {
		return "", fmt.Errorf("no mount on / in /proc/%d/mountinfo", pid)
	}
	return root, nil
}

// uwsgiMountType returns the filesystem type of a mountinfo line.
func uwsgiMountType(line string) string {
	_, after, _ := strings.Cut(line, " - ")
	fstype, _, _ := strings.Cut(after, " ")
	return fstype
}
