package mount

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

func TestFinderMatchesFind(t *testing.T) {
	infos := parseSample(t)
	var finder Finder
	for _, path := range []string{"/", "/proc", "/srv/my archive", "/tmp/tab\tand\nnewline", "/run", "/run/", "/mnt/usb", "/legacy"} {
		want, wantOK := Find(infos, path)
		got, ok, err := finder.Find(strings.NewReader(sampleMountinfo), path)
		if err != nil {
			t.Errorf("Find(%q): %v", path, err)
			continue
		}
		if !wantOK {
			t.Errorf("Find(infos, %q) found no mount in the sample, want one", path)
			continue
		}
		if !ok {
			t.Errorf("Find(%q) found no mount, want %+v", path, want)
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Find(%q) = %+v, want %+v", path, got, want)
		}
	}
}

func TestFinderStackedMountIsLast(t *testing.T) {
	var finder Finder
	info, ok, err := finder.Find(strings.NewReader(sampleMountinfo), "/run")
	if err != nil {
		t.Fatalf("Find(/run): %v", err)
	}
	if !ok {
		t.Fatal("Find(/run) found no mount")
	}
	if info.ID != 28 {
		t.Errorf("Find(/run) returned mount %d, want the topmost mount 28", info.ID)
	}
}

func TestFinderMissingMountPoint(t *testing.T) {
	var finder Finder
	info, ok, err := finder.Find(strings.NewReader(sampleMountinfo), "/srv/my")
	if err != nil {
		t.Fatal(err)
	}
	if ok {
		t.Errorf("Find(/srv/my) found %+v, want no mount", info)
	}
}

func TestFinderLargeTableInSmallReads(t *testing.T) {
	table := largeMountinfo(200)
	var finder Finder
	for round := range 2 {
		info, ok, err := finder.Find(iotest.HalfReader(strings.NewReader(table)), "/srv/app199")
		if err != nil {
			t.Fatalf("round %d: Find(/srv/app199): %v", round, err)
		}
		if !ok {
			t.Fatalf("round %d: Find(/srv/app199) found no mount", round)
		}
		if info.ID != 299 {
			t.Errorf("round %d: Find(/srv/app199) returned mount %d, want 299", round, info.ID)
		}
	}
}

func TestFinderInvalidLines(t *testing.T) {
	for _, tc := range []struct {
		name, table, path, want string
	}{
		{"matched line without separator", "22 1 0:1 / /app rw shared:1 fuse.x src rw\n", "/app", `invalid mountinfo line 1 "22 1 0:1 / /app rw shared:1 fuse.x src rw": missing separator`},
		{"line without mount point", "22 1 0:1 / / rw - ext4 /dev/vda1 rw\n23 22 0:2 /\n", "/", `invalid mountinfo line 2 "23 22 0:2 /": too few fields`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var finder Finder
			_, _, err := finder.Find(strings.NewReader(tc.table), tc.path)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestFinderUnmatchedInvalidLineIgnored(t *testing.T) {
	table := "22 1 0:1 / /other rw shared:1 fuse.x src rw\n" + sampleMountinfo
	var finder Finder
	_, ok, err := finder.Find(strings.NewReader(table), "/proc")
	if err != nil {
		t.Fatalf("an invalid line for another mount point failed the lookup: %v", err)
	}
	if !ok {
		t.Error("Find(/proc) found no mount")
	}
}

func TestFinderReadError(t *testing.T) {
	failure := errors.New("device gone")
	var finder Finder
	_, _, err := finder.Find(iotest.ErrReader(failure), "/")
	if !errors.Is(err, failure) {
		t.Errorf("err = %v, want it to wrap %v", err, failure)
	}
}

// largeMountinfo returns a mount table of count fuse-zip mounts on
// /srv/app000 and up.
func largeMountinfo(count int) string {
	var table strings.Builder
	for i := range count {
		fmt.Fprintf(&table, "%d 22 0:%d / /srv/app%03d rw,relatime shared:%d - fuse.fuse-zip fuse-zip ro,user_id=0,group_id=0\n", 100+i, 100+i, i, i)
	}
	return table.String()
}

// TestFinderAllocationsIndependentOfSize counts heap allocations, not time.
// A lookup allocates only for the matched line, so a table of 200 mounts
// costs as many allocations as one of 9.
func TestFinderAllocationsIndependentOfSize(t *testing.T) {
	allocations := func(table, path string) float64 {
		var finder Finder
		reader := strings.NewReader(table)
		return testing.AllocsPerRun(20, func() {
			reader.Reset(table)
			_, ok, err := finder.Find(reader, path)
			if err != nil {
				t.Fatalf("Find(%q): %v", path, err)
			}
			if !ok {
				t.Fatalf("Find(%q) found no mount", path)
			}
		})
	}
	small := allocations(sampleMountinfo, "/mnt/usb")
	large := allocations(largeMountinfo(200), "/srv/app150")
	if large != small {
		t.Errorf("Find made %v allocations per call in a table of 200 mounts and %v in one of 9, want the same number", large, small)
	}

	reader := strings.NewReader(sampleMountinfo)
	parse := testing.AllocsPerRun(20, func() {
		reader.Reset(sampleMountinfo)
		if _, err := ParseMountinfo(reader); err != nil {
			t.Fatal(err)
		}
	})
	if small >= parse {
		t.Errorf("Find made %v allocations per call and ParseMountinfo %v on the same table, want fewer for Find", small, parse)
	}
}
