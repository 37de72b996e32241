package binpages

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

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
	mappings, err := readSmaps(openSelfSmaps)
	if err != nil {
		t.Fatal(err)
	}
	result, err := selectBinary(mappings, textAddress())
	if err != nil {
		t.Fatal(err)
	}
	if len(result.Dropped) == 0 {
		t.Fatalf("no read-only mapping of the test binary found in %d mappings", len(mappings))
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

// smapsSample is in the format of /proc/PID/smaps. Its first four mappings
// come from a vassal init, cut to the fields the parser reads and one it
// ignores (Size). The others are made up: another file, a text mapping with a
// written page, a shared mapping, the stack and the vDSO.
const smapsSample = `00400000-00560000 r-xp 00000000 fe:01 1311 /usr/local/bin/fief
Size:               1408 kB
Rss:                1344 kB
Anonymous:             0 kB
00560000-006f0000 r--p 00160000 fe:01 1311 /usr/local/bin/fief
Size:               1600 kB
Rss:                1600 kB
Anonymous:             0 kB
006f0000-00703000 rw-p 002f0000 fe:01 1311 /usr/local/bin/fief
Rss:                  76 kB
Anonymous:            24 kB
00703000-00739000 rw-p 00000000 00:00 0 
Rss:                  80 kB
Anonymous:            80 kB
7f0000000000-7f0000010000 r-xp 00000000 fe:01 1312 /usr/lib/other file.so
Rss:                  64 kB
Anonymous:             0 kB
7f0000010000-7f0000020000 r-xp 00010000 fe:01 1311 /usr/local/bin/fief
Rss:                   8 kB
Anonymous:             4 kB
7f0000020000-7f0000030000 r--s 00000000 fe:01 1311 /usr/local/bin/fief
Rss:                   8 kB
Anonymous:             0 kB
7ffd20fc5000-7ffd20fe6000 rw-p 00000000 00:00 0                          [stack]
Rss:                  20 kB
Anonymous:            20 kB
7f0352acd000-7f0352acf000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   8 kB
Anonymous:             0 kB
`

func TestParseSmapsSample(t *testing.T) {
	mappings, err := parseSmaps(strings.NewReader(smapsSample))
	if err != nil {
		t.Fatal(err)
	}
	if len(mappings) != 9 {
		t.Fatalf("parsed %d mappings, want 9:\n%s", len(mappings), describe(mappings))
	}

	text := mappings[0]
	if text.Start != 0x400000 || text.End != 0x560000 {
		t.Errorf("text range = %x-%x, want 400000-560000", text.Start, text.End)
	}
	if text.Perms != "r-xp" {
		t.Errorf("text Perms = %q, want %q", text.Perms, "r-xp")
	}
	if text.Device != "fe:01" {
		t.Errorf("text Device = %q, want %q", text.Device, "fe:01")
	}
	if text.Inode != 1311 {
		t.Errorf("text Inode = %d, want 1311", text.Inode)
	}
	if text.Path != "/usr/local/bin/fief" {
		t.Errorf("text Path = %q, want %q", text.Path, "/usr/local/bin/fief")
	}
	if text.Rss != 1344*1024 {
		t.Errorf("text Rss = %d, want %d", text.Rss, 1344*1024)
	}

	if mappings[2].Anonymous != 24*1024 {
		t.Errorf("data Anonymous = %d, want %d", mappings[2].Anonymous, 24*1024)
	}
	if mappings[4].Path != "/usr/lib/other file.so" {
		t.Errorf("path with a space = %q, want %q", mappings[4].Path, "/usr/lib/other file.so")
	}
	if mappings[3].Path != "" {
		t.Errorf("anonymous mapping Path = %q, want none", mappings[3].Path)
	}
	if mappings[3].Inode != 0 {
		t.Errorf("anonymous mapping Inode = %d, want 0", mappings[3].Inode)
	}
}

func TestSelectBinaryKeepsReadOnlyPrivate(t *testing.T) {
	mappings, err := parseSmaps(strings.NewReader(smapsSample))
	if err != nil {
		t.Fatal(err)
	}
	result, err := selectBinary(mappings, 0x401234)
	if err != nil {
		t.Fatal(err)
	}

	got := describe(result.Dropped)
	want := "400000-560000 r-xp fe:01 1311 /usr/local/bin/fief\n560000-6f0000 r--p fe:01 1311 /usr/local/bin/fief\n"
	if got != want {
		t.Errorf("dropped:\n%s\nwant:\n%s", got, want)
	}
	got = describe(result.Skipped)
	want = "7f0000010000-7f0000020000 r-xp fe:01 1311 /usr/local/bin/fief\n"
	if got != want {
		t.Errorf("skipped:\n%s\nwant:\n%s", got, want)
	}
	if result.Bytes() != (1344+1600)*1024 {
		t.Errorf("Bytes = %d, want %d", result.Bytes(), (1344+1600)*1024)
	}
}

func TestSelectBinaryAddressNotInFile(t *testing.T) {
	mappings, err := parseSmaps(strings.NewReader(smapsSample))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := selectBinary(mappings, 0x703000); err == nil || !strings.Contains(err.Error(), "not backed by a file") {
		t.Errorf("address in an anonymous mapping: err = %v, want an error containing %q", err, "not backed by a file")
	}
	if _, err := selectBinary(mappings, 0x100); err == nil || !strings.Contains(err.Error(), "no mapping contains it") {
		t.Errorf("address in no mapping: err = %v, want an error containing %q", err, "no mapping contains it")
	}
}

func TestParseSmapsInvalid(t *testing.T) {
	for _, tc := range []struct {
		name, text, want string
	}{
		{"field before mapping", "Rss: 4 kB\n", "comes before any mapping"},
		{"short header", "00400000-00560000 r-xp 00000000 fe:01\n", "want at least 5 fields"},
		{"range without dash", "00400000 r-xp 00000000 fe:01 1311\n", "want START-END"},
		{"range not hex", "0040000g-00560000 r-xp 00000000 fe:01 1311\n", "invalid address range"},
		{"inode not a number", "00400000-00560000 r-xp 00000000 fe:01 x\n", "invalid inode"},
		{"size without unit", "00400000-00560000 r-xp 00000000 fe:01 1311\nRss: 4\n", "want N kB"},
		{"size not a number", "00400000-00560000 r-xp 00000000 fe:01 1311\nAnonymous: x kB\n", "invalid Anonymous value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseSmaps(bytes.NewBufferString(tc.text))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestParseSmapsAllocationsPerMapping counts heap allocations, not time. The
// key lines, about 25 per mapping, must not allocate, so the count grows with
// the mappings and not with the lines.
func TestParseSmapsAllocationsPerMapping(t *testing.T) {
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	mappings, err := parseSmaps(bytes.NewReader(smaps))
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Count(smaps, []byte("\n"))

	reader := bytes.NewReader(smaps)
	allocations := testing.AllocsPerRun(10, func() {
		reader.Reset(smaps)
		if _, err := parseSmaps(reader); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("%v allocations for %d mappings in %d lines", allocations, len(mappings), lines)
	// Each header line allocates its fields, perms, device and path, and
	// at times a larger mappings slice. The scanner allocates its buffer
	// once.
	if limit := float64(6*len(mappings) + 16); allocations > limit {
		t.Errorf("parseSmaps made %v allocations for %d mappings in %d lines, want at most %v", allocations, len(mappings), lines, limit)
	}
}

func TestReleaseAfterEachGCFollowsCollections(t *testing.T) {
	type outcome struct {
		result Result
		err    error
	}
	outcomes := make(chan outcome, 4)
	ReleaseAfterEachGC(nil, 0, func(result Result, err error) {
		// The hook stays armed after the test, so later calls drop
		// their outcome instead of blocking the cleanup goroutine.
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
	opened := 0
	open := func() (io.ReadCloser, error) {
		opened++
		fd, err := unix.Openat(int(procDir.Fd()), "self/smaps", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		return os.NewFile(uintptr(fd), "self/smaps"), nil
	}

	result, err := Release(open)
	if err != nil {
		t.Fatalf("Release: %v", err)
	}
	if opened != 1 {
		t.Errorf("Release opened smaps %d times through the descriptor, want 1", opened)
	}
	if len(result.Dropped) == 0 {
		t.Error("Release dropped no mapping")
	}
}

func TestReleaseOpenError(t *testing.T) {
	failure := errors.New("no /proc in this root")
	_, err := Release(func() (io.ReadCloser, error) { return nil, failure })
	if !errors.Is(err, failure) {
		t.Errorf("err = %v, want it to wrap %v", err, failure)
	}
}
