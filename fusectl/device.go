package fusectl

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"fief/mount"
)

// DevicePath is the FUSE device node.
const DevicePath = "/dev/fuse"

// DeviceOpenToAll reports whether every user may open /dev/fuse. udev makes
// it mode 0666, but the kernel creates it 0600 on devtmpfs, and hosts or
// containers without udev keep that mode. libfuse 2 then fails to mount as a
// non-root user ("failed to open /dev/fuse: Permission denied") without
// trying its setuid fusermount helper.
func DeviceOpenToAll() (bool, error) {
	var st unix.Stat_t
	if err := unix.Stat(DevicePath, &st); err != nil {
		return false, fmt.Errorf("checking %q: %w", DevicePath, err)
	}
	return st.Mode&0o006 == 0o006, nil
}

// ShareDevice gives every user of this mount namespace access to /dev/fuse,
// as udev does on a stock system, without touching the host's node. It
// creates a mode 0666 node for the same device in dir and binds that node
// over /dev/fuse. Call it only in a private or slave mount namespace. dir
// must be on a filesystem mounted without nodev, such as a fresh tmpfs.
func ShareDevice(dir string) error {
	var st unix.Stat_t
	if err := unix.Stat(DevicePath, &st); err != nil {
		return fmt.Errorf("checking %q (is the fuse module loaded?): %w", DevicePath, err)
	}

	node := filepath.Join(dir, "fuse")
	if err := unix.Mknod(node, unix.S_IFCHR|0o666, int(st.Rdev)); err != nil {
		return fmt.Errorf("creating device node %q: %w", node, err)
	}
	// mknod applies the umask, so set the mode again.
	if err := os.Chmod(node, 0o666); err != nil {
		return fmt.Errorf("setting the mode of %q: %w", node, err)
	}

	if err := mount.Mount(node, DevicePath, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("binding %q over %q: %w", node, DevicePath, err)
	}
	return nil
}
