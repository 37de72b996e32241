package emperor

import (
	"bytes"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"fief/reaper"
	"fief/vassal"
)

// atexitAllowance is how long the emperor lets a vassal init run its atexit
// steps after the program's stop-timeout before it sends SIGKILL.
const atexitAllowance = 15 * time.Second

// killGrace is how long a vassal init may take to end after SIGKILL before
// the emperor aborts its FUSE connections. An init whose pid namespace holds
// a process waiting on a request that a hung daemon has read cannot finish
// exiting until that connection is aborted.
const killGrace = 2 * time.Second

// resendInterval is how often SIGTERM is sent again to a vassal init that
// has not exited yet.
const resendInterval = 100 * time.Millisecond

// Vassal states, as fief status shows them.
const (
	StateStarting = "starting"
	StateRunning  = "running"
	StateBackoff  = "backoff"
	StateBroken   = "broken"
	StateStopping = "stopping"
)

// snapshot is one version of a vassal file as the emperor read it.
type snapshot struct {
	// content is the file's bytes; vassal files are small, and comparing
	// them directly cannot mistake two versions for one.
	content []byte
	// owner is the file's owner in tyrant mode, else nil.
	owner *vassal.Owner
	cfg   *vassal.Config // nil when err is set
	err   error          // the reason the file is invalid
}

// differs reports whether the file's content or owner changed.
func (snap *snapshot) differs(old *snapshot) bool {
	if !bytes.Equal(snap.content, old.content) {
		return true
	}
	if (snap.owner == nil) != (old.owner == nil) {
		return true
	}
	return snap.owner != nil && *snap.owner != *old.owner
}

// requests are the pending orders from the emperor's loop to a supervisor.
type requests struct {
	update   *snapshot // the file's latest content, nil when unchanged
	touched  bool      // the file got an event: reload, or retry a broken vassal
	reload   bool      // SIGHUP to the emperor
	remove   bool      // the file is gone
	shutdown bool      // the emperor is stopping
}

// mailbox passes requests from the emperor's loop to a supervisor without
// ever blocking the loop: each kind of request keeps only its latest value.
type mailbox struct {
	mu      sync.Mutex
	pending requests
	notify  chan struct{}
}

func (m *mailbox) post(fn func(*requests)) {
	m.mu.Lock()
	fn(&m.pending)
	m.mu.Unlock()
	select {
	case m.notify <- struct{}{}:
	default:
	}
}

// take returns and clears every pending request.
func (m *mailbox) take() requests {
	m.mu.Lock()
	defer m.mu.Unlock()
	pending := m.pending
	m.pending = requests{}
	return pending
}

// supervisor runs one vassal: it spawns its init, respawns it with backoff,
// restarts it when its file changes and stops it when the file goes away.
// Everything but the mailbox is owned by the supervisor's goroutine.
type supervisor struct {
	name string
	path string
	e    *Emperor
	// log returns the supervisor's logger, which adds the vassal's name.
	// It is built on first use, which comes after the first spawn unless
	// the file is invalid or the spawn fails. Building it runs slog's
	// handler code for the first time, which under QEMU's software
	// emulation took 1 to 3 ms of a booting VM's time to its first vassal
	// (traced boots).
	log func() *slog.Logger

	mail mailbox
	done chan struct{}
	// firstStarted, when set, is called once after the first start.
	firstStarted func()

	snap     *snapshot
	running  *snapshot // the snapshot child was started with
	child    *reaper.Child
	started  time.Time
	deaths   int // unrequested quick deaths in a row
	restarts int
}

// setState records the vassal's state for the status socket.
func (s *supervisor) setState(state string) {
	s.e.board.update(s, func(entry *statusEntry) {
		entry.status.State = state
		entry.status.Restarts = s.restarts
		if s.child != nil {
			entry.status.Pid = s.child.Pid
		} else {
			entry.status.Pid = 0
			entry.status.Mounts = []vassal.MountStatus{}
		}
		if s.snap != nil && s.snap.err != nil {
			entry.status.Error = s.snap.err.Error()
		}
	})
}

func newSupervisor(e *Emperor, name, path string) *supervisor {
	return &supervisor{
		name: name,
		path: path,
		e:    e,
		log: sync.OnceValue(func() *slog.Logger {
			return e.log.With(slog.String("vassal", name))
		}),
		mail: mailbox{notify: make(chan struct{}, 1)},
		done: make(chan struct{}),
	}
}

func (s *supervisor) pid() int {
	if s.child == nil {
		return 0
	}
	return s.child.Pid
}

// run is the supervisor's goroutine. It returns after a removal or a
// shutdown, once the vassal init has exited.
func (s *supervisor) run(first *snapshot) {
	defer close(s.done)

	var backoff *time.Timer
	var backoffC <-chan time.Time
	stopBackoff := func() {
		if backoff != nil {
			backoff.Stop()
			backoff, backoffC = nil, nil
		}
	}
	armBackoff := func(delay time.Duration) {
		stopBackoff()
		backoff = time.NewTimer(delay)
		backoffC = backoff.C
	}
	// launch starts the vassal, or arms the backoff timer when the spawn
	// failed.
	launch := func() {
		if delay, failed := s.start(); failed {
			armBackoff(delay)
		}
	}

	s.snap = first
	launch()
	if s.firstStarted != nil {
		s.firstStarted()
	}

	for {
		var childDone <-chan reaper.Status
		if s.child != nil {
			childDone = s.child.Done
		}

		select {
		case <-s.mail.notify:
			req := s.mail.take()
			if req.remove || req.shutdown {
				stopBackoff()
				s.stop(req.remove)
				return
			}
			if req.update != nil && req.update.differs(s.snap) {
				stopBackoff()
				s.snap = req.update
				s.log().Info("vassal file changed; restarting with fresh namespaces", "pid", s.pid())
				if s.child != nil {
					s.stopChild()
				}
				s.deaths = 0
				launch()
				continue
			}
			if req.touched || req.reload {
				if s.child != nil {
					s.reloadChild()
				} else {
					// A touch retries a broken or backing-off vassal
					// at once.
					stopBackoff()
					s.deaths = 0
					launch()
				}
			}

		case st := <-childDone:
			s.child = nil
			s.e.noteActivity()
			if delay, respawn := s.exited(st); respawn {
				if delay == 0 {
					launch()
				} else {
					s.setState(StateBackoff)
					armBackoff(delay)
				}
			}

		case <-backoffC:
			backoff, backoffC = nil, nil
			launch()
		}
	}
}

// start spawns the vassal init for the current snapshot, or marks the vassal
// broken when its file is invalid.
//
// When the spawn itself fails, it counts as one more quick death, and start
// returns the delay before the next try and true.
func (s *supervisor) start() (time.Duration, bool) {
	if s.snap.err != nil {
		s.setState(StateBroken)
		s.log().Error("vassal file is invalid; fix it and save it to retry", "pid", 0, "err", s.snap.err)
		return 0, false
	}

	flags := s.e.cloneFlags
	for _, name := range s.snap.cfg.Unshare {
		flag, err := vassal.ParseCloneFlags(name)
		if err == nil {
			flags |= flag
		}
	}

	statusRead, statusWrite, err := newStatusPipe()
	if err != nil {
		s.log().Error("creating the status pipe failed", "pid", 0, "err", err)
		statusRead, statusWrite = -1, nil
	}
	cmd, err := vassal.InitCommand(s.path, vassal.SpawnOptions{
		CloneFlags: flags,
		LogFormat:  s.e.opts.LogFormat,
		LogLevel:   s.e.opts.LogLevel,
		Stdin:      s.e.devNull,
		Stdout:     s.e.opts.Stdout,
		Stderr:     s.e.opts.Stderr,
		StatusPipe: statusWrite,
		Tyrant:     s.snap.owner,
	})
	if err == nil {
		s.child, err = s.e.spawner.start(cmd)
	}
	if statusWrite != nil {
		// Only the init keeps the write end, so reads from the read end
		// return EOF when the init exits.
		statusWrite.Close()
		if err != nil {
			unix.Close(statusRead)
			statusRead = -1
		}
	}
	if err != nil {
		// Treated as a quick death, so a persistent failure backs off.
		// NOTE: no test makes the fork or exec of the init fail, so this
		// path has only been read, not run.
		s.child = nil
		s.deaths++
		delay := Backoff(s.deaths + 1)
		s.setState(StateBackoff)
		s.log().Error("spawning the vassal init failed", "pid", 0, "err", err, "delay", delay)
		return delay, true
	}

	s.e.noteActivity()
	if s.e.opts.OnSpawn != nil {
		s.e.opts.OnSpawn(s.name, s.child.Pid)
	}
	s.started = time.Now()
	s.running = s.snap
	s.e.board.update(s, func(entry *statusEntry) { entry.started = s.started })
	// The init reports "running" once the start-up steps are done and the
	// program has started. The reader starts after the state is set, so
	// that report cannot be overwritten.
	s.setState(StateStarting)
	if statusRead >= 0 {
		if err := s.e.statusReader.watch(statusRead, s, s.child.Pid); err != nil {
			s.log().Error("not reading the status pipe of the vassal init; fief status will not show its mounts", "pid", s.child.Pid, "err", err)
		}
	}
	s.log().Info("vassal started", "pid", s.child.Pid, "restarts", s.restarts)
	return 0, false
}

// exited logs how the vassal init ended and returns whether and after how
// long to respawn it.
func (s *supervisor) exited(st reaper.Status) (time.Duration, bool) {
	ran := time.Since(s.started)
	s.recordExit(st)
	if st.Wait.Exited() && st.Wait.ExitStatus() == vassal.ExitConfig {
		s.setState(StateBroken)
		s.log().Error("vassal stopped on a configuration error; fix the file and save it to retry",
			"pid", st.Pid, "status", st.String(), "ran", ran.Round(time.Millisecond))
		return 0, false
	}

	if ran >= QuickDeath {
		s.deaths = 1
	} else {
		s.deaths++
	}
	delay := Backoff(s.deaths)
	s.restarts++
	s.log().Warn("vassal died; respawning", "pid", st.Pid, "status", st.String(),
		"ran", ran.Round(time.Millisecond), "deaths_in_a_row", s.deaths, "delay", delay)
	return delay, true
}

// stop stops the running vassal, if any, for good.
func (s *supervisor) stop(removed bool) {
	if s.child == nil {
		if removed {
			s.log().Info("vassal file removed", "pid", 0)
		}
		return
	}
	if removed {
		s.log().Info("vassal file removed; stopping", "pid", s.child.Pid)
	}
	s.stopChild()
}

// stopChild sends SIGTERM to the vassal init, which stops the program within
// the stop-timeout of the file it was started with and runs the atexit
// steps. An init still running after that time plus atexitAllowance gets
// SIGKILL.
func (s *supervisor) stopChild() {
	child := s.child
	s.setState(StateStopping)
	begin := time.Now()

	grace := vassal.DefaultStopTimeout
	if s.running != nil && s.running.cfg != nil {
		grace = s.running.cfg.StopTimeout
	}
	timer := time.NewTimer(grace + atexitAllowance)
	defer timer.Stop()

	// The kernel drops signals to the init of a pid namespace that has no
	// handler for them, and a freshly spawned init installs its handlers
	// only once the Go runtime is up. SIGTERM is therefore sent again until
	// the init exits; the init acts on the first one it receives.
	resend := time.NewTicker(resendInterval)
	defer resend.Stop()
	if err := child.Signal(unix.SIGTERM); err != nil {
		s.log().Warn("sending SIGTERM to the vassal init failed", "pid", child.Pid, "err", err)
	}

	var st reaper.Status
wait:
	for {
		select {
		case st = <-child.Done:
			break wait
		case <-resend.C:
			_ = child.Signal(unix.SIGTERM)
		case <-timer.C:
			s.log().Warn("vassal init did not stop in time; sending SIGKILL", "pid", child.Pid, "waited", time.Since(begin).Round(time.Millisecond))
			st = s.kill(child)
			break wait
		}
	}

	s.child = nil
	s.recordExit(st)
	s.log().Info("vassal stopped", "pid", child.Pid, "status", st.String(), "took", time.Since(begin).Round(time.Millisecond))
}

// recordExit stores how the vassal init ended for the status socket.
func (s *supervisor) recordExit(st reaper.Status) {
	now := time.Now()
	s.e.board.update(s, func(entry *statusEntry) {
		entry.status.LastExit = st.String()
		entry.status.LastExitAt = &now
		entry.status.Pid = 0
		entry.status.Mounts = []vassal.MountStatus{}
	})
}

// kill sends SIGKILL to the vassal init and waits for it. When it has not
// ended after killGrace, the FUSE connections of its mount namespace are
// aborted so that nothing in it stays blocked in the kernel.
func (s *supervisor) kill(child *reaper.Child) reaper.Status {
	_ = child.Signal(unix.SIGKILL)
	select {
	case st := <-child.Done:
		return st
	case <-time.After(killGrace):
	}

	aborted, err := s.e.abortFUSE(child.Pid)
	if err != nil {
		s.log().Error("aborting the FUSE connections of a vassal init stuck after SIGKILL failed", "pid", child.Pid, "err", err)
	} else {
		s.log().Warn("vassal init stuck after SIGKILL; aborted its FUSE connections", "pid", child.Pid, "connections", aborted)
	}
	return <-child.Done
}

// reloadChild sends SIGHUP to the vassal init, which restarts its program
// inside the existing namespaces.
func (s *supervisor) reloadChild() {
	s.log().Info("reloading vassal", "pid", s.child.Pid)
	if err := s.child.Signal(unix.SIGHUP); err != nil {
		s.log().Warn("sending SIGHUP to the vassal init failed", "pid", s.child.Pid, "err", err)
	}
}
