package vassal

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"fief/fusectl"
	"fief/mount"
)

// pivotRoot moves the vassal into the pivot_root directory and leaves the
// old root at the given place for the as-root steps, which usually mount
// /proc, bind /dev from the old root and detach it.
func (v *vassalInit) pivotRoot() error {
	pr := v.cfg.PivotRoot
	stepErr := func(err error) error {
		return &StepError{File: v.cfg.File, Line: pr.Line, Phase: "pivot_root", Text: pr.New + " " + pr.Old, Err: err}
	}

	infos, err := v.readMounts()
	if err != nil {
		return stepErr(err)
	}
	newRoot, isMount := mount.Find(infos, pr.New)
	if !isMount {
		if err := mount.BindSelf(pr.New); err != nil {
			return stepErr(fmt.Errorf("making %q a mount point: %w", pr.New, err))
		}
	}

	// pivot_root(2) moves every process whose root or working directory is
	// the old root into the new one. A FUSE daemon serving the new root
	// whose root is the old root would then resolve its branches by
	// absolute path through its own mount and wait on itself for ever.
	// Its working directory moving along is harmless when it uses absolute
	// paths, as unionfs-fuse with chroot= does.
	if isMount && newRoot.IsFUSE() {
		// A daemon may set its root while it handles FUSE_INIT, after
		// the mount is already visible, as unionfs-fuse does for
		// chroot=. The kernel queues every request until INIT gets its
		// reply, so a statfs that returns means the daemon is done.
		if err := v.probeAsMounter(newRoot, pr.New); err != nil {
			return stepErr(fmt.Errorf("the FUSE filesystem of the new root did not respond: %w", err))
		}
		if err := v.checkDaemonRoots(); err != nil {
			return stepErr(err)
		}
	}

	if err := os.MkdirAll(pr.Old, 0o700); err != nil {
		return stepErr(fmt.Errorf("creating the place for the old root: %w", err))
	}
	if err := mount.PivotRoot(pr.New, pr.Old); err != nil {
		return stepErr(err)
	}
	v.log.Info("pivoted into the new root", "new_root", pr.New, "old_root", strings.TrimPrefix(pr.Old, pr.New))
	return nil
}

// probeAsMounter runs one statfs on path with the credentials of the user
// who made the mount, waiting at most fuse-mount-timeout.
func (v *vassalInit) probeAsMounter(info mount.Info, path string) error {
	prober, err := fusectl.NewProber(superOptionID(info, "user_id"), superOptionID(info, "group_id"))
	if err != nil {
		return err
	}
	defer prober.Close()
	return prober.Probe(path, v.cfg.FuseMountTimeout)
}

// checkDaemonRoots returns an error naming every process that holds
// /dev/fuse open and has the current root as its root.
func (v *vassalInit) checkDaemonRoots() error {
	entries, err := v.procDir.ReadDir(-1)
	if err != nil {
		return fmt.Errorf("listing the vassal's processes: %w", err)
	}

	var culprits []string
	for _, entry := range entries {
		pid, err := strconv.Atoi(entry.Name())
		if err != nil || pid == 1 {
			continue
		}
		proc := filepath.Join("/proc", entry.Name())
		if !holdsFUSEDevice(proc) {
			continue
		}
		// readlink never reaches into a FUSE filesystem, unlike stat.
		root, _ := os.Readlink(filepath.Join(proc, "root"))
		if root == "/" {
			comm, _ := os.ReadFile(filepath.Join(proc, "comm"))
			culprits = append(culprits, fmt.Sprintf("%s (pid %d in the vassal)", strings.TrimSpace(string(comm)), pid))
		}
	}
	if len(culprits) > 0 {
		return fmt.Errorf("pivot_root would move FUSE daemon %s, whose root is /, into its own mount and deadlock; start it with another root, e.g. unionfs-fuse -o chroot=DIR", strings.Join(culprits, ", "))
	}
	return nil
}

func holdsFUSEDevice(proc string) bool {
	fds, err := os.ReadDir(filepath.Join(proc, "fd"))
	if err != nil {
		return false
	}
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join(proc, "fd", fd.Name()))
		if err == nil && target == "/dev/fuse" {
			return true
		}
	}
	return false
}
