package fusectl

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ErrProbeTimeout means statfs on a FUSE mount did not return in time: the
// daemon is alive but does not respond.
var ErrProbeTimeout = errors.New("FUSE daemon did not respond to statfs in time")

// ErrProberClosed means the probe was requested after [Prober.Close].
var ErrProberClosed = errors.New("prober closed")

// Prober runs statfs on one mount from a dedicated OS thread that carries the
// credentials of the user who mounted it.
//
// The kernel returns a zero-filled success for statfs on a FUSE mount,
// without asking the daemon, when the caller is not the mounter and the mount
// has no allow_other. Probing as root would therefore never see a dead or hung
// daemon of a mount made by a vassal's user. The thread switches its real,
// effective and saved ids with raw setresgid/setresuid calls, which change
// only the calling thread, and stays locked to the probing goroutine so no
// other goroutine ever runs with those ids.
type Prober struct {
	requests  chan probeRequest
	busy      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

type probeRequest struct {
	path   string
	result chan error
}

// NewProber starts the probing thread with the given ids. With uid and gid 0
// the thread keeps the caller's credentials.
func NewProber(uid, gid uint32) (*Prober, error) {
	p := &Prober{
		requests: make(chan probeRequest),
		// One slot: at most one probe is in flight. A probe stuck in a hung
		// daemon pins its thread until the connection is aborted, and
		// stacking more would pin more threads.
		busy: make(chan struct{}, 1),
		done: make(chan struct{}),
	}

	started := make(chan error, 1)
	go p.loop(uid, gid, started)
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

func (p *Prober) loop(uid, gid uint32, started chan<- error) {
	// The probing goroutine never unlocks, so when it ends the runtime ends
	// the thread with its changed ids instead of reusing it.
	runtime.LockOSThread()

	// The kernel clears a thread's parent-death signal when the thread
	// changes its credentials. A vassal init has its parent-death signal on
	// its main thread, the one that called execve, so a probe thread with
	// other ids must not be the main thread, or the init outlives a killed
	// parent. While this goroutine holds the main thread, a new goroutine
	// runs on another thread.
	if (uid != 0 || gid != 0) && unix.Gettid() == unix.Getpid() {
		moved := make(chan error, 1)
		go p.loop(uid, gid, moved)
		err := <-moved
		runtime.UnlockOSThread()
		started <- err
		return
	}

	if uid != 0 || gid != 0 {
		if _, _, errno := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(gid), uintptr(gid), uintptr(gid)); errno != 0 {
			started <- fmt.Errorf("switching the probe thread to gid %d: %w", gid, errno)
			return
		}
		if _, _, errno := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)); errno != 0 {
			started <- fmt.Errorf("switching the probe thread to uid %d: %w", uid, errno)
			return
		}
	}
	started <- nil

	for {
		var req probeRequest
		select {
		case req = <-p.requests:
		case <-p.done:
			return
		}

		var st unix.Statfs_t
		var err error
		for {
			err = unix.Statfs(req.path, &st)
			if !errors.Is(err, unix.EINTR) {
				break
			}
		}
		// Free the slot before handing out the result, so a probe that
		// follows at once finds the thread idle.
		<-p.busy
		req.result <- err
	}
}

// Probe runs statfs on path and waits at most timeout. It returns nil when the
// filesystem responded, the statfs error (ENOTCONN for a dead daemon), or
// [ErrProbeTimeout]. When an earlier probe is still stuck, Probe returns
// ErrProbeTimeout at once without starting another.
func (p *Prober) Probe(path string, timeout time.Duration) error {
	select {
	case <-p.done:
		return fmt.Errorf("probing %q: %w", path, ErrProberClosed)
	default:
	}

	select {
	case p.busy <- struct{}{}:
	default:
		return fmt.Errorf("probing %q: %w (an earlier probe is still waiting)", path, ErrProbeTimeout)
	}

	req := probeRequest{path: path, result: make(chan error, 1)}
	select {
	case p.requests <- req:
	case <-p.done:
		<-p.busy
		return fmt.Errorf("probing %q: %w", path, ErrProberClosed)
	}

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case err := <-req.result:
		if err != nil {
			return fmt.Errorf("probing %q: %w", path, err)
		}
		return nil
	case <-timer.C:
		return fmt.Errorf("probing %q after %v: %w", path, timeout, ErrProbeTimeout)
	}
}

// Close ends the probing thread once its current probe, if any, returns.
// Probes requested after Close fail with [ErrProberClosed].
func (p *Prober) Close() {
	p.closeOnce.Do(func() { close(p.done) })
}
