package asuser

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const testPasswd = `# comment line
root:x:0:0:root:/root:/bin/sh

daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:App User:/home/app:/bin/sh
nohome:x:1003:1003:No Home::/bin/sh
broken:x:1001:1001:too few fields
badnumber:x:abc:1001::/home/badnumber:/bin/sh
app:x:1002:1002:duplicate name, first entry wins:/home/dup:/bin/sh
`

const testGroup = `# comment line
root:x:0:
daemon:x:1:app
app:x:1000:
staff:x:50:app,other
audio:x:63:other,app
video:x:44:app,app
brokengroup:x:45
badgid:x:notanumber:app
`

// writeRoot creates ROOT/etc with the given passwd and group contents. An
// empty content leaves that file out.
func writeRoot(t *testing.T, passwd, group string) string {
	t.Helper()
	root := t.TempDir()
	etc := filepath.Join(root, "etc")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	if passwd != "" {
		if err := os.WriteFile(filepath.Join(etc, "passwd"), []byte(passwd), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if group != "" {
		if err := os.WriteFile(filepath.Join(etc, "group"), []byte(group), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestResolveCredentials(t *testing.T) {
	root := writeRoot(t, testPasswd, testGroup)

	tests := []struct {
		name, user, group string
		want              Credentials
	}{
		{
			name: "name with supplementary groups",
			user: "app",
			want: Credentials{UID: 1000, GID: 1000, Groups: []uint32{1000, 1, 50, 63, 44}, Name: "app", Home: "/home/app"},
		},
		{
			name: "root name",
			user: "root",
			want: Credentials{UID: 0, GID: 0, Groups: []uint32{0}, Name: "root", Home: "/root"},
		},
		{
			name: "uid with entry",
			user: "1000",
			want: Credentials{UID: 1000, GID: 1000, Groups: []uint32{1000, 1, 50, 63, 44}, Name: "app", Home: "/home/app"},
		},
		{
			name: "uid without entry gets gid equal to uid",
			user: "4242",
			want: Credentials{UID: 4242, GID: 4242, Groups: []uint32{4242}, Home: "/"},
		},
		{
			name: "uid zero",
			user: "0",
			want: Credentials{UID: 0, GID: 0, Groups: []uint32{0}, Name: "root", Home: "/root"},
		},
		{
			name:  "name and group name",
			user:  "app",
			group: "staff",
			want:  Credentials{UID: 1000, GID: 50, Groups: []uint32{50}, Name: "app", Home: "/home/app"},
		},
		{
			name:  "name and gid",
			user:  "app",
			group: "7000",
			want:  Credentials{UID: 1000, GID: 7000, Groups: []uint32{7000}, Name: "app", Home: "/home/app"},
		},
		{
			name:  "uid and gid without entries",
			user:  "4242",
			group: "4343",
			want:  Credentials{UID: 4242, GID: 4343, Groups: []uint32{4343}, Home: "/"},
		},
		{
			name:  "uid without entry and group name",
			user:  "4242",
			group: "daemon",
			want:  Credentials{UID: 4242, GID: 1, Groups: []uint32{1}, Home: "/"},
		},
		{
			name: "user whose primary gid is also a membership",
			user: "daemon",
			want: Credentials{UID: 1, GID: 1, Groups: []uint32{1}, Name: "daemon", Home: "/usr/sbin"},
		},
		{
			name: "empty home field becomes slash",
			user: "nohome",
			want: Credentials{UID: 1003, GID: 1003, Groups: []uint32{1003}, Name: "nohome", Home: "/"},
		},
		{
			name: "uid of duplicated name",
			user: "1002",
			want: Credentials{UID: 1002, GID: 1002, Groups: []uint32{1002, 1, 50, 63, 44}, Name: "app", Home: "/home/dup"},
		},
		{
			name: "largest valid uid",
			user: "4294967294",
			want: Credentials{UID: 4294967294, GID: 4294967294, Groups: []uint32{4294967294}, Home: "/"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ResolveCredentials(root, tt.user, tt.group)
			if err != nil {
				t.Fatalf("ResolveCredentials(%q, %q) failed: %v", tt.user, tt.group, err)
			}
			if got.UID != tt.want.UID {
				t.Errorf("UID = %d, want %d", got.UID, tt.want.UID)
			}
			if got.GID != tt.want.GID {
				t.Errorf("GID = %d, want %d", got.GID, tt.want.GID)
			}
			if !slices.Equal(got.Groups, tt.want.Groups) {
				t.Errorf("Groups = %v, want %v", got.Groups, tt.want.Groups)
			}
			if got.Name != tt.want.Name {
				t.Errorf("Name = %q, want %q", got.Name, tt.want.Name)
			}
			if got.Home != tt.want.Home {
				t.Errorf("Home = %q, want %q", got.Home, tt.want.Home)
			}
		})
	}
}

func TestResolveCredentialsErrors(t *testing.T) {
	root := writeRoot(t, testPasswd, testGroup)
	passwdPath := filepath.Join(root, "etc", "passwd")
	groupPath := filepath.Join(root, "etc", "group")

	tests := []struct {
		name, user, group string
		wantIs            error
		wantMessage       string
	}{
		{
			name:        "unknown user",
			user:        "user001",
			wantIs:      ErrUnknownUser,
			wantMessage: `unknown user "user001": no entry in ` + passwdPath + `; create the user or use a numeric uid`,
		},
		{
			name:        "malformed line is skipped",
			user:        "broken",
			wantIs:      ErrUnknownUser,
			wantMessage: `unknown user "broken": no entry in ` + passwdPath + `; create the user or use a numeric uid`,
		},
		{
			name:        "non-numeric uid field is skipped",
			user:        "badnumber",
			wantIs:      ErrUnknownUser,
			wantMessage: `unknown user "badnumber": no entry in ` + passwdPath + `; create the user or use a numeric uid`,
		},
		{
			name:        "comment is not a user",
			user:        "# comment line",
			wantIs:      ErrUnknownUser,
			wantMessage: `unknown user "# comment line": no entry in ` + passwdPath + `; create the user or use a numeric uid`,
		},
		{
			name:        "unknown group",
			user:        "app",
			group:       "wheel",
			wantIs:      ErrUnknownGroup,
			wantMessage: `unknown group "wheel": no entry in ` + groupPath + `; create the group or use a numeric gid`,
		},
		{
			name:        "malformed group line is skipped",
			user:        "app",
			group:       "brokengroup",
			wantIs:      ErrUnknownGroup,
			wantMessage: `unknown group "brokengroup": no entry in ` + groupPath + `; create the group or use a numeric gid`,
		},
		{
			name:        "uid out of range",
			user:        "4294967295",
			wantMessage: `invalid uid "4294967295": must be a decimal number from 0 to 4294967294`,
		},
		{
			name:        "gid out of range",
			user:        "app",
			group:       "99999999999",
			wantMessage: `invalid gid "99999999999": must be a decimal number from 0 to 4294967294`,
		},
		{
			name:        "empty user",
			user:        "",
			wantMessage: `empty user: give a user name or a numeric uid`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ResolveCredentials(root, tt.user, tt.group)
			if err == nil {
				t.Fatalf("ResolveCredentials(%q, %q) = %+v, want an error", tt.user, tt.group, got)
			}
			if err.Error() != tt.wantMessage {
				t.Errorf("error = %q, want %q", err, tt.wantMessage)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("errors.Is(%v, %v) = false, want true", err, tt.wantIs)
			}
		})
	}
}

func TestResolveCredentialsMissingFiles(t *testing.T) {
	root := writeRoot(t, "", "")
	passwdPath := filepath.Join(root, "etc", "passwd")
	groupPath := filepath.Join(root, "etc", "group")

	t.Run("user name", func(t *testing.T) {
		_, err := ResolveCredentials(root, "app", "")
		if err == nil {
			t.Fatal("ResolveCredentials succeeded without a passwd file, want an error")
		}
		if !errors.Is(err, ErrUnknownUser) {
			t.Errorf("errors.Is(%v, ErrUnknownUser) = false, want true", err)
		}
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("errors.Is(%v, fs.ErrNotExist) = false, want true", err)
		}
		if !strings.Contains(err.Error(), passwdPath) {
			t.Errorf("error %q does not name %s", err, passwdPath)
		}
	})

	t.Run("group name", func(t *testing.T) {
		_, err := ResolveCredentials(root, "1000", "staff")
		if err == nil {
			t.Fatal("ResolveCredentials succeeded without a group file, want an error")
		}
		if !errors.Is(err, ErrUnknownGroup) {
			t.Errorf("errors.Is(%v, ErrUnknownGroup) = false, want true", err)
		}
		if !strings.Contains(err.Error(), groupPath) {
			t.Errorf("error %q does not name %s", err, groupPath)
		}
	})

	t.Run("numbers", func(t *testing.T) {
		got, err := ResolveCredentials(root, "1000", "2000")
		if err != nil {
			t.Fatalf("ResolveCredentials(1000, 2000) failed: %v", err)
		}
		want := Credentials{UID: 1000, GID: 2000, Groups: []uint32{2000}, Home: "/"}
		if got.UID != want.UID || got.GID != want.GID || got.Name != want.Name || got.Home != want.Home {
			t.Errorf("got %+v, want %+v", *got, want)
		}
		if !slices.Equal(got.Groups, want.Groups) {
			t.Errorf("Groups = %v, want %v", got.Groups, want.Groups)
		}
	})
}

func TestResolveCredentialsWithoutGroupFile(t *testing.T) {
	root := writeRoot(t, testPasswd, "")

	got, err := ResolveCredentials(root, "app", "")
	if err != nil {
		t.Fatalf("ResolveCredentials(app) failed: %v", err)
	}
	if got.GID != 1000 {
		t.Errorf("GID = %d, want 1000", got.GID)
	}
	if !slices.Equal(got.Groups, []uint32{1000}) {
		t.Errorf("Groups = %v, want [1000]", got.Groups)
	}
}

func TestResolveCredentialsUnreadableFile(t *testing.T) {
	root := t.TempDir()
	// A directory in place of the passwd file fails with an error other than
	// "not exist", which must not be taken for a missing file.
	if err := os.MkdirAll(filepath.Join(root, "etc", "passwd"), 0o755); err != nil {
		t.Fatal(err)
	}

	_, err := ResolveCredentials(root, "1000", "")
	if err == nil {
		t.Fatal("ResolveCredentials succeeded with a directory as passwd, want an error")
	}
	if !strings.HasPrefix(err.Error(), `looking up user "1000": `) {
		t.Errorf("error = %q, want prefix %q", err, `looking up user "1000": `)
	}
}

func TestCredentialsEnv(t *testing.T) {
	named := &Credentials{UID: 1000, GID: 1000, Name: "app", Home: "/home/app"}
	want := []string{"HOME=/home/app", "USER=app", "LOGNAME=app"}
	if got := named.Env(); !slices.Equal(got, want) {
		t.Errorf("Env() with a name = %q, want %q", got, want)
	}

	unnamed := &Credentials{UID: 4242, GID: 4242, Home: "/"}
	want = []string{"HOME=/"}
	if got := unnamed.Env(); !slices.Equal(got, want) {
		t.Errorf("Env() without a name = %q, want %q", got, want)
	}
}
