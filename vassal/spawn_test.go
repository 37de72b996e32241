package vassal

import (
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
