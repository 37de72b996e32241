package binpages

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// readRssFile returns RssFile of this process in bytes.
func readRssFile(t *testing.T) int64 {
	t.Helper()
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatalf("reading /proc/self/status: %v", err)
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		value, ok := strings.CutPrefix(line, "RssFile:")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			t.Fatalf("parsing %q: %v", line, err)
		}
		return kb * 1024
	}
	t.Fatal("no RssFile line in /proc/self/status")
	return 0
}

// binaryMappings returns the mappings that Release would drop right now.
func binaryMappings(t *testing.T) []Mapping {
	t.Helper()
	mappings, err := readFileMappings(nil, textAddress())
	if err != nil {
		t.Fatal(err)
	}
	result := splitWritten(mappings)
	if len(result.Skipped) != 0 {
		t.Fatalf("mappings of the test binary with anonymous pages:\n%s", describe(result.Skipped))
	}
	if len(result.Dropped) == 0 {
		t.Fatal("no read-only mapping of the test binary found")
	}
	return result.Dropped
}

// readMappings reads the memory of the mappings through /proc/self/mem, which
// faults every page in, and returns a hash of the content per mapping.
func readMappings(t *testing.T, mappings []Mapping) [][sha256.Size]byte {
	t.Helper()
	mem, err := os.Open("/proc/self/mem")
	if err != nil {
		t.Fatalf("opening /proc/self/mem: %v", err)
	}
	defer mem.Close()

	// A single small buffer, because allocating the whole mappings would
	// start a garbage collection, whose code faults pages back in.
	buf := make([]byte, 64*1024)
	sums := make([][sha256.Size]byte, 0, len(mappings))
	for _, m := range mappings {
		hash := sha256.New()
		for addr := m.Start; addr < m.End; addr += uintptr(len(buf)) {
			chunk := buf[:min(uintptr(len(buf)), m.End-addr)]
			if _, err := mem.ReadAt(chunk, int64(addr)); err != nil {
				t.Fatalf("reading %x-%x through /proc/self/mem: %v", addr, addr+uintptr(len(chunk)), err)
			}
			hash.Write(chunk)
		}
		sums = append(sums, [sha256.Size]byte(hash.Sum(nil)))
	}
	return sums
}

func describe(mappings []Mapping) string {
	var b strings.Builder
	for _, m := range mappings {
		fmt.Fprintf(&b, "%x-%x %s %s %d %s\n", m.Start, m.End, m.Perms, m.Device, m.Inode, m.Path)
	}
	return b.String()
}

func TestReleaseLowersRssFile(t *testing.T) {
	before := binaryMappings(t)
	sumsBefore := readMappings(t, before)
	var mapped int64
	for _, m := range before {
		mapped += int64(m.End - m.Start)
	}

	// A collection running during the test would fault code and pclntab
	// pages back in.
	runtime.GC()
	rssBefore := readRssFile(t)
	result, err := Release(nil)
	if err != nil {
		t.Fatalf("Release: %v", err)
	}
	rssAfter := readRssFile(t)
	t.Logf("RssFile %d -> %d bytes; %d bytes mapped read-only", rssBefore, rssAfter, mapped)

	if len(result.Skipped) != 0 {
		t.Errorf("Release skipped mappings with written pages:\n%s", describe(result.Skipped))
	}
	if len(result.Dropped) != len(before) {
		t.Errorf("Release dropped %d mappings, want %d:\n%s", len(result.Dropped), len(before), describe(result.Dropped))
	}
	// Every page was faulted in just before, so nearly all of the
	// mappings were resident.
	if result.Bytes() < mapped/2 {
		t.Errorf("Release reports %d resident bytes before the drop, want at least half of the %d mapped bytes", result.Bytes(), mapped)
	}
	// The code that runs between the drop and the read of the status,
	// in this goroutine and in the test framework's, faults pages back
	// in 64 kB at a time, so only a quarter of the drop must show.
	if drop := rssBefore - rssAfter; drop < mapped/4 {
		t.Errorf("RssFile went from %d to %d bytes, a drop of %d; want a drop of at least a quarter of the %d mapped bytes", rssBefore, rssAfter, drop, mapped)
	}

	after := binaryMappings(t)
	if describe(after) != describe(before) {
		t.Errorf("the binary's mappings changed:\nbefore:\n%s\nafter:\n%s", describe(before), describe(after))
	}
	sumsAfter := readMappings(t, after)
	for i := range min(len(sumsBefore), len(sumsAfter)) {
		if sumsBefore[i] != sumsAfter[i] {
			t.Errorf("content of %x-%x changed after the drop", after[i].Start, after[i].End)
		}
	}
}

// mapsSample is in the format of /proc/PID/maps, with the kernel's
// alignment of the path. Its first four lines come from a vassal init. The
// others are made up: a file with a space in its path, a shared mapping of
// the binary, the binary's inode on another device, a removed binary, the
// stack and the vDSO.
const mapsSample = `00400000-00560000 r-xp 00000000 fe:01 1311                               /usr/local/bin/fief
00560000-006f0000 r--p 00160000 fe:01 1311                               /usr/local/bin/fief
006f0000-00703000 rw-p 002f0000 fe:01 1311                               /usr/local/bin/fief
00703000-00739000 rw-p 00000000 00:00 0 
7f0000000000-7f0000010000 r-xp 00000000 fe:01 1312                       /usr/lib/other file.so
7f0000010000-7f0000020000 r--s 00000000 fe:01 1311                       /usr/local/bin/fief
7f0000020000-7f0000030000 r-xp 00000000 08:01 1311                       /mnt/same inode
7f0000030000-7f0000040000 r-xp 00000000 fe:01 2000                       /tmp/old fief (deleted)
7f0000040000-7f0000050000 r--p 00010000 fe:01 2000                       /tmp/old fief (deleted)
7ffd20fc5000-7ffd20fe6000 rw-p 00000000 00:00 0                          [stack]
7ffd20ff1000-7ffd20ff3000 r-xp 00000000 00:00 0                          [vdso]
`

// sampleLine returns line number (from 1) of mapsSample.
func sampleLine(t *testing.T, number int) []byte {
	t.Helper()
	lines := strings.Split(mapsSample, "\n")
	return []byte(lines[number-1])
}

func TestParseMapsLineText(t *testing.T) {
	line, err := parseMapsLine(sampleLine(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	if line.start != 0x400000 || line.end != 0x560000 {
		t.Errorf("range = %x-%x, want 400000-560000", line.start, line.end)
	}
	if string(line.perms) != "r-xp" {
		t.Errorf("perms = %q, want %q", line.perms, "r-xp")
	}
	if string(line.device) != "fe:01" {
		t.Errorf("device = %q, want %q", line.device, "fe:01")
	}
	if line.inode != 1311 {
		t.Errorf("inode = %d, want 1311", line.inode)
	}
	if string(line.path) != "/usr/local/bin/fief" {
		t.Errorf("path = %q, want %q", line.path, "/usr/local/bin/fief")
	}
}

func TestParseMapsLinePaths(t *testing.T) {
	for _, tc := range []struct {
		name   string
		number int
		path   string
	}{
		{"anonymous", 4, ""},
		{"space", 5, "/usr/lib/other file.so"},
		{"deleted", 8, "/tmp/old fief (deleted)"},
		{"stack", 10, "[stack]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			line, err := parseMapsLine(sampleLine(t, tc.number))
			if err != nil {
				t.Fatal(err)
			}
			if string(line.path) != tc.path {
				t.Errorf("path = %q, want %q", line.path, tc.path)
			}
		})
	}

	anonymous, err := parseMapsLine(sampleLine(t, 4))
	if err != nil {
		t.Fatal(err)
	}
	if anonymous.inode != 0 {
		t.Errorf("anonymous mapping inode = %d, want 0", anonymous.inode)
	}
}

func TestParseMapsLineInvalid(t *testing.T) {
	for _, tc := range []struct {
		name, text, want string
	}{
		{"empty", "", "want at least 5 fields"},
		{"short", "00400000-00560000 r-xp 00000000 fe:01", "want at least 5 fields"},
		{"range without dash", "00400000 r-xp 00000000 fe:01 1311", "want START-END"},
		{"range not hex", "0040000g-00560000 r-xp 00000000 fe:01 1311", "invalid address range"},
		{"permissions too short", "00400000-00560000 r-x 00000000 fe:01 1311", "invalid permissions"},
		{"inode not a number", "00400000-00560000 r-xp 00000000 fe:01 x", "invalid inode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseMapsLine([]byte(tc.text))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestFindFileMappingsBinary(t *testing.T) {
	mappings, err := findFileMappings([]byte(mapsSample), 0x401234)
	if err != nil {
		t.Fatal(err)
	}
	got := describe(mappings)
	want := "400000-560000 r-xp fe:01 1311 /usr/local/bin/fief\n560000-6f0000 r--p fe:01 1311 /usr/local/bin/fief\n"
	if got != want {
		t.Errorf("mappings:\n%s\nwant:\n%s", got, want)
	}
}

func TestFindFileMappingsDeletedBinary(t *testing.T) {
	mappings, err := findFileMappings([]byte(mapsSample), 0x7f0000038000)
	if err != nil {
		t.Fatal(err)
	}
	got := describe(mappings)
	want := "7f0000030000-7f0000040000 r-xp fe:01 2000 /tmp/old fief (deleted)\n7f0000040000-7f0000050000 r--p fe:01 2000 /tmp/old fief (deleted)\n"
	if got != want {
		t.Errorf("mappings:\n%s\nwant:\n%s", got, want)
	}
}

func TestFindFileMappingsAddressNotInFile(t *testing.T) {
	if _, err := findFileMappings([]byte(mapsSample), 0x703000); err == nil || !strings.Contains(err.Error(), "not backed by a file") {
		t.Errorf("address in an anonymous mapping: err = %v, want an error containing %q", err, "not backed by a file")
	}
	if _, err := findFileMappings([]byte(mapsSample), 0x100); err == nil || !strings.Contains(err.Error(), "no mapping contains it") {
		t.Errorf("address in no mapping: err = %v, want an error containing %q", err, "no mapping contains it")
	}
}

func TestFindFileMappingsInvalidLine(t *testing.T) {
	maps := mapsSample + "7fff00000000-7fff00001000 r-xp 00000000 fe:01\n"
	_, err := findFileMappings([]byte(maps), 0x401234)
	if err == nil || !strings.Contains(err.Error(), "line 12 of /proc/self/maps") {
		t.Errorf("err = %v, want an error containing %q", err, "line 12 of /proc/self/maps")
	}
}

func TestSplitWrittenSkipsAnonymous(t *testing.T) {
	mappings := []Mapping{
		{Start: 0x400000, End: 0x560000, Perms: "r-xp", Rss: 1344 * 1024},
		{Start: 0x560000, End: 0x6f0000, Perms: "r--p", Rss: 1600 * 1024},
		{Start: 0x7f0000010000, End: 0x7f0000020000, Perms: "r-xp", Rss: 8 * 1024, Anonymous: 4 * 1024},
	}
	result := splitWritten(mappings)

	got := describe(result.Dropped)
	want := "400000-560000 r-xp  0 \n560000-6f0000 r--p  0 \n"
	if got != want {
		t.Errorf("dropped:\n%s\nwant:\n%s", got, want)
	}
	got = describe(result.Skipped)
	want = "7f0000010000-7f0000020000 r-xp  0 \n"
	if got != want {
		t.Errorf("skipped:\n%s\nwant:\n%s", got, want)
	}
	if result.Bytes() != (1344+1600)*1024 {
		t.Errorf("Bytes = %d, want %d", result.Bytes(), (1344+1600)*1024)
	}
}

func TestCountEntriesFlags(t *testing.T) {
	const pageSize = 4096
	for _, tc := range []struct {
		name           string
		entry          uint64
		rss, anonymous int64
	}{
		{"not mapped", 0, 0, 0},
		{"file page", pagemapPresent | pagemapFile, pageSize, 0},
		{"written copy", pagemapPresent, pageSize, pageSize},
		{"swapped copy", pagemapSwapped, 0, pageSize},
		{"file page under migration", pagemapSwapped | pagemapFile, 0, 0},
		{"soft-dirty file page", pagemapPresent | pagemapFile | 1<<55, pageSize, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			entries := binary.NativeEndian.AppendUint64(nil, tc.entry)
			rss, anonymous := countEntries(entries, pageSize)
			if rss != tc.rss {
				t.Errorf("rss = %d, want %d", rss, tc.rss)
			}
			if anonymous != tc.anonymous {
				t.Errorf("anonymous = %d, want %d", anonymous, tc.anonymous)
			}
		})
	}
}

// tempFile returns a file of the given number of pages, opened read-only.
func tempFile(t *testing.T, pages int) *os.File {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pages")
	if err := os.WriteFile(path, bytes.Repeat([]byte("a"), pages*os.Getpagesize()), 0o600); err != nil {
		t.Fatal(err)
	}
	file, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { file.Close() })
	return file
}

// mapPrivate maps all of file privately with the protection prot.
func mapPrivate(t *testing.T, file *os.File, prot int) []byte {
	t.Helper()
	info, err := file.Stat()
	if err != nil {
		t.Fatal(err)
	}
	data, err := unix.Mmap(int(file.Fd()), 0, int(info.Size()), prot, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatalf("mapping %s: %v", file.Name(), err)
	}
	t.Cleanup(func() { unix.Munmap(data) })
	return data
}

func rangeOf(data []byte) Mapping {
	start := uintptr(unsafe.Pointer(unsafe.SliceData(data)))
	return Mapping{Start: start, End: start + uintptr(len(data))}
}

// readSink keeps the compiler from dropping reads done only to fault pages
// in.
var readSink byte

func TestCountPagesWrittenPageIsAnonymous(t *testing.T) {
	pageSize := os.Getpagesize()
	data := mapPrivate(t, tempFile(t, 4), unix.PROT_READ|unix.PROT_WRITE)
	readSink = data[0]
	data[pageSize] = 'b'

	mappings := []Mapping{rangeOf(data)}
	if err := countPages(openProcSelf, mappings, nil); err != nil {
		t.Fatal(err)
	}
	if mappings[0].Anonymous != int64(pageSize) {
		t.Errorf("Anonymous = %d, want one page of %d bytes", mappings[0].Anonymous, pageSize)
	}
	// The read maps page 0 from the file, and the kernel may map pages 2
	// and 3 around it.
	if mappings[0].Rss < 2*int64(pageSize) || mappings[0].Rss > 4*int64(pageSize) {
		t.Errorf("Rss = %d, want 2 to 4 pages of %d bytes", mappings[0].Rss, pageSize)
	}
}

func TestReleaseSkipsWrittenMapping(t *testing.T) {
	pageSize := os.Getpagesize()
	file := tempFile(t, 4)

	// A read-only private mapping with a written page, as a debugger's
	// breakpoint leaves the text, and a clean one of the same file.
	written := mapPrivate(t, file, unix.PROT_READ|unix.PROT_WRITE)
	written[pageSize] = 'b'
	if err := unix.Mprotect(written, unix.PROT_READ); err != nil {
		t.Fatal(err)
	}
	clean := mapPrivate(t, file, unix.PROT_READ)
	readSink = clean[0]

	result, err := release(nil, rangeOf(written).Start)
	if err != nil {
		t.Fatalf("release: %v", err)
	}
	if len(result.Skipped) != 1 || result.Skipped[0].Start != rangeOf(written).Start {
		t.Errorf("skipped:\n%s\nwant only the written mapping at %x", describe(result.Skipped), rangeOf(written).Start)
	}
	if len(result.Dropped) != 1 || result.Dropped[0].Start != rangeOf(clean).Start {
		t.Fatalf("dropped:\n%s\nwant only the clean mapping at %x", describe(result.Dropped), rangeOf(clean).Start)
	}
	if result.Bytes() == 0 {
		t.Error("Bytes = 0, want the resident bytes of the clean mapping")
	}

	mappings := []Mapping{rangeOf(written), rangeOf(clean)}
	if err := countPages(openProcSelf, mappings, nil); err != nil {
		t.Fatal(err)
	}
	if mappings[0].Anonymous != int64(pageSize) {
		t.Errorf("written mapping Anonymous after release = %d, want one page of %d bytes", mappings[0].Anonymous, pageSize)
	}
	if mappings[1].Rss != 0 {
		t.Errorf("clean mapping Rss after release = %d, want 0", mappings[1].Rss)
	}
	if written[pageSize] != 'b' {
		t.Errorf("written byte = %q after release, want %q", written[pageSize], 'b')
	}
}

// TestReadFileMappingsAllocations counts heap allocations, not time. Lines of
// maps that are not the binary's must not allocate.
func TestReadFileMappingsAllocations(t *testing.T) {
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Count(maps, []byte("\n"))
	mappings, err := readFileMappings(nil, textAddress())
	if err != nil {
		t.Fatal(err)
	}

	allocations := testing.AllocsPerRun(10, func() {
		if _, err := readFileMappings(nil, textAddress()); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("%v allocations for %d mappings of the binary in %d lines", allocations, len(mappings), lines)
	// The allocations are the path of each of the two opens, the maps
	// buffer and one more for each time it doubles, and the mappings slice.
	// Each mapping adds three strings. A pagemap buffer is added when the
	// maps buffer is too small for the entries of the largest mapping.
	doublings := bits.Len(uint(len(maps) / mapsBufferSize))
	if limit := float64(5 + doublings + 3*len(mappings)); allocations > limit {
		t.Errorf("readFileMappings made %v allocations for %d mappings of the binary in %d lines, want at most %v", allocations, len(mappings), lines, limit)
	}
}

func TestReleaseAfterEachGCFollowsCollections(t *testing.T) {
	type outcome struct {
		result Result
		err    error
	}
	outcomes := make(chan outcome, 4)

	// The hook stays armed after the test. Its later calls fail at the
	// open, so they drop no pages under another test that measures
	// RssFile, as with go test -count 2.
	var testEnded atomic.Bool
	t.Cleanup(func() { testEnded.Store(true) })
	open := func(name string) (int, error) {
		if testEnded.Load() {
			return -1, errors.New("the test that armed this release has ended")
		}
		return openProcSelf(name)
	}

	ReleaseAfterEachGC(open, 0, func(result Result, err error) {
		// Later calls drop their outcome instead of blocking the
		// cleanup goroutine.
		select {
		case outcomes <- outcome{result, err}:
		default:
		}
	})

	for collection := 1; collection <= 2; collection++ {
		runtime.GC()
		select {
		case got := <-outcomes:
			if got.err != nil {
				t.Fatalf("Release after collection %d: %v", collection, got.err)
			}
			if len(got.result.Dropped) == 0 {
				t.Errorf("Release after collection %d dropped no mapping", collection)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no Release within 10 s of collection %d", collection)
		}
	}
}

func TestReleaseThroughProcDescriptor(t *testing.T) {
	procDir, err := os.Open("/proc")
	if err != nil {
		t.Fatal(err)
	}
	defer procDir.Close()
	var opened []string
	open := func(name string) (int, error) {
		opened = append(opened, name)
		return unix.Openat(int(procDir.Fd()), "self/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	}

	result, err := Release(open)
	if err != nil {
		t.Fatalf("Release: %v", err)
	}
	if got := strings.Join(opened, " "); got != "maps pagemap" {
		t.Errorf("Release opened %q through the descriptor, want %q", got, "maps pagemap")
	}
	if len(result.Dropped) == 0 {
		t.Error("Release dropped no mapping")
	}
}

func TestReleaseOpenError(t *testing.T) {
	failure := errors.New("no /proc in this root")
	for _, failing := range []string{"maps", "pagemap"} {
		t.Run(failing, func(t *testing.T) {
			_, err := Release(func(name string) (int, error) {
				if name == failing {
					return -1, failure
				}
				return openProcSelf(name)
			})
			if !errors.Is(err, failure) {
				t.Errorf("err = %v, want it to wrap %v", err, failure)
			}
			if want := "/proc/self/" + failing; err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("err = %v, want it to name %s", err, want)
			}
		})
	}
}

func TestReleaseClosesDescriptors(t *testing.T) {
	countDescriptors := func() int {
		entries, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(entries)
	}

	before := countDescriptors()
	for range 3 {
		if _, err := Release(nil); err != nil {
			t.Fatalf("Release: %v", err)
		}
	}
	if after := countDescriptors(); after != before {
		t.Errorf("open descriptors went from %d to %d over 3 calls of Release", before, after)
	}
}

// BenchmarkRelease measures a call of Release with its drop. The code that
// runs between two calls faults some of the binary back in, as it does in
// fief between collections.
func BenchmarkRelease(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Release(nil); err != nil {
			b.Fatal(err)
		}
	}
}
