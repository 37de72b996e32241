package initd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"

	"fief/rawsig"
)

// waiterCode is the waiter program of waiter_amd64.s. This process never
// calls it. execWaiter copies its machine code into an ELF file.
func waiterCode()

// waiterCodeAddr returns the address of waiterCode's first instruction.
func waiterCodeAddr() unsafe.Pointer

// The waiter's memory layout. Its code is in one read-only executable page
// and its state in the next, read-write page. They sit at the usual load
// address of a static program, well above any vm.mmap_min_addr. The
// offsets match the S_ constants of waiter_amd64.s.
const (
	waiterBase     = 0x400000
	waiterCodeOff  = 0x100
	waiterState    = 0x401000
	waiterPageSize = 0x1000

	sPid    = 0
	sPidfd  = 4
	sMode   = 8
	sPid1   = 12
	sExeFd  = 16
	sSigset = 24
	sHex    = 32
	sArgv   = 40
	sRemap  = 56
	sEmpty  = 452
	sHexDig = 456
	sName   = 472
	sIgnAct = 488 // struct sigaction of SIG_IGN, set on the forwarded signals before fief runs again
	sData   = 520 // start of the argv array, followed by its strings
)

// waiterEnd marks the end of waiterCode's machine code.
var waiterEnd = []byte("\x0f\x0bFIEFWEND")

// waiterSetup is the waiter's input besides its code: the command's pid,
// pidfd and forwarding mode (fwdByPidfd, fwdToGroup or fwdByPid), whether
// fief is pid 1, the forwarded signals and the exit code mapping.
type waiterSetup struct {
	pid, pidfd, mode int
	pid1             bool
	signals          []unix.Signal
	remap            map[int]int
	// rerun is the argv with which the waiter runs fief again when the
	// command has left processes behind. The waiter writes the command's
	// wait status into the argument that equals statusPlaceholder.
	rerun []string
}

// statusPlaceholder is the argument of rerun that the waiter overwrites
// with the command's wait status, as 8 hex digits.
const statusPlaceholder = "-status=XXXXXXXX"

// waiterImage returns the waiter's ELF file, with setup in its state page.
// exeFd is the descriptor of fief's executable, for running it again.
func waiterImage(setup waiterSetup, exeFd int) ([]byte, error) {
	text := unsafe.Slice((*byte)(waiterCodeAddr()), waiterPageSize-waiterCodeOff)
	end := bytes.Index(text, waiterEnd)
	if end < 0 {
		return nil, fmt.Errorf("the waiter's code has no end mark %q in its first %d bytes: waiterCode in waiter_amd64.s must end with it and fit in its page", waiterEnd, len(text))
	}
	code := text[:end]

	image := make([]byte, 2*waiterPageSize)
	le := binary.LittleEndian
	// ELF header.
	copy(image, []byte{0x7f, 'E', 'L', 'F', 2, 1, 1})
	le.PutUint16(image[16:], 2)    // ET_EXEC
	le.PutUint16(image[18:], 0x3e) // EM_X86_64
	le.PutUint32(image[20:], 1)
	le.PutUint64(image[24:], waiterBase+waiterCodeOff) // entry
	le.PutUint64(image[32:], 64)                       // program headers
	le.PutUint16(image[52:], 64)
	le.PutUint16(image[54:], 56)
	le.PutUint16(image[56:], 3)
	// Program headers: the code, the state, and PT_GNU_STACK for a
	// non-executable stack.
	phdr := func(i int, typ, flags uint32, off, vaddr, size uint64) {
		p := image[64+56*i:]
		le.PutUint32(p[0:], typ)
		le.PutUint32(p[4:], flags)
		le.PutUint64(p[8:], off)
		le.PutUint64(p[16:], vaddr)
		le.PutUint64(p[24:], vaddr)
		le.PutUint64(p[32:], size)
		le.PutUint64(p[40:], size)
		le.PutUint64(p[48:], waiterPageSize)
	}
	const pfX, pfW, pfR = 1, 2, 4
	phdr(0, 1, pfR|pfX, 0, waiterBase, waiterCodeOff+uint64(len(code)))
	phdr(1, 1, pfR|pfW, waiterPageSize, waiterState, waiterPageSize)
	phdr(2, 0x6474e551, pfR|pfW, 0, 0, 0) // PT_GNU_STACK
	copy(image[waiterCodeOff:], code)

	state := image[waiterPageSize:]
	le.PutUint32(state[sPid:], uint32(setup.pid))
	le.PutUint32(state[sPidfd:], uint32(int32(setup.pidfd)))
	le.PutUint32(state[sMode:], uint32(setup.mode))
	if setup.pid1 {
		le.PutUint32(state[sPid1:], 1)
	}
	le.PutUint32(state[sExeFd:], uint32(exeFd))
	le.PutUint64(state[sSigset:], waiterSigset(setup.signals))
	for code := range 256 {
		to := code
		if mapped, ok := setup.remap[code]; ok {
			to = mapped
		}
		state[sRemap+code] = byte(to)
	}
	copy(state[sHexDig:], "0123456789abcdef")
	copy(state[sName:sName+15], "fief")
	le.PutUint64(state[sIgnAct:], 1) // SIG_IGN

	// The argv for running fief again: NULL-terminated pointers, then
	// the strings.
	argv := state[sData:]
	strs := sData + 8*(len(setup.rerun)+1)
	hexAt := uint64(0)
	for i, arg := range setup.rerun {
		if strs+len(arg)+1 > waiterPageSize {
			return nil, fmt.Errorf("the %d arguments for running fief again, with %d exit code mappings, do not fit in the waiter's %d-byte state page; pass fewer --remap-exit flags", len(setup.rerun), len(setup.remap), waiterPageSize)
		}
		le.PutUint64(argv[8*i:], uint64(waiterState+strs))
		copy(state[strs:], arg)
		if arg == statusPlaceholder {
			hexAt = uint64(waiterState + strs + len(statusPlaceholder) - 8)
		}
		strs += len(arg) + 1
	}
	if hexAt == 0 {
		return nil, fmt.Errorf("the arguments for running fief again %q have no %q argument for the wait status", setup.rerun, statusPlaceholder)
	}
	le.PutUint64(state[sHex:], hexAt)
	le.PutUint64(state[sArgv:], waiterState+sData)
	return image, nil
}

// waiterSigset returns the kernel signal set of signals and SIGCHLD.
func waiterSigset(signals []unix.Signal) uint64 {
	set := uint64(1) << (unix.SIGCHLD - 1)
	for _, sig := range signals {
		set |= 1 << (sig - 1)
	}
	return set
}

// execWaiter replaces fief with the waiter, keeping the pid, the children
// and the open files. It returns only when that failed, with fief as it was.
//
// The forwarded signals and SIGCHLD are blocked on this thread just before
// execve, which keeps the signal mask and the pending signals. A signal
// that arrives before execve is forwarded by forwardHandler on another
// thread. A signal that arrives during or after execve stays pending until
// the waiter takes it.
//
// NOTE: execve kills the other threads. A signal that one of them has
// already taken but not yet sent on when it is killed is lost. The window
// is a few instructions of forwardHandler.
func execWaiter(setup waiterSetup) (err error) {
	exeFd, err := unix.Open("/proc/self/exe", unix.O_PATH, 0)
	if err != nil {
		return fmt.Errorf("opening fief's executable: %w", err)
	}
	defer func() {
		if err != nil {
			unix.Close(exeFd)
		}
	}()
	image, err := waiterImage(setup, exeFd)
	if err != nil {
		return err
	}
	memfd, err := unix.MemfdCreate("fief-waiter", unix.MFD_CLOEXEC|unix.MFD_EXEC)
	if errors.Is(err, unix.EINVAL) {
		// Kernels before 6.3 reject MFD_EXEC, and their memfds are always
		// executable.
		memfd, err = unix.MemfdCreate("fief-waiter", unix.MFD_CLOEXEC)
	}
	if err != nil {
		return fmt.Errorf("creating the waiter's file: %w", err)
	}
	defer unix.Close(memfd)
	n, err := unix.Write(memfd, image)
	if err != nil {
		return fmt.Errorf("writing the waiter's file: %w", err)
	}
	if n != len(image) {
		return fmt.Errorf("writing the waiter's file: wrote %d of %d bytes", n, len(image))
	}
	if setup.pidfd >= 0 {
		// The waiter sends signals through the pidfd, so the pidfd must
		// stay open across execve.
		if _, err := unix.FcntlInt(uintptr(setup.pidfd), unix.F_SETFD, 0); err != nil {
			return fmt.Errorf("keeping the pidfd open: %w", err)
		}
	}

	argv, err := cStrings(os.Args)
	if err != nil {
		return fmt.Errorf("passing fief's arguments to the waiter: %w", err)
	}
	envv, err := cStrings(os.Environ())
	if err != nil {
		return fmt.Errorf("passing fief's environment to the waiter: %w", err)
	}
	empty := []byte{0}

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	set := unix.Sigset_t{Val: [16]uint64{waiterSigset(setup.signals)}}
	var old unix.Sigset_t
	if err := unix.PthreadSigmask(unix.SIG_BLOCK, &set, &old); err != nil {
		return fmt.Errorf("blocking signals: %w", err)
	}
	restore := ignoreQuietSignals()
	_, _, errno := unix.RawSyscall6(unix.SYS_EXECVEAT, uintptr(memfd), uintptr(unsafe.Pointer(&empty[0])),
		uintptr(unsafe.Pointer(&argv[0])), uintptr(unsafe.Pointer(&envv[0])), unix.AT_EMPTY_PATH, 0)
	runtime.KeepAlive(argv)
	runtime.KeepAlive(envv)
	restore()
	_ = unix.PthreadSigmask(unix.SIG_SETMASK, &old, nil)
	if setup.pidfd >= 0 {
		_, _ = unix.FcntlInt(uintptr(setup.pidfd), unix.F_SETFD, unix.FD_CLOEXEC)
	}
	return fmt.Errorf("executing the waiter: %w", errno)
}

// quietSignals returns the signals that the Go runtime catches and then
// ignores unless a program requests them from os/signal, which fief does
// not. execve resets caught signals to their default action, which would
// end the waiter for these, so ignoreQuietSignals sets them to SIG_IGN,
// which execve keeps. The forwarded signals, SIGCHLD and the signals of
// faults and of job control keep their treatment.
//
// Of signals 32 to 64, a Go program built without cgo, as fief is, catches
// 33 (for the per-thread system calls of syscall.Setuid and
// AllThreadsSyscall) and 35 to 64. It leaves 32 and 34 as it found them
// (runtime/sigtab_linux_generic.go and sigInstallGoHandler in Go 1.26).
// ignoreQuietSignals therefore changes only caught signals.
func quietSignals() []unix.Signal {
	sigs := []unix.Signal{unix.SIGPIPE, unix.SIGALRM, unix.SIGXCPU, unix.SIGXFSZ, unix.SIGVTALRM,
		unix.SIGPROF, unix.SIGIO, unix.SIGPWR}
	for sig := unix.Signal(32); sig <= 64; sig++ {
		sigs = append(sigs, sig)
	}
	return sigs
}

// ignoreQuietSignals sets those of quietSignals that have a handler to
// SIG_IGN, and returns the function that puts their handlers back. Signals
// at SIG_DFL or SIG_IGN keep it, as they would across execve.
func ignoreQuietSignals() (restore func()) {
	ignore := rawsig.Action{Handler: rawsig.Ignore}
	sigs := quietSignals()
	saved := make([]rawsig.Action, len(sigs))
	for i, sig := range sigs {
		saved[i], _ = rawsig.Swap(sig, ignore)
		if saved[i].Handler == rawsig.Default {
			_, _ = rawsig.Swap(sig, saved[i])
		}
	}

	return func() {
		for i, sig := range sigs {
			_, _ = rawsig.Swap(sig, saved[i])
		}
	}
}

// cStrings returns strs as a NULL-terminated array of C strings.
func cStrings(strs []string) ([]*byte, error) {
	out := make([]*byte, 0, len(strs)+1)
	for _, s := range strs {
		p, err := unix.BytePtrFromString(s)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return append(out, nil), nil
}
