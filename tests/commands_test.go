package tests

import (
	"bytes"
	"errors"
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

func TestForegroundVassalServesAndStops(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	hostMounts := e.sampleMounts("self")
	app := e.newApp("app", "served by fief vassal\n")
	port := freePort(t)
	// The file lives outside the vassal directory: no emperor reads it.
	file := e.path("web.ini")
	if err := os.WriteFile(file, []byte(webVassal(app, port)), 0o644); err != nil {
		t.Fatalf("writing %s: %v", file, err)
	}

	vassal := e.start("vassal", fiefBinary, "vassal", file)
	took := vassal.mustServe(port, app.index)
	t.Logf("fief vassal served the app %v after it started", took.Round(time.Millisecond))
	if pids := e.fuseZipPids(); len(pids) != 1 {
		t.Errorf("expected one fuse-zip daemon under fief vassal, found %v", e.processes())
	}

	sent := time.Now()
	vassal.signal(syscall.SIGTERM)
	state := vassal.waitExit(exitTimeout)
	if state == nil {
		t.Fatalf("expected fief vassal to exit within %v of SIGTERM, it is still running\n%s", exitTimeout, vassal.tail())
	}
	t.Logf("fief vassal exited %v after SIGTERM", time.Since(sent).Round(time.Millisecond))
	if state.ExitCode() != 0 {
		t.Errorf("expected fief vassal to exit 0 after SIGTERM, found %v\n%s", state, vassal.tail())
	}
	vassal.waitLogOnce("program stopped", matchLog("program stopped"))

	if left := e.processes(); len(left) > 0 {
		t.Errorf("expected no process of the test after fief vassal exited, found:\n%s", formatProcesses(left))
	}
	if mounts := mountsInAnyNamespace(e.dir + "/"); len(mounts) > 0 {
		t.Errorf("expected no mount of the test directory in any mount namespace, found:\n%s", strings.Join(mounts, "\n"))
	}
	samples, leaks := hostMounts.finish()
	if len(leaks) > 0 {
		t.Errorf("expected the host mount table never to list the vassal's mount, found in %d samples:\n%s", samples, strings.Join(leaks, "\n"))
	}
}

func TestForegroundVassalDiesWithParent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	app := e.newApp("app", "served until fief vassal dies\n")
	port := freePort(t)
	file := e.path("web.ini")
	if err := os.WriteFile(file, []byte(webVassal(app, port)), 0o644); err != nil {
		t.Fatalf("writing %s: %v", file, err)
	}

	vassal := e.start("vassal", fiefBinary, "vassal", file)
	vassal.mustServe(port, app.index)
	if before := e.processes(vassal.pid()); len(before) < 3 {
		t.Fatalf("expected at least 3 vassal processes before the kill, found:\n%s", formatProcesses(before))
	}

	vassal.signal(syscall.SIGKILL)
	took, left := e.waitNoProcesses(time.Second)
	if len(left) > 0 {
		t.Fatalf("expected the vassal to die with fief vassal within 1s (parent-death signal), found after %v:\n%s", took, formatProcesses(left))
	}
	t.Logf("no vassal process was left %v after SIGKILL to fief vassal", took.Round(time.Millisecond))
}

func TestEmperorIniFile(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	app := e.newApp("app", "emperor from an ini file\n")
	port := freePort(t)
	e.writeVassal("web.ini", webVassal(app, port))

	ini := e.path("emperor.ini")
	content := fmt.Sprintf("[uwsgi]\nemperor = %s\nemperor-use-clone = fs,pid\n", e.vassalDir)
	if err := os.WriteFile(ini, []byte(content), 0o644); err != nil {
		t.Fatalf("writing %s: %v", ini, err)
	}

	emperor := e.start("emperor", fiefBinary, "emperor", "--ini", ini)
	started := emperor.waitLogOnce("emperor started", matchLog("emperor started"))
	if started.attr("dir") != e.vassalDir {
		t.Errorf("expected the emperor to watch %s from the ini file, found dir=%s", e.vassalDir, started.attr("dir"))
	}
	if started.attr("clone") != "fs,pid" {
		t.Errorf("expected clone=fs,pid from emperor-use-clone, found clone=%s", started.attr("clone"))
	}

	emperor.mustServe(port, app.index)
	initPid := emperor.waitVassalStarted("web.ini", 1)
	for _, kind := range []string{"mnt", "pid"} {
		if mine, vassal := namespace(os.Getpid(), kind), namespace(initPid, kind); mine == vassal {
			t.Errorf("expected the vassal init (pid %d) in a new %s namespace, found the host's %s", initPid, kind, vassal)
		}
	}
}

// runCheck runs fief check with args and returns its exit code, stdout and
// stderr.
func runCheck(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(fiefBinary, append([]string{"check"}, args...)...)
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
	t.Fatalf("running fief check %v: %v", args, err)
	return 0, "", ""
}

func TestCheckExitCodes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	app := e.newApp("app", "checked\n")
	good := e.writeVassal("good.ini", webVassal(app, freePort(t)))
	bad := e.writeVassal("bad.ini", strings.Join([]string{
		"[uwsgi]",
		"exec = busybox httpd -f -p 127.0.0.1:8080 -h " + app.mountPoint,
		"mountpont-check = " + app.mountPoint,
	}, "\n")+"\n")
	missing := e.path("missing.ini")

	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout []string
		wantStderr []string
	}{
		{
			name:       "valid file",
			args:       []string{good},
			wantCode:   0,
			wantStdout: []string{good + ": valid", "exec fuse-zip -r " + app.zip + " " + app.mountPoint, fmt.Sprintf("check: line %d: %s", webVassalCheckLine, app.mountPoint)},
		},
		{
			name:       "unknown key",
			args:       []string{bad},
			wantCode:   1,
			wantStderr: []string{bad + ":3:", `unknown key "mountpont-check"`, `did you mean "mountpoint-check"?`},
		},
		{
			name:       "directory with one bad file",
			args:       []string{e.vassalDir},
			wantCode:   1,
			wantStdout: []string{good + ": valid"},
			wantStderr: []string{bad + ":3:"},
		},
		{
			name:       "missing file",
			args:       []string{missing},
			wantCode:   1,
			wantStderr: []string{missing},
		},
		{
			name:       "no arguments",
			args:       nil,
			wantCode:   2,
			wantStderr: []string{"give at least one vassal file or directory"},
		},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			code, stdout, stderr := runCheck(t, test.args...)
			if code != test.wantCode {
				t.Errorf("expected fief check %v to exit %d, found %d\nstdout:\n%s\nstderr:\n%s", test.args, test.wantCode, code, stdout, stderr)
			}
			// The plan's columns are padded, so compare with single spaces.
			plan := strings.Join(strings.Fields(stdout), " ")
			for _, want := range test.wantStdout {
				if !strings.Contains(plan, want) {
					t.Errorf("expected stdout to contain %q, found:\n%s", want, stdout)
				}
			}
			for _, want := range test.wantStderr {
				if !strings.Contains(stderr, want) {
					t.Errorf("expected stderr to contain %q, found:\n%s", want, stderr)
				}
			}
			if len(test.wantStderr) == 0 && stderr != "" {
				t.Errorf("expected nothing on stderr, found:\n%s", stderr)
			}
			if strings.Contains(stdout, filepath.Base(bad)+": valid") {
				t.Errorf("expected the invalid file never to be reported valid, found:\n%s", stdout)
			}
		})
	}
}

func TestEmperorRejectsBadArguments(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	writeIni := func(name, content string) string {
		path := e.path(name)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatalf("writing %s: %v", path, err)
		}
		return path
	}
	unknownKey := writeIni("unknown-key.ini", fmt.Sprintf("[uwsgi]\nemperor = %s\nemperor-tyrant-mode = 1\n", e.vassalDir))
	badClone := writeIni("bad-clone.ini", fmt.Sprintf("[uwsgi]\nemperor = %s\nemperor-use-clone = fs,pid,bogus\n", e.vassalDir))
	missingDir := e.path("no-such-dir")

	tests := []struct {
		name      string
		args      []string
		wantCodes []int // any of them
		wantLog   []string
	}{
		{"no directory", nil, []int{2}, []string{"give either a vassal directory or --ini FILE"}},
		{"missing ini file", []string{"--ini", e.path("missing.ini")}, []int{2}, []string{e.path("missing.ini")}},
		{"unknown ini key", []string{"--ini", unknownKey}, []int{2}, []string{unknownKey + ":3:", `"emperor-tyrant-mode"`}},
		// An invalid namespace is a config error: exit 2, naming the line.
		{"invalid emperor-use-clone", []string{"--ini", badClone}, []int{2}, []string{badClone + ":3:", "bogus"}},
		{"invalid --use-clone", []string{"--use-clone", "fs,pid,bogus", e.vassalDir}, []int{2}, []string{"bogus"}},
		// A runtime failure or a usage error.
		{"missing directory", []string{missingDir}, []int{1, 2}, []string{missingDir}},
	}
	for i, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			p := e.forSubtest(t).start(fmt.Sprintf("emperor-%d", i), append([]string{fiefBinary, "emperor"}, test.args...)...)
			state := p.waitExit(5 * time.Second)
			if state == nil {
				t.Fatalf("expected fief emperor %v to exit at once, it is still running\n%s", test.args, p.tail())
			}
			if !slices.Contains(test.wantCodes, state.ExitCode()) {
				t.Errorf("expected fief emperor %v to exit with one of %v, found %d\n%s", test.args, test.wantCodes, state.ExitCode(), p.tail())
			}
			for _, want := range test.wantLog {
				if !strings.Contains(p.log(), want) {
					t.Errorf("expected the output to contain %q\n%s", want, p.tail())
				}
			}
		})
	}
}

func TestForegroundVassalExitCodes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	write := func(name string, lines ...string) string {
		path := e.path(name)
		if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatalf("writing %s: %v", path, err)
		}
		return path
	}
	crash := write("crash.ini", "[uwsgi]", fmt.Sprintf(`exec = busybox sh -c "exit 3" %s`, e.path("crash")))
	invalid := write("invalid.ini", "[uwsgi]", "exec = busybox true", "mountpont-check = "+e.path("app"))

	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantLog  string
	}{
		{"program fails", []string{crash}, 1, "program exited unexpectedly"},
		{"invalid file", []string{invalid}, 2, invalid + ":3:"},
		{"no file", nil, 2, "give exactly one vassal file"},
	}
	for i, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			p := e.forSubtest(t).start(fmt.Sprintf("vassal-%d", i), append([]string{fiefBinary, "vassal"}, test.args...)...)
			state := p.waitExit(exitTimeout)
			if state == nil {
				t.Fatalf("expected fief vassal %v to exit by itself, it is still running\n%s", test.args, p.tail())
			}
			if state.ExitCode() != test.wantCode {
				t.Errorf("expected fief vassal %v to exit %d, found %d\n%s", test.args, test.wantCode, state.ExitCode(), p.tail())
			}
			if !strings.Contains(p.log(), test.wantLog) {
				t.Errorf("expected the output to contain %q\n%s", test.wantLog, p.tail())
			}
		})
	}
}
