package vassal

import (
	"time"

	"golang.org/x/sys/unix"

	"fief/fusectl"
	"fief/mount"
)

// staleProbeTimeout bounds the probe of a FUSE mount found before start-up.
const staleProbeTimeout = time.Second

// detachDeadMounts detaches, in the vassal's own mount namespace, every
// dead FUSE mount on a path the vassal is about to mount or check. Such a
// mount comes from the parent namespace, where a daemon died without its
// mount being removed. Left in place, it would lie under the vassal's new
// daemon, and a check of the path could see the dead one. Detaching in the
// vassal's namespace leaves the parent's mount table alone.
func (v *vassalInit) detachDeadMounts() {
	paths := make(map[string]bool)
	for _, check := range v.cfg.MountpointChecks {
		paths[check.Path] = true
	}
	for _, steps := range v.cfg.Steps {
		for _, step := range steps {
			if path, ok := fusectl.DaemonMountPoint(step.Argv()); ok {
				paths[path] = true
			}
		}
	}
	if len(paths) == 0 {
		return
	}

	infos, err := v.readMounts()
	if err != nil {
		v.log.Warn("reading the mount table to find dead FUSE mounts failed", "err", err)
		return
	}
	for path := range paths {
		for {
			info, ok := mount.Find(infos, path)
			if !ok || !info.IsFUSE() || v.mountAnswers(info, path) {
				break
			}
			if err := mount.Unmount(path, unix.MNT_DETACH); err != nil {
				v.log.Warn("detaching a dead FUSE mount failed", "mount_point", path, "err", err)
				break
			}
			v.log.Info("detached a dead FUSE mount inherited from the parent namespace", "mount_point", path, "fstype", info.FSType)
			if infos, err = v.readMounts(); err != nil {
				return
			}
		}
	}
}

// mountAnswers probes a mount as its mounter. A probe that times out keeps
// its thread until the daemon responds or the init exits.
func (v *vassalInit) mountAnswers(info mount.Info, path string) bool {
	prober, err := fusectl.NewProber(superOptionID(info, "user_id"), superOptionID(info, "group_id"))
	if err != nil {
		return true
	}
	defer prober.Close()
	return prober.Probe(path, staleProbeTimeout) == nil
}
