package initd

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"fief/reaper"
)

func TestParseLdd(t *testing.T) {
	output := "\tlinux-vdso.so.1 (0x00007ffc8a5f2000)\n" +
		"\tlibfuse.so.2 => /lib/x86_64-linux-gnu/libfuse.so.2 (0x00007f0a1b2c3000)\n" +
		"\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0a1b000000)\n" +
		"\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0a1b000000)\n" +
		"\t/lib64/ld-linux-x86-64.so.2 (0x00007f0a1b400000)\n"
	got, err := parseLdd(output)
	if err != nil {
		t.Fatalf("parseLdd: %v", err)
	}
	want := []string{
		"/lib/x86_64-linux-gnu/libfuse.so.2",
		"/lib/x86_64-linux-gnu/libc.so.6",
		"/lib64/ld-linux-x86-64.so.2",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseLdd = %q, want %q", got, want)
	}
}

func TestParseLddStatic(t *testing.T) {
	got, err := parseLdd("\tstatically linked\n")
	if err != nil {
		t.Fatalf("parseLdd: %v", err)
	}
	if len(got) != 0 {
		t.Errorf("parseLdd of a static program = %q, want no paths", got)
	}
}

func TestParseLddNotFound(t *testing.T) {
	output := "\tlibzip.so.4 => not found\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n"
	_, err := parseLdd(output)
	if err == nil {
		t.Fatalf("parseLdd with a missing library succeeded, want an error")
	}
	if !strings.Contains(err.Error(), "libzip.so.4") {
		t.Errorf("parseLdd error %q does not name libzip.so.4", err)
	}
}

// writeModulesDep writes content as modules.dep in a temporary directory
// and returns the parsed entries.
func writeModulesDep(t *testing.T, content string) moduleDeps {
	t.Helper()
	file := filepath.Join(t.TempDir(), "modules.dep")
	if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	deps, err := parseModulesDep(file)
	if err != nil {
		t.Fatalf("parseModulesDep: %v", err)
	}
	return deps
}

func TestInitramfsModuleOrder(t *testing.T) {
	deps := writeModulesDep(t, ""+
		"kernel/fs/overlay.ko:\n"+
		"kernel/net/nf-nat.ko.xz: kernel/net/nf_conntrack.ko.xz kernel/lib/libcrc32c.ko.xz\n"+
		"kernel/net/nf_conntrack.ko.xz: kernel/lib/libcrc32c.ko.xz\n"+
		"kernel/lib/libcrc32c.ko.xz:\n")

	got, err := moduleLoadOrder(deps, []string{"nf_nat", "overlay", "nf_conntrack"})
	if err != nil {
		t.Fatalf("moduleLoadOrder: %v", err)
	}
	want := []string{"libcrc32c", "nf_conntrack", "nf_nat", "overlay"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("moduleLoadOrder = %q, want %q", got, want)
	}
}

func TestInitramfsModuleOrderCycle(t *testing.T) {
	deps := writeModulesDep(t, "a.ko: b.ko\nb.ko: a.ko\n")
	_, err := moduleLoadOrder(deps, []string{"a"})
	if err == nil || !strings.Contains(err.Error(), "a -> b -> a") {
		t.Errorf("moduleLoadOrder of a cycle: err = %v, want one that shows a -> b -> a", err)
	}
}

func TestInitramfsModuleOrderMissingDependency(t *testing.T) {
	deps := writeModulesDep(t, "a.ko: gone.ko\n")
	_, err := moduleLoadOrder(deps, []string{"a"})
	if err == nil || !strings.Contains(err.Error(), "gone") {
		t.Errorf("moduleLoadOrder with a dependency without a line: err = %v, want one that names gone", err)
	}
}

func TestVersionLess(t *testing.T) {
	ordered := []string{"5.10.0-28-amd64", "6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-10-cloud-amd64", "6.12.0-1-amd64"}
	for i := 0; i+1 < len(ordered); i++ {
		if !versionLess(ordered[i], ordered[i+1]) {
			t.Errorf("versionLess(%q, %q) = false, want true", ordered[i], ordered[i+1])
		}
		if versionLess(ordered[i+1], ordered[i]) {
			t.Errorf("versionLess(%q, %q) = true, want false", ordered[i+1], ordered[i])
		}
	}
}

// newcEntry is one record read back from a newc archive.
type newcEntry struct {
	name                 string
	ino, mode, uid, gid  uint32
	nlink, mtime         uint32
	rdevMajor, rdevMinor uint32
	data                 []byte
}

// readNewc parses a newc archive up to its trailer, checking the magic and
// the 4-byte alignment of every name and data section.
func readNewc(t *testing.T, archive []byte) []newcEntry {
	t.Helper()
	var entries []newcEntry
	offset := 0
	align := func() { offset = (offset + 3) &^ 3 }
	for {
		if offset+110 > len(archive) {
			t.Fatalf("archive ends at %d inside a header; no trailer", offset)
		}
		header := archive[offset : offset+110]
		if string(header[:6]) != "070701" {
			t.Fatalf("bad magic %q at offset %d", header[:6], offset)
		}
		field := func(i int) uint32 {
			value, err := strconv.ParseUint(string(header[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("bad header field %d at offset %d: %v", i, offset, err)
			}
			return uint32(value)
		}
		e := newcEntry{
			ino: field(0), mode: field(1), uid: field(2), gid: field(3), nlink: field(4), mtime: field(5),
			rdevMajor: field(9), rdevMinor: field(10),
		}
		size, nameSize := int(field(6)), int(field(11))
		offset += 110
		name := archive[offset : offset+nameSize]
		if name[len(name)-1] != 0 {
			t.Fatalf("name at offset %d is not NUL-terminated", offset)
		}
		e.name = string(name[:len(name)-1])
		offset += nameSize
		align()
		e.data = archive[offset : offset+size]
		offset += size
		align()
		if e.name == newcTrailer {
			if offset != len(archive) {
				t.Errorf("%d bytes follow the trailer", len(archive)-offset)
			}
			return entries
		}
		entries = append(entries, e)
	}
}

// testSpec returns a spec whose /init is a small file and whose modules
// come from a fake /lib/modules in a temporary directory.
func testSpec(t *testing.T) initramfsSpec {
	t.Helper()
	dir := t.TempDir()
	initFile := filepath.Join(dir, "fake-init")
	if err := os.WriteFile(initFile, []byte("#!/bin/sh\necho init\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	return initramfsSpec{
		initSource:  initFile,
		modulesRoot: filepath.Join(dir, "modules"),
		notices:     io.Discard,
	}
}

// writeFakeModules creates RELEASE/modules.dep with fuse.ko.xz (compressed
// with the xz command), which needs the plain helper.ko, and the
// modules.builtin that lists ext4.
func writeFakeModules(t *testing.T, root, release string) {
	t.Helper()
	if _, err := exec.LookPath("xz"); err != nil {
		t.Fatalf("the xz command is required to compress the test module: %v; install xz-utils", err)
	}
	dir := filepath.Join(root, release)
	for _, sub := range []string{"kernel/fs/fuse", "kernel/lib"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("kernel/fs/fuse/fuse.ko", "fuse module bytes")
	// Through the process's reaper: mkinitramfs runs its commands through
	// it, and a second waiter on the same children would lose statuses.
	_, stderr, status, err := reaper.Shared().Output(exec.Command("xz", filepath.Join(dir, "kernel/fs/fuse/fuse.ko")))
	if err != nil || !status.Success() {
		t.Fatalf("xz fuse.ko: %v %s\n%s", err, status, stderr)
	}
	write("kernel/lib/helper.ko", "helper module bytes")
	write("modules.dep", "kernel/fs/fuse/fuse.ko.xz: kernel/lib/helper.ko\nkernel/lib/helper.ko:\nkernel/fs/other.ko:\n")
	write("modules.builtin", "kernel/fs/ext4/ext4.ko\n")
}

func entriesByName(entries []newcEntry) map[string]newcEntry {
	byName := make(map[string]newcEntry)
	for _, e := range entries {
		byName[e.name] = e
	}
	return byName
}

func buildArchive(t *testing.T, spec initramfsSpec) []byte {
	t.Helper()
	records, err := buildInitramfs(spec)
	if err != nil {
		t.Fatalf("buildInitramfs: %v", err)
	}
	var buf bytes.Buffer
	size, err := writeNewc(&buf, records)
	if err != nil {
		t.Fatalf("writeNewc: %v", err)
	}
	if size != int64(buf.Len()) {
		t.Errorf("writeNewc returned size %d, wrote %d bytes", size, buf.Len())
	}
	return buf.Bytes()
}

func TestInitramfsSkeleton(t *testing.T) {
	spec := testSpec(t)
	entries := readNewc(t, buildArchive(t, spec))
	byName := entriesByName(entries)

	want := []struct {
		name         string
		mode         uint32
		major, minor uint32
	}{
		{"dev", modeDir | 0o755, 0, 0},
		{"dev/console", modeCharDev | 0o600, 5, 1},
		{"dev/null", modeCharDev | 0o666, 1, 3},
		{"etc", modeDir | 0o755, 0, 0},
		{"etc/fief", modeDir | 0o755, 0, 0},
		{"etc/fief/vassals", modeDir | 0o755, 0, 0},
		{"init", modeRegular | 0o755, 0, 0},
		{"proc", modeDir | 0o755, 0, 0},
		{"run", modeDir | 0o755, 0, 0},
		{"sys", modeDir | 0o755, 0, 0},
		{"tmp", modeDir | 0o1777, 0, 0},
	}
	for _, w := range want {
		e, ok := byName[w.name]
		if !ok {
			t.Errorf("the archive has no %s", w.name)
			continue
		}
		if e.mode != w.mode {
			t.Errorf("%s: mode %o, want %o", w.name, e.mode, w.mode)
		}
		if e.rdevMajor != w.major || e.rdevMinor != w.minor {
			t.Errorf("%s: device %d:%d, want %d:%d", w.name, e.rdevMajor, e.rdevMinor, w.major, w.minor)
		}
	}
	if len(entries) != len(want) {
		t.Errorf("the archive has %d entries, want %d: %v", len(entries), len(want), names(entries))
	}
	if string(byName["init"].data) != "#!/bin/sh\necho init\n" {
		t.Errorf("init holds %q, want the content of the init source", byName["init"].data)
	}
}

func names(entries []newcEntry) []string {
	var list []string
	for _, e := range entries {
		list = append(list, e.name)
	}
	return list
}

func TestInitramfsRecordFields(t *testing.T) {
	spec := testSpec(t)
	entries := readNewc(t, buildArchive(t, spec))
	seenIno := make(map[uint32]bool)
	for i, e := range entries {
		if e.name == "." || e.name == "" || strings.HasPrefix(e.name, "/") {
			t.Errorf("entry %d has the name %q; want a relative path below the root and no root entry", i, e.name)
		}
		if e.uid != 0 || e.gid != 0 || e.mtime != 0 {
			t.Errorf("%s: uid %d, gid %d, mtime %d; want all 0", e.name, e.uid, e.gid, e.mtime)
		}
		if seenIno[e.ino] || e.ino == 0 {
			t.Errorf("%s: inode %d is 0 or used twice", e.name, e.ino)
		}
		seenIno[e.ino] = true
		if i > 0 && entries[i-1].name >= e.name {
			t.Errorf("entries are not sorted: %s comes before %s", entries[i-1].name, e.name)
		}
	}
}

func TestInitramfsModules(t *testing.T) {
	spec := testSpec(t)
	writeFakeModules(t, spec.modulesRoot, "6.1.0-test")
	spec.kernelVersion = "6.1.0-test"
	spec.modules = []string{"fuse", "ext4"}
	var notices bytes.Buffer
	spec.notices = &notices

	byName := entriesByName(readNewc(t, buildArchive(t, spec)))
	base := "lib/modules/6.1.0-test/"
	if got := string(byName[base+"kernel/fs/fuse/fuse.ko"].data); got != "fuse module bytes" {
		t.Errorf("fuse.ko holds %q, want the decompressed module", got)
	}
	if got := string(byName[base+"kernel/lib/helper.ko"].data); got != "helper module bytes" {
		t.Errorf("helper.ko holds %q, want the module", got)
	}
	if _, ok := byName[base+"kernel/fs/fuse/fuse.ko.xz"]; ok {
		t.Errorf("the archive has the compressed fuse.ko.xz")
	}
	if _, ok := byName[base+"kernel/fs/other.ko"]; ok {
		t.Errorf("the archive has other.ko, which no requested module needs")
	}
	wantDep := "kernel/lib/helper.ko:\nkernel/fs/fuse/fuse.ko: kernel/lib/helper.ko\n"
	if got := string(byName[base+"modules.dep"].data); got != wantDep {
		t.Errorf("modules.dep = %q, want %q", got, wantDep)
	}
	if !strings.Contains(notices.String(), "--module ext4: built into kernel 6.1.0-test") {
		t.Errorf("expected a notice that ext4 is built in, found %q", notices.String())
	}
}

func TestInitramfsModuleNotFound(t *testing.T) {
	spec := testSpec(t)
	writeFakeModules(t, spec.modulesRoot, "6.1.0-test")
	spec.kernelVersion = "6.1.0-test"
	spec.modules = []string{"nosuchmodule"}

	_, err := buildInitramfs(spec)
	if err == nil {
		t.Fatalf("buildInitramfs with an unknown module succeeded, want an error")
	}
	want := fmt.Sprintf("--module nosuchmodule: not found in %s/6.1.0-test/modules.dep", spec.modulesRoot)
	if !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %q does not start with %q", err, want)
	}
}

func TestInitramfsModuleBadCompression(t *testing.T) {
	spec := testSpec(t)
	writeFakeModules(t, spec.modulesRoot, "6.1.0-test")
	broken := filepath.Join(spec.modulesRoot, "6.1.0-test", "kernel/fs/fuse/fuse.ko.xz")
	if err := os.WriteFile(broken, []byte("not xz data"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec.kernelVersion = "6.1.0-test"
	spec.modules = []string{"fuse"}

	_, err := buildInitramfs(spec)
	if err == nil || !strings.Contains(err.Error(), "decompressing "+broken+" with xz -dc failed") {
		t.Errorf("buildInitramfs with a corrupt module: err = %v, want a decompression error that names the file", err)
	}
}

func TestInitramfsDefaultKernelVersion(t *testing.T) {
	spec := testSpec(t)
	writeFakeModules(t, spec.modulesRoot, "6.1.0-9-amd64")
	writeFakeModules(t, spec.modulesRoot, "6.1.0-10-amd64")
	spec.modules = []string{"fuse"}

	byName := entriesByName(readNewc(t, buildArchive(t, spec)))
	if _, ok := byName["lib/modules/6.1.0-10-amd64/modules.dep"]; !ok {
		t.Errorf("expected the modules of the highest release 6.1.0-10-amd64, found %v", names(readNewc(t, buildArchive(t, spec))))
	}
}

func TestInitramfsAddTreeAndFile(t *testing.T) {
	spec := testSpec(t)
	tree := filepath.Join(t.TempDir(), "www")
	if err := os.MkdirAll(filepath.Join(tree, "sub"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "sub", "page.html"), []byte("page"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub/page.html", filepath.Join(tree, "index.html")); err != nil {
		t.Fatal(err)
	}
	spec.adds = []string{tree + ":/srv/www", filepath.Join(tree, "sub", "page.html") + ":/page.html"}

	byName := entriesByName(readNewc(t, buildArchive(t, spec)))
	checks := []struct {
		name string
		mode uint32
		data string
	}{
		{"srv", modeDir | 0o755, ""},
		{"srv/www", modeDir | 0o750, ""},
		{"srv/www/sub", modeDir | 0o750, ""},
		{"srv/www/sub/page.html", modeRegular | 0o640, "page"},
		{"srv/www/index.html", modeSymlink | 0o777, "sub/page.html"},
		{"page.html", modeRegular | 0o640, "page"},
	}
	for _, c := range checks {
		e, ok := byName[c.name]
		if !ok {
			t.Errorf("the archive has no %s", c.name)
			continue
		}
		if e.mode != c.mode || string(e.data) != c.data {
			t.Errorf("%s: mode %o with %q, want mode %o with %q", c.name, e.mode, e.data, c.mode, c.data)
		}
	}
}

func TestInitramfsAddProgramWithLibraries(t *testing.T) {
	program, err := exec.LookPath("sh")
	if err != nil {
		t.Fatalf("sh is not in PATH: %v", err)
	}
	libraries, err := sharedLibraries(program)
	if err != nil {
		t.Fatalf("sharedLibraries(%s): %v", program, err)
	}
	if len(libraries) == 0 {
		t.Fatalf("ldd lists no libraries for %s; the test needs a dynamically linked sh", program)
	}
	spec := testSpec(t)
	spec.adds = []string{program + ":/bin/sh"}

	byName := entriesByName(readNewc(t, buildArchive(t, spec)))
	if e, ok := byName["bin/sh"]; !ok || e.mode&modeType != modeRegular {
		t.Errorf("the archive has no regular file bin/sh")
	}
	hasLoader := false
	for _, library := range libraries {
		e, ok := byName[strings.TrimPrefix(library, "/")]
		if !ok {
			t.Errorf("the archive has no %s, which ldd lists for %s", library, program)
			continue
		}
		if e.mode&modeType != modeRegular {
			t.Errorf("%s: mode %o, want a regular file with the symlink resolved", library, e.mode)
		}
		hostData, err := os.ReadFile(library)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(e.data, hostData) {
			t.Errorf("%s in the archive differs from the host file", library)
		}
		if strings.Contains(library, "ld-linux") {
			hasLoader = true
		}
	}
	if !hasLoader {
		t.Errorf("ldd listed no dynamic loader (ld-linux) for %s: %q", program, libraries)
	}
}

func TestInitramfsDeterministic(t *testing.T) {
	spec := testSpec(t)
	writeFakeModules(t, spec.modulesRoot, "6.1.0-test")
	spec.kernelVersion = "6.1.0-test"
	spec.modules = []string{"fuse"}
	tree := t.TempDir()
	for _, name := range []string{"b.txt", "a.txt", "c/d.txt"} {
		path := filepath.Join(tree, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	spec.adds = []string{tree + ":/data"}

	first := buildArchive(t, spec)
	// A new modification time must not change the archive.
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(filepath.Join(tree, "a.txt"), later, later); err != nil {
		t.Fatal(err)
	}
	second := buildArchive(t, spec)
	if !bytes.Equal(first, second) {
		t.Errorf("two builds from the same inputs differ (%d and %d bytes)", len(first), len(second))
	}
}

func TestInitramfsConflictingAdds(t *testing.T) {
	spec := testSpec(t)
	dir := t.TempDir()
	first := filepath.Join(dir, "first.conf")
	second := filepath.Join(dir, "second.conf")
	for _, file := range []string{first, second} {
		if err := os.WriteFile(file, []byte(file), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	spec.adds = []string{first + ":/etc/app.conf", second + ":/etc/app.conf"}
	_, err := buildInitramfs(spec)
	if err == nil || !strings.Contains(err.Error(), "/etc/app.conf is added twice") {
		t.Errorf("two files for one path: err = %v, want one that names /etc/app.conf", err)
	}
}

func TestInitramfsFileAsParent(t *testing.T) {
	spec := testSpec(t)
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec.adds = []string{file + ":/opt", file + ":/opt/inner"}
	_, err := buildInitramfs(spec)
	if err == nil || !strings.Contains(err.Error(), "needs it as a directory") {
		t.Errorf("a file as a parent directory: err = %v, want a directory conflict", err)
	}
}

func TestMkInitramfsCommand(t *testing.T) {
	dir := t.TempDir()
	vassalFile := filepath.Join(dir, "app.ini")
	if err := os.WriteFile(vassalFile, []byte("[uwsgi]\nexec = true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	initFile := filepath.Join(dir, "init")
	if err := os.WriteFile(initFile, []byte("init"), 0o755); err != nil {
		t.Fatal(err)
	}

	output := filepath.Join(dir, "initrd.cpio")
	var stdout, stderr bytes.Buffer
	code := MkInitramfs([]string{"-o", output, "--init", initFile, "--vassal", vassalFile}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("MkInitramfs exit code %d, want 0; stderr: %s", code, stderr.String())
	}
	if !strings.HasPrefix(stdout.String(), "wrote "+output+": ") {
		t.Errorf("stdout = %q, want a line that starts with %q", stdout.String(), "wrote "+output+": ")
	}

	data, err := os.ReadFile(output)
	if err != nil {
		t.Fatal(err)
	}
	byName := entriesByName(readNewc(t, data))
	if got := string(byName["etc/fief/vassals/app.ini"].data); got != "[uwsgi]\nexec = true\n" {
		t.Errorf("etc/fief/vassals/app.ini holds %q, want the vassal file", got)
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, ".initrd.cpio.tmp-*"))
	if len(leftovers) > 0 {
		t.Errorf("temporary files left beside the output: %v", leftovers)
	}
}

func TestMkInitramfsUsageErrors(t *testing.T) {
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"missing output", []string{}, 2, "give the output file with -o"},
		{"positional argument", []string{"-o", "x.cpio", "extra"}, 2, "give the output file with -o"},
		{"missing add source", []string{"-o", filepath.Join(t.TempDir(), "x.cpio"), "--add", "/nonexistent/prog"}, 1, "--add /nonexistent/prog: stat /nonexistent/prog: no such file or directory"},
		{"empty add dest", []string{"-o", filepath.Join(t.TempDir(), "x.cpio"), "--add", "/bin/sh:"}, 1, `invalid --add "/bin/sh:"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := MkInitramfs(c.args, &stdout, &stderr)
			if code != c.code {
				t.Errorf("exit code %d, want %d; stderr: %s", code, c.code, stderr.String())
			}
			if !strings.Contains(stderr.String(), c.want) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), c.want)
			}
		})
	}
}
