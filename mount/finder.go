package mount

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
)

// Finder repeatedly looks up a mount point in a mountinfo file. It keeps its
// read buffer between calls and parses only the matching line, so a check
// that runs every second leaves almost no garbage. Parsing the whole
// table with [ParseMountinfo] allocates for every line, each time.
//
// A Finder is not safe for concurrent use.
type Finder struct {
	buf []byte
}

// Find reads a mountinfo file such as /proc/self/mountinfo to its end and
// returns the last mount on filepath.Clean(mountPoint), the one that
// [Find] returns from the parsed table. Unlike [ParseMountinfo], it reports
// an invalid line only when the line has no mount point field or is the
// line it returns.
func (f *Finder) Find(r io.Reader, mountPoint string) (Info, bool, error) {
	data, err := f.read(r)
	if err != nil {
		return Info{}, false, fmt.Errorf("reading mountinfo: %w", err)
	}

	clean := filepath.Clean(mountPoint)
	var match []byte
	matchNumber := 0
	lineNumber := 0
	for len(data) > 0 {
		line := data
		data = nil
		if end := bytes.IndexByte(line, '\n'); end >= 0 {
			line, data = line[:end], line[end+1:]
		}
		lineNumber++
		if len(line) == 0 {
			continue
		}

		field, ok := mountPointField(line)
		if !ok {
			return Info{}, false, fmt.Errorf("invalid mountinfo line %d %q: too few fields, want at least 9", lineNumber, line)
		}
		if mountPointEquals(field, clean) {
			match = line
			matchNumber = lineNumber
		}
	}
	if match == nil {
		return Info{}, false, nil
	}

	info, err := parseLine(string(match))
	if err != nil {
		return Info{}, false, fmt.Errorf("invalid mountinfo line %d %q: %w", matchNumber, match, err)
	}
	return info, true, nil
}

// read reads r to its end into the Finder's buffer, growing it when the
// table no longer fits.
func (f *Finder) read(r io.Reader) ([]byte, error) {
	buf := f.buf[:0]
	if cap(buf) == 0 {
		buf = make([]byte, 0, 4096)
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	f.buf = buf
	return buf, nil
}

// mountPointField returns the fifth space-separated field of a mountinfo
// line, the escaped mount point.
func mountPointField(line []byte) ([]byte, bool) {
	rest := line
	for range 4 {
		space := bytes.IndexByte(rest, ' ')
		if space < 0 {
			return nil, false
		}
		rest = rest[space+1:]
	}
	if space := bytes.IndexByte(rest, ' '); space >= 0 {
		return rest[:space], true
	}
	return nil, false
}

// mountPointEquals reports whether the escaped mount point field names path.
// It decodes escapes as unescape does, without allocating.
func mountPointEquals(field []byte, path string) bool {
	matched := 0
	for i := 0; i < len(field); i++ {
		c := field[i]
		if c == '\\' && i+3 < len(field) && isOctalEscape(string(field[i+1:i+4])) {
			c = (field[i+1]-'0')<<6 | (field[i+2]-'0')<<3 | (field[i+3] - '0')
			i += 3
		}
		if matched >= len(path) || path[matched] != c {
			return false
		}
		matched++
	}
	return matched == len(path)
}
