package vassal

import (
	"os"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseCloneFlags(t *testing.T) {
	tests := []struct {
		list string
		want uintptr
	}{
		{"", RequiredCloneFlags},
		{"fs,pid", RequiredCloneFlags},
		{" net , uts ", RequiredCloneFlags | unix.CLONE_NEWNET | unix.CLONE_NEWUTS},
		{"mount,mnt,ns,ipc,cgroup", RequiredCloneFlags | unix.CLONE_NEWIPC | unix.CLONE_NEWCGROUP},
		{"pid,,", RequiredCloneFlags},
	}
	for _, test := range tests {
		got, err := ParseCloneFlags(test.list)
		if err != nil {
			t.Errorf("ParseCloneFlags(%q) failed: %v", test.list, err)
			continue
		}
		if got != test.want {
			t.Errorf("ParseCloneFlags(%q) = %#x, want %#x", test.list, got, test.want)
		}
	}
}

func TestParseCloneFlagsUnknownName(t *testing.T) {
	_, err := ParseCloneFlags("fs,user")
	if err == nil {
		t.Fatal("expected ParseCloneFlags to reject the unknown namespace user")
	}
	if !strings.Contains(err.Error(), `"user"`) {
		t.Errorf("expected the error to name the unknown namespace, got %q", err)
	}
	if !strings.Contains(err.Error(), strings.Join(CloneNames(), ", ")) {
		t.Errorf("expected the error to list the accepted names, got %q", err)
	}
}

func TestCloneNamesSorted(t *testing.T) {
	names := CloneNames()
	if !slices.IsSorted(names) {
		t.Errorf("expected CloneNames to be sorted, got %q", names)
	}
	if len(names) != 9 {
		t.Errorf("expected 9 namespace names, got %d: %q", len(names), names)
	}
}

func TestInitCommandNilStdin(t *testing.T) {
	cmd, err := InitCommand("app.ini", SpawnOptions{Stdout: os.Stdout, Stderr: os.Stderr})
	if err != nil {
		t.Fatalf("InitCommand: %v", err)
	}
	// A nil *os.File stored in cmd.Stdin is a non-nil io.Reader, and the
	// child would start with descriptor 0 closed.
	if cmd.Stdin != nil {
		t.Errorf("cmd.Stdin = %#v, expected a nil io.Reader so that the init's standard input is /dev/null", cmd.Stdin)
	}
}

func TestInitCommandStdin(t *testing.T) {
	stdin, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	cmd, err := InitCommand("app.ini", SpawnOptions{Stdin: stdin, Stdout: os.Stdout, Stderr: os.Stderr})
	if err != nil {
		t.Fatalf("InitCommand: %v", err)
	}
	if cmd.Stdin != stdin {
		t.Errorf("cmd.Stdin = %#v, expected the file given as SpawnOptions.Stdin", cmd.Stdin)
	}
}
