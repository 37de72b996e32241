package vassal

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"fief/asuser"
	"fief/fusectl"
	"fief/mount"
	"fief/reaper"
)

// StepError is a start-up step that failed, with the file and line it comes
// from.
type StepError struct {
	File  string
	Line  int
	Phase Phase
	Text  string // the command or hook as written, after expansion
	Err   error
}

func (e *StepError) Error() string {
	return fmt.Sprintf("%s:%d: %s step %q failed: %v", e.File, e.Line, e.Phase, e.Text, e.Err)
}

func (e *StepError) Unwrap() error { return e.Err }

// startUp runs the phases of a fresh start, up to the program.
func (v *vassalInit) startUp() error {
	v.detachDeadMounts()

	if err := v.runPhase(PhasePreJail, nil); err != nil {
		return err
	}

	if v.cfg.PivotRoot != nil {
		if err := v.pivotRoot(); err != nil {
			return err
		}
	}

	if err := v.runPhase(PhaseAsRoot, nil); err != nil {
		return err
	}
	return v.enterUserPhase()
}

// enterUserPhase resolves the user in the (possibly new) root and runs the
// as-user phase. Both a fresh start and a reload go through it.
func (v *vassalInit) enterUserPhase() error {
	creds, err := v.resolveCredentials()
	if err != nil {
		return err
	}
	v.creds = creds

	if creds != nil && creds.UID != 0 && v.cfg.usesFUSEAsUser() {
		if err := v.shareFUSEDevice(); err != nil {
			return err
		}
	}

	return v.runPhase(PhaseAsUser, v.creds)
}

// reload restarts the program inside the existing namespaces. The file is
// read again with if-reload true. Pre-jail, pivot_root and as-root set the
// namespaces up, which a reload keeps, so they do not run again, as in uWSGI;
// hooks such as "umount:/.old_root" could not run twice anyway. The as-user
// phase runs again.
func (v *vassalInit) reload() error {
	cfg, err := ParseFile(v.file, ParseOptions{Reload: true})
	if err != nil {
		return err
	}
	v.cfg = cfg
	return v.enterUserPhase()
}

// resolveCredentials looks uid and gid up in the current root's passwd and
// group files. It returns nil when the vassal runs as root.
func (v *vassalInit) resolveCredentials() (*Credentials, error) {
	if v.tyrant != nil {
		return v.tyrantCredentials()
	}
	if v.cfg.UID == "" && v.cfg.GID == "" {
		return nil, nil
	}
	user := v.cfg.UID
	if user == "" {
		user = "0"
	}
	creds, err := ResolveCredentials("/", user, v.cfg.GID)
	if err != nil {
		return nil, &ConfigError{File: v.cfg.File, Line: v.cfg.optionLine("uid", "gid"), Msg: err.Error()}
	}
	return creds, nil
}

// tyrantCredentials returns the file owner's uid with the primary gid and
// groups of the owner's passwd entry, or the file's gid when the uid has no
// entry. uid and gid lines in the file must name the same ids.
func (v *vassalInit) tyrantCredentials() (*Credentials, error) {
	owner := *v.tyrant
	creds, err := ResolveCredentials("/", strconv.FormatUint(uint64(owner.UID), 10), "")
	if err != nil {
		return nil, err
	}
	if creds.Name == "" {
		creds.GID = owner.GID
		creds.Groups = []uint32{owner.GID}
	}

	if v.cfg.UID != "" || v.cfg.GID != "" {
		user := v.cfg.UID
		if user == "" {
			user = creds.Name
		}
		asked, err := ResolveCredentials("/", user, v.cfg.GID)
		if err != nil || asked.UID != creds.UID || (v.cfg.GID != "" && asked.GID != creds.GID) {
			return nil, &ConfigError{File: v.cfg.File, Line: v.cfg.optionLine("uid", "gid"), Msg: fmt.Sprintf(
				"in tyrant mode the vassal runs as the file's owner %d:%d; remove the uid and gid lines or make them name that user", creds.UID, creds.GID)}
		}
	}
	return creds, nil
}

// shareFUSEDevice gives the vassal's user access to /dev/fuse inside the
// vassal's mount namespace when the host's node is root-only.
func (v *vassalInit) shareFUSEDevice() error {
	open, err := fusectl.DeviceOpenToAll()
	if err != nil || open {
		// A missing /dev/fuse is reported by the FUSE command itself.
		return nil
	}
	dir, err := v.runtimeDir()
	if err != nil {
		return err
	}
	if err := fusectl.ShareDevice(dir); err != nil {
		return fmt.Errorf("giving user %d access to /dev/fuse: %w; or make it mode 0666 as udev does", v.creds.UID, err)
	}
	v.log.Debug("bound a mode 0666 /dev/fuse into the vassal's mount namespace", "uid", v.creds.UID)
	return nil
}

// runtimeDir mounts a private tmpfs on RuntimeDir the first time it is
// needed and returns its path. It holds files of this vassal only, such as a
// /dev/fuse node, and vanishes with the mount namespace.
func (v *vassalInit) runtimeDir() (string, error) {
	if v.runtimeMounted {
		return RuntimeDir, nil
	}
	if err := os.MkdirAll(RuntimeDir, 0o755); err != nil {
		return "", fmt.Errorf("creating the vassal runtime directory %q: %w", RuntimeDir, err)
	}
	if err := mount.Mount("fief", RuntimeDir, "tmpfs", unix.MS_NOSUID, "mode=0755,size=4m"); err != nil {
		return "", fmt.Errorf("mounting the vassal runtime directory: %w", err)
	}
	v.runtimeMounted = true
	return RuntimeDir, nil
}

// usesFUSEAsUser reports whether a command of the as-user phase starts a FUSE
// daemon.
func (c *Config) usesFUSEAsUser() bool {
	for _, step := range c.Steps[PhaseAsUser] {
		if _, ok := fusectl.DaemonMountPoint(step.Argv()); ok {
			return true
		}
	}
	return false
}

// optionLine returns the line of the first applied option among keys, or 0.
func (c *Config) optionLine(keys ...string) int {
	for _, opt := range c.Options {
		for _, key := range keys {
			if opt.Key == key {
				return opt.Line
			}
		}
	}
	return 0
}

// runPhase runs every step of phase in file order and stops at the first
// failure. creds is nil for the root phases.
func (v *vassalInit) runPhase(phase Phase, creds *Credentials) error {
	for _, step := range v.cfg.Steps[phase] {
		var err error
		if step.Command != nil {
			err = v.runCommand(phase, step.Command.Argv, creds)
		} else {
			err = v.runHook(phase, step.Hook, creds)
		}
		if err != nil {
			return &StepError{File: v.cfg.File, Line: step.Line(), Phase: phase, Text: step.Text(), Err: err}
		}
	}
	return nil
}

// runAtexit runs the atexit phases, logging failures and going on, so that
// a FUSE filesystem that writes on unmount keeps its data. They run on every
// stop once the vassal file was read, also after a failed start.
func (v *vassalInit) runAtexit() {
	if v.cfg == nil {
		return
	}
	for _, phase := range []Phase{PhaseAsUserAtexit, PhaseAsRootAtexit} {
		creds := v.creds
		if phase == PhaseAsRootAtexit {
			creds = nil
		}
		for _, step := range v.cfg.Steps[phase] {
			var err error
			if step.Command != nil {
				err = v.runCommandUnstoppable(phase, step.Command.Argv, creds)
			} else {
				err = v.runHook(phase, step.Hook, creds)
			}
			if err != nil {
				v.log.Warn("atexit step failed", "err", &StepError{File: v.cfg.File, Line: step.Line(), Phase: phase, Text: step.Text(), Err: err})
			}
		}
	}
}

// environment returns the environment of the vassal's commands and program:
// the init's own, then the vassal's env lines, then HOME, USER and LOGNAME
// of creds.
func (v *vassalInit) environment(creds *Credentials) []string {
	env := os.Environ()
	env = append(env, v.cfg.Env...)
	if creds != nil {
		env = append(env, creds.Env()...)
	}
	return asuser.DedupEnv(env)
}

// newCommand builds an exec.Cmd for argv with the vassal's environment and,
// when creds is not nil, the vassal's user and groups.
func (v *vassalInit) newCommand(argv []string, creds *Credentials) (*exec.Cmd, error) {
	env := v.environment(creds)
	path, err := asuser.LookPath(argv[0], env)
	if err != nil {
		return nil, err
	}

	devNull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, fmt.Errorf("opening %q: %w", os.DevNull, err)
	}

	cmd := &exec.Cmd{
		Path:        path,
		Args:        argv,
		Env:         env,
		Stdin:       devNull,
		Stdout:      os.Stdout,
		Stderr:      os.Stderr,
		SysProcAttr: &syscall.SysProcAttr{},
	}
	if creds != nil {
		// The child calls setgroups, setgid and setuid, in that order,
		// between fork and exec, while it is still single-threaded.
		cmd.SysProcAttr.Credential = &syscall.Credential{
			Uid:    creds.UID,
			Gid:    creds.GID,
			Groups: creds.Groups,
		}
	}
	return cmd, nil
}

// start starts cmd through the reaper and closes the parent's copy of stdin.
func (v *vassalInit) start(cmd *exec.Cmd) (*reaper.Child, error) {
	child, err := v.reaper.Start(cmd)
	if stdin, ok := cmd.Stdin.(*os.File); ok {
		stdin.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("starting %q: %w", cmd.Path, err)
	}
	return child, nil
}

// runCommand runs argv, waits for it, and when it is a FUSE daemon waits for
// its mount to appear. A stop request kills the command and returns
// context.Canceled.
func (v *vassalInit) runCommand(phase Phase, argv []string, creds *Credentials) error {
	cmd, err := v.newCommand(argv, creds)
	if err != nil {
		return err
	}
	child, err := v.start(cmd)
	if err != nil {
		return err
	}
	v.log.Debug("running step", "phase", string(phase), "step_ns_pid", child.Pid, "argv", argv)

	select {
	case st := <-child.Done:
		if !st.Success() {
			return errors.New(st.String())
		}
	case <-v.ctx.Done():
		_ = child.Signal(unix.SIGKILL)
		<-child.Done
		return v.ctx.Err()
	}

	mountPoint, ok := fusectl.DaemonMountPoint(argv)
	if !ok {
		return nil
	}
	info, err := fusectl.WaitMount(v.ctx, v.watcher, v.readMounts, mountPoint, v.cfg.FuseMountTimeout)
	if err != nil {
		return fmt.Errorf("%w; check that the command mounts there (is the mount point an empty directory the user can write?)", err)
	}
	v.log.Info("FUSE filesystem mounted", "mount_point", mountPoint, "fstype", info.FSType, "connection", info.ConnectionID())
	return nil
}

// runCommandUnstoppable runs argv and waits for it even after a stop request,
// as the atexit phases must.
func (v *vassalInit) runCommandUnstoppable(phase Phase, argv []string, creds *Credentials) error {
	cmd, err := v.newCommand(argv, creds)
	if err != nil {
		return err
	}
	child, err := v.start(cmd)
	if err != nil {
		return err
	}
	v.log.Debug("running step", "phase", string(phase), "step_ns_pid", child.Pid, "argv", argv)
	if st := <-child.Done; !st.Success() {
		return errors.New(st.String())
	}
	return nil
}

// startProgram starts the vassal's program with the dropped privileges, in
// the chdir directory. Go applies the directory after setuid, so it must be
// reachable by the vassal's user.
func (v *vassalInit) startProgram() (*reaper.Child, error) {
	text := "uwsgi"
	if v.cfg.Exec != nil {
		text = v.cfg.Exec.Text
	}
	cmd, err := v.programCommand()
	if err != nil {
		return nil, &StepError{File: v.cfg.File, Line: v.programLine(), Phase: "program", Text: text, Err: err}
	}
	cmd.Dir = v.cfg.Chdir

	child, err := v.start(cmd)
	for _, extra := range cmd.ExtraFiles {
		extra.Close()
	}
	if err != nil {
		return nil, &StepError{File: v.cfg.File, Line: v.programLine(), Phase: "program", Text: text, Err: err}
	}
	v.log.Info("program started", "program_ns_pid", child.Pid, "argv", cmd.Args)
	v.status.running()
	return child, nil
}

func (v *vassalInit) programLine() int {
	if v.cfg.Exec != nil {
		return v.cfg.Exec.Line
	}
	return 0
}
