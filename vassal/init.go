package vassal

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"fief/binpages"
	"fief/fusectl"
	"fief/mount"
	"fief/reaper"
	"fief/sigwake"
)

// RuntimeDir is the directory on which a vassal init mounts its private
// tmpfs. It is created on the host once and stays empty there, because each
// vassal mounts its own tmpfs on it in its own mount namespace.
const RuntimeDir = "/run/fief/vassal"

// InitMain is the entry point of a vassal init, the process the emperor
// starts in new namespaces. It returns the process exit code.
func InitMain(args []string) int {
	if os.Getenv(initGOMAXPROCSMarker) != "" {
		os.Unsetenv("GOMAXPROCS")
		os.Unsetenv(initGOMAXPROCSMarker)
	}

	fs := flag.NewFlagSet(InitArg0, flag.ContinueOnError)
	file := fs.String("file", "", "absolute path of the vassal file")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	newNet := fs.Bool("new-net", false, "the init runs in a new network namespace, whose loopback is down")
	statusFD := fs.Int("status-fd", -1, "descriptor of the pipe that reports mount health to the emperor")
	tyrant := fs.String("tyrant", "", "UID:GID of the vassal file's owner, as whom the vassal runs")
	if err := fs.Parse(args); err != nil {
		return ExitConfig
	}

	// The vassal's pid in the emperor's pid namespace. /proc still belongs
	// to that namespace here, so /proc/self names that pid.
	hostPid := os.Getpid()
	if link, err := os.Readlink("/proc/self"); err == nil {
		if pid, err := strconv.Atoi(link); err == nil {
			hostPid = pid
		}
	}

	// "pid" is the init's pid in the emperor's pid namespace; attributes
	// ending in "_ns_pid" are pids inside the vassal's namespace.
	logger := NewLogger(os.Stderr, *logFormat, *logLevel).With(
		slog.String("vassal", filepath.Base(*file)),
		slog.Int("pid", hostPid),
	)

	var reporter *statusReporter
	if *statusFD >= 0 {
		// Programs and steps must not inherit the emperor's pipe.
		unix.CloseOnExec(*statusFD)
		reporter = &statusReporter{file: os.NewFile(uintptr(*statusFD), "status")}
	}

	var owner *Owner
	if *tyrant != "" {
		parsed, err := ParseOwner(*tyrant)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", InitArg0, err)
			return ExitConfig
		}
		owner = &parsed
	}

	v := &vassalInit{
		tyrant:   owner,
		status:   reporter,
		file:     *file,
		newNet:   *newNet,
		log:      logger,
		signals:  make(chan os.Signal, 8),
		reloads:  make(chan struct{}, 1),
		forwards: make(chan os.Signal, 8),
		triggers: make(chan struct{}, 1),

		debugReleases: logger.Enabled(context.Background(), slog.LevelDebug),
	}
	return v.run()
}

// NewLogger returns the slog logger fief uses everywhere: text or JSON lines
// on w.
func NewLogger(w io.Writer, format, level string) *slog.Logger {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		lvl = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lvl}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// vassalInit is pid 1 of a vassal's pid namespace.
type vassalInit struct {
	tyrant *Owner // the file's owner in tyrant mode, else nil
	status *statusReporter
	file   string
	newNet bool
	log    *slog.Logger

	cfg     *Config
	creds   *Credentials // nil when the vassal runs as root
	reaper  *reaper.Reaper
	watcher *fusectl.MountWatcher

	// procDir is the vassal's own /proc, opened before any pivot_root so
	// the mount table stays readable after the old root is detached.
	procDir *os.File
	// control is the FUSE control filesystem, nil when it could not be
	// opened; hung connections cannot be aborted then.
	control *fusectl.Control

	// signals receives the signals the init acts on. dispatchSignals turns
	// them into a cancelled ctx (stop), reloads and forwards. A value on
	// triggers runs the mount checks now, after a process was reaped or the
	// mount table changed.
	signals  chan os.Signal
	reloads  chan struct{}
	forwards chan os.Signal
	triggers chan struct{}

	// ctx ends when the vassal is asked to stop; start-up steps give up
	// then.
	ctx  context.Context
	stop context.CancelFunc

	runtimeMounted bool
	releaseArmed   sync.Once

	// debugReleases is true when the logger passes debug messages.
	// logRelease reads it instead of asking the logger, because that check
	// runs slog's handler code and faults its pages back in right after a
	// drop.
	debugReleases bool
}

// run performs the set-up sequence, supervises the program and tears down.
func (v *vassalInit) run() int {
	// Catch, never ignore: ignored signals stay ignored in every child,
	// and without a handler the Go runtime turns SIGTERM into exit 2.
	// Package sigwake catches them without os/signal. With os/signal each
	// signal is enabled by a round trip to a goroutine locked to a thread
	// of its own, two thread switches with one P, and that locked thread
	// makes the runtime start a template thread too. Nothing else in this
	// process may use os/signal for these signals or SIGCHLD.
	if err := sigwake.Notify(v.signals, unix.SIGTERM, unix.SIGINT, unix.SIGQUIT, unix.SIGHUP,
		unix.SIGUSR1, unix.SIGUSR2, unix.SIGWINCH); err != nil {
		v.log.Error("catching the vassal init's signals failed", "err", err)
		return ExitFailed
	}
	// SIGCHLD does not queue, so one buffered slot is enough: every wake
	// makes the reaper collect all exited children.
	childExits := make(chan os.Signal, 1)
	if err := sigwake.Notify(childExits, unix.SIGCHLD); err != nil {
		v.log.Error("catching SIGCHLD failed", "err", err)
		return ExitFailed
	}

	v.ctx, v.stop = context.WithCancel(context.Background())
	defer v.stop()
	go v.dispatchSignals()

	v.reaper = reaper.NewWoken(v.onOrphan, childExits)

	if err := v.prepareNamespace(); err != nil {
		v.log.Error("preparing the vassal's namespaces failed", "err", err)
		return ExitFailed
	}

	cfg, err := ParseFile(v.file, ParseOptions{})
	if err != nil {
		v.log.Error("invalid vassal file; fix it and save it to retry", "err", err)
		v.status.failed(err)
		return ExitConfig
	}
	v.cfg = cfg
	if v.tyrant != nil {
		if err := CheckTyrant(cfg, *v.tyrant); err != nil {
			v.log.Error("invalid vassal file for tyrant mode; fix it and save it to retry", "err", err)
			v.status.failed(err)
			return ExitConfig
		}
	}
	if cfg.Exec != nil && len(cfg.UWSGIOptions) > 0 {
		v.log.Warn("the file sets exec, so its uWSGI application options are not used; remove exec to run uwsgi with them",
			"first_option", cfg.UWSGIOptions[0].Key, "line", cfg.UWSGIOptions[0].Line)
	}

	return v.supervise()
}

// dispatchSignals cancels ctx on SIGTERM, SIGINT or SIGQUIT, so start-up
// steps give up and the running program is stopped. SIGHUP requests a
// reload, and the other signals are forwarded to the program.
func (v *vassalInit) dispatchSignals() {
	for sig := range v.signals {
		switch sig {
		case unix.SIGTERM, unix.SIGINT, unix.SIGQUIT:
			// The emperor repeats SIGTERM until the init exits; only the
			// first one counts.
			if v.ctx.Err() == nil {
				v.log.Info("stop requested", "signal", unix.SignalName(sig.(unix.Signal)))
				v.stop()
			}
		case unix.SIGHUP:
			select {
			case v.reloads <- struct{}{}:
			default:
			}
		default:
			select {
			case v.forwards <- sig:
			default:
				v.log.Warn("dropped a signal for the program: too many pending", "signal", sig.String())
			}
		}
	}
}

// prepareNamespace isolates the new mount namespace before any mount and
// sets up what every vassal needs.
func (v *vassalInit) prepareNamespace() error {
	// First mount call of the vassal: with "/" shared on the host, any
	// mount made before this would propagate back and outlive the vassal.
	if err := mount.MakeTreeSlave(); err != nil {
		return fmt.Errorf("making / a slave mount so nothing leaks to the host: %w", err)
	}

	// A fresh /proc for the new pid namespace: ps shows the vassal's own
	// processes, and /proc/self/mountinfo is this namespace's mount table.
	if err := mount.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mounting /proc for the vassal's pid namespace: %w", err)
	}

	// A new network namespace starts with lo down, and programs that
	// listen on 127.0.0.1 need it up.
	if v.newNet {
		if err := BringLoopbackUp(); err != nil {
			return err
		}
	}

	procDir, err := os.Open("/proc")
	if err != nil {
		return fmt.Errorf("opening the vassal's /proc: %w", err)
	}
	v.procDir = procDir

	mountinfo, err := v.openMountinfo()
	if err != nil {
		return err
	}
	watcher, err := fusectl.WatchMounts(mountinfo)
	if err != nil {
		return err
	}
	v.watcher = watcher
	go v.forwardMountChanges()

	// Without the fuse module there is no control filesystem, and no FUSE
	// mount to abort either.
	control, err := fusectl.OpenControl()
	switch {
	case err == nil:
		v.control = control
	case errors.Is(err, unix.ENOENT):
		v.log.Debug("no FUSE control filesystem: the fuse module is not loaded", "err", err)
	default:
		v.log.Warn("hung FUSE daemons cannot be aborted in this vassal", "err", err)
	}
	return nil
}

// openMountinfo opens the vassal's mount table through its /proc directory
// descriptor.
func (v *vassalInit) openMountinfo() (*os.File, error) {
	fd, err := unix.Openat(int(v.procDir.Fd()), "self/mountinfo", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the vassal's mount table: %w", err)
	}
	return os.NewFile(uintptr(fd), "/proc/self/mountinfo"), nil
}

// readMounts reads the vassal's mount table. The kernel builds it without
// sending requests to FUSE daemons, so a hung daemon cannot block it.
func (v *vassalInit) readMounts() ([]mount.Info, error) {
	file, err := v.openMountinfo()
	if err != nil {
		return nil, err
	}
	defer file.Close()
	return mount.ParseMountinfo(file)
}

func (v *vassalInit) forwardMountChanges() {
	changes, _ := v.watcher.Subscribe()
	for range changes {
		v.trigger()
	}
}

// trigger requests an immediate run of the mount checks, without blocking.
func (v *vassalInit) trigger() {
	select {
	case v.triggers <- struct{}{}:
	default:
	}
}

// onOrphan runs on the reaper's goroutine for every reaped process the init
// did not start itself, such as a daemonized FUSE daemon.
func (v *vassalInit) onOrphan(st reaper.Status) {
	v.log.Debug("reaped orphan", "orphan_ns_pid", st.Pid, "status", st.String())
	v.trigger()
}

// supervise runs the start-up phases and the program, then keeps the vassal
// running until it is stopped or fails.
func (v *vassalInit) supervise() int {
	if err := v.startUp(); err != nil {
		return v.abortStart(err)
	}

	for {
		// The checks start anew after each reload, since a reload may
		// unmount and mount a checked path again.
		checks, err := v.startChecks()
		if err != nil {
			return v.abortStart(err)
		}
		program, err := v.startProgram()
		if err != nil {
			checks.close()
			return v.abortStart(err)
		}

		// No collection is forced here, because start-up leaves little
		// garbage. In one measurement on 2 CPUs with a busybox or a
		// fuse-zip vassal, a forced collection (debug.FreeOSMemory) cost
		// about 0.4 ms of CPU time per init and left RssAnon about 0.2 MB
		// higher. The binary's pages that only the set-up used are
		// dropped from this process instead.
		v.releaseBinaryPages()

		outcome := v.loop(program, checks)
		checks.close()
		if outcome.reload {
			if err := v.reload(); err != nil {
				return v.abortStart(err)
			}
			continue
		}
		return v.tearDown(outcome.code)
	}
}

// abortStart stops a start that failed: it logs the cause, runs the atexit
// phases for what was already done, and exits with the code for the error.
func (v *vassalInit) abortStart(err error) int {
	code := ExitFailed
	var cfgErr *ConfigError
	if errors.As(err, &cfgErr) {
		code = ExitConfig
	}
	if errors.Is(err, context.Canceled) {
		v.log.Info("stopped during start-up")
		code = ExitStopped
	} else {
		v.log.Error("vassal start failed", "err", err)
		v.status.failed(err)
	}
	v.runAtexit()
	return code
}

type loopOutcome struct {
	code   int
	reload bool
}

// loop supervises the running program. It returns when the program exits,
// a mount check fails, or a signal requests a stop or a reload. It never
// touches a FUSE path itself, because probes run on their own threads.
func (v *vassalInit) loop(program *reaper.Child, checks *mountChecks) loopOutcome {
	for {
		select {
		case st := <-program.Done:
			v.log.Error("program exited unexpectedly", "program_ns_pid", st.Pid, "status", st.String())
			v.status.failed(fmt.Errorf("the program exited unexpectedly: %s", st))
			return loopOutcome{code: ExitFailed}

		case failure := <-checks.failures:
			v.log.Error("mount check failed; tearing the vassal down", "err", failure)
			v.status.failed(failure)
			v.stopProgram(program, v.cfg.StopTimeout)
			return loopOutcome{code: ExitFailed}

		case <-v.ctx.Done():
			v.stopProgram(program, v.cfg.StopTimeout)
			return loopOutcome{code: ExitStopped}

		case <-v.reloads:
			v.log.Info("reloading: restarting the program inside the existing namespaces")
			v.stopProgram(program, v.cfg.StopTimeout)
			return loopOutcome{reload: true}

		case sig := <-v.forwards:
			if err := program.Signal(sig); err != nil {
				v.log.Warn("forwarding a signal to the program failed", "program_ns_pid", program.Pid, "signal", sig.String(), "err", err)
			}
		}
	}
}

// stopProgram sends SIGTERM, waits up to grace, then sends SIGKILL and waits
// for the program to be reaped.
func (v *vassalInit) stopProgram(program *reaper.Child, grace time.Duration) {
	start := time.Now()
	if err := program.Signal(unix.SIGTERM); err != nil {
		v.log.Warn("sending SIGTERM to the program failed", "program_ns_pid", program.Pid, "err", err)
	}

	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case st := <-program.Done:
		v.log.Info("program stopped", "program_ns_pid", program.Pid, "status", st.String(), "after", time.Since(start).Round(time.Millisecond))
		return
	case <-timer.C:
	}

	v.log.Warn("program ignored SIGTERM; sending SIGKILL", "program_ns_pid", program.Pid, "grace", grace)
	if err := program.Signal(unix.SIGKILL); err != nil {
		v.log.Warn("sending SIGKILL to the program failed", "program_ns_pid", program.Pid, "err", err)
	}

	var st reaper.Status
	select {
	case st = <-program.Done:
	case <-time.After(killGrace):
		// SIGKILL cannot end a process that waits on a request a hung
		// FUSE daemon has already read; aborting the connection can.
		v.abortAllFUSE()
		st = <-program.Done
	}
	v.log.Info("program killed", "program_ns_pid", program.Pid, "status", st.String())
}

// killGrace is how long a process may take to end after SIGKILL before the
// vassal's FUSE connections are aborted.
const killGrace = 2 * time.Second

// abortAllFUSE aborts every FUSE connection of the vassal's mount namespace.
func (v *vassalInit) abortAllFUSE() {
	if v.control == nil {
		v.log.Error("a process is stuck after SIGKILL, and without the FUSE control filesystem its FUSE connections cannot be aborted")
		return
	}
	infos, err := v.readMounts()
	if err != nil {
		v.log.Error("reading the vassal's mount table failed", "err", err)
		return
	}
	aborted, err := v.control.AbortAll(infos)
	if err != nil {
		v.log.Error("aborting the vassal's FUSE connections failed", "err", err)
		return
	}
	v.log.Warn("a process was stuck after SIGKILL; aborted the vassal's FUSE connections", "connections", aborted)
}

// tearDown runs the atexit phases and returns the init's exit code. The
// kernel then kills every process left in the pid namespace and removes the
// mount namespace with all its mounts.
func (v *vassalInit) tearDown(code int) int {
	v.runAtexit()
	v.log.Debug("vassal init exiting", "code", code)
	return code
}

// releaseBinaryPages drops the pages of fief's code and read-only data from
// the init's page tables once set-up is done. The set-up code is not needed
// again, and package binpages explains why the pages stay cached. The first
// call also arms a release after each garbage collection, since the
// collector's own code and tables fault about 1 MB back in every 2 minutes.
func (v *vassalInit) releaseBinaryPages() {
	// The arming runs before the first drop, so its code is not faulted
	// back in after it.
	v.releaseArmed.Do(func() {
		binpages.ReleaseAfterEachGC(v.openProcSelf, releaseInterval, v.logRelease)
	})
	v.logRelease(binpages.Release(v.openProcSelf))
}

// openProcSelf opens a file of the init's /proc/self directory through its
// /proc directory descriptor, which stays valid when a pivot_root leaves no
// /proc in the new root. binpages wraps an error with the file's path.
func (v *vassalInit) openProcSelf(name string) (int, error) {
	return unix.Openat(int(v.procDir.Fd()), "self/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
}

// releaseInterval is the minimum time between two releases after garbage
// collections.
const releaseInterval = time.Minute

func (v *vassalInit) logRelease(result binpages.Result, err error) {
	if err != nil {
		v.log.Warn("releasing the pages of the fief binary failed", "err", err)
		return
	}
	if v.debugReleases {
		v.log.Debug("released the pages of the fief binary", "bytes", result.Bytes(), "mappings", len(result.Dropped), "skipped", len(result.Skipped))
	}
}
