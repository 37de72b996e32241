package initd

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"fief/rawsig"
)

func TestWaiterImage(t *testing.T) {
	setup := waiterSetup{
		pid: 42, pidfd: 5, mode: fwdByPidfd, pid1: true,
		signals: []unix.Signal{unix.SIGTERM, unix.SIGUSR1},
		remap:   map[int]int{143: 0},
		rerun:   []string{LeftoversArg0, statusPlaceholder, "-grace=5s"},
	}
	image, err := waiterImage(setup, 7)
	if err != nil {
		t.Fatalf("waiterImage: %v", err)
	}
	file, err := elf.NewFile(bytes.NewReader(image))
	if err != nil {
		t.Fatalf("the waiter is not an ELF file: %v", err)
	}
	if file.Type != elf.ET_EXEC {
		t.Errorf("ELF type %v, expected ET_EXEC", file.Type)
	}
	if file.Machine != elf.EM_X86_64 {
		t.Errorf("ELF machine %v, expected EM_X86_64", file.Machine)
	}
	if file.Entry != waiterBase+waiterCodeOff {
		t.Errorf("ELF entry %#x, expected %#x", file.Entry, waiterBase+waiterCodeOff)
	}

	var loads []*elf.Prog
	for _, prog := range file.Progs {
		if prog.Type == elf.PT_LOAD {
			loads = append(loads, prog)
		}
	}
	if len(loads) != 2 || loads[0].Flags != elf.PF_R|elf.PF_X || loads[1].Flags != elf.PF_R|elf.PF_W || loads[1].Vaddr != waiterState {
		t.Fatalf("expected an R+X code segment and an R+W state segment at %#x, got %+v", waiterState, loads)
	}
	code := image[waiterCodeOff : waiterCodeOff+loads[0].Filesz-waiterCodeOff]
	if len(code) < 100 || bytes.Contains(code, waiterEnd) {
		t.Errorf("the waiter's code is %d bytes long and must stop before its end mark", len(code))
	}

	state := image[waiterPageSize:]
	le := binary.LittleEndian
	for _, field := range []struct {
		name   string
		offset int
		want   uint32
	}{
		{"pid", sPid, 42},
		{"pidfd", sPidfd, 5},
		{"mode", sMode, fwdByPidfd},
		{"pid1", sPid1, 1},
		{"exe fd", sExeFd, 7},
	} {
		if got := le.Uint32(state[field.offset:]); got != field.want {
			t.Errorf("state %s = %d, expected %d", field.name, got, field.want)
		}
	}
	wantSet := uint64(1)<<(unix.SIGCHLD-1) | 1<<(unix.SIGTERM-1) | 1<<(unix.SIGUSR1-1)
	if got := le.Uint64(state[sSigset:]); got != wantSet {
		t.Errorf("signal set %#x, expected %#x", got, wantSet)
	}
	for from, want := range map[int]byte{143: 0, 1: 1, 255: 255} {
		if got := state[sRemap+from]; got != want {
			t.Errorf("remap table: %d→%d, expected %d→%d", from, got, from, want)
		}
	}

	// The argv array points at the strings, and the status digits at the
	// placeholder's X.
	argv := state[sData:]
	for i, want := range setup.rerun {
		at := le.Uint64(argv[8*i:]) - waiterState
		got, _, _ := bytes.Cut(state[at:], []byte{0})
		if string(got) != want {
			t.Errorf("argv[%d] = %q, expected %q", i, got, want)
		}
	}
	if le.Uint64(argv[8*len(setup.rerun):]) != 0 {
		t.Errorf("argv is not NULL-terminated")
	}
	hex := le.Uint64(state[sHex:]) - waiterState
	if string(state[hex:hex+8]) != "XXXXXXXX" {
		t.Errorf("the status digits point at %q, expected the placeholder's XXXXXXXX", state[hex:hex+8])
	}
}

func TestWaiterImageRejectsLongArgv(t *testing.T) {
	remap := make(map[int]int)
	for code := range 256 {
		remap[code] = 255 - code
	}
	setup := waiterSetup{remap: remap, rerun: leftoverArgs(false, ContainerOptions{Remap: remap})}
	_, err := waiterImage(setup, 7)
	if err == nil {
		t.Fatal("waiterImage accepted 256 exit code mappings, expected an error")
	}
	if !strings.Contains(err.Error(), "--remap-exit") {
		t.Errorf("the error %q does not name --remap-exit", err)
	}
}

func TestWaiterImageRequiresStatusPlaceholder(t *testing.T) {
	setup := waiterSetup{rerun: []string{LeftoversArg0, "-grace=5s"}}
	if _, err := waiterImage(setup, 7); err == nil {
		t.Error("waiterImage accepted an argv without the status placeholder, expected an error")
	}
}

// sigactionOf returns the current action of sig without changing it.
func sigactionOf(t *testing.T, sig unix.Signal) rawsig.Action {
	t.Helper()
	act, err := rawsig.Get(sig)
	if err != nil {
		t.Fatal(err)
	}
	return act
}

// The waiter must ignore exactly the signals that the Go runtime catches
// and ignores, and leave those at SIG_DFL or SIG_IGN as they are, such as
// signals 32 and 34 in a program built without cgo.
func TestIgnoreQuietSignalsOnlyCaught(t *testing.T) {
	before := make(map[unix.Signal]rawsig.Action)
	for _, sig := range quietSignals() {
		before[sig] = sigactionOf(t, sig)
	}

	restore := ignoreQuietSignals()
	for _, sig := range quietSignals() {
		want := before[sig].Handler
		if want > 1 {
			want = 1 // SIG_IGN
		}
		if got := sigactionOf(t, sig).Handler; got != want {
			t.Errorf("signal %d: handler %#x after ignoreQuietSignals, expected %#x (was %#x)", sig, got, want, before[sig].Handler)
		}
	}

	restore()
	for _, sig := range quietSignals() {
		if got := sigactionOf(t, sig); got != before[sig] {
			t.Errorf("signal %d: action %+v after restore, expected %+v", sig, got, before[sig])
		}
	}
}
