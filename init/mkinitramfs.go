package initd

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"fief/reaper"
)

// MkInitramfs is `fief mkinitramfs`: it writes a newc cpio archive with fief
// as /init, the programs, files, kernel modules and vassal files named by
// the flags, and the directories and device nodes that fief init needs. It
// returns the exit code: 0 on success, 1 when building the archive fails, 2
// for a usage error.
func MkInitramfs(args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("fief mkinitramfs", flag.ContinueOnError)
	flags.SetOutput(stderr)
	spec := initramfsSpec{initSource: "/proc/self/exe", modulesRoot: "/lib/modules", notices: stderr}
	output := flags.String("o", "", "write the archive to this `file`; - for stdout (required)")
	flags.StringVar(&spec.initSource, "init", spec.initSource, "program `file` stored as /init")
	flags.StringVar(&spec.kernelVersion, "kernel-version", "", "kernel `release` whose modules to add (default: uname -r when /lib/modules has it, else the newest release there)")
	flags.Var((*stringList)(&spec.modules), "module", "add the kernel module `name` and its dependencies from /lib/modules/RELEASE; repeatable")
	flags.Var((*stringList)(&spec.adds), "add", "add `SRC[:DEST]`: a program with the shared libraries ldd lists, or a file or directory; DEST defaults to SRC's absolute path; repeatable")
	flags.Var((*stringList)(&spec.vassals), "vassal", "add the vassal `file` to /etc/fief/vassals; repeatable")
	flags.Usage = func() {
		fmt.Fprintf(flags.Output(), "Usage: fief mkinitramfs -o FILE [--kernel-version V] [--module NAME]... [--add SRC[:DEST]]... [--vassal FILE]...\n\n"+
			"Write an initramfs (newc cpio, uncompressed) with fief as /init.\n\nFlags:\n")
		flags.PrintDefaults()
	}
	err := flags.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case err != nil:
		return 2
	}
	if *output == "" || flags.NArg() > 0 {
		fmt.Fprintf(stderr, "fief mkinitramfs: give the output file with -o and no positional arguments\n")
		flags.Usage()
		return 2
	}

	records, err := buildInitramfs(spec)
	if err != nil {
		fmt.Fprintf(stderr, "fief mkinitramfs: %v\n", err)
		return 1
	}
	size, err := writeArchiveFile(*output, records, stdout)
	if err != nil {
		fmt.Fprintf(stderr, "fief mkinitramfs: %v\n", err)
		return 1
	}
	if *output != "-" {
		fmt.Fprintf(stdout, "wrote %s: %d entries, %d bytes\n", *output, len(records), size)
	}
	return 0
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(value string) error {
	*l = append(*l, value)
	return nil
}

// initramfsSpec is the content of an archive beyond the fixed skeleton of
// directories and device nodes.
type initramfsSpec struct {
	initSource    string // host file stored as /init
	kernelVersion string // empty: choose one in modulesRoot
	modulesRoot   string // normally /lib/modules
	modules       []string
	adds          []string // SRC[:DEST]
	vassals       []string
	notices       io.Writer // receives warnings that do not stop the build
}

// File type bits of st_mode, as stored in a newc header.
const (
	modeDir     = unix.S_IFDIR
	modeRegular = unix.S_IFREG
	modeSymlink = unix.S_IFLNK
	modeCharDev = unix.S_IFCHR
	modeType    = unix.S_IFMT
)

// cpioRecord is one archive entry. A regular file's content comes from data
// or, when data is nil, from the host file source, read at write time.
type cpioRecord struct {
	name      string // path in the archive, without a leading slash
	mode      uint32 // st_mode: type and permission bits
	rdevMajor uint32
	rdevMinor uint32
	data      []byte // file content or symlink target
	source    string // host file with the content of a regular file
}

// archive collects records by name and rejects two different ones for the
// same path.
type archive struct {
	records map[string]*cpioRecord
}

func newArchive() *archive {
	return &archive{records: make(map[string]*cpioRecord)}
}

// archiveName turns an absolute or relative path into a record name: clean,
// without a leading slash. It rejects the root itself.
func archiveName(p string) (string, error) {
	name := strings.TrimPrefix(path.Clean("/"+p), "/")
	if name == "" {
		return "", fmt.Errorf("invalid archive path %q: it names the root directory", p)
	}
	return name, nil
}

func (a *archive) add(r *cpioRecord) error {
	old, ok := a.records[r.name]
	if !ok {
		a.records[r.name] = r
		return nil
	}
	switch {
	case old.mode&modeType == modeDir && r.mode&modeType == modeDir:
		return nil // the first mode given wins
	case old.mode == r.mode && old.source == r.source && bytes.Equal(old.data, r.data) && old.rdevMajor == r.rdevMajor && old.rdevMinor == r.rdevMinor:
		return nil // the same file, e.g. a library two programs need
	}
	return fmt.Errorf("/%s is added twice with different content (%s and %s); give one of them another DEST", r.name, old.describe(), r.describe())
}

func (r *cpioRecord) describe() string {
	switch r.mode & modeType {
	case modeDir:
		return "a directory"
	case modeSymlink:
		return fmt.Sprintf("a symlink to %q", r.data)
	case modeCharDev:
		return fmt.Sprintf("a device %d:%d", r.rdevMajor, r.rdevMinor)
	}
	if r.source != "" {
		return "the file " + r.source
	}
	return "generated content"
}

func (a *archive) addDir(name string, perm uint32) error {
	return a.add(&cpioRecord{name: name, mode: modeDir | perm})
}

// addParents adds every missing parent directory of every record with mode
// 0755, and checks that no parent is something else than a directory. The
// root itself gets no record, so its mode stays the kernel's.
func (a *archive) addParents() error {
	names := make([]string, 0, len(a.records))
	for name := range a.records {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
			parent, ok := a.records[dir]
			if !ok {
				a.records[dir] = &cpioRecord{name: dir, mode: modeDir | 0o755}
				continue
			}
			if parent.mode&modeType != modeDir {
				return fmt.Errorf("/%s is %s, but /%s needs it as a directory", dir, parent.describe(), name)
			}
		}
	}
	return nil
}

// sorted returns the records by name, which puts each directory before
// its contents because a parent's name is a prefix of its children's.
func (a *archive) sorted() []*cpioRecord {
	list := make([]*cpioRecord, 0, len(a.records))
	for _, r := range a.records {
		list = append(list, r)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].name < list[j].name })
	return list
}

// buildInitramfs collects the records of the archive that spec describes,
// sorted by name.
func buildInitramfs(spec initramfsSpec) ([]*cpioRecord, error) {
	a := newArchive()
	for _, dir := range []string{"dev", "proc", "sys", "run", "etc/fief/vassals"} {
		if err := a.addDir(dir, 0o755); err != nil {
			return nil, err
		}
	}
	if err := a.addDir("tmp", 0o1777); err != nil {
		return nil, err
	}
	// The kernel opens /dev/console for init's stdin, stdout and stderr
	// before devtmpfs is mounted, so the node must be in the archive.
	devices := []*cpioRecord{
		{name: "dev/console", mode: modeCharDev | 0o600, rdevMajor: 5, rdevMinor: 1},
		{name: "dev/null", mode: modeCharDev | 0o666, rdevMajor: 1, rdevMinor: 3},
	}
	for _, device := range devices {
		if err := a.add(device); err != nil {
			return nil, err
		}
	}

	if err := addInit(a, spec.initSource); err != nil {
		return nil, err
	}
	for _, add := range spec.adds {
		if err := addSource(a, add); err != nil {
			return nil, err
		}
	}
	if len(spec.modules) > 0 || spec.kernelVersion != "" {
		if err := addModules(a, spec); err != nil {
			return nil, err
		}
	}
	for _, vassalFile := range spec.vassals {
		if err := addVassal(a, vassalFile, spec.notices); err != nil {
			return nil, err
		}
	}

	if err := a.addParents(); err != nil {
		return nil, err
	}
	return a.sorted(), nil
}

func addInit(a *archive, source string) error {
	info, err := os.Stat(source)
	if err != nil {
		return fmt.Errorf("reading the program for /init: %w", err)
	}
	if !info.Mode().IsRegular() {
		return fmt.Errorf("the program for /init, %s, is not a regular file", source)
	}
	return a.add(&cpioRecord{name: "init", mode: modeRegular | 0o755, source: source})
}

// addSource adds one --add SRC[:DEST]: an ELF program with its shared
// libraries, another file, or a directory tree.
func addSource(a *archive, spec string) error {
	source, dest, hasDest := strings.Cut(spec, ":")
	if source == "" || (hasDest && dest == "") {
		return fmt.Errorf("invalid --add %q: write SRC or SRC:DEST", spec)
	}
	if !hasDest {
		abs, err := filepath.Abs(source)
		if err != nil {
			return fmt.Errorf("--add %s: %w", spec, err)
		}
		dest = abs
	}
	name, err := archiveName(dest)
	if err != nil {
		return fmt.Errorf("--add %s: %w", spec, err)
	}

	info, err := os.Stat(source)
	if err != nil {
		return fmt.Errorf("--add %s: %w", spec, err)
	}
	switch {
	case info.IsDir():
		if err := addTree(a, source, name); err != nil {
			return fmt.Errorf("--add %s: %w", spec, err)
		}
		return nil
	case !info.Mode().IsRegular():
		return fmt.Errorf("--add %s: %s is neither a regular file nor a directory", spec, source)
	}

	if err := a.add(&cpioRecord{name: name, mode: modeRegular | unixPerm(info.Mode()), source: source}); err != nil {
		return err
	}
	isELF, err := hasELFMagic(source)
	if err != nil {
		return fmt.Errorf("--add %s: %w", spec, err)
	}
	if !isELF {
		return nil
	}
	libraries, err := sharedLibraries(source)
	if err != nil {
		return fmt.Errorf("--add %s: %w", spec, err)
	}
	for _, library := range libraries {
		if err := addFollowingSymlinks(a, library); err != nil {
			return fmt.Errorf("--add %s: library %w", spec, err)
		}
	}
	return nil
}

// addFollowingSymlinks stores the file that hostPath leads to as a regular
// file at hostPath, so the dynamic loader finds it without the host's
// symlinks.
func addFollowingSymlinks(a *archive, hostPath string) error {
	info, err := os.Stat(hostPath)
	if err != nil {
		return err
	}
	if !info.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", hostPath)
	}
	name, err := archiveName(hostPath)
	if err != nil {
		return err
	}
	resolved, err := filepath.EvalSymlinks(hostPath)
	if err != nil {
		return err
	}
	return a.add(&cpioRecord{name: name, mode: modeRegular | unixPerm(info.Mode()), source: resolved})
}

// addTree adds the directory root and everything below it at name. Symlinks
// are stored as symlinks, with their targets unchanged.
func addTree(a *archive, root, name string) error {
	return filepath.WalkDir(root, func(hostPath string, entry fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, hostPath)
		if err != nil {
			return err
		}
		recordName := path.Join(name, filepath.ToSlash(rel))
		info, err := entry.Info()
		if err != nil {
			return err
		}
		perm := unixPerm(info.Mode())
		switch {
		case info.IsDir():
			return a.addDir(recordName, perm)
		case info.Mode().IsRegular():
			return a.add(&cpioRecord{name: recordName, mode: modeRegular | perm, source: hostPath})
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(hostPath)
			if err != nil {
				return err
			}
			return a.add(&cpioRecord{name: recordName, mode: modeSymlink | 0o777, data: []byte(target)})
		}
		return fmt.Errorf("%s is a %s; only directories, regular files and symlinks can be added", hostPath, info.Mode().Type())
	})
}

// unixPerm converts the permission, setuid, setgid and sticky bits of an
// os.FileMode to st_mode bits.
func unixPerm(mode fs.FileMode) uint32 {
	perm := uint32(mode.Perm())
	if mode&fs.ModeSetuid != 0 {
		perm |= unix.S_ISUID
	}
	if mode&fs.ModeSetgid != 0 {
		perm |= unix.S_ISGID
	}
	if mode&fs.ModeSticky != 0 {
		perm |= unix.S_ISVTX
	}
	return perm
}

func hasELFMagic(file string) (bool, error) {
	f, err := os.Open(file)
	if err != nil {
		return false, err
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := io.ReadFull(f, magic); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return false, nil
		}
		return false, err
	}
	return string(magic) == "\x7fELF", nil
}

// sharedLibraries runs ldd on program and returns the absolute paths it
// lists, the dynamic loader included. A static program has none.
func sharedLibraries(program string) ([]string, error) {
	cmd := exec.Command("ldd", program)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	stdout, stderr, status, runErr := reaper.Shared().Output(cmd)
	if runErr != nil {
		return nil, fmt.Errorf("running ldd to find the shared libraries of %s: %w; install the libc-bin package", program, runErr)
	}
	output := string(stdout) + string(stderr)
	if strings.Contains(output, "not a dynamic executable") {
		return nil, nil
	}
	if !status.Success() {
		return nil, fmt.Errorf("ldd %s failed: %s: %s", program, status, strings.TrimSpace(output))
	}
	return parseLdd(string(stdout))
}

// parseLdd parses the output of glibc's ldd. The lines have these forms:
//
//	linux-vdso.so.1 (0x00007ffd...)               provided by the kernel
//	libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)
//	/lib64/ld-linux-x86-64.so.2 (0x...)           the dynamic loader
//	libmissing.so.1 => not found
//	statically linked
func parseLdd(output string) ([]string, error) {
	var paths, missing []string
	seen := make(map[string]bool)
	for _, line := range strings.Split(output, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line == "statically linked" {
			continue
		}
		soname, resolved, hasArrow := strings.Cut(line, "=>")
		candidate := soname
		if hasArrow {
			candidate = resolved
		}
		candidate = strings.TrimSpace(candidate)
		if candidate == "not found" {
			missing = append(missing, strings.TrimSpace(soname))
			continue
		}
		// Drop the load address "(0x...)".
		if i := strings.LastIndex(candidate, " ("); i >= 0 {
			candidate = strings.TrimSpace(candidate[:i])
		}
		if !strings.HasPrefix(candidate, "/") {
			continue // linux-vdso.so.1 and other kernel-provided objects
		}
		if !seen[candidate] {
			seen[candidate] = true
			paths = append(paths, candidate)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("ldd found no file for %s; install the package that provides it", strings.Join(missing, ", "))
	}
	return paths, nil
}

// addModules adds the requested kernel modules with their dependencies,
// decompressed, and a modules.dep that lists just them.
func addModules(a *archive, spec initramfsSpec) error {
	version := spec.kernelVersion
	if version == "" {
		var err error
		if version, err = defaultKernelVersion(spec.modulesRoot); err != nil {
			return err
		}
	}
	dir := filepath.Join(spec.modulesRoot, version)
	dirName, err := archiveName(path.Join("lib/modules", version))
	if err != nil {
		return err
	}
	if err := a.addDir(dirName, 0o755); err != nil {
		return err
	}
	if len(spec.modules) == 0 {
		return nil
	}

	depFile := filepath.Join(dir, "modules.dep")
	deps, err := parseModulesDep(depFile)
	if err != nil {
		return fmt.Errorf("reading the module list: %w; check --kernel-version and that the linux-image package of %s is installed", err, version)
	}
	builtin := readBuiltinModules(filepath.Join(dir, "modules.builtin"))

	var requested []string
	for _, name := range spec.modules {
		kernelName := moduleName(name)
		if _, ok := deps[kernelName]; ok {
			requested = append(requested, kernelName)
			continue
		}
		if builtin[kernelName] {
			fmt.Fprintf(spec.notices, "fief mkinitramfs: --module %s: built into kernel %s, nothing to add\n", name, version)
			continue
		}
		return fmt.Errorf("--module %s: not found in %s; check the name (find %s -name '%s.ko*') and --kernel-version", name, depFile, dir, kernelName)
	}
	order, err := moduleLoadOrder(deps, requested)
	if err != nil {
		return fmt.Errorf("%s: %w", depFile, err)
	}

	var depText strings.Builder
	for _, module := range order {
		entry := deps[module]
		stored := decompressedName(entry.path)
		data, err := readModule(filepath.Join(dir, entry.path))
		if err != nil {
			return fmt.Errorf("kernel module %s: %w", module, err)
		}
		name, err := archiveName(path.Join(dirName, stored))
		if err != nil {
			return err
		}
		if err := a.add(&cpioRecord{name: name, mode: modeRegular | 0o644, data: data}); err != nil {
			return err
		}
		depText.WriteString(stored + ":")
		for _, dep := range entry.deps {
			depText.WriteString(" " + decompressedName(deps[dep].path))
		}
		depText.WriteString("\n")
	}
	return a.add(&cpioRecord{name: path.Join(dirName, "modules.dep"), mode: modeRegular | 0o644, data: []byte(depText.String())})
}

// defaultKernelVersion returns `uname -r` when root has a directory for
// it, else the highest release in root.
func defaultKernelVersion(root string) (string, error) {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err == nil {
		running := unix.ByteSliceToString(uts.Release[:])
		if info, err := os.Stat(filepath.Join(root, running)); err == nil && info.IsDir() {
			return running, nil
		}
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		return "", fmt.Errorf("finding a kernel release for the modules: %w; install a linux-image package or give --kernel-version", err)
	}
	var releases []string
	for _, entry := range entries {
		if entry.IsDir() {
			releases = append(releases, entry.Name())
		}
	}
	if len(releases) == 0 {
		return "", fmt.Errorf("finding a kernel release for the modules: %s has no release directory; install a linux-image package or give --kernel-version", root)
	}
	sort.Slice(releases, func(i, j int) bool { return versionLess(releases[i], releases[j]) })
	return releases[len(releases)-1], nil
}

// versionLess compares two kernel releases, with runs of digits compared as
// numbers: 6.1.0-9 sorts before 6.1.0-10.
func versionLess(a, b string) bool {
	for a != "" && b != "" {
		da, db := leadingDigits(a), leadingDigits(b)
		switch {
		case da != "" && db != "":
			na, _ := strconv.ParseUint(da, 10, 64)
			nb, _ := strconv.ParseUint(db, 10, 64)
			if na != nb {
				return na < nb
			}
			a, b = a[len(da):], b[len(db):]
		case a[0] != b[0]:
			return a[0] < b[0]
		default:
			a, b = a[1:], b[1:]
		}
	}
	return len(a) < len(b)
}

func leadingDigits(s string) string {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return s[:i]
}

// readBuiltinModules returns the names in modules.builtin, or none when the
// file cannot be read.
func readBuiltinModules(file string) map[string]bool {
	builtin := make(map[string]bool)
	data, err := os.ReadFile(file)
	if err != nil {
		return builtin
	}
	scanner := bufio.NewScanner(bytes.NewReader(data))
	for scanner.Scan() {
		if line := strings.TrimSpace(scanner.Text()); line != "" {
			builtin[moduleName(line)] = true
		}
	}
	return builtin
}

// moduleLoadOrder returns the requested modules and everything they depend
// on, each once, dependencies before the modules that need them.
func moduleLoadOrder(deps moduleDeps, requested []string) ([]string, error) {
	var order []string
	done := make(map[string]bool)
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		if done[name] {
			return nil
		}
		for _, seen := range chain {
			if seen == name {
				return fmt.Errorf("module %s depends on itself through %s", name, strings.Join(append(chain, name), " -> "))
			}
		}
		entry, ok := deps[name]
		if !ok {
			return fmt.Errorf("module %s is a dependency of %s but has no line of its own", name, chain[len(chain)-1])
		}
		for _, dep := range entry.deps {
			if err := visit(dep, append(chain, name)); err != nil {
				return err
			}
		}
		done[name] = true
		order = append(order, name)
		return nil
	}
	for _, name := range requested {
		if err := visit(name, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// moduleDecompressors maps a compressed module's suffix to the command
// that writes its content to stdout, and the Debian package with it.
var moduleDecompressors = sync.OnceValue(func() map[string]moduleDecompressor {
	return map[string]moduleDecompressor{
		".xz":  {[]string{"xz", "-dc"}, "xz-utils"},
		".zst": {[]string{"zstd", "-dcq"}, "zstd"},
		".gz":  {[]string{"gzip", "-dc"}, "gzip"},
	}
})

type moduleDecompressor struct {
	argv    []string
	pkgName string
}

// decompressedName drops the compression suffix: fuse.ko.xz becomes
// fuse.ko.
func decompressedName(modulePath string) string {
	for suffix := range moduleDecompressors() {
		if strings.HasSuffix(modulePath, ".ko"+suffix) {
			return strings.TrimSuffix(modulePath, suffix)
		}
	}
	return modulePath
}

// readModule returns the content of a module file, decompressed with the
// matching command when the name ends in .xz, .zst or .gz.
func readModule(file string) ([]byte, error) {
	for suffix, tool := range moduleDecompressors() {
		if !strings.HasSuffix(file, ".ko"+suffix) {
			continue
		}
		// The archive stores modules uncompressed because a kernel
		// without CONFIG_MODULE_DECOMPRESS cannot load compressed ones.
		argv := append(append([]string(nil), tool.argv...), file)
		cmd := exec.Command(argv[0], argv[1:]...)
		stdout, stderr, status, err := reaper.Shared().Output(cmd)
		switch {
		case err != nil && (errors.Is(err, exec.ErrNotFound) || reaper.IsExecNotFound(err)):
			return nil, fmt.Errorf("decompressing %s: the %s command is not installed; install the %s package", file, argv[0], tool.pkgName)
		case err != nil:
			return nil, fmt.Errorf("decompressing %s with %s failed: %w", file, strings.Join(tool.argv, " "), err)
		case !status.Success():
			return nil, fmt.Errorf("decompressing %s with %s failed: %s: %s", file, strings.Join(tool.argv, " "), status, strings.TrimSpace(string(stderr)))
		}
		return stdout, nil
	}
	return os.ReadFile(file)
}

// addVassal adds a vassal file to /etc/fief/vassals under its base name.
func addVassal(a *archive, file string, notices io.Writer) error {
	info, err := os.Stat(file)
	if err != nil {
		return fmt.Errorf("--vassal: %w", err)
	}
	if !info.Mode().IsRegular() {
		return fmt.Errorf("--vassal %s: not a regular file", file)
	}
	base := filepath.Base(file)
	if !strings.HasSuffix(base, ".ini") {
		fmt.Fprintf(notices, "fief mkinitramfs: --vassal %s: the emperor only runs files that end in .ini\n", file)
	}
	return a.add(&cpioRecord{name: path.Join(VassalDir[1:], base), mode: modeRegular | unixPerm(info.Mode()), source: file})
}

// writeArchiveFile writes the archive to output, or to stdout for "-",
// through a temporary file that is renamed into place. It returns the
// archive's size in bytes.
func writeArchiveFile(output string, records []*cpioRecord, stdout io.Writer) (int64, error) {
	if output == "-" {
		return writeNewc(stdout, records)
	}
	tmp, err := os.CreateTemp(filepath.Dir(output), "."+filepath.Base(output)+".tmp-")
	if err != nil {
		return 0, fmt.Errorf("creating the output file: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename

	size, err := writeNewc(tmp, records)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if closeErr := tmp.Close(); err == nil {
		err = closeErr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), output)
	}
	if err != nil {
		return 0, fmt.Errorf("writing %s: %w", output, err)
	}
	return size, nil
}

// newcTrailer is the name of the record that ends a newc archive.
const newcTrailer = "TRAILER!!!"

// writeNewc writes records, in the order given, as a newc ("070701") cpio
// archive and returns its size. Every record gets mtime 0, uid and gid 0 and
// its position as inode number, so the same records always give the same
// bytes. Regular files with a source are read one at a time.
func writeNewc(w io.Writer, records []*cpioRecord) (int64, error) {
	out := &countingWriter{w: bufio.NewWriterSize(w, 1<<16)}
	for i, r := range records {
		data := r.data
		if r.mode&modeType == modeRegular && data == nil && r.source != "" {
			var err error
			if data, err = os.ReadFile(r.source); err != nil {
				return out.n, err
			}
		}
		nlink := uint32(1)
		if r.mode&modeType == modeDir {
			nlink = 2
		}
		writeNewcRecord(out, uint32(i+1), r.mode, nlink, r.rdevMajor, r.rdevMinor, r.name, data)
	}
	writeNewcRecord(out, 0, 0, 1, 0, 0, newcTrailer, nil)
	if out.err == nil {
		out.err = out.w.(*bufio.Writer).Flush()
	}
	return out.n, out.err
}

// writeNewcRecord writes the 110-byte header, the NUL-terminated name and
// the data, each of the last two padded to a multiple of 4 bytes.
func writeNewcRecord(out *countingWriter, ino, mode, nlink, rdevMajor, rdevMinor uint32, name string, data []byte) {
	fields := []uint32{
		ino, mode, 0 /* uid */, 0 /* gid */, nlink, 0, /* mtime */
		uint32(len(data)), 0 /* devmajor */, 0 /* devminor */, rdevMajor, rdevMinor,
		uint32(len(name) + 1), 0, /* check */
	}
	header := make([]byte, 0, 110)
	header = append(header, "070701"...)
	for _, field := range fields {
		header = fmt.Appendf(header, "%08X", field)
	}
	out.Write(header)
	out.Write(append([]byte(name), 0))
	out.pad()
	out.Write(data)
	out.pad()
}

// countingWriter counts the bytes written and keeps the first error.
type countingWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.err = err
	return n, err
}

// pad writes NUL bytes up to the next multiple of 4.
func (c *countingWriter) pad() {
	if rest := c.n % 4; rest != 0 {
		c.Write(make([]byte, 4-rest))
	}
}
