package tests

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Root filesystems, OCI bundles and images for the runc and Docker tests,
// assembled from the host's files.

// containerRootfs is a root filesystem that a test assembles in a directory.
type containerRootfs struct {
	t    *testing.T
	root string
}

// newContainerRootfs creates root with the directories every container
// needs.
func newContainerRootfs(t *testing.T, root string) *containerRootfs {
	t.Helper()
	r := &containerRootfs{t: t, root: root}
	for _, dir := range []string{"/bin", "/etc", "/dev", "/proc", "/sys", "/run"} {
		r.mkdir(dir, 0o755, 0, 0)
	}
	r.mkdir("/tmp", 0o1777, 0, 0)
	return r
}

// path returns the host path of name, an absolute path inside the rootfs.
func (r *containerRootfs) path(name string) string {
	return filepath.Join(r.root, name)
}

// mkdir creates the directory name with its parents, and sets its mode and
// owner.
func (r *containerRootfs) mkdir(name string, mode os.FileMode, uid, gid int) {
	r.t.Helper()
	path := r.path(name)
	if err := os.MkdirAll(path, 0o755); err != nil {
		r.t.Fatalf("creating %s: %v", path, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		r.t.Fatalf("chmod %o %s: %v", mode, path, err)
	}
	if err := os.Chown(path, uid, gid); err != nil {
		r.t.Fatalf("chown %d:%d %s: %v", uid, gid, path, err)
	}
}

// writeFile writes content to name with mode.
func (r *containerRootfs) writeFile(name, content string, mode os.FileMode) {
	r.t.Helper()
	containerWriteFile(r.t, r.path(name), content, mode)
}

// copyFile copies the host file src, following symbolic links, to name
// with mode. Mode may include the setuid bit.
func (r *containerRootfs) copyFile(src, name string, mode os.FileMode) {
	r.t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		r.t.Fatalf("reading %s: %v", src, err)
	}
	dst := r.path(name)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		r.t.Fatalf("creating %s: %v", filepath.Dir(dst), err)
	}
	if err := os.WriteFile(dst, data, 0o600); err != nil {
		r.t.Fatalf("writing %s: %v", dst, err)
	}
	// os.Chmod does not take the setuid bit from an os.FileMode's
	// permission bits, so it goes through syscall.Chmod.
	if err := syscall.Chmod(dst, containerModeBits(mode)); err != nil {
		r.t.Fatalf("chmod %o %s: %v", mode, dst, err)
	}
}

// containerModeBits converts mode to the st_mode permission bits.
func containerModeBits(mode os.FileMode) uint32 {
	bits := uint32(mode.Perm())
	if mode&os.ModeSetuid != 0 {
		bits |= syscall.S_ISUID
	}
	if mode&os.ModeSetgid != 0 {
		bits |= syscall.S_ISGID
	}
	if mode&os.ModeSticky != 0 {
		bits |= syscall.S_ISVTX
	}
	return bits
}

// copyProgram copies the dynamically linked program src to name with mode,
// and every shared library that ldd lists for it to the same path inside
// the rootfs.
func (r *containerRootfs) copyProgram(src, name string, mode os.FileMode) {
	r.t.Helper()
	r.copyFile(src, name, mode)
	out, err := exec.Command("ldd", src).CombinedOutput()
	if err != nil {
		r.t.Fatalf("ldd %s failed: %v\n%s", src, err, out)
	}
	// Lines are "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)",
	// "/lib64/ld-linux-x86-64.so.2 (0x...)" for the loader, and
	// "linux-vdso.so.1 (0x...)", which is in the kernel.
	for line := range strings.Lines(string(out)) {
		fields := strings.Fields(line)
		var library string
		switch {
		case len(fields) >= 3 && fields[1] == "=>" && strings.HasPrefix(fields[2], "/"):
			library = fields[2]
		case len(fields) >= 1 && strings.HasPrefix(fields[0], "/"):
			library = fields[0]
		case len(fields) >= 2 && fields[1] == "=>":
			r.t.Fatalf("ldd %s: library %s not found: %s", src, fields[0], strings.TrimSpace(line))
		default:
			continue
		}
		if _, err := os.Stat(r.path(library)); err == nil {
			continue
		}
		r.copyFile(library, library, 0o755)
	}
}

// symlink creates the symbolic link name pointing to target.
func (r *containerRootfs) symlink(target, name string) {
	r.t.Helper()
	if err := os.Symlink(target, r.path(name)); err != nil {
		r.t.Fatalf("creating the symbolic link %s: %v", r.path(name), err)
	}
}

// containerWebApp is what the containers serve: an index.html in a zip
// archive that fuse-zip mounts.
const containerWebApp = "served from a zip by fief in a container\n"

// containerWebVassal is the vassal of the runc and Docker tests: fuse-zip
// mounts the app as nobody and busybox httpd serves it on 127.0.0.1:PORT.
func containerWebVassal(port int) string {
	return strings.Join([]string{
		"[uwsgi]",
		"uid = nobody",
		"exec-as-user = fuse-zip -r /srv/app.zip /app",
		fmt.Sprintf("exec = busybox httpd -f -p 127.0.0.1:%d -h /app", port),
		"mountpoint-check = /app",
		"stop-timeout = 2s",
	}, "\n") + "\n"
}

// containerPasswd and containerGroup are the user database of the
// containers: root and nobody.
const (
	containerPasswd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n"
	containerGroup  = "root:x:0:\nnogroup:x:65534:\n"
)

// addBase adds fief as /fief, busybox as /bin/busybox with /bin/sh, and
// the user database.
func (r *containerRootfs) addBase(fief, busybox string) {
	r.t.Helper()
	r.copyFile(fief, "/fief", 0o755)
	r.copyFile(busybox, "/bin/busybox", 0o755)
	r.symlink("busybox", "/bin/sh")
	r.writeFile("/etc/passwd", containerPasswd, 0o644)
	r.writeFile("/etc/group", containerGroup, 0o644)
}

// addWebApp adds fuse-zip and fusermount with their libraries, the zipped
// app in /srv/app.zip, its mount point /app owned by nobody, and the web
// vassal in /vassals.
func (r *containerRootfs) addWebApp(fuseZip, fusermount string, port int) {
	r.t.Helper()
	r.copyProgram(fuseZip, "/usr/bin/fuse-zip", 0o755)
	// libfuse 2, which fuse-zip uses, runs the setuid /bin/fusermount to
	// mount when it is not root, as fuse-zip is under uid = nobody.
	r.copyProgram(fusermount, "/bin/fusermount3", 0o755|os.ModeSetuid)
	r.symlink("fusermount3", "/bin/fusermount")

	var archive bytes.Buffer
	writer := zip.NewWriter(&archive)
	index, err := writer.Create("index.html")
	if err == nil {
		_, err = io.WriteString(index, containerWebApp)
	}
	if err == nil {
		err = writer.Close()
	}
	if err != nil {
		r.t.Fatalf("creating the zip archive of the app: %v", err)
	}
	r.mkdir("/srv", 0o755, 0, 0)
	r.writeFile("/srv/app.zip", archive.String(), 0o644)
	r.mkdir("/app", 0o755, 65534, 65534)
	r.writeFile("/vassals/web.ini", containerWebVassal(port), 0o644)
}

// writeTar writes the rootfs as a tar archive to path, keeping owners,
// modes (setuid included) and symbolic links, as docker build's ADD needs.
func (r *containerRootfs) writeTar(path string) {
	r.t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		r.t.Fatalf("creating %s: %v", filepath.Dir(path), err)
	}
	file, err := os.Create(path)
	if err != nil {
		r.t.Fatalf("creating %s: %v", path, err)
	}
	defer file.Close()
	writer := tar.NewWriter(file)

	err = filepath.WalkDir(r.root, func(path string, entry fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(r.root, path)
		if err != nil || rel == "." {
			return err
		}
		info, err := entry.Info()
		if err != nil {
			return err
		}
		var link string
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		header, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		header.Name = rel
		if info.IsDir() {
			header.Name += "/"
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			header.Uid, header.Gid = int(st.Uid), int(st.Gid)
		}
		header.Uname, header.Gname = "", ""
		if err := writer.WriteHeader(header); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if _, err := writer.Write(data); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = writer.Close()
	}
	if err != nil {
		r.t.Fatalf("writing the rootfs archive %s: %v", path, err)
	}
}

// containerUniqueName returns prefix followed by random hex digits, for
// container, image and runc ids that no other test or run uses.
func containerUniqueName(t *testing.T, prefix string) string {
	t.Helper()
	random := make([]byte, 6)
	if _, err := rand.Read(random); err != nil {
		t.Fatalf("reading random bytes: %v", err)
	}
	return prefix + hex.EncodeToString(random)
}

// containerDockerCapabilities is Docker's default capability set, to which
// the tests add CAP_SYS_ADMIN for namespaces and mounts. fief needs
// CAP_SETUID and CAP_SETGID to drop to nobody and CAP_MKNOD for the vassal's
// own /dev/fuse node, since the container's node is mode 0600 as the host's.
var containerDockerCapabilities = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// containerRunc runs one runc container of a test, with runc's state in the
// test's directory so that no other runc user sees it.
type containerRunc struct {
	t      *testing.T
	runc   string
	root   string // runc --root
	bundle string
	id     string
}

// newContainerRunc creates an OCI bundle in dir/bundle whose rootfs is
// dir/bundle/rootfs, and returns its runner. Call writeSpec once the rootfs
// is in place.
func newContainerRunc(t *testing.T, runc, dir string) (*containerRunc, *containerRootfs) {
	t.Helper()
	r := &containerRunc{
		t:      t,
		runc:   runc,
		root:   filepath.Join(dir, "runc-state"),
		bundle: filepath.Join(dir, "bundle"),
		id:     containerUniqueName(t, "fief-test-"),
	}
	if err := os.MkdirAll(r.root, 0o700); err != nil {
		t.Fatalf("creating %s: %v", r.root, err)
	}
	rootfs := newContainerRootfs(t, filepath.Join(r.bundle, "rootfs"))
	// Registered after containerTempDir's cleanup, so it runs before it.
	t.Cleanup(r.remove)
	return r, rootfs
}

// command returns runc --root ROOT args.
func (r *containerRunc) command(args ...string) *exec.Cmd {
	return exec.Command(r.runc, append([]string{"--root", r.root}, args...)...)
}

// writeSpec generates config.json with runc spec and edits it: process.args
// is args, without a terminal, on a writable root, in the host's network
// namespace so that 127.0.0.1 is the host's loopback. With fuse, the
// container gets /dev/fuse, Docker's capabilities plus CAP_SYS_ADMIN, and
// may gain privileges through the setuid fusermount.
func (r *containerRunc) writeSpec(args []string, fuse bool) {
	t := r.t
	t.Helper()
	if out, err := exec.Command(r.runc, "spec", "--bundle", r.bundle).CombinedOutput(); err != nil {
		t.Fatalf("runc spec --bundle %s failed: %v\n%s", r.bundle, err, out)
	}
	path := filepath.Join(r.bundle, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	var spec map[string]any
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatalf("parsing %s: %v", path, err)
	}

	process := containerJSONObject(t, spec, "process")
	process["args"] = args
	process["terminal"] = false
	containerJSONObject(t, spec, "root")["readonly"] = false

	linux := containerJSONObject(t, spec, "linux")
	namespaces, ok := linux["namespaces"].([]any)
	if !ok {
		t.Fatalf("runc spec wrote no linux.namespaces list in %s", path)
	}
	var kept []any
	for _, ns := range namespaces {
		if entry, ok := ns.(map[string]any); !ok || entry["type"] != "network" {
			kept = append(kept, ns)
		}
	}
	linux["namespaces"] = kept

	if fuse {
		r.addFUSE(process, linux)
	}

	data, err = json.MarshalIndent(spec, "", "\t")
	if err != nil {
		t.Fatalf("encoding %s: %v", path, err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatalf("writing %s: %v", path, err)
	}
}

// addFUSE gives the container /dev/fuse with the host's device numbers and
// mode 0600, allows it in the device cgroup, and sets the capabilities.
func (r *containerRunc) addFUSE(process, linux map[string]any) {
	t := r.t
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat("/dev/fuse", &st); err != nil {
		t.Fatalf("/dev/fuse is required: %v; load the fuse kernel module", err)
	}
	major, minor := int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))

	process["noNewPrivileges"] = false
	capabilities := append(append([]string{}, containerDockerCapabilities...), "CAP_SYS_ADMIN")
	process["capabilities"] = map[string]any{
		"bounding":  capabilities,
		"effective": capabilities,
		"permitted": capabilities,
	}

	devices, _ := linux["devices"].([]any)
	linux["devices"] = append(devices, map[string]any{
		"path": "/dev/fuse", "type": "c", "major": major, "minor": minor,
		"fileMode": 0o600, "uid": 0, "gid": 0,
	})
	resources := containerJSONObject(t, linux, "resources")
	allowed, _ := resources["devices"].([]any)
	resources["devices"] = append(allowed, map[string]any{
		"allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm",
	})
}

// containerJSONObject returns the object under key, failing the test when
// there is none.
func containerJSONObject(t *testing.T, parent map[string]any, key string) map[string]any {
	t.Helper()
	object, ok := parent[key].(map[string]any)
	if !ok {
		t.Fatalf("the runc spec has no %q object", key)
	}
	return object
}

// run starts runc run in the foreground, which exits with the status of
// the container's pid 1. Its output goes to dir/runc.log.
func (r *containerRunc) run() *containerProcess {
	r.t.Helper()
	cmd := r.command("run", "--bundle", r.bundle, r.id)
	return containerStart(r.t, filepath.Join(filepath.Dir(r.bundle), "runc.log"), cmd)
}

// initPid returns the host pid of the container's pid 1 from runc state.
func (r *containerRunc) initPid() int {
	r.t.Helper()
	out, err := r.command("state", r.id).Output()
	if err != nil {
		r.t.Fatalf("runc state %s failed: %v", r.id, err)
	}
	var state struct {
		Pid    int    `json:"pid"`
		Status string `json:"status"`
	}
	if err := json.Unmarshal(out, &state); err != nil || state.Pid <= 0 {
		r.t.Fatalf("runc state %s: no pid in %q (%v)", r.id, out, err)
	}
	return state.Pid
}

// remove kills and deletes the container if it is still there.
func (r *containerRunc) remove() {
	if out, err := r.command("state", r.id).CombinedOutput(); err != nil {
		if !strings.Contains(string(out), "does not exist") {
			r.t.Logf("runc state %s: %v: %s", r.id, err, out)
		}
		return
	}
	_ = r.command("kill", r.id, "KILL").Run()
	if out, err := r.command("delete", "--force", r.id).CombinedOutput(); err != nil {
		r.t.Errorf("runc delete --force %s failed: %v\n%s", r.id, err, out)
	}
}
