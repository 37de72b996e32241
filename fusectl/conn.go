package fusectl

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"fief/mount"
)

// ConnectionsDir is the directory of the FUSE control filesystem, with one
// subdirectory per connection.
const ConnectionsDir = "/sys/fs/fuse/connections"

// Control is an open FUSE control filesystem. It holds a directory
// descriptor, so it keeps working after pivot_root moves the old root away.
type Control struct {
	dir *os.File
}

// controlMagic is the f_type that statfs(2) returns for the FUSE control
// filesystem (fusectl), FUSECTL_SUPER_MAGIC in Linux's linux/magic.h.
const controlMagic = 0x65735543

// OpenControl opens the FUSE control filesystem on ConnectionsDir, mounting
// it first when statfs(2) finds another filesystem there. statfs reads only
// the directory's superblock, which costs a vassal init far less than
// reading and parsing its mount table.
func OpenControl() (*Control, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(ConnectionsDir, &fs); err != nil {
		return nil, fmt.Errorf("checking the FUSE control filesystem on %q (is the fuse module loaded?): %w", ConnectionsDir, err)
	}
	if fs.Type != controlMagic {
		if err := mount.Mount("fusectl", ConnectionsDir, "fusectl", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return nil, fmt.Errorf("mounting the FUSE control filesystem (is the fuse module loaded?): %w", err)
		}
	}

	dir, err := os.Open(ConnectionsDir)
	if err != nil {
		return nil, fmt.Errorf("opening the FUSE control filesystem: %w", err)
	}
	return &Control{dir: dir}, nil
}

// Abort aborts the FUSE connection with the given id (see
// [mount.Info.ConnectionID]). Every request waiting on the daemon, and every
// later one, then fails with ENOTCONN, so no process stays stuck in D state.
func (c *Control) Abort(id uint32) error {
	name := strconv.FormatUint(uint64(id), 10) + "/abort"
	fd, err := unix.Openat(int(c.dir.Fd()), name, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		// The connection is already gone: nothing waits on it.
		return nil
	}
	if err != nil {
		return fmt.Errorf("opening %q: %w", ConnectionsDir+"/"+name, err)
	}
	defer unix.Close(fd)
	if _, err := unix.Write(fd, []byte("1")); err != nil {
		return fmt.Errorf("aborting FUSE connection %d: %w", id, err)
	}
	return nil
}

// Waiting returns the number of requests waiting on connection id.
func (c *Control) Waiting(id uint32) (int, error) {
	name := strconv.FormatUint(uint64(id), 10) + "/waiting"
	fd, err := unix.Openat(int(c.dir.Fd()), name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("opening %q: %w", ConnectionsDir+"/"+name, err)
	}
	file := os.NewFile(uintptr(fd), name)
	defer file.Close()

	buf := make([]byte, 32)
	n, err := file.Read(buf)
	if err != nil {
		return 0, fmt.Errorf("reading %q: %w", ConnectionsDir+"/"+name, err)
	}
	count, err := strconv.Atoi(string(trimNewline(buf[:n])))
	if err != nil {
		return 0, fmt.Errorf("parsing %q: %w", ConnectionsDir+"/"+name, err)
	}
	return count, nil
}

// Close closes the directory descriptor.
func (c *Control) Close() error {
	return c.dir.Close()
}

func trimNewline(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}
