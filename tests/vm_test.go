package tests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The tests in this file boot QEMU (see vm_helpers_test.go). Each boot
// takes a few seconds under TCG; the guest's checks run inside the VM and
// send traffic only to the guest's own loopback.

// smokeInit is a busybox script used as /init instead of fief: it proves
// that the kernel, the archive and the exit port work without fief init.
const smokeInit = `#!/bin/busybox sh
/bin/busybox mount -t devtmpfs devtmpfs /dev
echo "smoke: hello from busybox"
/bin/busybox printf '\003' | /bin/busybox dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
/bin/busybox poweroff -f
`

func TestVMBusyboxInitSmoke(t *testing.T) {
	kernel := requireVM(t)
	dir := t.TempDir()
	initScript := writeTestFile(t, dir, "init.sh", smokeInit, 0o755)
	initrd := filepath.Join(dir, "initrd.cpio")
	mkinitramfs(t, initrd, "--init", initScript, "--add", busyboxPath(t)+":/bin/busybox")

	result := bootVM(t, kernel, initrd, vmBootTimeout)
	if result.timedOut {
		t.Fatalf("the VM did not power off within %v\n%s", vmBootTimeout, result.describe())
	}
	if result.status != 3 {
		t.Errorf("expected guest status 3 (QEMU exit code 7) from the byte written to port %s, found %d\n%s", vmExitPort, result.status, result.describe())
	}
	if !result.hasLine("smoke: hello from busybox") {
		t.Errorf("expected the line %q on the console\n%s", "smoke: hello from busybox", result.describe())
	}
}

// fiefVMArchive writes an initramfs with fief as /init, busybox as
// /bin/busybox, the fuse module of kernel and the extra mkinitramfs
// arguments, and returns its path.
func fiefVMArchive(t *testing.T, kernel vmKernel, dir string, extra ...string) string {
	t.Helper()
	requireFiefInit(t)
	initrd := filepath.Join(dir, "initrd.cpio")
	args := []string{
		"--init", fiefBinary,
		"--kernel-version", kernel.release,
		"--module", "fuse",
		"--add", busyboxPath(t) + ":/bin/busybox",
	}
	mkinitramfs(t, initrd, append(args, extra...)...)
	return initrd
}

// requireCleanExit fails the test unless the VM powered off by itself with
// guest status want and printed fief's last line.
func requireCleanExit(t *testing.T, result vmResult, want int) {
	t.Helper()
	if result.timedOut {
		t.Fatalf("the VM did not power off within %v\n%s", vmBootTimeout, result.describe())
	}
	if result.status != want%128 {
		t.Errorf("expected guest status %d (%d after QEMU's exit code keeps 8 bits), found %d\n%s", want, want%128, result.status, result.describe())
	}
	if !result.hasLine(exitStatusLine(want)) {
		t.Errorf("expected the console line %q\n%s", exitStatusLine(want), result.describe())
	}
}

// zipAppVassal serves /srv/app.zip, mounted by fuse-zip on /app, with
// busybox httpd on 127.0.0.1:8080 inside the VM.
const zipAppVassal = `[uwsgi]
if-not-reload =
exec-as-user = fuse-zip -r /srv/app.zip /app
endif =
exec = /bin/busybox httpd -f -p 127.0.0.1:8080 -h /app
mountpoint-check = /app
stop-timeout = 2s
`

// zipAppCheck runs as fief.exec while the emperor runs the vassal: it waits
// for the page, kills the fuse-zip daemon, and waits for a new daemon to
// serve the page again. Each wait gives up after 30 s. busybox timeout
// bounds each request because wget -T crashes in busybox 1.35 (Debian 12).
const zipAppCheck = `#!/bin/busybox sh
bb=/bin/busybox
want='fief in a VM'
served() {
	[ "$($bb timeout 5 $bb wget -q -O - http://127.0.0.1:8080/index.html 2>/dev/null)" = "$want" ]
}
i=0
until served; do
	i=$((i + 1))
	[ $i -le 300 ] || { echo "check: the page was not served within 30 s"; exit 10; }
	$bb sleep 0.1
done
old=$($bb pidof fuse-zip) || { echo "check: no fuse-zip process is running"; exit 11; }
echo "check: served by fuse-zip $old"
$bb kill -KILL $old
i=0
until new=$($bb pidof fuse-zip) && [ "$new" != "$old" ] && served; do
	i=$((i + 1))
	[ $i -le 300 ] || { echo "check: the page was not served again within 30 s of killing fuse-zip $old"; exit 12; }
	$bb sleep 0.1
done
echo "check: served again by fuse-zip $new"
`

func TestVMServesZipAppAfterFuseZipKill(t *testing.T) {
	kernel := requireVM(t)
	dir := t.TempDir()
	app := filepath.Join(dir, "app.zip")
	writeZipApp(t, app, "fief in a VM")
	mountPoint := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mountPoint, 0o755); err != nil {
		t.Fatalf("creating %s: %v", mountPoint, err)
	}
	vassalFile := writeTestFile(t, dir, "app.ini", zipAppVassal, 0o644)
	check := writeTestFile(t, dir, "check.sh", zipAppCheck, 0o755)
	initrd := fiefVMArchive(t, kernel, dir,
		"--add", "/usr/bin/fuse-zip",
		"--add", app+":/srv/app.zip",
		"--add", mountPoint+":/app",
		"--add", check+":/check.sh",
		"--vassal", vassalFile,
	)

	result := bootVM(t, kernel, initrd, vmBootTimeout, "fief.modules=fuse", "fief.exec=/check.sh")
	requireCleanExit(t, result, 0)
	if !strings.Contains(result.console, "check: served again by fuse-zip") {
		t.Errorf("expected the check to report the page served again after the kill\n%s", result.describe())
	}
	// The boot benchmark reads these two durations from the console.
	for _, field := range []string{"since_init_start=", "since_workload_end="} {
		if !strings.Contains(result.console, field) {
			t.Errorf("expected fief init to log %s on the console\n%s", field, result.describe())
		}
	}
}

// ignoreTermCommand ignores SIGTERM, sends SIGTERM to pid 1, and sleeps. The
// sleep inherits the ignored SIGTERM, so only SIGKILL ends it.
const ignoreTermCommand = `#!/bin/busybox sh
trap '' TERM
echo "check: ignoring SIGTERM"
/bin/busybox kill -TERM 1
exec /bin/busybox sleep 600
`

func TestVMStopsCommandIgnoringSIGTERM(t *testing.T) {
	kernel := requireVM(t)
	dir := t.TempDir()
	command := writeTestFile(t, dir, "ignore-term.sh", ignoreTermCommand, 0o755)
	initrd := fiefVMArchive(t, kernel, dir, "--add", command+":/ignore-term.sh")

	result := bootVM(t, kernel, initrd, vmBootTimeout, "fief.exec=/ignore-term.sh")
	// The command is still running when the grace period ends, so fief
	// kills it, and the VM ends with its status: killed by SIGKILL, 128 + 9.
	requireCleanExit(t, result, 137)
	if !result.hasLine("check: ignoring SIGTERM") {
		t.Errorf("expected the command's line %q on the console\n%s", "check: ignoring SIGTERM", result.describe())
	}
}

// fatalSignalsCommand sends pid 1 every signal on which the Go runtime would
// end a process that has not requested it, then exits with status 7.
const fatalSignalsCommand = `#!/bin/busybox sh
for sig in 1 3 4 5 6 7 8 11 16 31; do
	/bin/busybox kill -$sig 1 || exit 10
done
/bin/busybox sleep 1
echo "check: pid 1 is still running"
exit 7
`

func TestVMPid1SurvivesFatalSignals(t *testing.T) {
	kernel := requireVM(t)
	dir := t.TempDir()
	command := writeTestFile(t, dir, "signals.sh", fatalSignalsCommand, 0o755)
	initrd := fiefVMArchive(t, kernel, dir, "--add", command+":/signals.sh")

	// With no vassal file in the archive, no emperor requests SIGHUP.
	result := bootVM(t, kernel, initrd, vmBootTimeout, "fief.exec=/signals.sh")
	requirePid1SurvivedFatalSignals(t, result)
}

// TestVMPid1SurvivesFatalSignalsAfterEmperorFailure runs the command after
// the emperor has failed before its first scan, so the emperor's first-scan
// callback never runs. The kernel's sysctl parameter leaves the emperor no
// inotify instance.
func TestVMPid1SurvivesFatalSignalsAfterEmperorFailure(t *testing.T) {
	kernel := requireVM(t)
	dir := t.TempDir()
	command := writeTestFile(t, dir, "signals.sh", fatalSignalsCommand, 0o755)
	vassalFile := writeTestFile(t, dir, "sleeper.ini", "[uwsgi]\nexec = /bin/busybox sleep 600\n", 0o644)
	initrd := fiefVMArchive(t, kernel, dir, "--add", command+":/signals.sh", "--vassal", vassalFile)

	result := bootVM(t, kernel, initrd, vmBootTimeout, "sysctl.fs.inotify.max_user_instances=0", "fief.exec=/signals.sh")
	if !strings.Contains(result.console, "emperor failed") || !strings.Contains(result.console, "inotify") {
		t.Errorf("expected fief init to log that the emperor failed to create its inotify instance\n%s", result.describe())
	}
	requirePid1SurvivedFatalSignals(t, result)
}

// requirePid1SurvivedFatalSignals checks the console of a VM that ran
// fatalSignalsCommand: the command finished, and fief init logged each
// signal that it ignored.
func requirePid1SurvivedFatalSignals(t *testing.T, result vmResult) {
	t.Helper()
	requireCleanExit(t, result, 7)
	if !result.hasLine("check: pid 1 is still running") {
		t.Errorf("expected the command's line %q on the console\n%s", "check: pid 1 is still running", result.describe())
	}
	for _, name := range []string{"SIGHUP", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE", "SIGSEGV", "SIGSTKFLT", "SIGSYS"} {
		if !strings.Contains(result.console, "pid 1 ignores the signal\" signal="+name) {
			t.Errorf("expected fief init to log that it ignores %s\n%s", name, result.describe())
		}
	}
}

func TestVMUnknownModuleFails(t *testing.T) {
	kernel := requireVM(t)
	dir := t.TempDir()
	initrd := fiefVMArchive(t, kernel, dir)

	result := bootVM(t, kernel, initrd, vmBootTimeout, "fief.modules=nosuchmodule", "fief.exec=/bin/busybox true")
	if result.timedOut {
		t.Fatalf("the VM did not power off within %v\n%s", vmBootTimeout, result.describe())
	}
	if result.status <= 0 {
		t.Errorf("expected a non-zero guest status for a missing module, found %d\n%s", result.status, result.describe())
	}
	if result.status > 0 && !result.hasLine(exitStatusLine(result.status)) {
		t.Errorf("expected the console line %q\n%s", exitStatusLine(result.status), result.describe())
	}
	named := false
	for _, line := range strings.Split(result.console, "\n") {
		if strings.Contains(line, "nosuchmodule") && strings.Contains(line, "not found") {
			named = true
		}
	}
	if !named {
		t.Errorf("expected a console line that names nosuchmodule as not found\n%s", result.describe())
	}
}

// pivotVassal pivots into /srv/root, which holds only busybox, a page and
// the mount points /proc and /dev, detaches the old root, lists / into
// /www/root.txt and /.old_root into /www/old-root.txt, and serves /www on
// 127.0.0.1:8081.
const pivotVassal = `[uwsgi]
pivot_root = /srv/root /srv/root/.old_root
hook-as-root = mount:proc none /proc
hook-as-root = mount:none /.old_root/dev /dev bind
hook-as-root = umount:/.old_root rec,detach
exec = /bin/busybox sh -c '/bin/busybox ls -a / > /www/root.txt; /bin/busybox ls -A /.old_root > /www/old-root.txt; exec /bin/busybox httpd -f -p 127.0.0.1:8081 -h /www'
stop-timeout = 2s
`

// pivotCheck waits up to 30 s for the page, then prints the vassal's root
// listing and checks that it is the new root (it has /www but not fief's
// /init) and that the old root is detached (/.old_root is empty).
const pivotCheck = `#!/bin/busybox sh
bb=/bin/busybox
i=0
until [ "$($bb timeout 5 $bb wget -q -O - http://127.0.0.1:8081/index.html 2>/dev/null)" = "pivoted" ]; do
	i=$((i + 1))
	[ $i -le 300 ] || { echo "check: the page was not served within 30 s"; exit 10; }
	$bb sleep 0.1
done
listing=$($bb timeout 5 $bb wget -q -O - http://127.0.0.1:8081/root.txt) || { echo "check: fetching root.txt failed"; exit 11; }
echo "check: vassal root:" $listing
echo "$listing" | $bb grep -qx www || { echo "check: the vassal's root has no www"; exit 12; }
echo "$listing" | $bb grep -qx init && { echo "check: the vassal's root has fief's /init"; exit 13; }
old=$($bb timeout 5 $bb wget -q -O - http://127.0.0.1:8081/old-root.txt) || { echo "check: fetching old-root.txt failed"; exit 14; }
[ -z "$old" ] || { echo "check: the old root is still mounted:" $old; exit 15; }
echo "check: the vassal serves from its own root"
`

func TestVMVassalPivotRoot(t *testing.T) {
	kernel := requireVM(t)
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	writeTestFile(t, root, "www/index.html", "pivoted", 0o644)
	for _, mountPoint := range []string{"proc", "dev"} {
		if err := os.Mkdir(filepath.Join(root, mountPoint), 0o755); err != nil {
			t.Fatalf("creating %s/%s: %v", root, mountPoint, err)
		}
	}
	vassalFile := writeTestFile(t, dir, "pivot.ini", pivotVassal, 0o644)
	check := writeTestFile(t, dir, "check.sh", pivotCheck, 0o755)
	initrd := fiefVMArchive(t, kernel, dir,
		"--add", root+":/srv/root",
		"--add", busyboxPath(t)+":/srv/root/bin/busybox",
		"--add", check+":/check.sh",
		"--vassal", vassalFile,
	)

	result := bootVM(t, kernel, initrd, vmBootTimeout, "fief.modules=fuse", "fief.exec=/check.sh")
	requireCleanExit(t, result, 0)
	if !result.hasLine("check: the vassal serves from its own root") {
		t.Errorf("expected the check to confirm the vassal's root\n%s", result.describe())
	}
}

// waitForCtrlAltDel is a guest command that prints a ready line and sleeps
// until fief init stops it.
const waitForCtrlAltDel = `#!/bin/busybox sh
echo "check: waiting for ctrl-alt-del"
exec /bin/busybox sleep 600
`

// TestVMCtrlAltDelShutsDown presses ctrl-alt-delete on the guest's keyboard
// through QEMU's monitor. fief init has turned the key combination into
// SIGINT for pid 1, so it stops the command with SIGTERM and powers off
// with the command's status instead of the kernel rebooting at once.
func TestVMCtrlAltDelShutsDown(t *testing.T) {
	kernel := requireVM(t)
	dir := t.TempDir()
	command := writeTestFile(t, dir, "wait.sh", waitForCtrlAltDel, 0o755)
	initrd := fiefVMArchive(t, kernel, dir, "--add", command+":/wait.sh")

	keys := &vmKeys{after: "check: waiting for ctrl-alt-del", keys: "ctrl-alt-delete"}
	result := bootVMWithKeys(t, kernel, initrd, vmBootTimeout, keys, "fief.exec=/wait.sh")

	// 128 + SIGTERM: the sleep died of the SIGTERM fief sent it.
	requireCleanExit(t, result, 143)
	if !strings.Contains(result.console, "signal=SIGINT") {
		t.Errorf("expected fief init to log signal=SIGINT as the reason it stopped the command\n%s", result.describe())
	}
}
