package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// side is one emperor and vassal setup under test.
type side struct {
	key    string // short name, used in file and vassal names
	title  string
	fief   bool   // the emperor is fief, whose JSON log gives the program's exit time
	body   string // the expected body of "GET /"
	daemon string // the base name of the vassal's FUSE daemon, which the recovery test kills
	// vassal renders the vassal file of v.
	vassal func(cfg *config, ws *workspace, v *vassal) string
}

func sides() []*side {
	return []*side{
		{key: "uwsgi", title: "uWSGI Emperor", body: psgiBody, daemon: "fuse-zip", vassal: uwsgiVassal},
		{key: "fief-busybox", title: "fief, busybox httpd", fief: true, body: indexHTML, daemon: "fuse-zip", vassal: busyboxVassal},
		{key: "fief-uwsgi", title: "fief, uWSGI program", fief: true, body: psgiBody, daemon: "fuse-zip", vassal: uwsgiVassal},
	}
}

// uwsgiVassal is the vassal of the uWSGI FUSE tutorial, without uid and gid
// so that fuse-zip runs as root, and with the FUSE step key of -fuse-step.
// fief runs the same file with uWSGI as its program. The tutorial's key,
// exec-as-user, fails under uWSGI 2.0.21 when the vassal runs as root: the
// step runs twice per start, and the second fuse-zip exits with "mountpoint
// is not empty". exec-pre-jail runs once.
func uwsgiVassal(cfg *config, ws *workspace, v *vassal) string {
	return fmt.Sprintf(`[uwsgi]
plugin = psgi
if-not-reload =
%s = fuse-zip -r %s %s
endif =
http-socket = 127.0.0.1:%d
psgi = %s/app.psgi
mountpoint-check = %s
`, cfg.fuseStep, ws.zip, v.mnt, v.port, v.mnt, v.mnt)
}

// busyboxVassal is uwsgiVassal with busybox httpd as the program in place of
// uWSGI's plugin, http-socket and psgi lines.
func busyboxVassal(cfg *config, ws *workspace, v *vassal) string {
	return fmt.Sprintf(`[uwsgi]
if-not-reload =
%s = fuse-zip -r %s %s
endif =
exec = busybox httpd -f -p 127.0.0.1:%d -h %s
mountpoint-check = %s
`, cfg.fuseStep, ws.zip, v.mnt, v.port, v.mnt, v.mnt)
}

// vassal is one vassal file and its app directory.
type vassal struct {
	name string // file name without ".ini", unique in a benchmark run
	port int
	dir  string // WORKSPACE/apps/NAME
	mnt  string
	file string // the path in the emperor's vassal directory
	root proc   // the uWSGI vassal master or the fief vassal init, once found
	// ready is when the vassal last began to serve, after its file was
	// dropped or after a recovery.
	ready time.Time
}

// markers are the strings that only the command lines of this vassal's
// processes contain: its app directory (fuse-zip, busybox httpd) and its file
// name (the fief vassal init, the uWSGI vassal master).
func (v *vassal) markers() []string {
	return []string{v.dir + "/", "/" + v.name + ".ini", " " + v.name + ".ini"}
}

// emperor is a running emperor process.
type emperor struct {
	side    *side
	cmd     *exec.Cmd
	pid     int
	dir     string // the vassal directory
	logPath string
	done    chan error
}

// startEmperor writes the emperor ini file shared by both emperors (as in the
// uWSGI FUSE tutorial) and starts the side's emperor on it.
func startEmperor(cfg *config, ws *workspace, s *side) (*emperor, error) {
	base := filepath.Join(ws.root, s.key)
	dir := filepath.Join(base, "vassals")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	ini := filepath.Join(base, "emperor.ini")
	text := fmt.Sprintf("[uwsgi]\nemperor = %s\nemperor-use-clone = fs,pid\n", dir)
	if err := os.WriteFile(ini, []byte(text), 0o644); err != nil {
		return nil, err
	}

	argv := []string{cfg.uwsgiPath, "--ini", ini}
	ready := "*** starting uWSGI Emperor ***"
	if s.fief {
		argv = []string{cfg.fiefPath, "emperor", "--ini", ini, "--log-format", "json"}
		ready = `"msg":"emperor started"`
	}

	logPath := filepath.Join(ws.logs, s.key+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()

	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = base
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own process group keeps a Ctrl-C on the terminal away from
		// the emperor; the harness stops it during clean-up.
		Setpgid:   true,
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", strings.Join(argv, " "), err)
	}
	e := &emperor{side: s, cmd: cmd, pid: cmd.Process.Pid, dir: dir, logPath: logPath, done: make(chan error, 1)}
	go func() { e.done <- cmd.Wait() }()

	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		data, _ := os.ReadFile(logPath)
		if bytes.Contains(data, []byte(ready)) {
			return e, nil
		}
		select {
		case err := <-e.done:
			e.done <- err
			return e, fmt.Errorf("%s exited before it was ready: %v", argv[0], err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	return e, fmt.Errorf("%s did not log %q within 10 s", argv[0], ready)
}

// stop sends the emperor the signal that stops its vassals and then itself:
// SIGTERM for fief, and SIGINT for uWSGI, which documents SIGTERM as a
// reload. After timeout it sends SIGKILL and returns an error.
func (e *emperor) stop(timeout time.Duration) error {
	sig := syscall.SIGINT
	if e.side.fief {
		sig = syscall.SIGTERM
	}
	if err := e.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signalling emperor %d: %w", e.pid, err)
	}
	select {
	case <-e.done:
		return nil
	case <-time.After(timeout):
	}
	_ = e.cmd.Process.Kill()
	<-e.done
	return fmt.Errorf("emperor %d did not exit within %v of %v; sent SIGKILL", e.pid, timeout, sig)
}

// logTail returns the last lines of the emperor's log.
func (e *emperor) logTail(lines int) string {
	data, err := os.ReadFile(e.logPath)
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(all[max(0, len(all)-lines):], "\n")
}

// vassalDeaths counts the unrequested vassal deaths, each followed by a
// respawn, in the emperor's log.
func (e *emperor) vassalDeaths() (int, error) {
	data, err := os.ReadFile(e.logPath)
	if err != nil {
		return 0, err
	}
	marker := "[emperor] curse the uwsgi instance "
	if e.side.fief {
		marker = `"msg":"vassal died; respawning"`
	}
	return bytes.Count(data, []byte(marker)), nil
}

// programExitTime returns how long the program of a fief vassal took to exit
// after the vassal init's last SIGTERM, from the init's "program stopped"
// log entry.
func (e *emperor) programExitTime(v *vassal) (time.Duration, error) {
	file, err := os.Open(e.logPath)
	if err != nil {
		return 0, err
	}
	defer file.Close()

	var entry struct {
		Msg    string `json:"msg"`
		Vassal string `json:"vassal"`
		After  *int64 `json:"after"` // nanoseconds, rounded to milliseconds by fief
	}
	var after *int64
	var lastMsg string
	scanner := bufio.NewScanner(file)
	scanner.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for scanner.Scan() {
		line := scanner.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		entry.Msg, entry.Vassal, entry.After = "", "", nil
		if json.Unmarshal(line, &entry) != nil || entry.Vassal != v.name+".ini" {
			continue
		}
		switch entry.Msg {
		case "program stopped", "program killed":
			lastMsg, after = entry.Msg, entry.After
		}
	}
	if err := scanner.Err(); err != nil {
		return 0, err
	}
	switch {
	case lastMsg == "":
		return 0, fmt.Errorf("no \"program stopped\" entry for %s.ini in %s", v.name, e.logPath)
	case lastMsg == "program killed" || after == nil:
		return 0, fmt.Errorf("the program of %s.ini ignored SIGTERM and was killed", v.name)
	}
	return time.Duration(*after), nil
}
