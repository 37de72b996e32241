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
//
// [Release] finds the binary's mappings in /proc/self/maps, which the kernel
// prints without walking page tables. It then reads the /proc/self/pagemap
// entries of those mappings only, one 64-bit entry per page, to count their
// resident and anonymous pages. /proc/self/smaps holds the same counts, but
// the kernel walks the page tables of every mapping to print it.
//
// proc_pid_pagemap(5) and Documentation/admin-guide/mm/pagemap.rst of the
// Linux source describe the entries. Since Linux 4.2 a process without
// CAP_SYS_ADMIN may read its own entries, with the page frame numbers
// zeroed. On Linux 4.0 and 4.1 its open fails with EPERM. The file flag
// (bit 61) exists since Linux 3.5. On older kernels every resident page
// reads as anonymous, so Release drops nothing.
package binpages

import (
	"fmt"
	"reflect"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// Mapping is a mapping of the binary: a line of /proc/PID/maps with the
// resident and anonymous bytes that its pagemap entries show.
type Mapping struct {
	Start, End uintptr
	Perms      string // such as "r-xp"
	Device     string // major:minor in hex, as the kernel prints it
	Inode      uint64
	Path       string // ends in " (deleted)" once the file is removed
	Rss        int64  // resident bytes
	Anonymous  int64  // bytes of anonymous pages, such as copies of written private pages
}

// Writable reports whether the mapping allows writes.
func (m Mapping) Writable() bool { return len(m.Perms) > 1 && m.Perms[1] == 'w' }

// Private reports whether the mapping is private (copy-on-write).
func (m Mapping) Private() bool { return len(m.Perms) > 3 && m.Perms[3] == 'p' }

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

// OpenProcSelf opens name, a file of the calling process's /proc/self
// directory ("maps" or "pagemap"), read-only, and returns its descriptor.
// [Release] closes the descriptor.
type OpenProcSelf func(name string) (fd int, err error)

// Release drops the resident pages of the running binary's read-only,
// private, file-backed mappings from this process's page tables. The
// writable data and bss segments, the heap, stacks and the vDSO are never
// touched.
//
// It opens the files it reads with open, or under /proc/self when open is
// nil. A process whose root may lack /proc, such as a vassal init after
// pivot_root, opens them through a descriptor of its /proc instead.
//
// NOTE: a debugger that writes a breakpoint into the text between the read
// of pagemap and the madvise call loses that breakpoint.
func Release(open OpenProcSelf) (Result, error) {
	return release(open, textAddress())
}

// release drops the read-only, private mappings of the file whose mapping
// contains addr.
func release(open OpenProcSelf, addr uintptr) (Result, error) {
	mappings, err := readFileMappings(open, addr)
	if err != nil {
		return Result{}, err
	}

	result := splitWritten(mappings)
	for i, m := range result.Dropped {
		_, _, errno := unix.Syscall(unix.SYS_MADVISE, m.Start, m.End-m.Start, unix.MADV_DONTNEED)
		if errno != 0 {
			result.Dropped = result.Dropped[:i]
			return result, fmt.Errorf("madvise(MADV_DONTNEED) on %s %x-%x: %w", m.Path, m.Start, m.End, errno)
		}
	}
	return result, nil
}

// readFileMappings returns the read-only, private mappings of the file
// whose mapping contains addr, with their resident and anonymous bytes.
func readFileMappings(open OpenProcSelf, addr uintptr) ([]Mapping, error) {
	if open == nil {
		open = openProcSelf
	}
	buf, err := readMaps(open)
	if err != nil {
		return nil, err
	}
	mappings, err := findFileMappings(buf, addr)
	if err != nil {
		return nil, err
	}
	// The mappings hold copies of the text they need, so buf is free for
	// the pagemap entries.
	if err := countPages(open, mappings, buf); err != nil {
		return nil, err
	}
	return mappings, nil
}

// ReleaseAfterEachGC calls [Release] after each garbage collection that ends
// at least minInterval after the previous call, and passes each outcome to
// report. It returns at once, and report runs on a runtime cleanup goroutine.
//
// The Go runtime collects at least every 2 minutes (forcegcperiod in
// runtime/proc.go of Go 1.26). A collection runs the collector's code and
// reads the stack maps of every goroutine's frames in pclntab. In an idle
// fief process that faults about 1 MB of the binary back in.
func ReleaseAfterEachGC(open OpenProcSelf, minInterval time.Duration, report func(Result, error)) {
	armAfterGC(open, time.Now(), minInterval, report)
}

// armAfterGC attaches the next call to the collection of a new object. A
// cleanup runs after the collection that finds its object unreachable, and
// each run arms the next, so exactly one object is armed at a time.
func armAfterGC(open OpenProcSelf, last time.Time, minInterval time.Duration, report func(Result, error)) {
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

// splitWritten sorts mappings into those to drop and those with anonymous
// pages, which go to Skipped.
func splitWritten(mappings []Mapping) Result {
	var result Result
	for _, m := range mappings {
		if m.Anonymous > 0 {
			result.Skipped = append(result.Skipped, m)
			continue
		}
		result.Dropped = append(result.Dropped, m)
	}
	return result
}

func openProcSelf(name string) (int, error) {
	return unix.Open("/proc/self/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
}
