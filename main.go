// Command fief is a pid-1 emperor of vassals: it runs each service in its own
// mount and pid namespaces with the FUSE filesystems it needs, watches those
// mounts, and restarts the service from a clean state when one fails.

// fief sets GOMAXPROCS itself. These settings stop the runtime from
// following the cgroup CPU limit and from waking an idle process to look for
// changed limits. The Go 1.26 runtime still reads /proc/self/cgroup and
// /proc/self/mountinfo once at every start, before main. A perf profile of
// vassal inits shows these reads in runtime.defaultGOMAXPROCSInit.
//
//go:debug containermaxprocs=0
//go:debug updatemaxprocs=0
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"fief/asuser"
	_ "fief/asuser/fastpath" // starts exec-as-user before the other packages' init
	"fief/binpages"
	"fief/emperor"
	initd "fief/init"
	"fief/vassal"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit codes of fief's own commands.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	// The container init's waiter runs fief again under this argv[0] when
	// the command has left processes behind. This check comes first,
	// because LeftoversMain must replace the Go runtime's signal handlers
	// as early as possible.
	//
	// NOTE: the runtime installs its handlers for SIGTERM and SIGQUIT
	// before main, although the waiter had set the forwarded signals to
	// SIG_IGN. One that arrives before LeftoversMain installs its own
	// handlers still ends fief.
	if len(os.Args) > 0 && os.Args[0] == initd.LeftoversArg0 {
		os.Exit(initd.LeftoversMain(os.Args[1:], func(format, level string) *slog.Logger {
			return vassal.NewLogger(os.Stderr, format, level)
		}))
	}

	// fief never writes a heap profile. Without this, the runtime records a
	// stack trace once per 512 KiB allocated on average, in a hash table of
	// 1.4 MB of address space whose touched pages stay resident.
	runtime.MemProfileRate = 0

	// The kernel starts /init of an initramfs as pid 1 with no arguments.
	vmInit := os.Getpid() == 1 && len(os.Args) > 0 && filepath.Base(os.Args[0]) == "init"

	// fief waits on children, signals and files and computes almost
	// nothing, so one P is enough. Each further P keeps caches and idle
	// threads: with one, a vassal init's RSS drops by about 0.3 MB.
	//
	// The init of a VM gets two, on a VM with one CPU only once its first
	// vassals have started (see initd.RunVM). With one P, the runtime's
	// sysmon takes the P from a thread whose system call lasts more than
	// one sysmon tick (at least 20 us) and hands it to another thread,
	// which costs thread switches. Under software emulation most system
	// calls of a boot (mounts, ioctls, forks) last that long. With a
	// second P idle, sysmon leaves a P in a system call for up to 10 ms
	// (runtime.retake in Go 1.26). But on one CPU, the switch to two Ps
	// and the thread that the runtime starts for the idle P then cost more
	// than that saves before the first vassal (see initd.raiseProcs).
	procs := 1
	if vmInit && runtime.GOMAXPROCS(0) > 1 {
		procs = 2
	}
	// Setting GOMAXPROCS stops the world, so it is skipped when the count
	// is already right. That is the case on a machine with one CPU and for
	// the init of a VM with two CPUs.
	if os.Getenv("GOMAXPROCS") == "" && runtime.GOMAXPROCS(0) != procs {
		runtime.GOMAXPROCS(procs)
	}

	// A vassal init is this binary re-executed in new namespaces; it must
	// take over before anything else runs.
	if len(os.Args) > 0 && os.Args[0] == vassal.InitArg0 {
		os.Exit(vassal.InitMain(os.Args[1:]))
	}

	if vmInit {
		os.Exit(runInit(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// fief exec-as-user runs from an init function, before main. Package init
// functions run on the main goroutine, locked to the main thread. So the
// credentials can be changed on that thread and execve called from it
// without runtime.LockOSThread, whose first call starts a thread of the
// runtime. It also skips main's GOMAXPROCS change, a stop-the-world that a
// process about to execve gains nothing from. Package fief/asuser/fastpath
// runs the usual command lines even earlier. This init function handles
// the command lines that fastpath leaves, with the full flag parsing.
func init() {
	if len(os.Args) > 1 && os.Args[1] == "exec-as-user" {
		os.Exit(execAsUser(os.Args[2:], os.Stdout, os.Stderr, true))
	}
}

// command is one fief subcommand.
type command struct {
	name    string
	usage   string
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"emperor", "emperor [flags] DIR | emperor --ini FILE", "supervise every vassal file (*.ini) in DIR", runEmperor},
		{"vassal", "vassal [flags] FILE", "run one vassal in the foreground, in its own namespaces", runVassal},
		{"status", "status [--socket PATH] [--json]", "show the vassals of a running emperor", runStatus},
		{"check", "check FILE|DIR...", "validate vassal files and print the planned setup; exit 1 on error", runCheck},
		{"init", "init [flags] [-- CMD [ARG...]]", "pid 1 of a VM: early mounts, modules, then the emperor and CMD, then power off", runInit},
		{"mkinitramfs", "mkinitramfs -o FILE [flags]", "write an initramfs (newc cpio) with fief as /init, for booting fief in a VM", initd.MkInitramfs},
		{"exec-as-user", "exec-as-user [flags] USER[:GROUP] CMD [ARG...]", "switch to USER and replace fief with CMD (no process stays behind)", runExecAsUser},
		{"--", "[flags] -- CMD [ARG...]", "container init: run CMD, reap zombies, forward signals, exit with CMD's status", runContainer},
		{"version", "version", "print fief's version and the Go version it was built with", runVersion},
		{"help", "help [COMMAND]", "describe fief or one command and its flags", runHelp},
	}
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		printUsage(stderr)
		return exitUsage
	}
	name := args[0]
	if name == "-h" || name == "--help" || name == "-help" {
		printUsage(stdout)
		return exitOK
	}
	// Flags before "--" belong to the container init, as with tini.
	if strings.HasPrefix(name, "-") {
		return runContainer(args, stdout, stderr)
	}
	for _, c := range commands() {
		if c.name == name {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "fief: unknown command %q; run 'fief help' for the list of commands\n", name)
	return exitUsage
}

func printUsage(w io.Writer) {
	fmt.Fprintf(w, "fief %s: an emperor of vassals, each in its own mount and pid namespaces\n\nUsage:\n", version)
	for _, c := range commands() {
		fmt.Fprintf(w, "  fief %s\n      %s\n", c.usage, c.summary)
	}
	fmt.Fprintf(w, "\nRun 'fief help COMMAND' or 'fief COMMAND --help' for the flags of a command.\n")
}

// newFlagSet returns a flag set whose --help output names the command.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("fief "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	for _, c := range commands() {
		if c.name == name {
			fs.Usage = func() {
				fmt.Fprintf(fs.Output(), "Usage: fief %s\n\n%s.\n", c.usage, capitalize(c.summary))
				hasFlags := false
				fs.VisitAll(func(*flag.Flag) { hasFlags = true })
				if hasFlags {
					fmt.Fprintf(fs.Output(), "\nFlags:\n")
					fs.PrintDefaults()
				}
			}
		}
	}
	return fs
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// parseFlags parses args and returns the exit code to stop with, or -1 to go
// on.
func parseFlags(fs *flag.FlagSet, args []string) int {
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case err != nil:
		return exitUsage
	}
	return -1
}

type logFlags struct {
	format, level string
}

func (l *logFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.format, "log-format", "text", "log line format: text or json")
	fs.StringVar(&l.level, "log-level", "info", "lowest level logged: debug, info, warn or error")
}

func (l *logFlags) validate(stderr io.Writer) bool {
	if l.format != "text" && l.format != "json" {
		fmt.Fprintf(stderr, "fief: invalid --log-format %q: use text or json\n", l.format)
		return false
	}
	switch l.level {
	case "debug", "info", "warn", "error":
		return true
	}
	fmt.Fprintf(stderr, "fief: invalid --log-level %q: use debug, info, warn or error\n", l.level)
	return false
}

func runEmperor(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("emperor", stderr)
	var logs logFlags
	logs.register(fs)
	ini := fs.String("ini", "", "read the vassal directory and settings from this uWSGI-style ini `file` (keys: emperor, emperor-use-clone)")
	useClone := fs.String("use-clone", "fs,pid", "comma-separated `namespaces` every vassal gets: fs, pid, ipc, uts, net, cgroup (fs and pid are always on)")
	statusSocket := fs.String("status-socket", emperor.DefaultStatusSocket, "unix socket `path` (mode 0600) that serves fief status; empty for none")
	tyrant := fs.Bool("tyrant", false, "run each vassal as the owner of its file; refuse files owned by root, writable by group or others, or symlinked (default off)")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if !logs.validate(stderr) {
		return exitUsage
	}

	opts := emperor.Options{UseClone: *useClone, LogFormat: logs.format, LogLevel: logs.level, StatusSocket: *statusSocket, Tyrant: *tyrant}
	switch {
	case *ini != "" && fs.NArg() == 0:
		settings, err := emperor.LoadIni(*ini)
		if err != nil {
			fmt.Fprintf(stderr, "fief: %v\n", err)
			return exitUsage
		}
		opts.Dir = settings.Dir
		if settings.UseClone != "" {
			opts.UseClone = settings.UseClone
		}
		opts.Tyrant = opts.Tyrant || settings.Tyrant
	case *ini == "" && fs.NArg() == 1:
		opts.Dir = fs.Arg(0)
	default:
		fmt.Fprintf(stderr, "fief emperor: give either a vassal directory or --ini FILE\n")
		fs.Usage()
		return exitUsage
	}

	if _, err := vassal.ParseCloneFlags(opts.UseClone); err != nil {
		fmt.Fprintf(stderr, "fief emperor: %v\n", err)
		return exitUsage
	}

	log := vassal.NewLogger(os.Stderr, logs.format, logs.level)
	// The emperor loop drops the binary's pages from its RSS once it
	// settles after activity. This drops them after garbage collections
	// too, because the collector's code faults about 1 MB back in.
	binpages.ReleaseAfterEachGC(nil, time.Minute, func(_ binpages.Result, err error) {
		if err != nil {
			log.Warn("releasing the pages of the fief binary failed", "pid", os.Getpid(), "err", err)
		}
	})
	if err := emperor.Run(context.Background(), log, opts); err != nil {
		log.Error("emperor failed", "err", err)
		return exitFailure
	}
	return exitOK
}

func runVassal(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("vassal", stderr)
	var logs logFlags
	logs.register(fs)
	useClone := fs.String("use-clone", "fs,pid", "comma-separated `namespaces` the vassal gets: fs, pid, ipc, uts, net, cgroup (fs and pid are always on)")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if !logs.validate(stderr) {
		return exitUsage
	}
	if fs.NArg() != 1 {
		fmt.Fprintf(stderr, "fief vassal: give exactly one vassal file\n")
		fs.Usage()
		return exitUsage
	}

	if _, err := vassal.ParseCloneFlags(*useClone); err != nil {
		fmt.Fprintf(stderr, "fief vassal: %v\n", err)
		return exitUsage
	}

	log := vassal.NewLogger(os.Stderr, logs.format, logs.level)
	return vassal.RunForeground(log, fs.Arg(0), vassal.ForegroundOptions{
		UseClone:  *useClone,
		LogFormat: logs.format,
		LogLevel:  logs.level,
	})
}

func runCheck(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("check", stderr)
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if fs.NArg() == 0 {
		fmt.Fprintf(stderr, "fief check: give at least one vassal file or directory\n")
		fs.Usage()
		return exitUsage
	}
	if !vassal.CheckFiles(fs.Args(), stdout, stderr) {
		return exitFailure
	}
	return exitOK
}

func runExecAsUser(args []string, stdout, stderr io.Writer) int {
	return execAsUser(args, stdout, stderr, false)
}

// execAsUser runs fief exec-as-user with args. threadLocked reports that
// the caller's goroutine is locked to its thread, as in a package init
// function (see init).
func execAsUser(args []string, stdout, stderr io.Writer, threadLocked bool) int {
	fs := newFlagSet("exec-as-user", stderr)
	noNewPrivs := fs.Bool("no-new-privs", false, "set PR_SET_NO_NEW_PRIVS so CMD cannot gain privileges through setuid files or file capabilities (default off)")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if fs.NArg() < 2 {
		fmt.Fprintf(stderr, "fief exec-as-user: give a user and a command\n")
		fs.Usage()
		return exitUsage
	}

	err := asuser.Exec(fs.Arg(0), fs.Args()[1:], asuser.Options{NoNewPrivs: *noNewPrivs, ThreadLocked: threadLocked})
	fmt.Fprintf(stderr, "fief exec-as-user: %v\n", err)
	var execErr *asuser.ExecError
	if errors.As(err, &execErr) {
		return execErr.Code
	}
	return exitFailure
}

// remapFlags collects repeated --remap-exit values.
type remapFlags map[int]int

func (r remapFlags) String() string { return "" }
func (r remapFlags) Set(text string) error {
	return initd.ParseRemap(text, r)
}

func runContainer(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("--", stderr)
	var logs logFlags
	logs.register(fs)
	subreaper := fs.Bool("s", false, "child subreaper mode: reap zombies without being pid 1, and do not print the notice about it (default off)")
	group := fs.Bool("g", false, "forward signals to CMD's whole process group instead of CMD alone (default off)")
	grace := fs.Duration("grace", 5*time.Second, "`duration` processes left behind by CMD get between SIGTERM and SIGKILL once CMD exits")
	noWaiter := fs.Bool("no-waiter", false, "keep fief as the init for CMD's whole life instead of executing the small waiter from a memory file once CMD runs, for hosts whose policy forbids executing memory files (default off)")
	remap := remapFlags{}
	fs.Var(remap, "remap-exit", "map CMD's exit code FROM to TO, as `FROM:TO` (e.g. 143:0); repeatable")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if !logs.validate(stderr) {
		return exitUsage
	}
	if fs.NArg() == 0 {
		fmt.Fprintf(stderr, "fief: give the command to run after --, e.g. fief -- /app/server\n")
		return exitUsage
	}

	log := vassal.NewLogger(os.Stderr, logs.format, logs.level)
	return initd.RunContainer(log, fs.Args(), initd.ContainerOptions{
		Subreaper: *subreaper,
		Group:     *group,
		Grace:     *grace,
		Remap:     remap,
		NoWaiter:  *noWaiter,
		LogFormat: logs.format,
		LogLevel:  logs.level,
	})
}

func runStatus(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("status", stderr)
	socket := fs.String("socket", emperor.DefaultStatusSocket, "unix socket `path` of the emperor's status")
	asJSON := fs.Bool("json", false, "print the report as JSON (default a table)")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "fief status: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}

	if err := emperor.FetchStatus(*socket, *asJSON, stdout); err != nil {
		fmt.Fprintf(stderr, "fief status: %v\n", err)
		return exitFailure
	}
	return exitOK
}

func runInit(args []string, stdout, stderr io.Writer) int {
	logs := logFlags{format: "text", level: "info"}
	command := args
	// The kernel starts /init without arguments. The flag set is then not
	// built, which spares a booting VM the flag package's code.
	if len(args) > 0 {
		fs := newFlagSet("init", stderr)
		logs.register(fs)
		if code := parseFlags(fs, args); code >= 0 {
			if os.Getpid() != 1 {
				return code
			}
			// Pid 1 must not exit on a bad flag: run with the defaults.
		}
		if !logs.validate(stderr) {
			logs = logFlags{format: "text", level: "info"}
		}
		command = fs.Args()
	}

	log := vassal.NewLogger(os.Stderr, logs.format, logs.level)
	return initd.RunVM(log, command)
}

func runVersion(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("version", stderr)
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	fmt.Fprintf(stdout, "fief %s (%s, %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return exitOK
}

func runHelp(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "-help" {
		printUsage(stdout)
		return exitOK
	}
	for _, c := range commands() {
		if c.name == args[0] {
			if c.name == "help" {
				printUsage(stdout)
				return exitOK
			}
			return c.run([]string{"--help"}, stdout, stdout)
		}
	}
	fmt.Fprintf(stderr, "fief help: unknown command %q; run 'fief help' for the list of commands\n", args[0])
	return exitUsage
}
