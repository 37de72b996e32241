// Package mount reads the kernel's mount table.
package mount

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Info is one line of /proc/PID/mountinfo, as described in proc_pid_mountinfo(5).
type Info struct {
	ID, Parent   int
	Major, Minor uint32
	Root         string   // root of the mount within its filesystem, unescaped
	MountPoint   string   // unescaped (\040 is a space, \011 a tab, \012 a newline, \134 a backslash)
	Options      string   // per-mount options (field 6), e.g. "rw,nosuid,relatime"
	Optional     []string // optional fields, e.g. "shared:1", "master:3"
	FSType       string   // e.g. "fuse.fuse-zip", "tmpfs"
	Source       string   // unescaped, "" when the kernel prints an empty source
	SuperOptions string   // e.g. "ro,user_id=1000,group_id=1000", "" when the field is missing
}

// ReadMountinfo reads and parses a mountinfo file such as "/proc/self/mountinfo".
// It reads the whole file before parsing, so parsing does not widen the time
// in which the mount table can change between read calls.
//
// NOTE: the kernel returns about one page per read call, so a mount or unmount
// that happens during the read can still show up in only part of the file.
func ReadMountinfo(path string) ([]Info, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading mount table: %w", err)
	}
	infos, err := ParseMountinfo(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("parsing %q: %w", path, err)
	}
	return infos, nil
}

// ParseMountinfo parses the mountinfo format. Blank lines are skipped.
// After the separator "-" it requires the filesystem type and the source,
// which may be empty. A missing super options field gives SuperOptions "",
// and fields after the super options are ignored. An error names the line
// number and quotes the line.
func ParseMountinfo(r io.Reader) ([]Info, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("reading mountinfo: %w", err)
	}

	var infos []Info
	lineNumber := 0
	for line := range strings.Lines(string(data)) {
		lineNumber++
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			continue
		}
		info, err := parseLine(line)
		if err != nil {
			return nil, fmt.Errorf("invalid mountinfo line %d %q: %w", lineNumber, line, err)
		}
		infos = append(infos, info)
	}
	return infos, nil
}

// parseLine parses one line:
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// The kernel separates fields with single spaces and escapes spaces inside
// fields, so splitting on each space keeps an empty source as an empty field.
func parseLine(line string) (Info, error) {
	fields := strings.Split(line, " ")
	if len(fields) < 9 {
		return Info{}, fmt.Errorf("too few fields: found %d, want at least 9", len(fields))
	}
	separator := -1
	for i := 6; i < len(fields); i++ {
		if fields[i] == "-" {
			separator = i
			break
		}
	}
	if separator < 0 {
		return Info{}, errors.New(`missing separator "-" after the optional fields`)
	}
	after := fields[separator+1:]
	if len(after) < 2 {
		return Info{}, fmt.Errorf("too few fields after the separator: found %d, want filesystem type, source and super options", len(after))
	}

	var info Info
	var err error
	if info.ID, err = strconv.Atoi(fields[0]); err != nil {
		return Info{}, fmt.Errorf("invalid mount ID %q: want a decimal number", fields[0])
	}
	if info.Parent, err = strconv.Atoi(fields[1]); err != nil {
		return Info{}, fmt.Errorf("invalid parent ID %q: want a decimal number", fields[1])
	}
	if info.Major, info.Minor, err = parseDevice(fields[2]); err != nil {
		return Info{}, err
	}
	info.Root = unescape(fields[3])
	info.MountPoint = unescape(fields[4])
	info.Options = fields[5]
	if separator > 6 {
		info.Optional = fields[6:separator]
	}
	info.FSType = unescape(after[0])
	if info.FSType == "" {
		return Info{}, errors.New("empty filesystem type")
	}
	info.Source = unescape(after[1])
	if len(after) >= 3 {
		info.SuperOptions = after[2]
	}
	return info, nil
}

// parseDevice parses the "major:minor" field.
func parseDevice(field string) (major, minor uint32, err error) {
	majorText, minorText, found := strings.Cut(field, ":")
	if !found {
		return 0, 0, fmt.Errorf("invalid device %q: want major:minor", field)
	}
	majorValue, majorErr := strconv.ParseUint(majorText, 10, 32)
	minorValue, minorErr := strconv.ParseUint(minorText, 10, 32)
	if majorErr != nil || minorErr != nil {
		return 0, 0, fmt.Errorf("invalid device %q: want decimal major:minor", field)
	}
	return uint32(majorValue), uint32(minorValue), nil
}

// unescape replaces each octal escape \NNN with its byte. The kernel escapes
// space, tab, newline and backslash this way, and newer kernels also "#".
// A backslash that does not start a valid escape is kept as it is.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctalEscape(s[i+1:i+4]) {
			value, _ := strconv.ParseUint(s[i+1:i+4], 8, 8)
			b.WriteByte(byte(value))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// isOctalEscape reports whether digits are three octal digits of at most 0377.
func isOctalEscape(digits string) bool {
	return digits[0] >= '0' && digits[0] <= '3' &&
		digits[1] >= '0' && digits[1] <= '7' &&
		digits[2] >= '0' && digits[2] <= '7'
}

// IsFUSE reports whether the mount is a FUSE filesystem: type "fuse" or
// "fuseblk", or a subtype of either such as "fuse.sshfs".
func (i Info) IsFUSE() bool {
	return i.FSType == "fuse" || i.FSType == "fuseblk" ||
		strings.HasPrefix(i.FSType, "fuse.") || strings.HasPrefix(i.FSType, "fuseblk.")
}

// ConnectionID returns the name of the mount's directory under
// /sys/fs/fuse/connections. The kernel names it by printing the superblock's
// dev_t with %u, and its internal dev_t is MAJOR<<20|MINOR, so for the usual
// major 0 of FUSE mounts the ID equals Minor.
func (i Info) ConnectionID() uint32 {
	return i.Major<<20 | i.Minor
}

// SuperOption returns the value of the super option name, such as
// SuperOption("user_id") → "1000", true. An option without "=" returns "",
// true, and an absent option returns "", false.
func (i Info) SuperOption(name string) (string, bool) {
	for option := range strings.SplitSeq(i.SuperOptions, ",") {
		key, value, _ := strings.Cut(option, "=")
		if key == name {
			return value, true
		}
	}
	return "", false
}

// Shared reports whether the mount is in a shared peer group ("shared:N").
func (i Info) Shared() bool {
	return i.hasOptional("shared:")
}

// Slave reports whether the mount receives propagation from a master peer
// group ("master:N").
func (i Info) Slave() bool {
	return i.hasOptional("master:")
}

func (i Info) hasOptional(prefix string) bool {
	for _, field := range i.Optional {
		if strings.HasPrefix(field, prefix) {
			return true
		}
	}
	return false
}

// Find returns the last entry whose MountPoint equals filepath.Clean(mountPoint).
// The kernel lists a mount after the mounts below it, so with stacked mounts
// on one path the last entry is the topmost, visible one.
func Find(infos []Info, mountPoint string) (Info, bool) {
	clean := filepath.Clean(mountPoint)
	for i := len(infos) - 1; i >= 0; i-- {
		if infos[i].MountPoint == clean {
			return infos[i], true
		}
	}
	return Info{}, false
}
