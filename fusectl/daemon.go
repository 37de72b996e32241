package fusectl

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"fief/mount"
)

// knownDaemons are FUSE filesystems whose program name does not contain
// "fuse".
var knownDaemons = sync.OnceValue(func() map[string]bool {
	return map[string]bool{
		"sshfs":        true,
		"bindfs":       true,
		"mergerfs":     true,
		"s3fs":         true,
		"gocryptfs":    true,
		"encfs":        true,
		"archivemount": true,
		"ntfs-3g":      true,
		"goofys":       true,
		"curlftpfs":    true,
		"httpfs2":      true,
		"jmtpfs":       true,
		"rclone":       true,
		"ratarmount":   true,
		"cryfs":        true,
		"securefs":     true,
		"lxcfs":        true,
	}
})

// DaemonMountPoint recognises a command that starts a FUSE filesystem and
// returns the mount point it names: the last argument that is neither an
// option nor the value of -o. A program counts as a FUSE daemon when its name
// contains "fuse" (fuse-zip, unionfs-fuse, squashfuse, ...) or is a known
// FUSE filesystem such as sshfs or mergerfs.
//
// NOTE: this is a heuristic over the command line. A mount made by any other
// program is still caught before the program starts when its path is also a
// mountpoint-check.
func DaemonMountPoint(argv []string) (string, bool) {
	if len(argv) < 2 {
		return "", false
	}
	name := filepath.Base(argv[0])
	if !strings.Contains(name, "fuse") && !knownDaemons()[name] {
		return "", false
	}
	// fusermount mounts nothing by itself: it unmounts, or serves a
	// daemon that calls it.
	if strings.HasPrefix(name, "fusermount") {
		return "", false
	}

	args := argv[1:]
	if name == "rclone" {
		if args[0] != "mount" && args[0] != "nfsmount" {
			return "", false
		}
		args = args[1:]
	}

	last := ""
	for i := 0; i < len(args); i++ {
		arg := args[i]
		switch {
		case arg == "-o":
			i++ // the next argument is the option list
		case strings.HasPrefix(arg, "-"):
		default:
			last = arg
		}
	}
	if last == "" || !filepath.IsAbs(last) {
		return "", false
	}
	return filepath.Clean(last), true
}

// FindFUSE returns the topmost FUSE mount on mountPoint in the mount table
// that mounts reads.
func FindFUSE(mounts func() ([]mount.Info, error), mountPoint string) (mount.Info, bool, error) {
	infos, err := mounts()
	if err != nil {
		return mount.Info{}, false, err
	}
	info, ok := mount.Find(infos, mountPoint)
	if !ok || !info.IsFUSE() {
		return mount.Info{}, false, nil
	}
	return info, true, nil
}

// WaitMount waits until a FUSE filesystem is mounted on mountPoint, checking
// the mount table that mounts reads at once and after every change that
// watcher reports. It gives up after timeout or when ctx ends.
func WaitMount(ctx context.Context, watcher *MountWatcher, mounts func() ([]mount.Info, error), mountPoint string, timeout time.Duration) (mount.Info, error) {
	// Subscribe before the first look, so a mount made in between is not
	// missed.
	changes, unsubscribe := watcher.Subscribe()
	defer unsubscribe()

	timer := time.NewTimer(timeout)
	defer timer.Stop()

	for {
		info, ok, err := FindFUSE(mounts, mountPoint)
		if err != nil {
			return mount.Info{}, err
		}
		if ok {
			return info, nil
		}

		select {
		case <-changes:
		case <-timer.C:
			return mount.Info{}, fmt.Errorf("waiting for a FUSE mount on %q: none appeared within %v", mountPoint, timeout)
		case <-ctx.Done():
			return mount.Info{}, fmt.Errorf("waiting for a FUSE mount on %q: %w", mountPoint, ctx.Err())
		}
	}
}
