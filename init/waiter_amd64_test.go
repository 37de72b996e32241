package initd

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
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
	if file.Type != elf.ET_EXEC || file.Machine != elf.EM_X86_64 || file.Entry != waiterBase+waiterCodeOff {
		t.Errorf("ELF header: type %v, machine %v, entry %#x", file.Type, file.Machine, file.Entry)
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
	if le.Uint32(state[sPid:]) != 42 || le.Uint32(state[sPidfd:]) != 5 || le.Uint32(state[sPid1:]) != 1 || le.Uint32(state[sExeFd:]) != 7 {
		t.Errorf("state: pid %d, pidfd %d, pid1 %d, exe fd %d", le.Uint32(state[sPid:]), le.Uint32(state[sPidfd:]), le.Uint32(state[sPid1:]), le.Uint32(state[sExeFd:]))
	}
	wantSet := uint64(1)<<(unix.SIGCHLD-1) | 1<<(unix.SIGTERM-1) | 1<<(unix.SIGUSR1-1)
	if got := le.Uint64(state[sSigset:]); got != wantSet {
		t.Errorf("signal set %#x, expected %#x", got, wantSet)
	}
	if state[sRemap+143] != 0 || state[sRemap+1] != 1 || state[sRemap+255] != 255 {
		t.Errorf("remap table: 143→%d, 1→%d, 255→%d", state[sRemap+143], state[sRemap+1], state[sRemap+255])
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
