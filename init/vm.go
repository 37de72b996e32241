package initd

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"fief/emperor"
	"fief/reaper"
	"fief/vassal"
)

// VassalDir is the vassal directory of the emperor in a VM.
const VassalDir = "/etc/fief/vassals"

// processStart is when fief's packages were initialised, close to the exec
// of /init: the durations fief init logs count its own work from here.
var processStart = time.Now()

// shutdownGrace is how long processes get between SIGTERM and SIGKILL when
// the VM shuts down.
const shutdownGrace = 5 * time.Second

// RunVM is pid 1 of a VM booted from an initramfs. It mounts the early
// filesystems, loads the kernel modules named by fief.modules=, brings lo up
// and leaves the initramfs root, then runs the emperor over VassalDir when
// that directory exists and the command (argv, or fief.exec=) when there is
// one. When the command exits, or the emperor when there is no command, or
// on SIGTERM, SIGINT or ctrl-alt-del, it stops everything, syncs, unmounts,
// prints "fief: exit status N" and powers off.
//
// As pid 1 it never returns. Run by hand as another pid, it does the same
// work without touching the machine-wide state (no mounts over /, no
// module loading, no power-off) and returns the exit status.
func RunVM(log *slog.Logger, argv []string) int {
	pid1 := os.Getpid() == 1
	vm := &vmInit{log: log, pid1: pid1, signals: make(chan os.Signal, 4)}
	// The stop signals are caught from the start and never released: the
	// Go runtime ends a process on a SIGTERM, SIGINT or SIGPWR that nothing
	// asked for, and pid 1 ending makes the kernel panic. A signal that
	// arrives before the workload runs stops it as soon as it starts; one
	// that arrives during the shutdown is ignored.
	signal.Notify(vm.signals, unix.SIGTERM, unix.SIGINT, unix.SIGPWR)
	status := vm.run(argv)
	if !pid1 {
		return status
	}
	vm.shutdown(status)
	return status // not reached: shutdown powers off or blocks for ever
}

type vmInit struct {
	log    *slog.Logger
	pid1   bool
	params bootParams
	reaper *reaper.Reaper
	// signals receives SIGTERM, SIGINT (ctrl-alt-del) and SIGPWR.
	signals chan os.Signal

	firstSpawn sync.Once
	// fatalCaught makes catchFatalSignals run once.
	fatalCaught sync.Once
	// workloadEnd is when the command or the emperor ended.
	workloadEnd time.Time
}

// run does the work of the VM and returns its exit status. Every panic is
// caught: pid 1 must never die, or the kernel panics.
func (vm *vmInit) run(argv []string) (status int) {
	defer func() {
		if r := recover(); r != nil {
			vm.log.Error("fief init panicked; shutting down", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			status = 1
		}
	}()

	if vm.pid1 {
		if err := vm.prepareSystem(); err != nil {
			vm.log.Error("preparing the system failed", "err", err)
			return 1
		}
		vm.log.Debug("system prepared", "since_init_start_ms", time.Since(processStart).Milliseconds())
	}

	command := argv
	if len(command) == 0 && vm.params.exec != "" {
		words, err := vassal.SplitCommand(vm.params.exec)
		if err != nil {
			vm.log.Error("invalid fief.exec on the kernel command line", "value", vm.params.exec, "err", err)
			return 1
		}
		command = words
	}
	return vm.runWorkload(command)
}

// prepareSystem turns the bare initramfs into a system vassals can run on.
func (vm *vmInit) prepareSystem() error {
	// Leave the initramfs first: the bind mount that replaces it carries
	// only what is there now, and every later mount goes on top of it.
	if err := leaveInitramfs(); err != nil {
		return err
	}
	if err := mountEarly(vm.log); err != nil {
		return err
	}
	ensureConsole()

	params, err := readBootParams("/proc/cmdline")
	if err != nil {
		return err
	}
	vm.params = params

	// Ctrl-Alt-Del then sends SIGINT to pid 1 instead of rebooting at once.
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF); err != nil {
		vm.log.Warn("turning ctrl-alt-del into SIGINT failed", "err", err)
	}

	if len(params.modules) > 0 {
		if err := loadModules(vm.log, "/lib/modules", params.modules); err != nil {
			return err
		}
	}
	mountFUSEControl(vm.log)

	if err := vassal.BringLoopbackUp(); err != nil {
		return err
	}
	return nil
}

// runWorkload runs the emperor and the command and returns the status the
// VM ends with: the command's, or the emperor's when there is no command.
func (vm *vmInit) runWorkload(command []string) int {
	vm.reaper = reaper.New(func(st reaper.Status) {
		vm.log.Debug("reaped orphan", "orphan_pid", st.Pid, "status", st.String())
	})

	signals := vm.signals

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var wg sync.WaitGroup
	emperorStatus := make(chan int, 1)
	// firstScan is closed once the emperor's first scan has started every
	// vassal it found, or at once when no emperor runs.
	firstScan := make(chan struct{})
	if info, err := os.Stat(VassalDir); err == nil && info.IsDir() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := emperor.Run(ctx, vm.log, emperor.Options{
				Dir:          VassalDir,
				UseClone:     "fs,pid",
				StatusSocket: emperor.DefaultStatusSocket,
				Reaper:       vm.reaper,
				OnFirstScan: func() {
					// Before the close, which lets the command start.
					vm.catchFatalSignals()
					close(firstScan)
					vm.raiseProcs()
				},
				// The emperor handles its own signals too; in a VM it
				// stops on the same SIGTERM and SIGINT as the init.
				OnSpawn: func(name string, pid int) {
					vm.firstSpawn.Do(func() {
						vm.log.Info("first vassal started", "vassal", name, "pid", pid,
							"since_init_start", time.Since(processStart).Round(time.Microsecond))
					})
				},
			})
			if err != nil {
				vm.log.Error("emperor failed", "err", err)
				emperorStatus <- 1
				return
			}
			emperorStatus <- 0
		}()
	} else if len(command) == 0 {
		vm.log.Error("nothing to run: no vassal directory and no command; give fief.exec= on the kernel command line or add vassal files", "dir", VassalDir)
		return 1
	} else {
		vm.catchFatalSignals()
		close(firstScan)
		vm.raiseProcs()
	}

	if len(command) == 0 {
		var status int
		select {
		case status = <-emperorStatus:
		case sig := <-signals:
			vm.log.Info("stopping", "signal", unix.SignalName(sig.(unix.Signal)))
			cancel()
			status = <-emperorStatus
		}
		wg.Wait()
		vm.workloadEnd = time.Now()
		return status
	}

	// The vassals start first: the command usually uses them, and on a VM
	// with one CPU it would otherwise slow their start. A stop signal that
	// arrives meanwhile stays queued for runCommand.
	select {
	case <-firstScan:
	case <-emperorStatus:
		// The emperor failed before its first scan and has logged why,
		// so the command runs without it. OnFirstScan never ran, so the
		// fatal signals are caught here, before the command can send one.
		vm.catchFatalSignals()
	}
	status := vm.runCommand(command, signals)
	cancel()
	wg.Wait()
	vm.workloadEnd = time.Now()
	return status
}

// raiseProcs gives the init of a VM its second P once the first vassals
// have started, for the system calls of later spawns and of the shutdown
// (see main). Under QEMU's software emulation the switch to two Ps, a stop
// of the world and a new thread, took about 10 ms in traced boots. Keeping
// one P up to the first vassal cut the median time to it by 6 to 20 ms in
// interleaved sets of 8 boots, and shutting down with one P took 5 to 7 ms
// longer. raiseProcs leaves the count alone when GOMAXPROCS is set in
// the environment, when the process is not pid 1, and when the emperor
// failed before its first scan.
func (vm *vmInit) raiseProcs() {
	if vm.pid1 && os.Getenv("GOMAXPROCS") == "" && runtime.GOMAXPROCS(0) < 2 {
		runtime.GOMAXPROCS(2)
	}
}

// fatalSignals are the signals, other than the stop signals, on which the
// Go runtime ends or crashes a process that has not requested them with
// os/signal. Sent to pid 1, any of them would make the kernel panic. A real
// fault (SIGSEGV, SIGBUS, SIGFPE, SIGILL from the CPU) still panics: the
// runtime relays only signals sent by a process.
var fatalSignals = []os.Signal{
	unix.SIGHUP, unix.SIGQUIT, unix.SIGILL, unix.SIGTRAP, unix.SIGABRT,
	unix.SIGBUS, unix.SIGFPE, unix.SIGSEGV, unix.SIGSTKFLT, unix.SIGSYS,
}

// catchFatalSignals makes pid 1 log and otherwise ignore the fatalSignals.
// The emperor also requests SIGHUP, and reloads its vassals on it.
//
// NOTE: it runs once the first vassals have started, because each signal
// costs a round trip to the runtime's signal thread, about 0.5 ms under
// QEMU's software emulation (an estimate). Until then, one of these signals
// sent to pid 1 ends it, as it does before any Go code of fief runs.
func (vm *vmInit) catchFatalSignals() {
	if !vm.pid1 {
		return
	}
	vm.fatalCaught.Do(func() {
		caught := make(chan os.Signal, 4)
		signal.Notify(caught, fatalSignals...)
		go func() {
			for sig := range caught {
				vm.log.Warn("pid 1 ignores the signal", "signal", unix.SignalName(sig.(unix.Signal)), "pid", os.Getpid())
			}
		}()
	})
}

// runCommand runs the command in its own session with the console as its
// controlling terminal, and returns its exit status. A stop signal reaches
// it as SIGTERM; after shutdownGrace it is left to the shutdown's SIGKILL.
func (vm *vmInit) runCommand(command []string, signals <-chan os.Signal) int {
	path, code := lookCommand(vm.log, command[0])
	if code != 0 {
		return code
	}
	cmd := &exec.Cmd{
		Path:        path,
		Args:        command,
		Stdin:       os.Stdin,
		Stdout:      os.Stdout,
		Stderr:      os.Stderr,
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	if vm.pid1 && isTerminal(0) {
		cmd.SysProcAttr.Setctty = true
		cmd.SysProcAttr.Ctty = 0
	}
	child, err := vm.reaper.Start(cmd)
	if err != nil {
		vm.log.Error("starting the command failed", "command", path, "err", err)
		return ExitNotExecutable
	}
	vm.log.Info("command started", "command_pid", child.Pid, "argv", command)

	for {
		select {
		case st := <-child.Done:
			vm.log.Info("command exited", "command_pid", child.Pid, "status", st.String())
			return st.ExitCode()
		case sig := <-signals:
			vm.log.Info("stopping the command", "signal", unix.SignalName(sig.(unix.Signal)), "command_pid", child.Pid)
			_ = child.Signal(unix.SIGTERM)
			select {
			case st := <-child.Done:
				return st.ExitCode()
			case <-time.After(shutdownGrace):
				vm.log.Warn("the command ignored SIGTERM; sending SIGKILL", "command_pid", child.Pid, "grace", shutdownGrace)
				_ = child.Signal(unix.SIGKILL)
				return (<-child.Done).ExitCode()
			}
		}
	}
}
