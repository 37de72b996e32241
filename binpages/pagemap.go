package binpages

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"golang.org/x/sys/unix"
)

// Flags of a /proc/PID/pagemap entry, from proc_pid_pagemap(5).
const (
	pagemapPresent = 1 << 63 // the page is in RAM
	pagemapSwapped = 1 << 62 // the page is in swap, or under migration
	pagemapFile    = 1 << 61 // the page belongs to a file or to shared anonymous memory
)

// pagemapEntrySize is the size of an entry of /proc/PID/pagemap in bytes.
const pagemapEntrySize = 8

// countPages sets Rss and Anonymous of each mapping from its entries in
// /proc/self/pagemap, read with one pread per mapping into buf, which is
// replaced once when it is too small for the largest mapping.
func countPages(open OpenProcSelf, mappings []Mapping, buf []byte) error {
	fd, err := open("pagemap")
	if err != nil {
		return fmt.Errorf("opening %q: %w", "/proc/self/pagemap", err)
	}
	defer unix.Close(fd)

	pageSize := uintptr(unix.Getpagesize())
	entriesSize := func(m Mapping) int {
		return int((m.End - m.Start) / pageSize * pagemapEntrySize)
	}
	largest := 0
	for _, m := range mappings {
		largest = max(largest, entriesSize(m))
	}
	if cap(buf) < largest {
		buf = make([]byte, largest)
	}

	for i := range mappings {
		m := &mappings[i]
		entries := buf[:entriesSize(*m)]
		offset := int64(m.Start / pageSize * pagemapEntrySize)
		if err := preadFull(fd, entries, offset); err != nil {
			return fmt.Errorf("reading the pagemap entries of %s %x-%x: %w", m.Path, m.Start, m.End, err)
		}
		m.Rss, m.Anonymous = countEntries(entries, int64(pageSize))
	}
	return nil
}

// countEntries returns the bytes of resident pages and of anonymous pages,
// resident or swapped, that entries describe.
//
// A page without the file flag is anonymous. In a private file mapping that
// is the copy a write made. Swap holds only anonymous pages, and a swapped
// entry with the file flag is a file page under migration
// (pte_to_pagemap_entry in fs/proc/task_mmu.c).
func countEntries(entries []byte, pageSize int64) (rss, anonymous int64) {
	for i := 0; i+pagemapEntrySize <= len(entries); i += pagemapEntrySize {
		entry := binary.NativeEndian.Uint64(entries[i:])
		if entry&pagemapPresent != 0 {
			rss += pageSize
		}
		if entry&(pagemapPresent|pagemapSwapped) != 0 && entry&pagemapFile == 0 {
			anonymous += pageSize
		}
	}
	return rss, anonymous
}

// preadFull fills buf from fd at offset.
func preadFull(fd int, buf []byte, offset int64) error {
	for len(buf) > 0 {
		n, err := unix.Pread(fd, buf, offset)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
		buf = buf[n:]
		offset += int64(n)
	}
	return nil
}
