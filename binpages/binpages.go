// Package binpages drops the pages of the running binary's read-only
// mappings (code and read-only data) from the process's page tables.
//
// A Go binary runs straight from its file: the kernel maps its text and
// rodata segments privately from the page cache. With the file cached, a page
// fault maps the cached pages around the faulting address as well, 64 kB
// with Linux's default fault_around_bytes. A process that has run code spread
// across the binary, as the vassal init does during set-up, thus ends up with
// nearly all of the binary in its RSS, counted as RssFile.
//
// MADV_DONTNEED on a private file mapping removes the page-table entries and
// leaves the pages in the page cache. The mapping stays valid, and code that
// runs later faults its pages back in from the cache without disk I/O. Other
// processes that map the same file keep their entries. Only mappings with no
// written page are dropped. A written page of a private mapping is an
// anonymous copy, such as a debugger's breakpoint, and MADV_DONTNEED would
// throw that change away.
//
// madvise(2) describes the alternatives: MADV_COLD only marks pages as
// reclaim targets and leaves the RSS as it is, and MADV_PAGEOUT reclaims
// them, so the next fault reads the file from disk again.
package binpages

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Mapping is one entry of /proc/PID/smaps with the fields binpages uses.
type Mapping struct {
	Start, End uintptr
	Perms      string // such as "r-xp"
	Device     string // major:minor in hex, as the kernel prints it
	Inode      uint64
	Path       string
	Rss        int64 // resident bytes
	Anonymous  int64 // bytes of anonymous pages, such as copies of written private pages
}

// Writable reports whether the mapping allows writes.
func (m Mapping) Writable() bool { return strings.Contains(m.Perms, "w") }

// Private reports whether the mapping is private (copy-on-write).
func (m Mapping) Private() bool { return strings.HasSuffix(m.Perms, "p") }

// Contains reports whether addr lies in the mapping.
func (m Mapping) Contains(addr uintptr) bool { return m.Start <= addr && addr < m.End }

// Result describes one call of [Release].
type Result struct {
	// Dropped are the mappings whose pages were dropped, with Rss as it
	// was before the drop.
	Dropped []Mapping
	// Skipped are read-only mappings of the binary left alone because
	// they contain written pages.
	Skipped []Mapping
}

// Bytes returns the resident bytes of the dropped mappings before the drop.
func (r Result) Bytes() int64 {
	var total int64
	for _, m := range r.Dropped {
		total += m.Rss
	}
	return total
}

// OpenSmaps opens the smaps file of the calling process.
type OpenSmaps func() (io.ReadCloser, error)

// Release drops the resident pages of the running binary's read-only,
// private, file-backed mappings from this process's page tables. The
// writable data and bss segments, the heap, stacks and the vDSO are never
// touched.
//
// It reads the mappings from the file that open returns, or from
// /proc/self/smaps when open is nil. A process whose root may lack /proc,
// such as a vassal init after pivot_root, opens "self/smaps" through a
// descriptor of its /proc instead.
//
// NOTE: a debugger that writes a breakpoint into the text between the read
// of smaps and the madvise call loses that breakpoint.
func Release(open OpenSmaps) (Result, error) {
	if open == nil {
		open = openSelfSmaps
	}
	mappings, err := readSmaps(open)
	if err != nil {
		return Result{}, err
	}
	result, err := selectBinary(mappings, textAddress())
	if err != nil {
		return Result{}, err
	}
	for i, m := range result.Dropped {
		_, _, errno := unix.Syscall(unix.SYS_MADVISE, m.Start, m.End-m.Start, unix.MADV_DONTNEED)
		if errno != 0 {
			result.Dropped = result.Dropped[:i]
			return result, fmt.Errorf("madvise(MADV_DONTNEED) on %s %x-%x: %w", m.Path, m.Start, m.End, errno)
		}
	}
	return result, nil
}

// ReleaseAfterEachGC calls [Release] after each garbage collection that ends
// at least minInterval after the previous call, and passes each outcome to
// report. It returns at once, and report runs on a runtime cleanup goroutine.
//
// The Go runtime collects at least every 2 minutes (forcegcperiod in
// runtime/proc.go of Go 1.26). A collection runs the collector's code and
// reads the stack maps of every goroutine's frames in pclntab. In an idle
// fief process that faults about 1 MB of the binary back in.
func ReleaseAfterEachGC(open OpenSmaps, minInterval time.Duration, report func(Result, error)) {
	armAfterGC(open, time.Now(), minInterval, report)
}

// armAfterGC attaches the next call to the collection of a new object. A
// cleanup runs after the collection that finds its object unreachable, and
// each run arms the next, so exactly one object is armed at a time.
func armAfterGC(open OpenSmaps, last time.Time, minInterval time.Duration, report func(Result, error)) {
	// 32 pointer-free bytes: the tiny allocator, which may keep an object
	// alive with its neighbours, serves only objects below 16 bytes.
	sentinel := new([32]byte)
	runtime.AddCleanup(sentinel, func(last time.Time) {
		due := time.Since(last) >= minInterval
		if due {
			last = time.Now()
		}

		// The next sentinel is armed before the release, so a collection
		// that starts while Release runs, or right after report returns,
		// still has a sentinel to find.
		armAfterGC(open, last, minInterval, report)
		if due {
			report(Release(open))
		}
	}, last)
}

// textAddress returns an address in the binary's text segment: the entry
// of Release itself.
func textAddress() uintptr {
	return reflect.ValueOf(Release).Pointer()
}

// selectBinary picks from mappings the read-only, private mappings of the
// file whose mapping contains text. Mappings with anonymous pages go to
// Skipped.
func selectBinary(mappings []Mapping, text uintptr) (Result, error) {
	var binary *Mapping
	for i := range mappings {
		if mappings[i].Contains(text) {
			binary = &mappings[i]
			break
		}
	}
	if binary == nil {
		return Result{}, fmt.Errorf("finding the mapping of address %#x in smaps: no mapping contains it", text)
	}
	if binary.Inode == 0 {
		return Result{}, fmt.Errorf("finding the binary's mapping: address %#x lies in %x-%x, which is not backed by a file", text, binary.Start, binary.End)
	}

	var result Result
	for _, m := range mappings {
		if m.Device != binary.Device || m.Inode != binary.Inode || m.Writable() || !m.Private() {
			continue
		}
		if m.Anonymous > 0 {
			result.Skipped = append(result.Skipped, m)
			continue
		}
		result.Dropped = append(result.Dropped, m)
	}
	return result, nil
}

func openSelfSmaps() (io.ReadCloser, error) {
	return os.Open("/proc/self/smaps")
}

// readSmaps reads the mappings of the smaps file that open returns.
func readSmaps(open OpenSmaps) ([]Mapping, error) {
	file, err := open()
	if err != nil {
		return nil, fmt.Errorf("opening the smaps file: %w", err)
	}
	defer file.Close()
	mappings, err := parseSmaps(file)
	if err != nil {
		return nil, fmt.Errorf("reading the smaps file: %w", err)
	}
	return mappings, nil
}

// parseSmaps parses the format of proc(5) smaps: a header line per mapping
// ("start-end perms offset dev inode [path]") followed by "Key: value kB"
// lines. Only header lines are split into fields, because a process has
// about 25 key lines per mapping and the parse should leave little garbage.
func parseSmaps(r io.Reader) ([]Mapping, error) {
	var mappings []Mapping
	scanner := bufio.NewScanner(r)
	line := 0
	for scanner.Scan() {
		line++
		text := scanner.Bytes()
		first, rest, _ := bytes.Cut(text, []byte(" "))
		if len(first) == 0 {
			continue
		}
		if key, isField := bytes.CutSuffix(first, []byte(":")); isField {
			if len(mappings) == 0 {
				return nil, fmt.Errorf("line %d: %q comes before any mapping", line, text)
			}
			if err := setField(&mappings[len(mappings)-1], key, rest); err != nil {
				return nil, fmt.Errorf("line %d: %w", line, err)
			}
			continue
		}
		m, err := parseHeader(bytes.Fields(text))
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		mappings = append(mappings, m)
	}
	if err := scanner.Err(); err != nil {
		return nil, err
	}
	return mappings, nil
}

// parseHeader parses the fields of a mapping's first line.
func parseHeader(fields [][]byte) (Mapping, error) {
	if len(fields) < 5 {
		return Mapping{}, fmt.Errorf("invalid mapping line %q: want at least 5 fields", bytes.Join(fields, []byte(" ")))
	}

	bounds := string(fields[0])
	startText, endText, ok := strings.Cut(bounds, "-")
	if !ok {
		return Mapping{}, fmt.Errorf("invalid address range %q: want START-END", bounds)
	}
	start, err := strconv.ParseUint(startText, 16, 64)
	if err != nil {
		return Mapping{}, fmt.Errorf("invalid address range %q: %w", bounds, err)
	}
	end, err := strconv.ParseUint(endText, 16, 64)
	if err != nil {
		return Mapping{}, fmt.Errorf("invalid address range %q: %w", bounds, err)
	}

	inode, err := strconv.ParseUint(string(fields[4]), 10, 64)
	if err != nil {
		return Mapping{}, fmt.Errorf("invalid inode %q: %w", fields[4], err)
	}

	m := Mapping{
		Start:  uintptr(start),
		End:    uintptr(end),
		Perms:  string(fields[1]),
		Device: string(fields[3]),
		Inode:  inode,
	}
	if len(fields) > 5 {
		// The path may contain spaces, and a deleted file ends in
		// " (deleted)".
		m.Path = string(bytes.Join(fields[5:], []byte(" ")))
	}
	return m, nil
}

// setField stores the "Rss" and "Anonymous" sizes and ignores other keys.
// value is the rest of the line after "Key:", such as "   1344 kB".
func setField(m *Mapping, key, value []byte) error {
	var target *int64
	switch string(key) {
	case "Rss":
		target = &m.Rss
	case "Anonymous":
		target = &m.Anonymous
	default:
		return nil
	}
	number, isKB := bytes.CutSuffix(bytes.TrimSpace(value), []byte(" kB"))
	if !isKB {
		return fmt.Errorf("invalid %s value %q: want N kB", key, bytes.TrimSpace(value))
	}
	kb, err := strconv.ParseInt(string(bytes.TrimSpace(number)), 10, 64)
	if err != nil {
		return fmt.Errorf("invalid %s value %q: %w", key, number, err)
	}
	*target = kb * 1024
	return nil
}
