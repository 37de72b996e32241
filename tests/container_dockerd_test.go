package tests

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// containerDockerdHostDirs are glob patterns of the directories outside its
// data and exec roots that dockerd 20.10 (Debian's docker.io 20.10.24)
// creates: its plugin socket directory, the shim socket directory of the
// containerd it starts, and the parent cgroup of its containers. Those the
// test created are removed once empty, in this order.
var containerDockerdHostDirs = []string{
	"/run/docker/plugins", "/run/docker", "/run/containerd/s", "/run/containerd",
	"/sys/fs/cgroup/*/docker", "/sys/fs/cgroup/docker",
}

// containerDockerdTimeout bounds the start and the stop of dockerd.
const containerDockerdTimeout = 30 * time.Second

// containerDockerd is a dockerd that a test started, with its own socket,
// data root, exec root and pidfile in the test's directory, no bridge and no
// iptables rules. It never touches another dockerd's socket or state.
type containerDockerd struct {
	t      *testing.T
	dir    string
	socket string
	client string
	proc   *containerProcess
	// existed records the paths matching containerDockerdHostDirs before
	// dockerd started.
	existed map[string]bool
}

// startContainerDockerd starts dockerd and waits until its API responds to
// GET /_ping. On cleanup it stops dockerd with SIGTERM and removes what it
// left.
func startContainerDockerd(t *testing.T) *containerDockerd {
	t.Helper()
	dockerd := containerRequireProgram(t, "dockerd", "docker.io")
	// The client of the same package: another docker client in PATH may
	// not speak to dockerd 20.10 or build without BuildKit.
	client := containerRequireFile(t, "/usr/bin/docker", "docker.io")
	containerRequireProgram(t, "containerd", "containerd")
	containerRequireProgram(t, "containerd-shim-runc-v2", "containerd")
	containerRequireProgram(t, "runc", "runc")

	dir := containerTempDir(t)
	d := &containerDockerd{
		t:       t,
		dir:     dir,
		socket:  filepath.Join(dir, "docker.sock"),
		client:  client,
		existed: map[string]bool{},
	}
	for _, path := range containerDockerdDirs() {
		d.existed[path] = true
	}

	// dockerd 20.10 writes its identity key to /etc/docker/key.json
	// unless the configuration names another path.
	config := filepath.Join(dir, "daemon.json")
	containerWriteFile(t, config, fmt.Sprintf(`{"deprecated-key-path": %q}`, filepath.Join(dir, "key.json")), 0o644)

	cmd := exec.Command(dockerd,
		"--config-file", config,
		"--data-root", filepath.Join(dir, "data"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "dockerd.pid"),
		"--host", "unix://"+d.socket,
		"--bridge=none", "--iptables=false", "--ip6tables=false",
		// vfs needs no mount per layer; the test image is a few megabytes.
		"--storage-driver=vfs",
		"--shutdown-timeout=5",
		"--log-level=warn",
	)
	start := time.Now()
	d.proc = containerStart(t, filepath.Join(dir, "dockerd.log"), cmd)
	// Registered after containerStart's cleanup, so it runs first.
	t.Cleanup(d.stop)

	api := &http.Client{
		Timeout: time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var dialer net.Dialer
				return dialer.DialContext(ctx, "unix", d.socket)
			},
		},
	}
	ready := containerPoll(containerDockerdTimeout, func() bool {
		if !d.proc.running() {
			return true
		}
		resp, err := api.Get("http://dockerd/_ping")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if !d.proc.running() {
		t.Fatalf("dockerd exited before its API answered\n%s", d.proc.describe())
	}
	if !ready {
		t.Fatalf("expected dockerd to answer GET /_ping on %s within %v, it did not\n%s", d.socket, containerDockerdTimeout, d.proc.describe())
	}
	t.Logf("dockerd answered /_ping %v after it started", time.Since(start).Round(time.Millisecond))
	return d
}

// docker returns the docker client command for this dockerd. The client
// keeps its configuration in the test's directory and uses the classic
// builder, which needs no BuildKit plugin.
func (d *containerDockerd) docker(args ...string) *exec.Cmd {
	cmd := exec.Command(d.client, append([]string{"--host", "unix://" + d.socket}, args...)...)
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+filepath.Join(d.dir, "client"), "DOCKER_BUILDKIT=0")
	return cmd
}

// mustDocker runs docker args and returns its trimmed stdout; it fails the
// test when docker exits non-zero.
func (d *containerDockerd) mustDocker(args ...string) string {
	d.t.Helper()
	result := containerRun(d.t, d.docker(args...))
	if result.code != 0 {
		d.t.Fatalf("docker %s failed with exit code %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), result.code, result.stdout, result.stderr)
	}
	return strings.TrimSpace(result.stdout)
}

// inspect returns docker inspect --format FORMAT NAME.
func (d *containerDockerd) inspect(name, format string) string {
	d.t.Helper()
	return d.mustDocker("inspect", "--format", format, name)
}

// stop sends SIGTERM to dockerd, which stops its containers and its
// containerd, waits for it, and removes the host directories it created.
func (d *containerDockerd) stop() {
	t := d.t
	if d.proc.running() {
		left := containerDescendants(d.proc.pid())
		if err := syscall.Kill(d.proc.pid(), syscall.SIGTERM); err != nil {
			t.Errorf("sending SIGTERM to dockerd (pid %d): %v", d.proc.pid(), err)
		}
		start := time.Now()
		if _, exited := d.proc.wait(containerDockerdTimeout); !exited {
			t.Errorf("expected dockerd to exit within %v of SIGTERM; sending SIGKILL\n%s", containerDockerdTimeout, d.proc.describe())
			containerKillTree(d.proc.pid())
			d.proc.wait(containerDockerdTimeout)
		} else {
			t.Logf("dockerd exited %v after SIGTERM", time.Since(start).Round(time.Millisecond))
		}
		for _, p := range left {
			if now, ok := containerReadProc(p.pid); ok && now.state != 'Z' && slices.Equal(now.argv, p.argv) {
				t.Errorf("expected dockerd to stop %s, it is still running; sending SIGKILL", now)
				_ = syscall.Kill(p.pid, syscall.SIGKILL)
			}
		}
	}

	for _, path := range containerDockerdDirs() {
		if !d.existed[path] {
			// Remove fails on a directory that is not empty, which
			// another user of it may have filled.
			_ = os.Remove(path)
		}
	}
}

// containerDockerdDirs returns the existing paths that match
// containerDockerdHostDirs, in the order of the patterns.
func containerDockerdDirs() []string {
	var paths []string
	for _, pattern := range containerDockerdHostDirs {
		matches, _ := filepath.Glob(pattern)
		paths = append(paths, matches...)
	}
	return paths
}

// containerDockerfile builds the image of the Docker test: the rootfs
// archive added to an empty image, with fief's emperor as the entry point.
// ADD extracts a local tar archive with its owners and setuid bits, which
// COPY of a directory does not keep.
const containerDockerfile = `FROM scratch
ADD rootfs.tar /
ENTRYPOINT ["/fief", "emperor", "/vassals"]
`
