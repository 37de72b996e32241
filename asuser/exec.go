package asuser

import (
	"errors"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"unsafe"
)

// Exit codes of exec-as-user when it cannot replace itself with the program.
const (
	ExitUserError     = 1
	ExitNotExecutable = 126
	ExitNotFound      = 127
)

// ExecError is a failure of [Exec] with the exit code to report.
type ExecError struct {
	Code int
	Err  error
}

func (e *ExecError) Error() string { return e.Err.Error() }
func (e *ExecError) Unwrap() error { return e.Err }

// Options configure [Exec].
type Options struct {
	// NoNewPrivs sets PR_SET_NO_NEW_PRIVS, so setuid binaries and file
	// capabilities cannot raise the program's privileges again.
	NoNewPrivs bool
	// ThreadLocked reports that the calling goroutine already stays on its
	// thread, as the main goroutine does while package init functions
	// run. Exec then does not call runtime.LockOSThread, whose first call
	// starts a runtime thread that execve would only end.
	ThreadLocked bool
}

// Exec switches to the user and group named by spec (USER, USER:GROUP,
// by name or number) and replaces the process with argv, so no process of
// fief stays behind. It returns only on failure, with an *ExecError.
//
// The user is resolved as for a vassal's uid and gid, with two differences
// kept for compatibility with gosu. A numeric uid that has no passwd entry
// and no explicit group keeps the caller's gid. The supplementary groups
// leave out the primary gid.
func Exec(spec string, argv []string, opts Options) error {
	user, group, _ := cut(spec, ':')
	creds, err := ResolveCredentials("/", user, group)
	if err != nil {
		return &ExecError{Code: ExitUserError, Err: wrap("switching to "+strconv.Quote(spec), err)}
	}
	// gosu sets the memberships in the group file without the primary gid
	// as supplementary groups, and none for USER:GROUP.
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

	env := DedupEnv(append(syscall.Environ(), creds.Env()...))
	path, err := LookPath(argv[0], env)
	if err != nil {
		return &ExecError{Code: ExitNotFound, Err: err}
	}
	if err := syscall.Access(path, xOK); err != nil {
		code := ExitNotExecutable
		if errors.Is(err, syscall.ENOENT) {
			code = ExitNotFound
		}
		return &ExecError{Code: code, Err: wrap("program "+strconv.Quote(path), err)}
	}

	// The credentials and no_new_privs are set on this thread only, and
	// this thread calls execve. The new program gets the calling thread's
	// credentials, and execve ends every other thread. One thread's calls
	// are also cheaper than changing every thread of the runtime.
	if !opts.ThreadLocked {
		runtime.LockOSThread()
	}
	if err := switchUser(creds); err != nil {
		return &ExecError{Code: ExitUserError, Err: err}
	}
	if opts.NoNewPrivs {
		if _, _, errno := syscall.RawSyscall6(syscall.SYS_PRCTL, prSetNoNewPrivs, 1, 0, 0, 0, 0); errno != 0 {
			return &ExecError{Code: ExitUserError, Err: wrap("setting no_new_privs", errno)}
		}
	}

	err = syscall.Exec(path, argv, env)
	code := ExitNotExecutable
	if errors.Is(err, syscall.ENOENT) {
		code = ExitNotFound
	}
	return &ExecError{Code: code, Err: wrap("executing "+strconv.Quote(path), err)}
}

// switchUser sets the supplementary groups, the gid and the uid, in that
// order, on the calling thread only, with raw system calls, because the
// setters of package syscall would change every thread. The caller must hold the thread
// locked and exec from it.
func switchUser(creds *Credentials) error {
	if os.Geteuid() != 0 {
		if uint32(os.Getuid()) == creds.UID && uint32(os.Getgid()) == creds.GID {
			return nil
		}
		return errors.New("switching to uid " + strconv.FormatUint(uint64(creds.UID), 10) + " gid " + strconv.FormatUint(uint64(creds.GID), 10) +
			" needs root, but fief runs as uid " + strconv.Itoa(os.Getuid()) + "; run it as root or drop the user argument")
	}

	// Each call is a raw system call on this thread.
	var groups unsafe.Pointer
	if len(creds.Groups) > 0 {
		groups = unsafe.Pointer(&creds.Groups[0])
	}
	if _, _, errno := syscall.RawSyscall(syscall.SYS_SETGROUPS, uintptr(len(creds.Groups)), uintptr(groups), 0); errno != 0 {
		return wrap("setting supplementary groups "+formatIDs(creds.Groups), errno)
	}
	gid, uid := uintptr(creds.GID), uintptr(creds.UID)
	if _, _, errno := syscall.RawSyscall(syscall.SYS_SETRESGID, gid, gid, gid); errno != 0 {
		return wrap("setting gid "+strconv.FormatUint(uint64(creds.GID), 10), errno)
	}
	if _, _, errno := syscall.RawSyscall(syscall.SYS_SETRESUID, uid, uid, uid); errno != 0 {
		return wrap("setting uid "+strconv.FormatUint(uint64(creds.UID), 10), errno)
	}
	return nil
}

const (
	xOK             = 1  // access(2) mode: execute permission
	prSetNoNewPrivs = 38 // prctl(2) option PR_SET_NO_NEW_PRIVS
)

// formatIDs formats ids as fmt's %v does: [1 2 3].
func formatIDs(ids []uint32) string {
	out := "["
	for i, id := range ids {
		if i > 0 {
			out += " "
		}
		out += strconv.FormatUint(uint64(id), 10)
	}
	return out + "]"
}
