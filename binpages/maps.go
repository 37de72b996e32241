package binpages

import (
	"bytes"
	"errors"
	"fmt"
	"iter"
	"strconv"

	"golang.org/x/sys/unix"
)

// mapsBufferSize is the initial size of the buffer for /proc/self/maps,
// which grows for a larger file. The maps file of a fief emperor or vassal
// init has about 30 lines, under 2 kB. The buffer then holds the pagemap
// entries, and 4096 bytes cover 2 MB of 4 kB pages, more than each of the
// binary's text (1.5 MB) and rodata (1.7 MB).
const mapsBufferSize = 4096

// readMaps returns the content of /proc/self/maps. The kernel returns at
// most a page of it per read, so the reads go on until one returns 0 bytes.
func readMaps(open OpenProcSelf) ([]byte, error) {
	fd, err := open("maps")
	if err != nil {
		return nil, fmt.Errorf("opening %q: %w", "/proc/self/maps", err)
	}
	defer unix.Close(fd)

	buf := make([]byte, mapsBufferSize)
	length := 0
	for {
		if length == len(buf) {
			bigger := make([]byte, 2*len(buf))
			copy(bigger, buf)
			buf = bigger
		}
		n, err := unix.Read(fd, buf[length:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading %q: %w", "/proc/self/maps", err)
		}
		if n == 0 {
			return buf[:length], nil
		}
		length += n
	}
}

// mapsLine is a parsed line of /proc/PID/maps. Its byte slices point into
// the text of the file, so parsing a line allocates nothing.
type mapsLine struct {
	start, end uintptr
	perms      []byte
	device     []byte
	inode      uint64
	path       []byte
}

func (l mapsLine) contains(addr uintptr) bool { return l.start <= addr && addr < l.end }

// readOnlyPrivate reports whether the mapping is neither writable nor shared.
func (l mapsLine) readOnlyPrivate() bool { return l.perms[1] != 'w' && l.perms[3] == 'p' }

func (l mapsLine) mapping() Mapping {
	return Mapping{
		Start:  l.start,
		End:    l.end,
		Perms:  string(l.perms),
		Device: string(l.device),
		Inode:  l.inode,
		Path:   string(l.path),
	}
}

// findFileMappings returns the read-only, private mappings in maps of the
// file whose mapping contains addr, matched by device and inode. Rss and
// Anonymous are left at zero.
func findFileMappings(maps []byte, addr uintptr) ([]Mapping, error) {
	var file mapsLine
	found := false
	for line, err := range mapsLines(maps) {
		if err != nil {
			return nil, err
		}
		if line.contains(addr) {
			file, found = line, true
			break
		}
	}
	if !found {
		return nil, fmt.Errorf("finding the mapping of address %#x in /proc/self/maps: no mapping contains it", addr)
	}
	if file.inode == 0 {
		return nil, fmt.Errorf("finding the binary's mapping: address %#x lies in %x-%x, which is not backed by a file", addr, file.start, file.end)
	}

	// A Go binary has a text and a read-only data mapping.
	mappings := make([]Mapping, 0, 2)
	for line, err := range mapsLines(maps) {
		if err != nil {
			return nil, err
		}
		if line.inode == file.inode && bytes.Equal(line.device, file.device) && line.readOnlyPrivate() {
			mappings = append(mappings, line.mapping())
		}
	}
	return mappings, nil
}

// mapsLines yields the parsed lines of maps. At the first invalid line it
// yields the error and stops.
func mapsLines(maps []byte) iter.Seq2[mapsLine, error] {
	return func(yield func(mapsLine, error) bool) {
		rest := maps
		for number := 1; len(rest) > 0; number++ {
			var text []byte
			text, rest, _ = bytes.Cut(rest, []byte("\n"))
			line, err := parseMapsLine(text)
			if err != nil {
				yield(mapsLine{}, fmt.Errorf("line %d of /proc/self/maps: %w", number, err))
				return
			}
			if !yield(line, nil) {
				return
			}
		}
	}
}

// parseMapsLine parses a line of the maps format of proc_pid_maps(5):
// "start-end perms offset dev inode [path]", with single spaces between
// fields and spaces before the path that align it to a column. The path may
// contain spaces, and a removed file's path ends in " (deleted)".
//
// NOTE: a path that starts with spaces loses them, because they cannot be
// distinguished from the alignment.
func parseMapsLine(text []byte) (mapsLine, error) {
	bounds, rest, _ := bytes.Cut(text, []byte(" "))
	perms, rest, _ := bytes.Cut(rest, []byte(" "))
	_, rest, _ = bytes.Cut(rest, []byte(" ")) // the offset in the file
	device, rest, _ := bytes.Cut(rest, []byte(" "))
	inodeText, rest, _ := bytes.Cut(rest, []byte(" "))
	if len(inodeText) == 0 {
		return mapsLine{}, fmt.Errorf("invalid mapping line %q: want at least 5 fields", text)
	}

	startText, endText, ok := bytes.Cut(bounds, []byte("-"))
	if !ok {
		return mapsLine{}, fmt.Errorf("invalid address range %q: want START-END", bounds)
	}
	start, err := strconv.ParseUint(string(startText), 16, 64)
	if err != nil {
		return mapsLine{}, fmt.Errorf("invalid address range %q: %w", bounds, err)
	}
	end, err := strconv.ParseUint(string(endText), 16, 64)
	if err != nil {
		return mapsLine{}, fmt.Errorf("invalid address range %q: %w", bounds, err)
	}
	if len(perms) != 4 {
		return mapsLine{}, fmt.Errorf("invalid permissions %q: want 4 characters such as r-xp", perms)
	}
	inode, err := strconv.ParseUint(string(inodeText), 10, 64)
	if err != nil {
		return mapsLine{}, fmt.Errorf("invalid inode %q: %w", inodeText, err)
	}

	return mapsLine{
		start:  uintptr(start),
		end:    uintptr(end),
		perms:  perms,
		device: device,
		inode:  inode,
		path:   bytes.TrimLeft(rest, " "),
	}, nil
}
