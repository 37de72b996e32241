package vassal

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"fief/mount"
)

var mountFlagBits = sync.OnceValue(func() map[string]uintptr {
	return map[string]uintptr{
		"bind":    unix.MS_BIND,
		"rec":     unix.MS_REC,
		"ro":      unix.MS_RDONLY,
		"nosuid":  unix.MS_NOSUID,
		"nodev":   unix.MS_NODEV,
		"noexec":  unix.MS_NOEXEC,
		"remount": unix.MS_REMOUNT,
		"move":    unix.MS_MOVE,
		"noatime": unix.MS_NOATIME,
		"sync":    unix.MS_SYNCHRONOUS,
		"dirsync": unix.MS_DIRSYNC,
		"private": unix.MS_PRIVATE,
		"slave":   unix.MS_SLAVE,
		"shared":  unix.MS_SHARED,
	}
})

const propagationBits = unix.MS_PRIVATE | unix.MS_SLAVE | unix.MS_SHARED

// runHook runs one ACTION:ARGS hook. The init runs as root, so for the
// as-user phases it creates directories owned by the vassal's user and
// rejects mounts, which a dropped user could not make.
func (v *vassalInit) runHook(phase Phase, hook *Hook, creds *Credentials) error {
	atexit := phase == PhaseAsUserAtexit || phase == PhaseAsRootAtexit

	switch hook.Action {
	case "exec":
		if atexit {
			return v.runCommandUnstoppable(phase, hook.Argv, creds)
		}
		return v.runCommand(phase, hook.Argv, creds)

	case "mount":
		if creds != nil {
			return fmt.Errorf("mount needs root; move the hook to hook-as-root or hook-pre-jail")
		}
		return runMountHook(hook.Mount)

	case "umount":
		if creds != nil {
			return fmt.Errorf("umount needs root; move the hook to hook-as-root or hook-pre-jail")
		}
		return v.runUmountHook(hook.Mount)

	case "mkdir":
		return makeDir(hook.Path, 0o777, creds)

	case "chdir":
		return os.Chdir(hook.Path)

	case "call", "callret":
		err := callFunction(hook, creds)
		if hook.Action == "call" && err != nil {
			v.log.Warn("call hook failed; call ignores failures, use callret to stop the start", "hook", hook.Text, "err", err)
			return nil
		}
		return err
	}
	return fmt.Errorf("unsupported hook action %q", hook.Action)
}

// runMountHook mounts as mount(8) would for the given flags: a bind mount
// first and its read-only remount second, then any propagation change, since
// the kernel ignores everything else in a call that changes propagation.
func runMountHook(spec *MountSpec) error {
	var flags uintptr
	for _, name := range spec.Flags {
		flags |= mountFlagBits()[name]
	}
	propagation := flags & propagationBits
	flags &^= propagation

	source, fstype := spec.Source, spec.FSType
	if fstype == "none" && flags&(unix.MS_BIND|unix.MS_MOVE|unix.MS_REMOUNT) != 0 {
		fstype = ""
	}

	onlyPropagation := propagation != 0 && flags&^unix.MS_REC == 0 && fstype == "none"
	if !onlyPropagation {
		if err := mount.Mount(source, spec.Target, fstype, flags, spec.Data); err != nil {
			return err
		}
		// A bind mount ignores MS_RDONLY: remounting the bind applies it.
		if flags&unix.MS_BIND != 0 && flags&unix.MS_RDONLY != 0 && flags&unix.MS_REMOUNT == 0 {
			remount := unix.MS_REMOUNT | unix.MS_BIND | (flags &^ (unix.MS_REC | unix.MS_BIND))
			if err := mount.Mount("", spec.Target, "", remount, ""); err != nil {
				return err
			}
		}
	}
	if propagation != 0 {
		return mount.Mount("", spec.Target, "", propagation|(flags&unix.MS_REC), "")
	}
	return nil
}

// runUmountHook unmounts the target; with rec it first unmounts every mount
// below it, deepest first.
func (v *vassalInit) runUmountHook(spec *MountSpec) error {
	flags := 0
	recursive := false
	for _, name := range spec.Flags {
		switch name {
		case "detach":
			flags |= unix.MNT_DETACH
		case "rec":
			recursive = true
		}
	}
	if !recursive {
		return mount.Unmount(spec.Target, flags)
	}

	infos, err := v.readMounts()
	if err != nil {
		return err
	}
	target := strings.TrimSuffix(spec.Target, "/")
	var below []string
	for _, info := range infos {
		if strings.HasPrefix(info.MountPoint, target+"/") {
			below = append(below, info.MountPoint)
		}
	}
	sort.Slice(below, func(i, j int) bool { return len(below[i]) > len(below[j]) })
	for _, path := range below {
		err := mount.Unmount(path, flags)
		// A detached parent takes its children along.
		if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return err
		}
	}
	return mount.Unmount(spec.Target, flags)
}

// makeDir creates path and its parents. For an as-user phase a directory it
// creates belongs to the vassal's user; an existing one is left as it is.
func makeDir(path string, mode os.FileMode, creds *Credentials) error {
	_, statErr := os.Lstat(path)
	existed := statErr == nil
	if err := os.MkdirAll(path, mode); err != nil {
		return err
	}
	if creds != nil && !existed {
		return os.Lchown(path, int(creds.UID), int(creds.GID))
	}
	return nil
}

// callFunction runs the C library functions uWSGI users call through
// call: and callret: hooks.
func callFunction(hook *Hook, creds *Credentials) error {
	switch hook.Func {
	case "chdir":
		return os.Chdir(firstArg(hook.FuncArgs))
	case "sync":
		unix.Sync()
		return nil
	case "mkdir":
		return makeDir(firstArg(hook.FuncArgs), os.FileMode(hook.Mode), creds)
	case "umask":
		unix.Umask(int(hook.Mode))
		return nil
	}
	return fmt.Errorf("unsupported function %q", hook.Func)
}

func firstArg(args []string) string {
	if len(args) == 0 {
		return ""
	}
	return args[0]
}
