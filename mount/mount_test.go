package mount

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

func TestFlagString(t *testing.T) {
	tests := []struct {
		flags uintptr
		want  string
	}{
		{unix.MS_BIND | unix.MS_REC, "MS_BIND|MS_REC"},
		{unix.MS_REC | unix.MS_SLAVE, "MS_REC|MS_SLAVE"},
		{unix.MS_RDONLY | 1<<30, "MS_RDONLY|0x40000000"},
		{0, ""},
	}
	for _, tt := range tests {
		if got := FlagString(tt.flags); got != tt.want {
			t.Errorf("FlagString(%#x) = %q, want %q", tt.flags, got, tt.want)
		}
	}
}

func TestErrorNamesEveryArgument(t *testing.T) {
	err := &Error{Op: "mount", Source: "/a", Target: "/b", FSType: "tmpfs", Flags: unix.MS_BIND, Data: "mode=0755", Err: unix.EPERM}
	want := `mount type=tmpfs source="/a" target="/b" flags=MS_BIND data="mode=0755": operation not permitted`
	if got := err.Error(); got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(err, unix.EPERM) {
		t.Errorf("errors.Is(err, EPERM) = false, want true")
	}

	umount := &Error{Op: "umount", Target: "/b", Flags: unix.MNT_DETACH, Err: unix.EINVAL}
	if got, want := umount.Error(), `umount target="/b" flags=MNT_DETACH: invalid argument`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}
