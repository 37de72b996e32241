package main

import (
	"archive/zip"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The app that every vassal serves from its fuse-zip mount. uWSGI loads
// app.psgi, which returns psgiBody for every request. busybox httpd returns
// index.html for "GET /".
const (
	psgiApp = `my $body = "hello from app.psgi\n";
sub { [200, ['Content-Type' => 'text/plain'], [$body]] };
`
	psgiBody  = "hello from app.psgi\n"
	indexHTML = "<!DOCTYPE html>\n<title>fief bench</title>\n<p>hello from index.html</p>\n"
)

// workspace is the benchmark's temporary directory:
//
//	app.zip                 the app, shared by every vassal
//	staging/                vassal files are written here, then renamed into a vassal directory
//	logs/SIDE.log           stdout and stderr of each emperor and its vassals
//	SIDE/emperor.ini        emperor settings
//	SIDE/vassals/NAME.ini   the vassal directory the emperor watches
//	apps/NAME/mnt           the fuse-zip mount point of vassal NAME
//
// The directory is bind-mounted on itself with private propagation, so a FUSE
// mount made under it inside a vassal's mount namespace never propagates to
// the host, even on a host whose "/" is a shared mount. The uWSGI Emperor
// does not make a vassal's mounts private itself.
type workspace struct {
	root     string
	zip      string
	staging  string
	logs     string
	bound    bool
	nextPort int
}

func newWorkspace(portBase int) (*workspace, error) {
	root, err := os.MkdirTemp("", "fief-bench-")
	if err != nil {
		return nil, fmt.Errorf("creating the temporary directory: %w", err)
	}
	// /proc/self/mountinfo and /proc/PID/cmdline show the resolved path.
	if resolved, err := filepath.EvalSymlinks(root); err == nil {
		root = resolved
	}
	w := &workspace{
		root:     root,
		zip:      filepath.Join(root, "app.zip"),
		staging:  filepath.Join(root, "staging"),
		logs:     filepath.Join(root, "logs"),
		nextPort: portBase,
	}

	if err := unix.Mount(root, root, "", unix.MS_BIND, ""); err != nil {
		os.Remove(root)
		return nil, fmt.Errorf("bind-mounting %s on itself: %w", root, err)
	}
	w.bound = true
	if err := unix.Mount("", root, "", unix.MS_PRIVATE, ""); err != nil {
		return w, fmt.Errorf("making %s a private mount: %w", root, err)
	}

	for _, dir := range []string{w.staging, w.logs, filepath.Join(root, "apps")} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			return w, err
		}
	}
	if err := writeAppZip(w.zip); err != nil {
		return w, err
	}
	return w, nil
}

func writeAppZip(path string) error {
	file, err := os.Create(path)
	if err != nil {
		return err
	}
	archive := zip.NewWriter(file)
	for _, entry := range []struct{ name, text string }{
		{"app.psgi", psgiApp},
		{"index.html", indexHTML},
	} {
		w, err := archive.CreateHeader(&zip.FileHeader{Name: entry.name, Method: zip.Deflate, Modified: time.Now()})
		if err != nil {
			file.Close()
			return err
		}
		if _, err := w.Write([]byte(entry.text)); err != nil {
			file.Close()
			return err
		}
	}
	if err := archive.Close(); err != nil {
		file.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return file.Close()
}

// allocatePort returns the next loopback TCP port at or after the last one
// that nothing listens on. Every vassal instance gets its own port, so no
// run waits for a socket of an earlier one to close.
func (w *workspace) allocatePort() (int, error) {
	for ; w.nextPort < 65536; w.nextPort++ {
		listener, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", w.nextPort))
		if err != nil {
			continue
		}
		listener.Close()
		w.nextPort++
		return w.nextPort - 1, nil
	}
	return 0, errors.New("no free loopback port left above -port-base")
}

// cleanup kills every process that still refers to the workspace, unmounts
// everything under it, checks that no mount remains and removes it. It
// returns what it had to clean up, which a clean run leaves empty.
func (w *workspace) cleanup() []string {
	var problems []string

	killed, err := killLeftovers(w.root)
	if err != nil {
		problems = append(problems, err.Error())
	}
	for _, p := range killed {
		problems = append(problems, fmt.Sprintf("process %d (%s) was still running and got SIGKILL", p.pid, p.cmdline()))
	}

	mounts, err := mountsUnder(w.root)
	if err != nil {
		return append(problems, err.Error(), "left "+w.root+" in place")
	}
	// Deepest first; the workspace's own bind mount comes last.
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, point := range mounts {
		if point == w.root {
			continue
		}
		problems = append(problems, fmt.Sprintf("mount %s was left behind; detached it", point))
		if err := unix.Unmount(point, unix.MNT_DETACH); err != nil {
			problems = append(problems, fmt.Sprintf("unmounting %s failed: %v", point, err))
		}
	}
	if w.bound {
		if err := unix.Unmount(w.root, 0); err != nil {
			problems = append(problems, fmt.Sprintf("unmounting the workspace bind mount %s failed: %v; detaching it", w.root, err))
			_ = unix.Unmount(w.root, unix.MNT_DETACH)
		}
	}

	remaining, err := mountsUnder(w.root)
	switch {
	case err != nil:
		problems = append(problems, err.Error(), "left "+w.root+" in place")
	case len(remaining) > 0:
		problems = append(problems, fmt.Sprintf("mounts remain under %s: %s; left the directory in place", w.root, strings.Join(remaining, ", ")))
	default:
		if err := os.RemoveAll(w.root); err != nil {
			problems = append(problems, fmt.Sprintf("removing %s failed: %v", w.root, err))
		}
	}
	return problems
}

// killLeftovers sends SIGKILL to every live process whose command line
// mentions root or whose working directory is inside it, and waits up to 5 s
// for them to exit.
func killLeftovers(root string) ([]proc, error) {
	table, err := scanProcs()
	if err != nil {
		return nil, err
	}
	var leftovers []proc
	for _, p := range table.byPid {
		if !p.live() || p.pid == os.Getpid() {
			continue
		}
		dir := cwd(p.pid)
		if strings.Contains(p.cmdline(), root) || dir == root || strings.HasPrefix(dir, root+"/") {
			leftovers = append(leftovers, p)
		}
	}
	for _, p := range leftovers {
		_ = unix.Kill(p.pid, unix.SIGKILL)
	}

	deadline := time.Now().Add(5 * time.Second)
	for len(leftovers) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		table, err := scanProcs()
		if err != nil {
			return leftovers, err
		}
		running := 0
		for _, p := range leftovers {
			if table.alive(p) {
				running++
			}
		}
		if running == 0 {
			return leftovers, nil
		}
	}
	if len(leftovers) > 0 {
		return leftovers, fmt.Errorf("%d leftover processes still run 5 s after SIGKILL", len(leftovers))
	}
	return nil, nil
}
