package vassal

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

const testFile = "/etc/fief/vassals/app.ini"

// fakeOptions returns ParseOptions that read env instead of the process
// environment and report only the existing paths as present.
func fakeOptions(reload bool, env map[string]string, existing ...string) ParseOptions {
	return ParseOptions{
		Reload: reload,
		Getenv: func(name string) (string, bool) {
			value, ok := env[name]
			return value, ok
		},
		Exists: func(path string) bool { return slices.Contains(existing, path) },
	}
}

// newConfig returns the Config of a file without options.
func newConfig(file string) *Config {
	return &Config{
		File:             file,
		Name:             filepath.Base(file),
		Steps:            map[Phase][]Step{},
		CheckInterval:    time.Second,
		CheckTimeout:     5 * time.Second,
		FuseMountTimeout: 10 * time.Second,
		StopTimeout:      10 * time.Second,
	}
}

// checkConfig fails the test when got differs from want and shows the first
// differing line of their JSON forms.
func checkConfig(t *testing.T, got, want *Config) {
	t.Helper()
	if reflect.DeepEqual(got, want) {
		return
	}
	gotJSON, _ := json.MarshalIndent(got, "", "  ")
	wantJSON, _ := json.MarshalIndent(want, "", "  ")
	gotLines := strings.Split(string(gotJSON), "\n")
	wantLines := strings.Split(string(wantJSON), "\n")
	first := 0
	for first < len(gotLines) && first < len(wantLines) && gotLines[first] == wantLines[first] {
		first++
	}
	context := func(lines []string) string {
		from := max(0, first-4)
		to := min(len(lines), first+4)
		return strings.Join(lines[from:to], "\n")
	}
	t.Errorf("parsed config differs at JSON line %d\ngot:\n%s\nwant:\n%s\n(DeepEqual also compares nil and empty slices, which JSON may print alike)",
		first+1, context(gotLines), context(wantLines))
}

// The first vassal file of the uWSGI tutorial "Reliably use FUSE
// filesystems for uWSGI vassals" (tutorials/ReliableFuse.rst in the
// uwsgi-docs repository), verbatim.
const tutorialFuseZip = `[uwsgi]
uid = user001
gid = user001

; mount FUSE filesystem under /app (but only if it is not a reload)
if-not-reload =
  exec-as-user = fuse-zip -r /var/www/app001.zip /app
endif =

http-socket = :9090
psgi = /app/myapp.pl

mountpoint-check = /app
`

// The union-root vassal file of the same tutorial, verbatim.
const tutorialUnionRoot = `[uwsgi]
; choose the approach that suits you best (plugins loading)
; this will be used for the first run ...
plugins-dir = /ns/precise/opt/uwsgi/plugins
; and this after a reload (where our rootfs is already /ns/precise)
plugins-dir = /opt/uwsgi/plugins
plugin = psgi

; drop privileges
uid = user001
gid = user001

; chdir to / to avoid problems after pivot_root
hook-pre-jail = callret:chdir /
; run unionfs-fuse using chroot (it is required to avoid deadlocks) and cow (we mount it under /ufs)
hook-pre-jail = exec:unionfs-fuse -ocow,chroot=/ns,default_permissions,allow_other /precise=RO:/cow/%(uid)=RW /ufs

; change the rootfs to the unionfs one
; the .old_root directory is where the old rootfs is still available
pivot_root = /ufs /ufs/.old_root

; now we are in the new rootfs and in 'as-root' phase
; remount the /proc filesystem
hook-as-root = mount:proc none /proc
; bind mount the original /dev in the new rootfs (simplifies things a lot)
hook-as-root = mount:none /.old_root/dev /dev bind
; recursively un-mount the old rootfs
hook-as-root = umount:/.old_root rec,detach

; common bind
http-socket = :9090

; load the app (fix it according to your requirements)
psgi = /var/www/myapp.pl

; constantly check for the rootfs (seems odd but is is very useful)
mountpoint-check = /
`

// A variant of the first tutorial file without a section header and with
// directories in place of the archive and script names.
const tutorialFuseZipNoSection = `uid = user001
gid = user001

; mount FUSE filesystem under /app (but only if it is not a reload)
if-not-reload =
  exec-as-user = fuse-zip -r /var/www/ /app
endif =

http-socket = :9090
psgi = /app/

mountpoint-check = /app
`

func TestParseTutorialVassals(t *testing.T) {
	fuseZip := func(reload bool) *Config {
		want := newConfig("/etc/fief/vassals/app001.ini")
		want.UID, want.GID = "user001", "user001"
		want.MountpointChecks = []Check{{Path: "/app", Line: 13}}
		want.UWSGIOptions = []Option{
			{Key: "http-socket", Value: ":9090", Line: 10},
			{Key: "psgi", Value: "/app/myapp.pl", Line: 11},
		}
		want.Options = []Option{
			{Key: "uid", Value: "user001", Line: 2},
			{Key: "gid", Value: "user001", Line: 3},
		}
		if !reload {
			command := &Command{Argv: []string{"fuse-zip", "-r", "/var/www/app001.zip", "/app"}, Line: 7, Text: "fuse-zip -r /var/www/app001.zip /app"}
			want.Steps[PhaseAsUser] = []Step{{Phase: PhaseAsUser, Command: command}}
			want.Options = append(want.Options, Option{Key: "exec-as-user", Value: command.Text, Line: 7})
		}
		want.Options = append(want.Options,
			Option{Key: "http-socket", Value: ":9090", Line: 10},
			Option{Key: "psgi", Value: "/app/myapp.pl", Line: 11},
			Option{Key: "mountpoint-check", Value: "/app", Line: 13},
		)
		return want
	}

	fuseZipNoSection := func() *Config {
		want := newConfig("/etc/fief/vassals/app001.ini")
		want.UID, want.GID = "user001", "user001"
		command := &Command{Argv: []string{"fuse-zip", "-r", "/var/www/", "/app"}, Line: 6, Text: "fuse-zip -r /var/www/ /app"}
		want.Steps[PhaseAsUser] = []Step{{Phase: PhaseAsUser, Command: command}}
		want.MountpointChecks = []Check{{Path: "/app", Line: 12}}
		want.UWSGIOptions = []Option{
			{Key: "http-socket", Value: ":9090", Line: 9},
			{Key: "psgi", Value: "/app/", Line: 10},
		}
		want.Options = []Option{
			{Key: "uid", Value: "user001", Line: 1},
			{Key: "gid", Value: "user001", Line: 2},
			{Key: "exec-as-user", Value: command.Text, Line: 6},
			{Key: "http-socket", Value: ":9090", Line: 9},
			{Key: "psgi", Value: "/app/", Line: 10},
			{Key: "mountpoint-check", Value: "/app", Line: 12},
		}
		return want
	}

	unionRoot := func() *Config {
		const unionfsText = "exec:unionfs-fuse -ocow,chroot=/ns,default_permissions,allow_other /precise=RO:/cow/user001=RW /ufs"
		want := newConfig("/etc/fief/vassals/user001.ini")
		want.UID, want.GID = "user001", "user001"
		want.Steps[PhasePreJail] = []Step{
			{Phase: PhasePreJail, Hook: &Hook{
				Action: "callret", Func: "chdir", FuncArgs: []string{"/"},
				Line: 14, Text: "callret:chdir /",
			}},
			{Phase: PhasePreJail, Hook: &Hook{
				Action: "exec",
				Argv:   []string{"unionfs-fuse", "-ocow,chroot=/ns,default_permissions,allow_other", "/precise=RO:/cow/user001=RW", "/ufs"},
				Line:   16, Text: unionfsText,
			}},
		}
		want.PivotRoot = &PivotRoot{New: "/ufs", Old: "/ufs/.old_root", Line: 20}
		want.Steps[PhaseAsRoot] = []Step{
			{Phase: PhaseAsRoot, Hook: &Hook{
				Action: "mount", Mount: &MountSpec{FSType: "proc", Source: "none", Target: "/proc"},
				Line: 24, Text: "mount:proc none /proc",
			}},
			{Phase: PhaseAsRoot, Hook: &Hook{
				Action: "mount", Mount: &MountSpec{FSType: "none", Source: "/.old_root/dev", Target: "/dev", Flags: []string{"bind"}},
				Line: 26, Text: "mount:none /.old_root/dev /dev bind",
			}},
			{Phase: PhaseAsRoot, Hook: &Hook{
				Action: "umount", Mount: &MountSpec{Target: "/.old_root", Flags: []string{"rec", "detach"}},
				Line: 28, Text: "umount:/.old_root rec,detach",
			}},
		}
		want.MountpointChecks = []Check{{Path: "/", Line: 37}}
		want.UWSGIOptions = []Option{
			{Key: "plugins-dir", Value: "/ns/precise/opt/uwsgi/plugins", Line: 4},
			{Key: "plugins-dir", Value: "/opt/uwsgi/plugins", Line: 6},
			{Key: "plugin", Value: "psgi", Line: 7},
			{Key: "http-socket", Value: ":9090", Line: 31},
			{Key: "psgi", Value: "/var/www/myapp.pl", Line: 34},
		}
		want.Options = []Option{
			{Key: "plugins-dir", Value: "/ns/precise/opt/uwsgi/plugins", Line: 4},
			{Key: "plugins-dir", Value: "/opt/uwsgi/plugins", Line: 6},
			{Key: "plugin", Value: "psgi", Line: 7},
			{Key: "uid", Value: "user001", Line: 10},
			{Key: "gid", Value: "user001", Line: 11},
			{Key: "hook-pre-jail", Value: "callret:chdir /", Line: 14},
			{Key: "hook-pre-jail", Value: unionfsText, Line: 16},
			{Key: "pivot-root", Value: "/ufs /ufs/.old_root", Line: 20},
			{Key: "hook-as-root", Value: "mount:proc none /proc", Line: 24},
			{Key: "hook-as-root", Value: "mount:none /.old_root/dev /dev bind", Line: 26},
			{Key: "hook-as-root", Value: "umount:/.old_root rec,detach", Line: 28},
			{Key: "http-socket", Value: ":9090", Line: 31},
			{Key: "psgi", Value: "/var/www/myapp.pl", Line: 34},
			{Key: "mountpoint-check", Value: "/", Line: 37},
		}
		return want
	}

	tests := []struct {
		name, file, text string
		reload           bool
		want             *Config
	}{
		{"fuse-zip first start", "/etc/fief/vassals/app001.ini", tutorialFuseZip, false, fuseZip(false)},
		{"fuse-zip reload", "/etc/fief/vassals/app001.ini", tutorialFuseZip, true, fuseZip(true)},
		{"fuse-zip without section", "/etc/fief/vassals/app001.ini", tutorialFuseZipNoSection, false, fuseZipNoSection()},
		{"union root", "/etc/fief/vassals/user001.ini", tutorialUnionRoot, false, unionRoot()},
		{"union root reload", "/etc/fief/vassals/user001.ini", tutorialUnionRoot, true, unionRoot()},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			got, err := Parse(test.file, []byte(test.text), fakeOptions(test.reload, nil))
			if err != nil {
				t.Fatalf("Parse(%q) error = %q, want nil", test.file, err)
			}
			checkConfig(t, got, test.want)
		})
	}
}

func TestParseFullFile(t *testing.T) {
	const text = `; a vassal that uses every fief key
exec = /usr/bin/busybox httpd -f -p 8080 -h "/srv/%n root"
uid = www
gid = www
chdir = /srv/%n
env = HOME=/srv/%n
env = GREETING=hello world
env = EMPTY=
exec-pre-jail = /bin/mkdir -p /srv/%n
hook-pre-jail = mkdir:/srv/%n/tmp
exec-as-root = /bin/true first
hook-as-root = mount:tmpfs none /tmp nosuid,nodev size=16m,mode=1777
exec-as-root = /bin/true second
exec-as-user = /bin/true as-user
hook-as-user = cd:/srv
exec-as-user-atexit = fusermount -u /app
hook-as-user-atexit = call:sync
exec-as-root-atexit = /bin/umount /srv/%n
hook-as-root-atexit = umount:/srv/%n detach
pivot_root = /srv/%n/ /srv/%n/.old_root
mountpoint_check = /app
check-mount = /data
mountpoint-check-interval = 1500ms
mountpoint-check-timeout = 3
fuse-mount-timeout = 1m
stop-timeout = 30s
unshare = net, ipc
unshare = uts,net
`
	got, err := Parse(testFile, []byte(text), fakeOptions(false, nil))
	if err != nil {
		t.Fatalf("Parse(%q) error = %q, want nil", testFile, err)
	}

	want := newConfig(testFile)
	want.Exec = &Command{
		Argv: []string{"/usr/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/srv/app root"},
		Line: 2,
		Text: `/usr/bin/busybox httpd -f -p 8080 -h "/srv/app root"`,
	}
	want.UID, want.GID, want.Chdir = "www", "www", "/srv/app"
	want.Env = []string{"HOME=/srv/app", "GREETING=hello world", "EMPTY="}
	want.Steps[PhasePreJail] = []Step{
		{Phase: PhasePreJail, Command: &Command{Argv: []string{"/bin/mkdir", "-p", "/srv/app"}, Line: 9, Text: "/bin/mkdir -p /srv/app"}},
		{Phase: PhasePreJail, Hook: &Hook{Action: "mkdir", Path: "/srv/app/tmp", Line: 10, Text: "mkdir:/srv/app/tmp"}},
	}
	want.Steps[PhaseAsRoot] = []Step{
		{Phase: PhaseAsRoot, Command: &Command{Argv: []string{"/bin/true", "first"}, Line: 11, Text: "/bin/true first"}},
		{Phase: PhaseAsRoot, Hook: &Hook{
			Action: "mount",
			Mount:  &MountSpec{FSType: "tmpfs", Source: "none", Target: "/tmp", Flags: []string{"nosuid", "nodev"}, Data: "size=16m,mode=1777"},
			Line:   12, Text: "mount:tmpfs none /tmp nosuid,nodev size=16m,mode=1777",
		}},
		{Phase: PhaseAsRoot, Command: &Command{Argv: []string{"/bin/true", "second"}, Line: 13, Text: "/bin/true second"}},
	}
	want.Steps[PhaseAsUser] = []Step{
		{Phase: PhaseAsUser, Command: &Command{Argv: []string{"/bin/true", "as-user"}, Line: 14, Text: "/bin/true as-user"}},
		{Phase: PhaseAsUser, Hook: &Hook{Action: "chdir", Path: "/srv", Line: 15, Text: "cd:/srv"}},
	}
	want.Steps[PhaseAsUserAtexit] = []Step{
		{Phase: PhaseAsUserAtexit, Command: &Command{Argv: []string{"fusermount", "-u", "/app"}, Line: 16, Text: "fusermount -u /app"}},
		{Phase: PhaseAsUserAtexit, Hook: &Hook{Action: "call", Func: "sync", Line: 17, Text: "call:sync"}},
	}
	want.Steps[PhaseAsRootAtexit] = []Step{
		{Phase: PhaseAsRootAtexit, Command: &Command{Argv: []string{"/bin/umount", "/srv/app"}, Line: 18, Text: "/bin/umount /srv/app"}},
		{Phase: PhaseAsRootAtexit, Hook: &Hook{Action: "umount", Mount: &MountSpec{Target: "/srv/app", Flags: []string{"detach"}}, Line: 19, Text: "umount:/srv/app detach"}},
	}
	want.PivotRoot = &PivotRoot{New: "/srv/app", Old: "/srv/app/.old_root", Line: 20}
	want.MountpointChecks = []Check{{Path: "/app", Line: 21}, {Path: "/data", Line: 22}}
	want.CheckInterval = 1500 * time.Millisecond
	want.CheckTimeout = 3 * time.Second
	want.FuseMountTimeout = time.Minute
	want.StopTimeout = 30 * time.Second
	want.Unshare = []string{"net", "ipc", "uts"}
	want.Options = []Option{
		{Key: "exec", Value: want.Exec.Text, Line: 2},
		{Key: "uid", Value: "www", Line: 3},
		{Key: "gid", Value: "www", Line: 4},
		{Key: "chdir", Value: "/srv/app", Line: 5},
		{Key: "env", Value: "HOME=/srv/app", Line: 6},
		{Key: "env", Value: "GREETING=hello world", Line: 7},
		{Key: "env", Value: "EMPTY=", Line: 8},
		{Key: "exec-pre-jail", Value: "/bin/mkdir -p /srv/app", Line: 9},
		{Key: "hook-pre-jail", Value: "mkdir:/srv/app/tmp", Line: 10},
		{Key: "exec-as-root", Value: "/bin/true first", Line: 11},
		{Key: "hook-as-root", Value: "mount:tmpfs none /tmp nosuid,nodev size=16m,mode=1777", Line: 12},
		{Key: "exec-as-root", Value: "/bin/true second", Line: 13},
		{Key: "exec-as-user", Value: "/bin/true as-user", Line: 14},
		{Key: "hook-as-user", Value: "cd:/srv", Line: 15},
		{Key: "exec-as-user-atexit", Value: "fusermount -u /app", Line: 16},
		{Key: "hook-as-user-atexit", Value: "call:sync", Line: 17},
		{Key: "exec-as-root-atexit", Value: "/bin/umount /srv/app", Line: 18},
		{Key: "hook-as-root-atexit", Value: "umount:/srv/app detach", Line: 19},
		{Key: "pivot-root", Value: "/srv/app/ /srv/app/.old_root", Line: 20},
		{Key: "mountpoint-check", Value: "/app", Line: 21},
		{Key: "mountpoint-check", Value: "/data", Line: 22},
		{Key: "mountpoint-check-interval", Value: "1500ms", Line: 23},
		{Key: "mountpoint-check-timeout", Value: "3", Line: 24},
		{Key: "fuse-mount-timeout", Value: "1m", Line: 25},
		{Key: "stop-timeout", Value: "30s", Line: 26},
		{Key: "unshare", Value: "net, ipc", Line: 27},
		{Key: "unshare", Value: "uts,net", Line: 28},
	}
	checkConfig(t, got, want)
}

func TestParseExecWithUWSGIOptions(t *testing.T) {
	const text = "exec = /usr/bin/uwsgi --ini /etc/app.ini\nmaster = true\nprocesses = 4\n"
	got, err := Parse(testFile, []byte(text), fakeOptions(false, nil))
	if err != nil {
		t.Fatalf("Parse(%q) error = %q, want nil", text, err)
	}
	want := newConfig(testFile)
	want.Exec = &Command{Argv: []string{"/usr/bin/uwsgi", "--ini", "/etc/app.ini"}, Line: 1, Text: "/usr/bin/uwsgi --ini /etc/app.ini"}
	want.UWSGIOptions = []Option{{Key: "master", Value: "true", Line: 2}, {Key: "processes", Value: "4", Line: 3}}
	want.Options = []Option{{Key: "exec", Value: want.Exec.Text, Line: 1}, want.UWSGIOptions[0], want.UWSGIOptions[1]}
	checkConfig(t, got, want)
}

func TestParseScalarKeysLastWins(t *testing.T) {
	const text = `exec = /bin/app
uid = first
uid = second
gid = 1
gid = 2
chdir = /a
chdir = /b
stop-timeout = 1
stop-timeout = 2
pivot-root = /a /a/old
pivot-root = /b /b/old
`
	got, err := Parse(testFile, []byte(text), fakeOptions(false, nil))
	if err != nil {
		t.Fatalf("Parse(%q) error = %q, want nil", text, err)
	}
	if got.UID != "second" {
		t.Errorf("UID = %q, want %q", got.UID, "second")
	}
	if got.GID != "2" {
		t.Errorf("GID = %q, want %q", got.GID, "2")
	}
	if got.Chdir != "/b" {
		t.Errorf("Chdir = %q, want %q", got.Chdir, "/b")
	}
	if got.StopTimeout != 2*time.Second {
		t.Errorf("StopTimeout = %v, want 2s", got.StopTimeout)
	}
	wantPivot := &PivotRoot{New: "/b", Old: "/b/old", Line: 11}
	if !reflect.DeepEqual(got.PivotRoot, wantPivot) {
		t.Errorf("PivotRoot = %+v, want %+v", got.PivotRoot, wantPivot)
	}
	if len(got.Options) != 11 {
		t.Errorf("len(Options) = %d, want 11 because repeated keys are all kept", len(got.Options))
	}
}

func TestParseDurations(t *testing.T) {
	tests := []struct {
		value string
		want  time.Duration
	}{
		{"10s", 10 * time.Second},
		{"1500ms", 1500 * time.Millisecond},
		{"2m30s", 150 * time.Second},
		{"1", time.Second},
		{"90", 90 * time.Second},
		{"007", 7 * time.Second},
		{"1h", time.Hour},
	}
	for _, test := range tests {
		t.Run(test.value, func(t *testing.T) {
			text := "exec = /bin/app\nstop-timeout = " + test.value + "\n"
			got, err := Parse(testFile, []byte(text), fakeOptions(false, nil))
			if err != nil {
				t.Fatalf("Parse(%q) error = %q, want nil", text, err)
			}
			if got.StopTimeout != test.want {
				t.Errorf("Parse(%q).StopTimeout = %v, want %v", text, got.StopTimeout, test.want)
			}
		})
	}
}

func TestParseMagicVariables(t *testing.T) {
	const text = `exec = /bin/echo %n %s %p %d %e 100%% $(HOME) [$(UNSET)] [$(EMPTY)]
uid = user001
env = COW=/cow/%(uid)=RW
`
	got, err := Parse("/srv/vassals/site.example.ini", []byte(text), fakeOptions(false, map[string]string{"HOME": "/home/app", "EMPTY": ""}))
	if err != nil {
		t.Fatalf("Parse(%q) error = %q, want nil", text, err)
	}
	wantArgv := []string{"/bin/echo", "site.example", "site.example.ini", "/srv/vassals/site.example.ini", "/srv/vassals/", "ini", "100%", "/home/app", "[]", "[]"}
	if !reflect.DeepEqual(got.Exec.Argv, wantArgv) {
		t.Errorf("Exec.Argv = %q, want %q", got.Exec.Argv, wantArgv)
	}
	wantEnv := []string{"COW=/cow/user001=RW"}
	if !reflect.DeepEqual(got.Env, wantEnv) {
		t.Errorf("Env = %q, want %q", got.Env, wantEnv)
	}
}

func TestParseOptionReference(t *testing.T) {
	tests := []struct {
		name, text string
		wantEnv    []string
	}{
		{
			name:    "most recent value wins",
			text:    "exec = /bin/app\nuid = a\nuid = b\nenv = U=%(uid)\n",
			wantEnv: []string{"U=b"},
		},
		{
			name:    "underscore and dash match",
			text:    "exec = /bin/app\nstop_timeout = 7s\nenv = T=%(stop-timeout)/%(stop_timeout)\n",
			wantEnv: []string{"T=7s/7s"},
		},
		{
			name:    "alias refers to canonical key",
			text:    "exec = /bin/app\ncheck-mount = /app\nenv = M=%(mountpoint-check) %(mount_check)\n",
			wantEnv: []string{"M=/app /app"},
		},
		{
			name:    "expanded value of the option",
			text:    "exec = /bin/app\nchdir = /srv/%n\nenv = D=%(chdir)\n",
			wantEnv: []string{"D=/srv/app"},
		},
		{
			name:    "uWSGI option",
			text:    "exec = /bin/app\nhttp-socket = :9090\nenv = S=%(http_socket)\n",
			wantEnv: []string{"S=:9090"},
		},
		{
			name:    "single pass",
			text:    "exec = /bin/app\nchdir = %%n\nenv = D=%(chdir)\n",
			wantEnv: []string{"D=%n"},
		},
		{
			name:    "env value with magic is not expanded again",
			text:    "exec = /bin/app\nenv = V=$(TRICKY)\n",
			wantEnv: []string{"V=%n $(HOME)"},
		},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			got, err := Parse(testFile, []byte(test.text), fakeOptions(false, map[string]string{"TRICKY": "%n $(HOME)", "HOME": "/root"}))
			if err != nil {
				t.Fatalf("Parse(%q) error = %q, want nil", test.text, err)
			}
			if !reflect.DeepEqual(got.Env, test.wantEnv) {
				t.Errorf("Parse(%q).Env = %q, want %q", test.text, got.Env, test.wantEnv)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	const prefix = testFile + ":"
	tests := []struct {
		name, text string
		want       string
	}{
		// Keys.
		{"unknown key with suggestion", "exec = /bin/app\nmountpont-check = /app\n",
			prefix + `2: unknown key "mountpont-check"; did you mean "mountpoint-check"?`},
		{"unknown key with underscore", "exec = /bin/app\nstop_timout = 1s\n",
			prefix + `2: unknown key "stop_timout"; did you mean "stop-timeout"?`},
		{"unknown key without suggestion", "exec = /bin/app\nxyzzy = 1\n",
			prefix + `2: unknown key "xyzzy": it is not a fief key or a uWSGI application option that fief accepts`},
		{"uWSGI chroot", "exec = /bin/app\nchroot = /srv\n",
			prefix + `2: unsupported uWSGI option "chroot": fief does not chroot; use pivot-root = NEW OLD instead`},
		{"uWSGI mount option", "exec = /bin/app\nmount_as_root = proc none /proc\n",
			prefix + `2: unsupported uWSGI option "mount_as_root": write hook-as-root = mount:FSTYPE SOURCE TARGET [FLAGS [DATA]] instead`},
		{"uWSGI phase fief lacks", "exec = /bin/app\nexec-post-jail = /bin/true\n",
			prefix + `2: unsupported uWSGI option "exec-post-jail": fief has no post-jail phase; it runs steps in the phases pre-jail, as-root, as-user, as-user-atexit and as-root-atexit`},
		{"key case matters", "EXEC = /bin/app\n",
			prefix + `1: unknown key "EXEC": it is not a fief key or a uWSGI application option that fief accepts`},

		// Magic variables.
		{"unknown magic variable", "exec = /bin/echo %x\n",
			prefix + `1: unknown magic variable "%x"; supported are %(key), %n, %s, %p, %d, %e, %% (a literal percent sign) and $(NAME)`},
		{"undefined option", "exec = /bin/echo %(uid)\n",
			prefix + `1: undefined option in "%(uid)": no earlier line sets "uid"; move the uid line above this one`},
		{"option defined later", "exec = /bin/echo %(uid)\nuid = app\n",
			prefix + `1: undefined option in "%(uid)": no earlier line sets "uid"; move the uid line above this one`},
		{"unterminated option reference", "exec = /bin/echo %(uid\n",
			prefix + `1: unterminated magic variable "%(uid": add the closing ")"`},
		{"unterminated environment variable", "exec = /bin/echo $(HOME\n",
			prefix + `1: unterminated magic variable "$(HOME": add the closing ")"`},
		{"percent at end", "exec = /bin/echo 100%\n",
			prefix + `1: incomplete magic variable "%" at the end of the value; write %% for a literal percent sign`},

		// Commands.
		{"pipe", "exec = /bin/app | logger\n",
			prefix + `1: invalid exec value "/bin/app | logger": shell syntax "|" is not run by a shell; write sh -c '...' to use a shell`},
		{"or operator", "exec-as-root = /bin/a || /bin/b\n",
			prefix + `1: invalid exec-as-root value "/bin/a || /bin/b": shell syntax "||" is not run by a shell; write sh -c '...' to use a shell`},
		{"semicolon", "exec = /bin/a; /bin/b\n",
			prefix + `1: invalid exec value "/bin/a; /bin/b": shell syntax ";" is not run by a shell; write sh -c '...' to use a shell`},
		{"and operator", "exec = /bin/a && /bin/b\n",
			prefix + `1: invalid exec value "/bin/a && /bin/b": shell syntax "&&" is not run by a shell; write sh -c '...' to use a shell`},
		{"background", "exec = /bin/a &\n",
			prefix + `1: invalid exec value "/bin/a &": shell syntax "&" is not run by a shell; write sh -c '...' to use a shell`},
		{"redirect", "exec = /bin/a >/tmp/log\n",
			prefix + `1: invalid exec value "/bin/a >/tmp/log": shell syntax ">" is not run by a shell; write sh -c '...' to use a shell`},
		{"append redirect", "exec = /bin/a 2>>/tmp/log\n",
			prefix + `1: invalid exec value "/bin/a 2>>/tmp/log": shell syntax ">>" is not run by a shell; write sh -c '...' to use a shell`},
		{"input redirect", "exec = /bin/a < /dev/null\n",
			prefix + `1: invalid exec value "/bin/a < /dev/null": shell syntax "<" is not run by a shell; write sh -c '...' to use a shell`},
		{"backtick", "exec = /bin/echo `date`\n",
			prefix + "1: invalid exec value \"/bin/echo `date`\": shell syntax \"`\" is not run by a shell; write sh -c '...' to use a shell"},
		{"shell variable", "exec = /bin/echo $HOME\n",
			prefix + `1: invalid exec value "/bin/echo $HOME": shell variable "$HOME" is not expanded because no shell runs the command; write $(NAME) for an environment variable, or write sh -c '...' to use a shell`},
		{"shell braces", "exec-as-user = /bin/echo ${HOME}\n",
			prefix + `1: invalid exec-as-user value "/bin/echo ${HOME}": shell variable "${" is not expanded because no shell runs the command; write $(NAME) for an environment variable, or write sh -c '...' to use a shell`},
		{"command substitution from environment", "exec = /bin/echo $(CMD)\n",
			prefix + `1: invalid exec value "/bin/echo $(id)": shell syntax "$(" is not run by a shell; write sh -c '...' to use a shell`},
		{"unterminated single quote", "exec = /bin/echo 'hello\n",
			prefix + `1: invalid exec value "/bin/echo 'hello": unterminated single quote: add the closing '`},
		{"unterminated double quote", "exec-pre-jail = /bin/echo \"hello\n",
			prefix + `1: invalid exec-pre-jail value "/bin/echo \"hello": unterminated double quote: add the closing "`},
		{"empty exec", "exec =\n",
			prefix + `1: invalid exec value "": empty command: name the program to run`},
		{"empty program name", "exec = /bin/app\nexec-as-user = '' arg\n",
			prefix + `2: invalid exec-as-user value "'' arg": the program name is empty: name the program to run`},
		{"comment after command", "exec = /bin/app # start the app\n",
			prefix + `1: invalid exec value "/bin/app # start the app": an unquoted "#" that starts a word would begin a comment in a shell, but fief passes it to the program; put comments on their own line, or quote the "#"`},

		// Exec presence.
		{"missing exec", "uid = app\nchdir = /srv\n",
			testFile + `: missing "exec": name the program to run, e.g. exec = /usr/bin/busybox httpd -f -p 8080`},
		{"empty file", "",
			testFile + `: missing "exec": name the program to run, e.g. exec = /usr/bin/busybox httpd -f -p 8080`},
		{"exec only in skipped block", "if-reload =\nexec = /bin/app\nendif =\n",
			testFile + `: missing "exec": name the program to run, e.g. exec = /usr/bin/busybox httpd -f -p 8080`},
		{"exec twice", "exec = /bin/a\nuid = app\nexec = /bin/b\n",
			prefix + `3: exec is set twice, on lines 1 and 3: a vassal runs one program, so remove one of them`},

		// Values.
		{"env without equals", "exec = /bin/app\nenv = FOO\n",
			prefix + `2: invalid env value "FOO": write NAME=VALUE`},
		{"env with empty name", "exec = /bin/app\nenv = =bar\n",
			prefix + `2: invalid env value "=bar": the name before "=" is empty; write NAME=VALUE`},
		{"empty uid", "exec = /bin/app\nuid =\n",
			prefix + `2: invalid uid value "": name a user or a numeric uid`},
		{"empty gid", "exec = /bin/app\ngid =\n",
			prefix + `2: invalid gid value "": name a group or a numeric gid`},
		{"empty chdir", "exec = /bin/app\nchdir =\n",
			prefix + `2: invalid chdir value "": name a directory`},
		{"bad duration", "exec = /bin/app\nstop-timeout = soon\n",
			prefix + `2: invalid stop-timeout value "soon": write a duration such as 10s or 1500ms, or a whole number of seconds`},
		{"duration without unit", "exec = /bin/app\nmountpoint-check-interval = 1.5\n",
			prefix + `2: invalid mountpoint-check-interval value "1.5": write a duration such as 10s or 1500ms, or a whole number of seconds`},
		{"negative duration", "exec = /bin/app\nmountpoint-check-timeout = -1s\n",
			prefix + `2: invalid mountpoint-check-timeout value "-1s": the duration must be greater than zero`},
		{"negative seconds", "exec = /bin/app\nstop-timeout = -5\n",
			prefix + `2: invalid stop-timeout value "-5": write a duration such as 10s or 1500ms, or a whole number of seconds`},
		{"zero interval", "exec = /bin/app\nmountpoint-check-interval = 0\n",
			prefix + `2: invalid mountpoint-check-interval value "0": the duration must be greater than zero`},
		{"zero fuse timeout", "exec = /bin/app\nfuse-mount-timeout = 0s\n",
			prefix + `2: invalid fuse-mount-timeout value "0s": the duration must be greater than zero`},
		{"huge seconds", "exec = /bin/app\nstop-timeout = 99999999999999999999\n",
			prefix + `2: invalid stop-timeout value "99999999999999999999": the number of seconds is too large; write a duration such as 10s or 1500ms, or a whole number of seconds`},
		{"bad unshare", "exec = /bin/app\nunshare = net,pid\n",
			prefix + `2: invalid unshare value "net,pid": unsupported namespace "pid"; supported namespaces are net, ipc, uts`},
		{"empty unshare", "exec = /bin/app\nunshare =\n",
			prefix + `2: invalid unshare value "": unsupported namespace ""; supported namespaces are net, ipc, uts`},
		{"pivot_root outside", "exec = /bin/app\npivot_root = /ufs /old_root\n",
			prefix + `2: invalid pivot_root value "/ufs /old_root": OLD "/old_root" must lie inside NEW "/ufs", e.g. /ufs/.old_root`},
		{"pivot_root sibling prefix", "exec = /bin/app\npivot-root = /ufs /ufs2/old\n",
			prefix + `2: invalid pivot-root value "/ufs /ufs2/old": OLD "/ufs2/old" must lie inside NEW "/ufs", e.g. /ufs/.old_root`},
		{"pivot_root same", "exec = /bin/app\npivot-root = /ufs /ufs/\n",
			prefix + `2: invalid pivot-root value "/ufs /ufs/": OLD "/ufs" must lie inside NEW "/ufs", e.g. /ufs/.old_root`},
		{"pivot_root one path", "exec = /bin/app\npivot-root = /ufs\n",
			prefix + `2: invalid pivot-root value "/ufs": write NEW OLD, two absolute paths with OLD inside NEW, e.g. /ufs /ufs/.old_root`},
		{"pivot_root three paths", "exec = /bin/app\npivot-root = /a /a/b /a/c\n",
			prefix + `2: invalid pivot-root value "/a /a/b /a/c": write NEW OLD, two absolute paths with OLD inside NEW, e.g. /ufs /ufs/.old_root`},
		{"pivot_root relative", "exec = /bin/app\npivot-root = ufs /ufs/old\n",
			prefix + `2: invalid pivot-root value "ufs /ufs/old": NEW "ufs" must be an absolute path`},
		{"pivot_root relative old", "exec = /bin/app\npivot-root = /ufs old\n",
			prefix + `2: invalid pivot-root value "/ufs old": OLD "old" must be an absolute path`},
		{"relative mountpoint-check", "exec = /bin/app\nmountpoint-check = app\n",
			prefix + `2: invalid mountpoint-check value "app": write an absolute path`},
		{"relative check-mountpoint alias", "exec = /bin/app\ncheck-mountpoint = app\n",
			prefix + `2: invalid check-mountpoint value "app": write an absolute path`},

		// Hooks.
		{"bad hook action", "exec = /bin/app\nhook-as-root = write:/etc/motd hello\n",
			prefix + `2: invalid hook-as-root value "write:/etc/motd hello": unknown hook action "write"; supported actions are exec, mount, umount, mkdir, chdir (alias cd), call, callret`},
		{"hook without action", "exec = /bin/app\nhook-as-root = /bin/true\n",
			prefix + `2: invalid hook-as-root value "/bin/true": missing action: write ACTION:ARGS, e.g. exec:/bin/true or mount:proc none /proc`},
		{"bad mount flag", "exec = /bin/app\nhook-as-root = mount:none /a /b bind,rw\n",
			prefix + `2: invalid hook-as-root value "mount:none /a /b bind,rw": unknown mount flag "rw"; supported flags are bind, rec (also recursive), ro (also rdonly, readonly), private, slave, shared, nosuid, nodev, noexec, remount, move, noatime, sync, dirsync, defaults`},
		{"bad umount flag", "exec = /bin/app\nhook-as-root = umount:/a force\n",
			prefix + `2: invalid hook-as-root value "umount:/a force": unknown umount flag "force"; supported flags are rec (also recursive), detach`},
		{"bad hook function", "exec = /bin/app\nhook-pre-jail = callret:chroot /ns\n",
			prefix + `2: invalid hook-pre-jail value "callret:chroot /ns": unknown function "chroot"; supported functions are chdir, mkdir, sync, umask`},
		{"bad umask", "exec = /bin/app\nhook-as-user = call:umask 999\n",
			prefix + `2: invalid hook-as-user value "call:umask 999": function umask: invalid mode "999": write an octal mode such as 022 or 0755`},
		{"shell syntax in exec hook", "exec = /bin/app\nhook-pre-jail = exec:mount | grep fuse\n",
			prefix + `2: invalid hook-pre-jail value "exec:mount | grep fuse": shell syntax "|" is not run by a shell; write sh -c '...' to use a shell`},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			_, err := Parse(testFile, []byte(test.text), fakeOptions(false, map[string]string{"CMD": "$(id)"}))
			if err == nil {
				t.Fatalf("Parse(%q) error = nil, want %q", test.text, test.want)
			}
			if err.Error() != test.want {
				t.Errorf("Parse(%q) error = %q, want %q", test.text, err, test.want)
			}
			var configErr *ConfigError
			if !errors.As(err, &configErr) {
				t.Errorf("Parse(%q) error type = %T, want *ConfigError", test.text, err)
			}
		})
	}
}

func TestConfigErrorFields(t *testing.T) {
	_, err := Parse(testFile, []byte("exec = /bin/app\n\nbogus line\n"), fakeOptions(false, nil))
	var configErr *ConfigError
	if !errors.As(err, &configErr) {
		t.Fatalf("Parse error = %v (%T), want *ConfigError", err, err)
	}
	if configErr.File != testFile {
		t.Errorf("ConfigError.File = %q, want %q", configErr.File, testFile)
	}
	if configErr.Line != 3 {
		t.Errorf("ConfigError.Line = %d, want 3", configErr.Line)
	}
	const wantMsg = `invalid line "bogus line": write KEY = VALUE, or start a comment with ";" or "#"`
	if configErr.Msg != wantMsg {
		t.Errorf("ConfigError.Msg = %q, want %q", configErr.Msg, wantMsg)
	}
}

func TestParseFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "site.ini")
	if err := os.WriteFile(path, []byte("exec = /bin/echo %n %d\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := ParseFile(path, fakeOptions(false, nil))
	if err != nil {
		t.Fatalf("ParseFile(%q) error = %q, want nil", path, err)
	}
	if got.File != path || got.Name != "site.ini" {
		t.Errorf("ParseFile(%q) File, Name = %q, %q, want %q, %q", path, got.File, got.Name, path, "site.ini")
	}
	wantArgv := []string{"/bin/echo", "site", dir + "/"}
	if !reflect.DeepEqual(got.Exec.Argv, wantArgv) {
		t.Errorf("ParseFile(%q) Exec.Argv = %q, want %q", path, got.Exec.Argv, wantArgv)
	}
}

func TestParseFileMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing.ini")
	_, err := ParseFile(path, ParseOptions{})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ParseFile(%q) error = %v, want one that wraps fs.ErrNotExist", path, err)
	}
	wantPrefix := "reading vassal file " + `"` + path + `": `
	if err == nil || !strings.HasPrefix(err.Error(), wantPrefix) {
		t.Errorf("ParseFile(%q) error = %v, want prefix %q", path, err, wantPrefix)
	}
}

func TestParseRelativePath(t *testing.T) {
	got, err := Parse("vassals/app.ini", []byte("exec = /bin/echo %p\n"), fakeOptions(false, nil))
	if err != nil {
		t.Fatalf("Parse error = %q, want nil", err)
	}
	workingDir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(workingDir, "vassals/app.ini")
	if got.File != want {
		t.Errorf("File = %q, want %q", got.File, want)
	}
	if got.Exec.Argv[1] != want {
		t.Errorf("%%p = %q, want %q", got.Exec.Argv[1], want)
	}
}

func TestParseDefaultOptions(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "marker")
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FIEF_PARSER_TEST", "yes")
	text := "if-exists = " + marker + "\nenv = EXISTS=1\nendif =\n" +
		"if-exists = " + filepath.Join(dir, "absent") + "\nenv = ABSENT=1\nendif =\n" +
		"if-env = FIEF_PARSER_TEST\nenv = ENV=$(FIEF_PARSER_TEST)\nendif =\n" +
		"exec = /bin/app\n"
	got, err := Parse(filepath.Join(dir, "app.ini"), []byte(text), ParseOptions{})
	if err != nil {
		t.Fatalf("Parse(%q) error = %q, want nil", text, err)
	}
	wantEnv := []string{"EXISTS=1", "ENV=yes"}
	if !reflect.DeepEqual(got.Env, wantEnv) {
		t.Errorf("Env = %q, want %q", got.Env, wantEnv)
	}
}

func TestEveryFiefKeyIsApplied(t *testing.T) {
	samples := map[string]string{
		"exec":                      "/bin/app",
		"uid":                       "app",
		"gid":                       "app",
		"chdir":                     "/srv",
		"env":                       "A=1",
		"exec-pre-jail":             "/bin/true",
		"exec-as-root":              "/bin/true",
		"exec-as-user":              "/bin/true",
		"exec-as-user-atexit":       "/bin/true",
		"exec-as-root-atexit":       "/bin/true",
		"hook-pre-jail":             "mkdir:/a",
		"hook-as-root":              "mkdir:/a",
		"hook-as-user":              "mkdir:/a",
		"hook-as-user-atexit":       "mkdir:/a",
		"hook-as-root-atexit":       "mkdir:/a",
		"pivot-root":                "/a /a/b",
		"mountpoint-check":          "/a",
		"mountpoint-check-interval": "1s",
		"mountpoint-check-timeout":  "1s",
		"fuse-mount-timeout":        "1s",
		"unshare":                   "net",
		"stop-timeout":              "1s",
	}
	for _, key := range fiefKeys {
		t.Run(key, func(t *testing.T) {
			value, ok := samples[key]
			if !ok {
				t.Fatalf("no sample value for fief key %q", key)
			}
			text := key + " = " + value + "\n"
			if key != "exec" {
				text = "exec = /bin/app\n" + text
			}
			got, err := Parse(testFile, []byte(text), fakeOptions(false, nil))
			if err != nil {
				t.Fatalf("Parse(%q) error = %q, want nil", text, err)
			}
			last := got.Options[len(got.Options)-1]
			if last.Key != key || last.Value != value {
				t.Errorf("last option = %+v, want key %q and value %q", last, key, value)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	seeds := []string{
		tutorialFuseZip,
		tutorialUnionRoot,
		tutorialFuseZipNoSection,
		"exec = /bin/echo %(uid) $(HOME) %% %n\n",
		"[other]\nfoo\n[fief]\nexec = 'a b' \"c\\\"d\" e\\ f\n",
		"if-env = X\nexec = a\nendif =\nif-exists = %dmarker\nendif =\n",
		"exec = a\nhook-as-root = mount:tmpfs none /tmp ro,nosuid size=1m\npivot_root = / /old\n",
		"exec = a\nhook-as-user = callret:umask 022\nunshare = net,ipc\nstop-timeout = 5\n",
		"exec = %(\n",
		"exec = a\n\x00\n",
		"\ufeffexec = a\r\n",
	}
	for _, seed := range seeds {
		f.Add(seed, false)
		f.Add(seed, true)
	}
	f.Fuzz(func(t *testing.T, text string, reload bool) {
		cfg, err := Parse(testFile, []byte(text), fakeOptions(reload, map[string]string{"HOME": "/root", "X": "1"}, "/etc/fief/vassals/marker"))
		if err != nil {
			var configErr *ConfigError
			if !errors.As(err, &configErr) {
				t.Fatalf("Parse(%q) error type = %T, want *ConfigError", text, err)
			}
			return
		}
		if cfg.Exec == nil && len(cfg.UWSGIOptions) == 0 {
			t.Fatalf("Parse(%q) returned a config without exec or uWSGI options", text)
		}
		for phase, steps := range cfg.Steps {
			for _, step := range steps {
				if (step.Command == nil) == (step.Hook == nil) {
					t.Fatalf("Parse(%q) step in %s sets %v command and %v hook, want exactly one", text, phase, step.Command != nil, step.Hook != nil)
				}
			}
		}
	})
}
