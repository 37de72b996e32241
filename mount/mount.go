// Package mount wraps the mount system calls fief uses inside a vassal's
// mount namespace, parses mountinfo, and moves a process into a new root.
package mount

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// Error is a failed mount or unmount, with every argument that was passed.
type Error struct {
	Op     string // "mount" or "umount"
	Source string
	Target string
	FSType string
	Flags  uintptr
	Data   string
	Err    error
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s", e.Op)
	if e.FSType != "" {
		fmt.Fprintf(&b, " type=%s", e.FSType)
	}
	if e.Source != "" {
		fmt.Fprintf(&b, " source=%q", e.Source)
	}
	fmt.Fprintf(&b, " target=%q", e.Target)
	if e.Flags != 0 {
		if e.Op == "umount" {
			fmt.Fprintf(&b, " flags=%s", UnmountFlagString(int(e.Flags)))
		} else {
			fmt.Fprintf(&b, " flags=%s", FlagString(e.Flags))
		}
	}
	if e.Data != "" {
		fmt.Fprintf(&b, " data=%q", e.Data)
	}
	fmt.Fprintf(&b, ": %v", e.Err)
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

var mountFlagNames = []struct {
	flag uintptr
	name string
}{
	{unix.MS_RDONLY, "MS_RDONLY"},
	{unix.MS_NOSUID, "MS_NOSUID"},
	{unix.MS_NODEV, "MS_NODEV"},
	{unix.MS_NOEXEC, "MS_NOEXEC"},
	{unix.MS_SYNCHRONOUS, "MS_SYNCHRONOUS"},
	{unix.MS_REMOUNT, "MS_REMOUNT"},
	{unix.MS_DIRSYNC, "MS_DIRSYNC"},
	{unix.MS_NOATIME, "MS_NOATIME"},
	{unix.MS_BIND, "MS_BIND"},
	{unix.MS_MOVE, "MS_MOVE"},
	{unix.MS_REC, "MS_REC"},
	{unix.MS_PRIVATE, "MS_PRIVATE"},
	{unix.MS_SLAVE, "MS_SLAVE"},
	{unix.MS_SHARED, "MS_SHARED"},
}

// FlagString renders mount flags symbolically, e.g. "MS_BIND|MS_REC".
func FlagString(flags uintptr) string {
	var names []string
	for _, f := range mountFlagNames {
		if flags&f.flag != 0 {
			names = append(names, f.name)
			flags &^= f.flag
		}
	}
	if flags != 0 {
		names = append(names, fmt.Sprintf("%#x", flags))
	}
	return strings.Join(names, "|")
}

// UnmountFlagString renders umount2 flags symbolically.
func UnmountFlagString(flags int) string {
	var names []string
	if flags&unix.MNT_DETACH != 0 {
		names = append(names, "MNT_DETACH")
		flags &^= unix.MNT_DETACH
	}
	if flags&unix.MNT_FORCE != 0 {
		names = append(names, "MNT_FORCE")
		flags &^= unix.MNT_FORCE
	}
	if flags != 0 {
		names = append(names, fmt.Sprintf("%#x", flags))
	}
	return strings.Join(names, "|")
}

// Mount calls mount(2) and returns an *Error on failure.
func Mount(source, target, fstype string, flags uintptr, data string) error {
	for {
		err := unix.Mount(source, target, fstype, flags, data)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return &Error{Op: "mount", Source: source, Target: target, FSType: fstype, Flags: flags, Data: data, Err: err}
		}
		return nil
	}
}

// Unmount calls umount2(2) and returns an *Error on failure.
func Unmount(target string, flags int) error {
	for {
		err := unix.Unmount(target, flags)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return &Error{Op: "umount", Target: target, Flags: uintptr(flags), Err: err}
		}
		return nil
	}
}

// MakeTreeSlave makes every mount of this mount namespace a slave of its peer
// group, so that mounts made afterwards never propagate back to the parent
// namespace, while unmounts on the host still propagate in and do not leave
// host filesystems pinned busy. A new mount namespace created with CLONE_NEWNS
// copies the propagation of the host, and on systemd hosts "/" is shared.
func MakeTreeSlave() error {
	return Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, "")
}

// MakeTreePrivate is like [MakeTreeSlave] but also cuts propagation from the
// host.
func MakeTreePrivate() error {
	return Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, "")
}
