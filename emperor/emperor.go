// Package emperor supervises the vassal files of one directory: it spawns a
// vassal init in new namespaces for each *.ini file, respawns vassals that
// die, restarts them when their file changes and stops them when it goes.
package emperor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"fief/binpages"
	"fief/fusectl"
	"fief/mount"
	"fief/rawfile"
	"fief/reaper"
	"fief/vassal"
)

// debounce is how long the emperor collects inotify events for a file
// before acting, so that a write followed by a chmod acts once.
const debounce = 5 * time.Millisecond

// settleDelay is how long the emperor must see no spawn, exit or file event
// before it returns freed memory to the kernel. The Go runtime collects only
// once the heap reaches 4 MB and hands pages back slowly, so without this a
// burst of vassal starts would leave the emperor's RSS raised for minutes.
const settleDelay = 2 * time.Second

// createWait is how long the emperor waits for a newly created file to be
// closed after writing before it reads the file anyway. A file created by
// rename or hard link gets no close event.
const createWait = 40 * time.Millisecond

// Options configure an emperor.
type Options struct {
	// Dir is the vassal directory.
	Dir string
	// UseClone lists the namespaces of every vassal, such as "fs,pid".
	UseClone string
	// LogFormat and LogLevel are passed to vassal inits.
	LogFormat, LogLevel string
	// Stdout and Stderr are inherited by vassal inits and their programs.
	Stdout, Stderr *os.File
	// StatusSocket is the unix socket path of the status report; "" serves
	// none.
	StatusSocket string
	// Tyrant runs each vassal as the owner of its file. Files owned by
	// root, writable by group or others, or reached through a symlink are
	// refused.
	Tyrant bool
	// Reaper is the process's reaper when the caller already has one; a
	// process may have only one. When nil, Run creates it.
	Reaper *reaper.Reaper
	// OnSpawn, when set, is called after each vassal init is spawned, on
	// that vassal's supervisor goroutine; it must not block.
	OnSpawn func(name string, pid int)
	// OnFirstScan, when set, is called once, on the emperor's goroutine,
	// when every vassal file of the first scan of the directory has had its
	// first start, meaning its init was spawned, its spawn failed or the
	// file was found invalid. It is not called when Run fails before that
	// scan, and it must not block.
	OnFirstScan func()
}

// Emperor supervises one vassal directory.
type Emperor struct {
	opts       Options
	log        *slog.Logger
	dir        string
	cloneFlags uintptr
	reaper     *reaper.Reaper
	spawner    *spawner

	// vassals is owned by the loop goroutine.
	vassals map[string]*supervisor
	retired chan *supervisor
	ignored map[string]bool

	// devNull is the standard input of every vassal init.
	devNull *os.File

	controlMu sync.Mutex
	control   *fusectl.Control

	board        *statusBoard
	statusReader *statusReader
	// activity receives a value when a supervisor spawns or reaps a vassal
	// init; the loop then arms its one settle timer.
	activity chan struct{}
	// firstStarts counts the supervisors created by the first scan until
	// their first start. It is nil after that scan.
	firstStarts *sync.WaitGroup
}

// Run supervises opts.Dir until ctx ends or SIGTERM or SIGINT arrives, then
// stops every vassal in parallel and returns.
func Run(ctx context.Context, log *slog.Logger, opts Options) error {
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return fmt.Errorf("resolving vassal directory %q: %w", opts.Dir, err)
	}
	info, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("opening vassal directory %q: %w", dir, err)
	}
	if !info.IsDir() {
		return fmt.Errorf("vassal directory %q is not a directory", dir)
	}

	flags, err := vassal.ParseCloneFlags(opts.UseClone)
	if err != nil {
		return err
	}
	if opts.Stdout == nil {
		opts.Stdout = os.Stdout
	}
	if opts.Stderr == nil {
		opts.Stderr = os.Stderr
	}

	e := &Emperor{
		opts:       opts,
		log:        log,
		dir:        dir,
		cloneFlags: flags,
		vassals:    make(map[string]*supervisor),
		retired:    make(chan *supervisor, 16),
		ignored:    make(map[string]bool),
		board:      newStatusBoard(),
		activity:   make(chan struct{}, 1),
	}

	// Orphans of vassal inits cannot reach the emperor (they stay in the
	// vassal's pid namespace), but orphans of anything else started by
	// the emperor's own parent tree can.
	if opts.Reaper != nil {
		e.reaper = opts.Reaper
	} else {
		reaper.BecomeSubreaper(log)
		e.reaper = reaper.New(func(st reaper.Status) {
			log.Debug("reaped orphan", "orphan_pid", st.Pid, "status", st.String())
		})
	}
	e.spawner = newSpawner(e.reaper)
	devNull, err := openDevNull()
	if err != nil {
		return err
	}
	defer devNull.Close()
	e.devNull = devNull
	e.statusReader, err = newStatusReader(log)
	if err != nil {
		return err
	}
	defer e.statusReader.close()

	signals := make(chan os.Signal, 4)
	signal.Notify(signals, unix.SIGTERM, unix.SIGINT, unix.SIGHUP)
	defer signal.Stop(signals)

	// The watch starts before the first scan, so that no change after the
	// scan's read of the directory is missed.
	watch, err := watchDir(dir)
	if err != nil {
		return err
	}
	defer watch.close()

	started := time.Now()

	// The first scan's vassals start before anything their spawns do not
	// need, because a booting VM waits for them: the "emperor started"
	// line, the goroutines that read inotify events and status pipes, the
	// status socket and the loop. Signals, inotify events and status lines
	// queue meanwhile.
	var firstStarts sync.WaitGroup
	e.firstStarts = &firstStarts
	e.rescan(false)
	e.firstStarts = nil
	firstStarts.Wait()
	log.Info("emperor started", "dir", dir, "clone", strings.Join(cloneList(e.cloneFlags), ","), "pid", os.Getpid())
	events := watch.start()
	e.statusReader.start()
	if opts.OnFirstScan != nil {
		opts.OnFirstScan()
	}

	if opts.StatusSocket != "" {
		stopStatus, err := e.serveStatus(opts.StatusSocket, started)
		if err != nil {
			// The vassals matter more than the report: run without it.
			log.Error("not serving status", "pid", os.Getpid(), "err", err)
		} else {
			defer stopStatus()
		}
	}

	err = e.loop(ctx, events, signals)
	e.shutdown()
	return err
}

func cloneList(flags uintptr) []string {
	var names []string
	for _, pair := range []struct {
		flag uintptr
		name string
	}{
		{unix.CLONE_NEWNS, "fs"}, {unix.CLONE_NEWPID, "pid"}, {unix.CLONE_NEWIPC, "ipc"},
		{unix.CLONE_NEWUTS, "uts"}, {unix.CLONE_NEWNET, "net"}, {unix.CLONE_NEWCGROUP, "cgroup"},
	} {
		if flags&pair.flag != 0 {
			names = append(names, pair.name)
		}
	}
	return names
}

func (e *Emperor) loop(ctx context.Context, events <-chan dirEvent, signals <-chan os.Signal) error {
	pending := make(map[string]*pendingEvents)
	var flush <-chan time.Time

	// One timer for the whole emperor, armed only after activity, so an
	// idle emperor has no timer at all.
	settle := time.NewTimer(settleDelay)
	defer settle.Stop()

	for {
		select {
		case <-e.activity:
			settle.Reset(settleDelay)

		case <-settle.C:
			debug.FreeOSMemory()
			if _, err := binpages.Release(nil); err != nil {
				e.log.Warn("releasing the pages of the fief binary failed", "pid", os.Getpid(), "err", err)
			}

		case <-ctx.Done():
			return nil

		case sig := <-signals:
			switch sig {
			case unix.SIGHUP:
				e.log.Info("SIGHUP: reloading every vassal")
				for _, s := range e.vassals {
					s.mail.post(func(r *requests) { r.reload = true })
				}
			default:
				e.log.Info("stopping every vassal", "signal", unix.SignalName(sig.(unix.Signal)))
				return nil
			}

		case ev, ok := <-events:
			if !ok {
				return errors.New("the inotify watch on the vassal directory ended")
			}
			settle.Reset(settleDelay)
			switch {
			case ev.overflow:
				e.log.Warn("inotify queue overflowed; rescanning the vassal directory")
				e.rescan(false)
			case ev.gone:
				e.log.Error("vassal directory was removed or moved; stopping its vassals", "dir", e.dir)
				return fmt.Errorf("vassal directory %q was removed or moved", e.dir)
			default:
				p := pending[ev.name]
				if p == nil {
					p = &pendingEvents{first: time.Now()}
					pending[ev.name] = p
				}
				p.mask |= ev.mask
				if flush == nil {
					flush = time.After(debounce)
				}
			}

		case <-flush:
			flush = nil
			for name, p := range pending {
				if p.beingWritten() {
					continue
				}
				e.sync(name, true)
				delete(pending, name)
			}
			if len(pending) > 0 {
				flush = time.After(debounce)
			}

		case s := <-e.retired:
			if e.vassals[s.name] == s {
				delete(e.vassals, s.name)
			}
			e.board.remove(s)
			// The file may have come back while the old vassal stopped.
			e.sync(s.name, false)
		}
	}
}

// noteActivity signals the loop that a vassal init was spawned or reaped.
func (e *Emperor) noteActivity() {
	select {
	case e.activity <- struct{}{}:
	default:
	}
}

// pendingEvents are the inotify events of one file name not acted on yet.
type pendingEvents struct {
	mask  uint32
	first time.Time
}

// beingWritten reports whether the file was created and not closed yet, for
// less than createWait: reading it now could see half of its content.
func (p *pendingEvents) beingWritten() bool {
	settled := unix.IN_CLOSE_WRITE | unix.IN_MOVED_TO | unix.IN_DELETE | unix.IN_MOVED_FROM
	return p.mask&unix.IN_CREATE != 0 && p.mask&uint32(settled) == 0 && time.Since(p.first) < createWait
}

// rescan syncs every file in the directory and every known vassal.
func (e *Emperor) rescan(touched bool) {
	names, err := rawfile.ReadDirNames(e.dir)
	if err != nil {
		e.log.Error("reading the vassal directory failed", "dir", e.dir, "err", err)
		return
	}
	seen := make(map[string]bool)
	for _, name := range names {
		seen[name] = true
		e.sync(name, touched)
	}
	for name := range e.vassals {
		if !seen[name] {
			e.sync(name, touched)
		}
	}
}

// sync brings the vassal of one file name in line with the file: it starts,
// updates, touches or removes it.
func (e *Emperor) sync(name string, touched bool) {
	if !strings.HasSuffix(name, ".ini") {
		if !e.ignored[name] {
			e.ignored[name] = true
			e.log.Debug("ignoring a file without the .ini extension", "file", name)
		}
		return
	}

	path := filepath.Join(e.dir, name)
	snap, exists := e.read(path)
	s := e.vassals[name]

	switch {
	case !exists && s != nil:
		s.mail.post(func(r *requests) { r.remove = true })
	case !exists:
	case s == nil:
		s = newSupervisor(e, name, path)
		if e.firstStarts != nil {
			e.firstStarts.Add(1)
			s.firstStarted = e.firstStarts.Done
		}
		e.vassals[name] = s
		go func() {
			s.run(snap)
			e.retired <- s
		}()
	default:
		s.mail.post(func(r *requests) {
			r.update = snap
			r.touched = r.touched || touched
		})
	}
}

// read reads and parses the vassal file at path. It reports false when the
// file is gone or is not a regular file.
func (e *Emperor) read(path string) (*snapshot, bool) {
	if e.opts.Tyrant {
		return e.readTyrant(path)
	}

	info, err := os.Stat(path)
	if err != nil || !info.Mode().IsRegular() {
		return nil, false
	}
	data, err := rawfile.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, false
		}
		return &snapshot{err: fmt.Errorf("reading vassal file %q: %w", path, err)}, true
	}

	snap := &snapshot{content: data}
	snap.cfg, snap.err = vassal.Parse(path, data, vassal.ParseOptions{})
	return snap, true
}

// readTyrant reads a vassal file for tyrant mode. The owner is taken from
// the file itself, never from a symlink's target, since anyone can point a
// symlink at a file owned by someone else.
func (e *Emperor) readTyrant(path string) (*snapshot, bool) {
	info, err := os.Lstat(path)
	if err != nil {
		return nil, false
	}
	if info.Mode()&os.ModeSymlink != 0 {
		return &snapshot{err: fmt.Errorf("tyrant mode rejects %q: it is a symlink, and the vassal would run as the owner of whatever it points to; put a regular file there", path)}, true
	}
	if !info.Mode().IsRegular() {
		return nil, false
	}

	file, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, false
		}
		return &snapshot{err: fmt.Errorf("reading vassal file %q: %w", path, err)}, true
	}
	defer file.Close()

	// The owner and mode come from the open file, so a rename between the
	// lstat and the open cannot swap them.
	var st unix.Stat_t
	if err := unix.Fstat(int(file.Fd()), &st); err != nil {
		return &snapshot{err: fmt.Errorf("checking vassal file %q: %w", path, err)}, true
	}
	owner := vassal.Owner{UID: st.Uid, GID: st.Gid}
	snap := &snapshot{owner: &owner}

	switch {
	case st.Uid == 0 || st.Gid == 0:
		snap.err = fmt.Errorf("tyrant mode rejects %q: it is owned by %s, and a vassal must not run as root; chown it to the user it should run as", path, owner)
		return snap, true
	case st.Mode&0o022 != 0:
		snap.err = fmt.Errorf("tyrant mode rejects %q: mode %#o lets group or others change it, and so choose what runs as its owner; chmod go-w it", path, st.Mode&0o777)
		return snap, true
	}

	data, err := io.ReadAll(file)
	if err != nil {
		snap.err = fmt.Errorf("reading vassal file %q: %w", path, err)
		return snap, true
	}
	snap.content = data
	snap.cfg, snap.err = vassal.Parse(path, data, vassal.ParseOptions{})
	if snap.err == nil {
		snap.err = vassal.CheckTyrant(snap.cfg, owner)
	}
	return snap, true
}

// abortFUSE aborts every FUSE connection in the mount namespace of pid. The
// FUSE control filesystem is opened on first use and mounted when missing.
func (e *Emperor) abortFUSE(pid int) ([]uint32, error) {
	e.controlMu.Lock()
	defer e.controlMu.Unlock()
	if e.control == nil {
		control, err := fusectl.OpenControl()
		if err != nil {
			return nil, err
		}
		e.control = control
	}
	infos, err := mount.ReadMountinfo("/proc/" + strconv.Itoa(pid) + "/mountinfo")
	if err != nil {
		return nil, err
	}
	return e.control.AbortAll(infos)
}

// shutdown stops every vassal in parallel and waits for all of them.
func (e *Emperor) shutdown() {
	var wg sync.WaitGroup
	for _, s := range e.vassals {
		s.mail.post(func(r *requests) { r.shutdown = true })
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-s.done
		}()
	}
	wg.Wait()
	e.log.Info("emperor stopped", "pid", os.Getpid())
}

// openDevNull opens /dev/null for the vassal inits' standard input. Left
// nil, reaper.Start would open it at every spawn with os.OpenFile, whose
// first call sets up the runtime's poller. os.NewFile on a blocking
// descriptor does not, so a booting VM starts its first vassal without the
// poller.
func openDevNull() (*os.File, error) {
	fd, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s for the standard input of vassal inits: %w", os.DevNull, err)
	}
	return os.NewFile(uintptr(fd), os.DevNull), nil
}
