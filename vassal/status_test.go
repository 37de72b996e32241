package vassal

import (
	"reflect"
	"testing"
)

func TestMountStatusRoundTrip(t *testing.T) {
	tests := [][]MountStatus{
		{},
		{{Path: "/app", Healthy: true}},
		{
			{Path: "/app", Healthy: true},
			{Path: "/with space/and \"quote\"", Healthy: false, Detail: "the FUSE daemon is gone (ENOTCONN)\n"},
		},
	}
	for _, mounts := range tests {
		line := FormatMountStatus(mounts)
		got, err := ParseMountStatus(line)
		if err != nil {
			t.Errorf("ParseMountStatus(%q) error = %v", line, err)
			continue
		}
		if !reflect.DeepEqual(got, mounts) {
			t.Errorf("ParseMountStatus(FormatMountStatus(%v)) = %v", mounts, got)
		}
	}
}

func TestParseMountStatusRejectsGarbage(t *testing.T) {
	for _, line := range []string{`/app ok ""`, `"/app" fine ""`, `"/app" ok`, `"/app`} {
		if _, err := ParseMountStatus(line); err == nil {
			t.Errorf("ParseMountStatus(%q) succeeded, want an error", line)
		}
	}
}
