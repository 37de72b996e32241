package tests

import (
	"archive/zip"
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The VM tests boot the Debian kernel installed in /boot in QEMU, with an
// initramfs that fief mkinitramfs writes. The guest's exit status comes
// from QEMU's isa-debug-exit device: a byte N written to its port ends QEMU
// with exit code (2N+1) & 0xff.

const (
	// vmSystemCacheDir keeps the uncompressed kernels between test runs,
	// outside the repository, when the tests run as root.
	vmSystemCacheDir = "/var/cache/fief-test"
	// vmExitPort is the I/O port of the isa-debug-exit device.
	vmExitPort = "0xf4"
	// vmBootTimeout bounds one boot, from QEMU's start to its exit. A boot
	// under TCG without a workload takes about 2.5 s from the uncompressed
	// kernel (QEMU 7.2, 2-core machine).
	vmBootTimeout = 120 * time.Second
)

// vmKernel is the kernel the VM tests boot.
type vmKernel struct {
	release string // e.g. 6.1.0-57-amd64, the name of its /lib/modules directory
	image   string // the file given to -kernel: vmlinux when it boots, else vmlinuz
}

var (
	vmKernelOnce   sync.Once
	vmKernelResult vmKernel
	vmKernelErr    error
)

// requireVM fails the test when QEMU, xz or a kernel with modules is
// missing, and returns the kernel to boot. The kernel is prepared once per
// test binary.
func requireVM(t *testing.T) vmKernel {
	t.Helper()
	if buildErr != nil {
		t.Fatalf("building fief failed: %v", buildErr)
	}
	for _, program := range []string{"qemu-system-x86_64", "xz", "busybox"} {
		if _, err := exec.LookPath(program); err != nil {
			t.Fatalf("%s is required for the VM tests but not found in PATH (%v); run make deps to install qemu-system-x86, xz-utils and busybox-static", program, err)
		}
	}
	vmKernelOnce.Do(func() {
		vmKernelResult, vmKernelErr = prepareKernel(t)
	})
	if vmKernelErr != nil {
		t.Fatalf("preparing the kernel for the VM tests: %v", vmKernelErr)
	}
	return vmKernelResult
}

// prepareKernel picks the highest /boot/vmlinuz-RELEASE that has modules in
// /lib/modules/RELEASE and returns the uncompressed vmlinux for it, from
// the cache when it is there. QEMU boots an ELF vmlinux through its PVH
// entry point, skipping the decompression that costs about 2.5 s under
// TCG. Without a PVH entry the compressed image is used.
func prepareKernel(t *testing.T) (vmKernel, error) {
	images, _ := filepath.Glob("/boot/vmlinuz-*")
	var releases []string
	for _, image := range images {
		release := strings.TrimPrefix(filepath.Base(image), "vmlinuz-")
		if _, err := os.Stat(filepath.Join("/lib/modules", release, "modules.dep")); err == nil {
			releases = append(releases, release)
		}
	}
	if len(releases) == 0 {
		return vmKernel{}, fmt.Errorf("no /boot/vmlinuz-RELEASE with a /lib/modules/RELEASE/modules.dep (found %v); install linux-image-amd64", images)
	}
	sort.Slice(releases, func(i, j int) bool { return releaseLess(releases[i], releases[j]) })
	release := releases[len(releases)-1]
	compressed := filepath.Join("/boot", "vmlinuz-"+release)

	info, err := os.Stat(compressed)
	if err != nil {
		return vmKernel{}, err
	}
	cached := filepath.Join(vmCacheDir(), fmt.Sprintf("vmlinux-%s-%d-%d", release, info.Size(), info.ModTime().Unix()))
	if hasPVHEntry(cached) {
		return vmKernel{release: release, image: cached}, nil
	}

	start := time.Now()
	vmlinux, err := extractVmlinux(compressed)
	if err != nil {
		t.Logf("booting the compressed %s, which adds about 2.5 s to every boot under TCG: %v", compressed, err)
		return vmKernel{release: release, image: compressed}, nil
	}
	if err := writeCachedKernel(cached, release, vmlinux); err != nil {
		return vmKernel{}, err
	}
	if !hasPVHEntry(cached) {
		t.Logf("booting the compressed %s, which adds about 2.5 s to every boot under TCG: the vmlinux in it has no PVH entry point (CONFIG_PVH is off)", compressed)
		return vmKernel{release: release, image: compressed}, nil
	}
	t.Logf("extracted %s from %s in %v", cached, compressed, time.Since(start).Round(time.Millisecond))
	return vmKernel{release: release, image: cached}, nil
}

// releaseLess compares two kernel releases with runs of digits compared as
// numbers, so 6.1.0-9-amd64 sorts before 6.1.0-10-amd64.
func releaseLess(a, b string) bool {
	digits := regexp.MustCompile(`[0-9]+|[^0-9]+`)
	pa, pb := digits.FindAllString(a, -1), digits.FindAllString(b, -1)
	for i := 0; i < len(pa) && i < len(pb); i++ {
		na, errA := strconv.Atoi(pa[i])
		nb, errB := strconv.Atoi(pb[i])
		switch {
		case errA == nil && errB == nil && na != nb:
			return na < nb
		case (errA != nil || errB != nil) && pa[i] != pb[i]:
			return pa[i] < pb[i]
		}
	}
	return len(pa) < len(pb)
}

// vmCacheDir returns vmSystemCacheDir for root, and fief-test in the
// user's cache directory for other users.
func vmCacheDir() string {
	if os.Geteuid() == 0 {
		return vmSystemCacheDir
	}
	if dir, err := os.UserCacheDir(); err == nil {
		return filepath.Join(dir, "fief-test")
	}
	return filepath.Join(os.TempDir(), "fief-test-cache")
}

// writeCachedKernel stores vmlinux at path through a temporary file, and
// removes older cached kernels of the same release.
func writeCachedKernel(path, release string, vmlinux []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating the kernel cache: %w", err)
	}
	old, _ := filepath.Glob(filepath.Join(dir, "vmlinux-"+release+"-*"))
	for _, file := range old {
		_ = os.Remove(file)
	}
	tmp, err := os.CreateTemp(dir, ".vmlinux-*")
	if err != nil {
		return fmt.Errorf("writing the kernel cache: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(vmlinux); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing the kernel cache: %w", err)
	}
	return nil
}

// xzMagic starts every xz stream.
var xzMagic = []byte{0xFD, '7', 'z', 'X', 'Z', 0x00}

// extractVmlinux finds the xz stream in a bzImage and decompresses it, as
// the kernel's scripts/extract-vmlinux does. A candidate stream counts when
// its output is an ELF file. Kernels compressed with another method are
// not handled.
func extractVmlinux(bzImage string) ([]byte, error) {
	data, err := os.ReadFile(bzImage)
	if err != nil {
		return nil, err
	}
	for offset := 0; ; {
		i := bytes.Index(data[offset:], xzMagic)
		if i < 0 {
			return nil, fmt.Errorf("found no xz stream that decompresses to an ELF file in %s", bzImage)
		}
		offset += i
		// --single-stream stops at the end of the kernel's stream and
		// ignores the bzImage's trailing data.
		cmd := exec.Command("xz", "-dc", "--single-stream")
		cmd.Stdin = bytes.NewReader(data[offset:])
		var out, stderr bytes.Buffer
		cmd.Stdout = &out
		cmd.Stderr = &stderr
		if err := cmd.Run(); err == nil && bytes.HasPrefix(out.Bytes(), []byte("\x7fELF")) {
			return out.Bytes(), nil
		}
		offset += len(xzMagic)
	}
}

// hasPVHEntry reports whether path is an ELF kernel with the Xen note
// XEN_ELFNOTE_PHYS32_ENTRY (type 18), which QEMU needs to boot it with
// -kernel.
func hasPVHEntry(path string) bool {
	file, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer file.Close()
	for _, prog := range file.Progs {
		if prog.Type != elf.PT_NOTE {
			continue
		}
		notes := make([]byte, prog.Filesz)
		if _, err := prog.ReadAt(notes, 0); err != nil {
			continue
		}
		for len(notes) >= 12 {
			nameSize := binary.LittleEndian.Uint32(notes[0:4])
			descSize := binary.LittleEndian.Uint32(notes[4:8])
			noteType := binary.LittleEndian.Uint32(notes[8:12])
			nameEnd := 12 + align4(nameSize)
			end := nameEnd + align4(descSize)
			if end > uint32(len(notes)) {
				break
			}
			name := strings.TrimRight(string(notes[12:12+nameSize]), "\x00")
			if name == "Xen" && noteType == 18 {
				return true
			}
			notes = notes[end:]
		}
	}
	return false
}

func align4(n uint32) uint32 {
	return (n + 3) &^ 3
}

// vmAccel returns kvm when /dev/kvm opens and the kvm_intel or kvm_amd
// module is loaded, and tcg otherwise. Other KVM flavours (kvm_pvm on some
// cloud machines) are not trusted to run a nested guest.
func vmAccel() string {
	file, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return "tcg"
	}
	file.Close()
	for _, module := range []string{"kvm_intel", "kvm_amd"} {
		if _, err := os.Stat(filepath.Join("/sys/module", module)); err == nil {
			return "kvm"
		}
	}
	return "tcg"
}

// vmResult is the outcome of one boot.
type vmResult struct {
	// status is the guest's exit status decoded from QEMU's exit code, or
	// -1 when the guest wrote none (a power-off without the port, a
	// panic with panic=-1, or a QEMU failure). QEMU exits with 2N+1 in
	// 8 bits, so a status N of 128 or more arrives as N-128.
	status     int
	qemuStatus int
	timedOut   bool
	console    string // the serial console, without carriage returns and terminal escapes
	stderr     string // QEMU's own messages
	wall       time.Duration
}

// describe returns the boot's outcome and the end of its console, for
// failure messages.
func (r vmResult) describe() string {
	lines := strings.Split(strings.TrimRight(r.console, "\n"), "\n")
	if len(lines) > 60 {
		lines = lines[len(lines)-60:]
	}
	text := fmt.Sprintf("QEMU exit code %d (guest status %d), timed out: %v, %v\n--- console (last %d lines) ---\n%s\n",
		r.qemuStatus, r.status, r.timedOut, r.wall.Round(time.Millisecond), len(lines), strings.Join(lines, "\n"))
	if r.stderr != "" {
		text += "--- QEMU stderr ---\n" + r.stderr
	}
	return text
}

// hasLine reports whether a console line ends with line, blanks trimmed.
// The end is compared because the guest's first line follows SeaBIOS's
// "Booting from ROM.." without a line break when the kernel is quiet.
func (r vmResult) hasLine(line string) bool {
	for _, l := range strings.Split(r.console, "\n") {
		if strings.HasSuffix(strings.TrimSpace(l), line) {
			return true
		}
	}
	return false
}

// terminalEscapes matches the escape sequences SeaBIOS and the kernel
// write to the serial console.
var terminalEscapes = regexp.MustCompile(`\x1b(\[[0-9;?]*[A-Za-z]|[A-Za-z])`)

// bootVM boots kernel with initrd and the kernel parameters params (after
// the console and exit-port ones), waits for QEMU to exit or for timeout,
// and logs the wall time.
func bootVM(t *testing.T, kernel vmKernel, initrd string, timeout time.Duration, params ...string) vmResult {
	t.Helper()
	return bootVMWithKeys(t, kernel, initrd, timeout, nil, params...)
}

// vmKeys is a key combination that QEMU's monitor types on the guest's
// PS/2 keyboard once the console shows a line containing after.
type vmKeys struct {
	after string // console text that must appear first
	keys  string // a key name of the monitor's sendkey command, e.g. ctrl-alt-delete
}

// bootVMWithKeys is bootVM that, unless keys is nil, also opens QEMU's
// monitor on a unix socket and sends keys.keys once the console shows keys.after.
func bootVMWithKeys(t *testing.T, kernel vmKernel, initrd string, timeout time.Duration, keys *vmKeys, params ...string) vmResult {
	t.Helper()
	cmdline := append([]string{"console=ttyS0", "panic=-1", "quiet", "fief.exit-port=" + vmExitPort}, params...)
	accel := vmAccel()
	args := []string{
		"-m", "512", "-smp", "1",
		"-nographic", "-no-reboot", "-nic", "none",
		"-accel", accel,
		"-kernel", kernel.image,
		"-initrd", initrd,
		"-append", strings.Join(cmdline, " "),
		"-device", "isa-debug-exit,iobase=" + vmExitPort + ",iosize=0x04",
	}
	if accel == "kvm" {
		args = append(args, "-cpu", "host")
	}
	var console consoleWatch
	var sent sync.WaitGroup
	if keys != nil {
		monitor := filepath.Join(t.TempDir(), "monitor.sock")
		args = append(args, "-monitor", "unix:"+monitor+",server=on,wait=off")
		console.after = keys.after
		console.found = func() {
			sent.Add(1)
			go func() { defer sent.Done(); sendMonitorKeys(t, monitor, keys.keys) }()
		}
	}
	// The sender logs through t, so it must end before the test does.
	defer sent.Wait()

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	var stderr bytes.Buffer
	cmd.Stdout = &console
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second

	start := time.Now()
	err := cmd.Run()
	result := vmResult{
		status:  -1,
		wall:    time.Since(start),
		console: terminalEscapes.ReplaceAllString(strings.ReplaceAll(console.String(), "\r", ""), ""),
		stderr:  stderr.String(),
	}
	var exitErr *exec.ExitError
	switch {
	case ctx.Err() != nil:
		result.timedOut = true
		result.qemuStatus = -1
	case err == nil:
		result.qemuStatus = 0
	case errors.As(err, &exitErr):
		result.qemuStatus = exitErr.ExitCode()
		if result.qemuStatus%2 == 1 && !isQEMUFailure(result) {
			result.status = (result.qemuStatus - 1) / 2
		}
	default:
		t.Fatalf("running qemu-system-x86_64 %s: %v", strings.Join(args, " "), err)
	}
	t.Logf("VM boot (%s, %s, %s): %v, QEMU exit code %d, guest status %d",
		accel, filepath.Base(kernel.image), strings.Join(params, " "), result.wall.Round(time.Millisecond), result.qemuStatus, result.status)
	return result
}

// consoleWatch collects QEMU's console output and calls found once, from
// the writing goroutine, when the output first contains after.
type consoleWatch struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	after  string
	found  func()
	called bool
}

func (c *consoleWatch) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf.Write(p)
	if c.found != nil && !c.called && strings.Contains(c.buf.String(), c.after) {
		c.called = true
		c.found()
	}
	return len(p), nil
}

func (c *consoleWatch) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// sendMonitorKeys types keys on the guest through QEMU's human monitor at
// socket. It only logs a failure, because the guest then does not react and
// the test fails on that.
func sendMonitorKeys(t *testing.T, socket, keys string) {
	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.Logf("connecting to the QEMU monitor at %s failed: %v", socket, err)
		return
	}
	defer conn.Close()
	if _, err := fmt.Fprintf(conn, "sendkey %s\n", keys); err != nil {
		t.Logf("sending %q to the QEMU monitor failed: %v", keys, err)
		return
	}
	// The monitor prints a prompt after its greeting and another after each
	// command. Waiting for the second keeps the connection open until QEMU
	// has run the command.
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var reply []byte
	chunk := make([]byte, 4096)
	for bytes.Count(reply, []byte("(qemu)")) < 2 {
		n, err := conn.Read(chunk)
		reply = append(reply, chunk[:n]...)
		if err != nil {
			t.Logf("reading the QEMU monitor's reply to %q failed: %v (received so far: %q)", keys, err, reply)
			return
		}
	}
	t.Logf("sent %s through the QEMU monitor", keys)
}

// isQEMUFailure reports whether exit code 1 came from QEMU itself, which
// then prints an error and leaves the console empty, rather than from a
// guest that wrote 0 to the exit port.
func isQEMUFailure(r vmResult) bool {
	return r.qemuStatus == 1 && strings.TrimSpace(r.console) == "" && strings.Contains(r.stderr, "qemu-system")
}

// mkinitramfs runs fief mkinitramfs -o output with args and fails the test
// when it fails.
func mkinitramfs(t *testing.T, output string, args ...string) {
	t.Helper()
	argv := append([]string{"mkinitramfs", "-o", output}, args...)
	cmd := exec.Command(fiefBinary, argv...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("fief %s failed: %v\n%s", strings.Join(argv, " "), err, out)
	}
}

// requireFiefInit fails the test when the fief build has no init command,
// which boots a VM.
func requireFiefInit(t *testing.T) {
	t.Helper()
	out, err := exec.Command(fiefBinary, "help", "init").CombinedOutput()
	if err != nil {
		t.Fatalf("fief has no init command (fief help init: %v)\n%s", err, out)
	}
}

// writeTestFile writes content to dir/name with mode perm and returns the
// path.
func writeTestFile(t *testing.T, dir, name, content string, perm os.FileMode) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatalf("creating the directory of %s: %v", path, err)
	}
	if err := os.WriteFile(path, []byte(content), perm); err != nil {
		t.Fatalf("writing %s: %v", path, err)
	}
	if err := os.Chmod(path, perm); err != nil {
		t.Fatalf("chmod %s: %v", path, err)
	}
	return path
}

// writeZipApp writes a zip archive at path with one index.html.
func writeZipApp(t *testing.T, path, index string) {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, err := zw.Create("index.html")
	if err == nil {
		_, err = w.Write([]byte(index))
	}
	if err == nil {
		err = zw.Close()
	}
	if err == nil {
		err = os.WriteFile(path, buf.Bytes(), 0o644)
	}
	if err != nil {
		t.Fatalf("writing the zip app %s: %v", path, err)
	}
}

// busyboxPath returns the static busybox on the host.
func busyboxPath(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("busybox is required but not found in PATH (%v); run make deps to install busybox-static", err)
	}
	resolved, err := filepath.EvalSymlinks(path)
	if err != nil {
		t.Fatalf("resolving %s: %v", path, err)
	}
	return resolved
}

// exitStatusLine returns the console line fief init prints before it
// powers off.
func exitStatusLine(status int) string {
	return "fief: exit status " + strconv.Itoa(status)
}
