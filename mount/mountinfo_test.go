package mount

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const sampleMountinfo = `22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 22 0:5 / /dev rw,nosuid master:3 - devtmpfs udev rw,size=4038948k,mode=755
25 22 0:300 / /srv/my\040archive ro,nosuid,nodev,relatime shared:140 master:7 - fuse.fuse-zip fuse-zip ro,user_id=1000,group_id=1000,default_permissions
26 22 0:22 /sub\134dir /tmp/tab\011and\012newline rw - tmpfs  rw,size=1024k
27 22 0:48 / /run rw,nosuid,nodev - tmpfs tmpfs rw,mode=755
28 27 0:49 / /run rw,nosuid,nodev - tmpfs tmpfs rw,mode=700
29 22 8:17 / /mnt/usb rw - fuseblk /dev/sdb1 rw,user_id=0,group_id=0,allow_other,blksize=4096

30 22 0:50 / /legacy rw - fuse sshfs
`

func parseSample(t *testing.T) []Info {
	t.Helper()
	infos, err := ParseMountinfo(strings.NewReader(sampleMountinfo))
	if err != nil {
		t.Fatalf("ParseMountinfo failed: %v", err)
	}
	if len(infos) != 9 {
		t.Fatalf("ParseMountinfo returned %d entries, want 9", len(infos))
	}
	return infos
}

func TestParseMountinfoFields(t *testing.T) {
	infos := parseSample(t)

	tests := []struct {
		name string
		got  Info
		want Info
	}{
		{
			name: "root with shared",
			got:  infos[0],
			want: Info{
				ID: 22, Parent: 1, Major: 252, Minor: 1, Root: "/", MountPoint: "/",
				Options: "rw,relatime", Optional: []string{"shared:1"},
				FSType: "ext4", Source: "/dev/vda1", SuperOptions: "rw,errors=remount-ro",
			},
		},
		{
			name: "fuse-zip with space in mount point",
			got:  infos[3],
			want: Info{
				ID: 25, Parent: 22, Major: 0, Minor: 300, Root: "/", MountPoint: "/srv/my archive",
				Options: "ro,nosuid,nodev,relatime", Optional: []string{"shared:140", "master:7"},
				FSType: "fuse.fuse-zip", Source: "fuse-zip",
				SuperOptions: "ro,user_id=1000,group_id=1000,default_permissions",
			},
		},
		{
			name: "escapes and empty source without optional fields",
			got:  infos[4],
			want: Info{
				ID: 26, Parent: 22, Major: 0, Minor: 22, Root: `/sub\dir`, MountPoint: "/tmp/tab\tand\nnewline",
				Options: "rw", FSType: "tmpfs", Source: "", SuperOptions: "rw,size=1024k",
			},
		},
		{
			name: "missing super options",
			got:  infos[8],
			want: Info{
				ID: 30, Parent: 22, Major: 0, Minor: 50, Root: "/", MountPoint: "/legacy",
				Options: "rw", FSType: "fuse", Source: "sshfs", SuperOptions: "",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got.ID != tt.want.ID || tt.got.Parent != tt.want.Parent {
				t.Errorf("ID, Parent = %d, %d, want %d, %d", tt.got.ID, tt.got.Parent, tt.want.ID, tt.want.Parent)
			}
			if tt.got.Major != tt.want.Major || tt.got.Minor != tt.want.Minor {
				t.Errorf("device = %d:%d, want %d:%d", tt.got.Major, tt.got.Minor, tt.want.Major, tt.want.Minor)
			}
			if tt.got.Root != tt.want.Root {
				t.Errorf("Root = %q, want %q", tt.got.Root, tt.want.Root)
			}
			if tt.got.MountPoint != tt.want.MountPoint {
				t.Errorf("MountPoint = %q, want %q", tt.got.MountPoint, tt.want.MountPoint)
			}
			if tt.got.Options != tt.want.Options {
				t.Errorf("Options = %q, want %q", tt.got.Options, tt.want.Options)
			}
			if !slices.Equal(tt.got.Optional, tt.want.Optional) {
				t.Errorf("Optional = %q, want %q", tt.got.Optional, tt.want.Optional)
			}
			if tt.got.FSType != tt.want.FSType {
				t.Errorf("FSType = %q, want %q", tt.got.FSType, tt.want.FSType)
			}
			if tt.got.Source != tt.want.Source {
				t.Errorf("Source = %q, want %q", tt.got.Source, tt.want.Source)
			}
			if tt.got.SuperOptions != tt.want.SuperOptions {
				t.Errorf("SuperOptions = %q, want %q", tt.got.SuperOptions, tt.want.SuperOptions)
			}
		})
	}
}

func TestInfoIsFUSE(t *testing.T) {
	tests := []struct {
		fsType string
		want   bool
	}{
		{"fuse", true},
		{"fuseblk", true},
		{"fuse.fuse-zip", true},
		{"fuseblk.ntfs", true},
		{"fusectl", false},
		{"fuseish", false},
		{"tmpfs", false},
		{"ext4", false},
	}
	for _, tt := range tests {
		if got := (Info{FSType: tt.fsType}).IsFUSE(); got != tt.want {
			t.Errorf("Info{FSType: %q}.IsFUSE() = %v, want %v", tt.fsType, got, tt.want)
		}
	}
}

func TestInfoConnectionID(t *testing.T) {
	infos := parseSample(t)

	if got := infos[3].ConnectionID(); got != 300 {
		t.Errorf("ConnectionID of 0:300 = %d, want 300", got)
	}
	if got := infos[7].ConnectionID(); got != 8<<20|17 {
		t.Errorf("ConnectionID of 8:17 = %d, want %d", got, 8<<20|17)
	}
	if got := (Info{Major: 0, Minor: 1 << 19}).ConnectionID(); got != 1<<19 {
		t.Errorf("ConnectionID of 0:%d = %d, want %d", 1<<19, got, 1<<19)
	}
}

func TestInfoSuperOption(t *testing.T) {
	info := parseSample(t)[3]

	tests := []struct {
		name      string
		wantValue string
		wantFound bool
	}{
		{"user_id", "1000", true},
		{"group_id", "1000", true},
		{"ro", "", true},
		{"default_permissions", "", true},
		{"allow_other", "", false},
		{"user", "", false},
	}
	for _, tt := range tests {
		value, found := info.SuperOption(tt.name)
		if value != tt.wantValue || found != tt.wantFound {
			t.Errorf("SuperOption(%q) = %q, %v, want %q, %v", tt.name, value, found, tt.wantValue, tt.wantFound)
		}
	}

	if _, found := (Info{}).SuperOption("rw"); found {
		t.Error(`SuperOption("rw") on empty SuperOptions found an option`)
	}
}

func TestInfoPropagation(t *testing.T) {
	infos := parseSample(t)

	tests := []struct {
		name                  string
		info                  Info
		wantShared, wantSlave bool
	}{
		{"shared only", infos[0], true, false},
		{"master only", infos[2], false, true},
		{"shared and master", infos[3], true, true},
		{"no optional fields", infos[4], false, false},
	}
	for _, tt := range tests {
		if got := tt.info.Shared(); got != tt.wantShared {
			t.Errorf("%s: Shared() = %v, want %v", tt.name, got, tt.wantShared)
		}
		if got := tt.info.Slave(); got != tt.wantSlave {
			t.Errorf("%s: Slave() = %v, want %v", tt.name, got, tt.wantSlave)
		}
	}
}

func TestFindStackedMounts(t *testing.T) {
	infos := parseSample(t)

	got, found := Find(infos, "/run")
	if !found {
		t.Fatal(`Find("/run") found nothing`)
	}
	if got.ID != 28 {
		t.Errorf(`Find("/run").ID = %d, want 28 (the topmost mount)`, got.ID)
	}

	got, found = Find(infos, "/srv/my archive/")
	if !found {
		t.Fatal(`Find("/srv/my archive/") found nothing`)
	}
	if got.ID != 25 {
		t.Errorf(`Find("/srv/my archive/").ID = %d, want 25`, got.ID)
	}

	if _, found := Find(infos, "/nowhere"); found {
		t.Error(`Find("/nowhere") found an entry`)
	}
}

func TestParseMountinfoErrors(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		wantErr string
	}{
		{
			name:    "missing separator",
			input:   "22 1 252:1 / / rw shared:1 ext4 /dev/vda1 rw",
			wantErr: `invalid mountinfo line 1 "22 1 252:1 / / rw shared:1 ext4 /dev/vda1 rw": missing separator "-" after the optional fields`,
		},
		{
			name:    "too few fields",
			input:   "22 1 252:1 / / rw - ext4",
			wantErr: `invalid mountinfo line 1 "22 1 252:1 / / rw - ext4": too few fields: found 8, want at least 9`,
		},
		{
			name:    "too few fields after separator",
			input:   "22 1 252:1 / / rw shared:1 master:2 - ext4",
			wantErr: `invalid mountinfo line 1 "22 1 252:1 / / rw shared:1 master:2 - ext4": too few fields after the separator: found 1, want filesystem type, source and super options`,
		},
		{
			name:    "bad mount ID",
			input:   "x 1 252:1 / / rw - ext4 /dev/vda1 rw",
			wantErr: `invalid mountinfo line 1 "x 1 252:1 / / rw - ext4 /dev/vda1 rw": invalid mount ID "x": want a decimal number`,
		},
		{
			name:    "bad parent ID",
			input:   "22 y 252:1 / / rw - ext4 /dev/vda1 rw",
			wantErr: `invalid mountinfo line 1 "22 y 252:1 / / rw - ext4 /dev/vda1 rw": invalid parent ID "y": want a decimal number`,
		},
		{
			name:    "device without colon",
			input:   "22 1 2521 / / rw - ext4 /dev/vda1 rw",
			wantErr: `invalid mountinfo line 1 "22 1 2521 / / rw - ext4 /dev/vda1 rw": invalid device "2521": want major:minor`,
		},
		{
			name:    "bad minor",
			input:   "22 1 252:z / / rw - ext4 /dev/vda1 rw",
			wantErr: `invalid mountinfo line 1 "22 1 252:z / / rw - ext4 /dev/vda1 rw": invalid device "252:z": want decimal major:minor`,
		},
		{
			name:    "empty filesystem type",
			input:   "22 1 252:1 / / rw -  /dev/vda1 rw",
			wantErr: `invalid mountinfo line 1 "22 1 252:1 / / rw -  /dev/vda1 rw": empty filesystem type`,
		},
		{
			name:    "line number after valid lines",
			input:   "22 1 252:1 / / rw - ext4 /dev/vda1 rw\n\n23 22 0:21 / /proc rw - proc\n",
			wantErr: `invalid mountinfo line 3 "23 22 0:21 / /proc rw - proc": too few fields: found 8, want at least 9`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			infos, err := ParseMountinfo(strings.NewReader(tt.input))
			if err == nil {
				t.Fatalf("ParseMountinfo = %+v, want error %q", infos, tt.wantErr)
			}
			if err.Error() != tt.wantErr {
				t.Errorf("error = %q\nwant    %q", err, tt.wantErr)
			}
		})
	}
}

func TestUnescape(t *testing.T) {
	tests := []struct {
		input, want string
	}{
		{`/plain`, "/plain"},
		{`/a\040b`, "/a b"},
		{`\134\134`, `\\`},
		{`/hash\043`, "/hash#"},
		{`/short\04`, `/short\04`},
		{`/not\08octal`, `/not\08octal`},
		{`/too\777big`, `/too\777big`},
		{`/end\`, `/end\`},
	}
	for _, tt := range tests {
		if got := unescape(tt.input); got != tt.want {
			t.Errorf("unescape(%q) = %q, want %q", tt.input, got, tt.want)
		}
	}
}

func TestReadMountinfoFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mountinfo")
	if err := os.WriteFile(path, []byte(sampleMountinfo), 0o644); err != nil {
		t.Fatal(err)
	}
	infos, err := ReadMountinfo(path)
	if err != nil {
		t.Fatalf("ReadMountinfo(%q) failed: %v", path, err)
	}
	if len(infos) != 9 {
		t.Errorf("ReadMountinfo returned %d entries, want 9", len(infos))
	}

	missing := filepath.Join(t.TempDir(), "missing")
	if _, err := ReadMountinfo(missing); err == nil {
		t.Errorf("ReadMountinfo(%q) succeeded, want an error", missing)
	}
}

func TestReadMountinfoSelfFindsRoot(t *testing.T) {
	infos, err := ReadMountinfo("/proc/self/mountinfo")
	if err != nil {
		t.Fatalf("ReadMountinfo(/proc/self/mountinfo) failed: %v", err)
	}
	root, found := Find(infos, "/")
	if !found {
		t.Fatalf("Find(/) found nothing among %d entries", len(infos))
	}
	if root.FSType == "" {
		t.Errorf("root mount %+v has an empty FSType", root)
	}
}
