package vassal

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Exit codes of exec-as-user when it cannot replace itself with the program.
const (
	ExitUserError     = 1
	ExitNotExecutable = 126
	ExitNotFound      = 127
)

// ExecError is a failure of [ExecAsUser] with the exit code to report.
type ExecError struct {
	Code int
	Err  error
}

func (e *ExecError) Error() string { return e.Err.Error() }
func (e *ExecError) Unwrap() error { return e.Err }

// ExecAsUserOptions configure [ExecAsUser].
type ExecAsUserOptions struct {
	// NoNewPrivs sets PR_SET_NO_NEW_PRIVS, so setuid binaries and file
	// capabilities cannot raise the program's privileges again.
	NoNewPrivs bool
	// ThreadLocked tells that the calling goroutine already stays on its
	// thread, as the main goroutine does while package init functions
	// run. ExecAsUser then does not call runtime.LockOSThread, whose first
	// call starts a thread of the runtime that execve would only end.
	ThreadLocked bool
}

// ExecAsUser switches to the user and group named by spec (USER, USER:GROUP,
// by name or number) and replaces the process with argv, so no process of
// fief stays behind. It returns only on failure, with an *ExecError.
//
// The user is resolved as for a vassal's uid and gid, with two differences
// kept for compatibility with gosu. A numeric uid that has no passwd entry
// and no explicit group keeps the caller's gid. The supplementary groups
// leave out the primary gid.
func ExecAsUser(spec string, argv []string, opts ExecAsUserOptions) error {
	user, group, _ := strings.Cut(spec, ":")
	creds, err := ResolveCredentials("/", user, group)
	if err != nil {
		return &ExecError{Code: ExitUserError, Err: fmt.Errorf("switching to %q: %w", spec, err)}
	}
	// gosu's supplementary groups: the memberships in the group file,
	// without the primary gid, and none at all for USER:GROUP.
	// ResolveCredentials puts the primary gid first.
	switch {
	case group != "":
		creds.Groups = []uint32{}
	case creds.Name == "":
		creds.GID = uint32(os.Getgid())
		creds.Groups = []uint32{}
	default:
		creds.Groups = creds.Groups[1:]
	}

	env := dedupEnv(append(os.Environ(), creds.Env()...))
	path, err := lookPath(argv[0], env)
	if err != nil {
		return &ExecError{Code: ExitNotFound, Err: err}
	}
	if err := unix.Access(path, unix.X_OK); err != nil {
		code := ExitNotExecutable
		if errors.Is(err, unix.ENOENT) {
			code = ExitNotFound
		}
		return &ExecError{Code: code, Err: fmt.Errorf("program %q: %w", path, err)}
	}

	// The credentials and no_new_privs are set on this thread only, and
	// this thread calls execve: the new program gets the calling thread's
	// credentials, and execve ends every other thread. One thread's calls
	// are also cheaper than changing every thread of the runtime.
	if !opts.ThreadLocked {
		runtime.LockOSThread()
	}
	if err := switchUser(creds); err != nil {
		return &ExecError{Code: ExitUserError, Err: err}
	}
	if opts.NoNewPrivs {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return &ExecError{Code: ExitUserError, Err: fmt.Errorf("setting no_new_privs: %w", err)}
		}
	}

	err = syscall.Exec(path, argv, env)
	code := ExitNotExecutable
	if errors.Is(err, syscall.ENOENT) {
		code = ExitNotFound
	}
	return &ExecError{Code: code, Err: fmt.Errorf("executing %q: %w", path, err)}
}

// switchUser sets the supplementary groups, the gid and the uid, in that
// order, on the calling thread only, with raw system calls: the setters of
// package syscall would change every thread. The caller must hold the thread
// locked and exec from it.
func switchUser(creds *Credentials) error {
	if os.Geteuid() != 0 {
		if uint32(os.Getuid()) == creds.UID && uint32(os.Getgid()) == creds.GID {
			return nil
		}
		return fmt.Errorf("switching to uid %d gid %d needs root, but fief runs as uid %d; run it as root or drop the user argument",
			creds.UID, creds.GID, os.Getuid())
	}

	// unix.Setgroups is a raw per-thread call; setresgid and setresuid
	// go through RawSyscall for the same reason.
	groups := make([]int, len(creds.Groups))
	for i, g := range creds.Groups {
		groups[i] = int(g)
	}
	if err := unix.Setgroups(groups); err != nil {
		return fmt.Errorf("setting supplementary groups %v: %w", creds.Groups, err)
	}
	gid, uid := uintptr(creds.GID), uintptr(creds.UID)
	if _, _, errno := unix.RawSyscall(unix.SYS_SETRESGID, gid, gid, gid); errno != 0 {
		return fmt.Errorf("setting gid %d: %w", creds.GID, errno)
	}
	if _, _, errno := unix.RawSyscall(unix.SYS_SETRESUID, uid, uid, uid); errno != 0 {
		return fmt.Errorf("setting uid %d: %w", creds.UID, errno)
	}
	return nil
}
