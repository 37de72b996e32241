package vassal

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"fief/fusectl"
	"fief/mount"
)

// mountChecks watches every mountpoint-check path of a vassal. Each path has
// its own goroutine and probing thread, so a hung daemon behind one path
// delays neither the others nor the init's loop.
type mountChecks struct {
	// failures receives the first failure of each check.
	failures chan error

	checks []*mountCheck
	done   chan struct{}
	wg     sync.WaitGroup
}

type mountCheck struct {
	path    string
	line    int
	mounted mount.Info // the mount found on path at start
	prober  *fusectl.Prober
	trigger chan struct{}
	// finder keeps the read buffer of the mount table between checks.
	finder mount.Finder
}

// startChecks finds the mount on each mountpoint-check path, waiting up to
// fuse-mount-timeout for it to appear, probes it once, and starts watching.
func (v *vassalInit) startChecks() (*mountChecks, error) {
	mc := &mountChecks{
		failures: make(chan error, len(v.cfg.MountpointChecks)+1),
		done:     make(chan struct{}),
	}

	for _, c := range v.cfg.MountpointChecks {
		check, err := v.newMountCheck(c)
		if err != nil {
			mc.close()
			return nil, &StepError{File: v.cfg.File, Line: c.Line, Phase: "mountpoint-check", Text: c.Path, Err: err}
		}
		mc.checks = append(mc.checks, check)
	}

	healthy := make([]MountStatus, 0, len(mc.checks))
	for _, check := range mc.checks {
		healthy = append(healthy, MountStatus{Path: check.path, Healthy: true})
	}
	v.status.set(healthy)

	if len(mc.checks) == 0 {
		// No goroutine or ticker starts, so a vassal without checks
		// never wakes while its program runs.
		return mc, nil
	}
	for _, check := range mc.checks {
		mc.wg.Add(1)
		go v.watchMount(mc, check)
	}
	mc.wg.Add(1)
	go v.fanOutTriggers(mc)
	return mc, nil
}

func (v *vassalInit) newMountCheck(c Check) (*mountCheck, error) {
	info, err := v.waitMountPoint(c.Path)
	if err != nil {
		return nil, err
	}

	// Probe as the user who mounted it: the kernel does not ask the daemon
	// for anyone else's statfs.
	var uid, gid uint32
	if info.IsFUSE() {
		uid = superOptionID(info, "user_id")
		gid = superOptionID(info, "group_id")
	}
	prober, err := fusectl.NewProber(uid, gid)
	if err != nil {
		return nil, err
	}

	if err := prober.Probe(c.Path, v.cfg.CheckTimeout); err != nil {
		prober.Close()
		return nil, fmt.Errorf("the mount did not respond to statfs: %w", err)
	}

	v.log.Info("watching mount", "mount_point", c.Path, "fstype", info.FSType, "mount_id", info.ID,
		"probe_uid", uid, "interval", v.cfg.CheckInterval, "timeout", v.cfg.CheckTimeout)
	return &mountCheck{path: c.Path, line: c.Line, mounted: info, prober: prober, trigger: make(chan struct{}, 1)}, nil
}

func superOptionID(info mount.Info, name string) uint32 {
	text, ok := info.SuperOption(name)
	if !ok {
		return 0
	}
	id, err := strconv.ParseUint(text, 10, 32)
	if err != nil {
		return 0
	}
	return uint32(id)
}

// waitMountPoint returns the mount on path, waiting up to fuse-mount-timeout
// for one to appear.
func (v *vassalInit) waitMountPoint(path string) (mount.Info, error) {
	changes, unsubscribe := v.watcher.Subscribe()
	defer unsubscribe()

	timer := time.NewTimer(v.cfg.FuseMountTimeout)
	defer timer.Stop()
	for {
		infos, err := v.readMounts()
		if err != nil {
			return mount.Info{}, err
		}
		if info, ok := mount.Find(infos, path); ok {
			return info, nil
		}

		select {
		case <-changes:
		case <-timer.C:
			return mount.Info{}, fmt.Errorf("%q is not a mount point %v after the start-up steps; mount a filesystem there in a start-up step or remove the check", path, v.cfg.FuseMountTimeout)
		case <-v.ctx.Done():
			return mount.Info{}, v.ctx.Err()
		}
	}
}

// fanOutTriggers passes each request to run the checks now, and each tick of
// the check interval, to every check.
func (v *vassalInit) fanOutTriggers(mc *mountChecks) {
	defer mc.wg.Done()
	ticker := time.NewTicker(v.cfg.CheckInterval)
	defer ticker.Stop()
	for {
		select {
		case <-v.triggers:
		case <-ticker.C:
		case <-mc.done:
			return
		}
		for _, check := range mc.checks {
			select {
			case check.trigger <- struct{}{}:
			default:
			}
		}
	}
}

// watchMount checks one path on every trigger until it fails once.
func (v *vassalInit) watchMount(mc *mountChecks, check *mountCheck) {
	defer mc.wg.Done()
	for {
		select {
		case <-check.trigger:
		case <-mc.done:
			return
		}

		if err := v.checkMount(check); err != nil {
			v.status.fail(check.path, err.Error())
			mc.failures <- &StepError{File: v.cfg.File, Line: check.line, Phase: "mountpoint-check", Text: check.path, Err: err}
			return
		}
	}
}

// checkMount verifies that the mount found at start is still on the path
// and responds to statfs. A hung FUSE daemon's connection is aborted so that no
// process stays blocked on it.
func (v *vassalInit) checkMount(check *mountCheck) error {
	current, ok, err := v.findMount(&check.finder, check.path)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("no longer a mount point: the filesystem was unmounted")
	}
	if current.ID != check.mounted.ID {
		return fmt.Errorf("the %s mount (id %d) left the mount table; %s (id %d) is there now",
			check.mounted.FSType, check.mounted.ID, current.FSType, current.ID)
	}

	err = check.prober.Probe(check.path, v.cfg.CheckTimeout)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENOTCONN):
		return fmt.Errorf("the FUSE daemon is gone (ENOTCONN): %w", err)
	case errors.Is(err, unix.ECONNABORTED):
		// What a probe in flight gets when the daemon dies under it.
		return fmt.Errorf("the FUSE daemon is gone (ECONNABORTED): %w", err)
	case errors.Is(err, fusectl.ErrProbeTimeout) && check.mounted.IsFUSE():
		id := check.mounted.ConnectionID()
		if v.control == nil {
			return fmt.Errorf("the FUSE daemon hangs (%w), and the FUSE control filesystem is not available to abort connection %d", err, id)
		}
		if abortErr := v.control.Abort(id); abortErr != nil {
			return fmt.Errorf("the FUSE daemon hangs (%w), and aborting connection %d failed: %v", err, id, abortErr)
		}
		return fmt.Errorf("the FUSE daemon hangs; aborted connection %d: %w", id, err)
	default:
		return err
	}
}

// findMount looks up path in the vassal's mount table. Unlike readMounts, it
// parses only the line of path, which keeps the garbage of a check that runs
// every second small.
func (v *vassalInit) findMount(finder *mount.Finder, path string) (mount.Info, bool, error) {
	file, err := v.openMountinfo()
	if err != nil {
		return mount.Info{}, false, err
	}
	defer file.Close()
	return finder.Find(file, path)
}

// close stops every check goroutine and probing thread. A probe stuck in a
// hung daemon keeps its thread until the connection is aborted or the init
// exits.
func (mc *mountChecks) close() {
	close(mc.done)
	for _, check := range mc.checks {
		check.prober.Close()
	}
}
