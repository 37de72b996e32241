package vassal

import (
	"log/slog"
	"os"
	"os/signal"
	"runtime"

	"golang.org/x/sys/unix"

	"fief/reaper"
)

// ForegroundOptions configure [RunForeground].
type ForegroundOptions struct {
	// UseClone lists extra namespaces, as for the emperor.
	UseClone string
	// LogFormat and LogLevel are passed to the vassal init.
	LogFormat, LogLevel string
}

// RunForeground runs the vassal file at path in new namespaces until it
// stops, forwarding signals to its init. It returns the init's exit code:
// ExitStopped after a stop by signal, ExitFailed when the vassal failed,
// ExitConfig for an invalid file.
func RunForeground(log *slog.Logger, path string, opts ForegroundOptions) int {
	log = log.With(slog.String("vassal", path))

	// Validate here too, so an invalid file fails before any namespace is
	// made and the message comes once.
	cfg, err := ParseFile(path, ParseOptions{})
	if err != nil {
		log.Error("invalid vassal file", "pid", 0, "err", err)
		return ExitConfig
	}
	flags, err := ParseCloneFlags(opts.UseClone)
	if err != nil {
		log.Error("invalid namespace list", "pid", 0, "err", err)
		return ExitConfig
	}
	for _, name := range cfg.Unshare {
		extra, err := ParseCloneFlags(name)
		if err == nil {
			flags |= extra
		}
	}

	// The init's parent-death signal fires when the forking thread exits,
	// so fork from a thread that lives as long as this process.
	runtime.LockOSThread()

	signals := make(chan os.Signal, 8)
	signal.Notify(signals, unix.SIGTERM, unix.SIGINT, unix.SIGQUIT, unix.SIGHUP,
		unix.SIGUSR1, unix.SIGUSR2, unix.SIGWINCH)
	defer signal.Stop(signals)

	r := reaper.New(nil)
	cmd, err := InitCommand(path, SpawnOptions{
		CloneFlags: flags,
		LogFormat:  opts.LogFormat,
		LogLevel:   opts.LogLevel,
		Stdout:     os.Stdout,
		Stderr:     os.Stderr,
	})
	if err != nil {
		log.Error("preparing the vassal init failed", "pid", 0, "err", err)
		return ExitFailed
	}
	child, err := r.Start(cmd)
	if err != nil {
		log.Error("starting the vassal init failed (are you root, and does the kernel allow new namespaces?)", "pid", 0, "err", err)
		return ExitFailed
	}

	for {
		select {
		case sig := <-signals:
			if err := child.Signal(sig); err != nil {
				log.Warn("forwarding a signal to the vassal init failed", "pid", child.Pid, "signal", sig.String(), "err", err)
			}
		case st := <-child.Done:
			log.Debug("vassal init exited", "pid", child.Pid, "status", st.String())
			if st.Wait.Exited() {
				return st.Wait.ExitStatus()
			}
			return ExitFailed
		}
	}
}
