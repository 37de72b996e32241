package vassal

import (
	"reflect"
	"testing"
)

func TestParseHook(t *testing.T) {
	tests := []struct {
		value string
		want  *Hook
	}{
		{"exec:unionfs-fuse -ocow /precise=RO /ufs", &Hook{
			Action: "exec", Argv: []string{"unionfs-fuse", "-ocow", "/precise=RO", "/ufs"},
		}},
		{"exec:sh -c 'echo a:b | logger'", &Hook{
			Action: "exec", Argv: []string{"sh", "-c", "echo a:b | logger"},
		}},
		{"mount:proc none /proc", &Hook{
			Action: "mount", Mount: &MountSpec{FSType: "proc", Source: "none", Target: "/proc"},
		}},
		{"mount:none /.old_root/dev /dev bind", &Hook{
			Action: "mount", Mount: &MountSpec{FSType: "none", Source: "/.old_root/dev", Target: "/dev", Flags: []string{"bind"}},
		}},
		{"mount:none /a /b bind,rec,ro,rdonly,readonly,recursive", &Hook{
			Action: "mount", Mount: &MountSpec{FSType: "none", Source: "/a", Target: "/b", Flags: []string{"bind", "rec", "ro"}},
		}},
		{"mount:none / / private,slave,shared,nosuid,nodev,noexec,remount,move,noatime,sync,dirsync", &Hook{
			Action: "mount", Mount: &MountSpec{FSType: "none", Source: "/", Target: "/",
				Flags: []string{"private", "slave", "shared", "nosuid", "nodev", "noexec", "remount", "move", "noatime", "sync", "dirsync"}},
		}},
		{"mount:tmpfs tmpfs /tmp defaults size=10m,mode=1777", &Hook{
			Action: "mount", Mount: &MountSpec{FSType: "tmpfs", Source: "tmpfs", Target: "/tmp", Data: "size=10m,mode=1777"},
		}},
		{"mount:  fuse.x   src\t/mnt  ro   opt one  two  ", &Hook{
			Action: "mount", Mount: &MountSpec{FSType: "fuse.x", Source: "src", Target: "/mnt", Flags: []string{"ro"}, Data: "opt one  two"},
		}},
		{"umount:/.old_root rec,detach", &Hook{
			Action: "umount", Mount: &MountSpec{Target: "/.old_root", Flags: []string{"rec", "detach"}},
		}},
		{"umount:/app", &Hook{
			Action: "umount", Mount: &MountSpec{Target: "/app"},
		}},
		{"umount:/app recursive", &Hook{
			Action: "umount", Mount: &MountSpec{Target: "/app", Flags: []string{"rec"}},
		}},
		{"mkdir:/srv/app/tmp", &Hook{Action: "mkdir", Path: "/srv/app/tmp"}},
		{"chdir:/srv", &Hook{Action: "chdir", Path: "/srv"}},
		{"cd: /srv ", &Hook{Action: "chdir", Path: "/srv"}},
		{"callret:chdir /", &Hook{Action: "callret", Func: "chdir", FuncArgs: []string{"/"}}},
		{"call:sync", &Hook{Action: "call", Func: "sync"}},
		{"call:umask 022", &Hook{Action: "call", Func: "umask", FuncArgs: []string{"022"}, Mode: 0o22}},
		{"callret:mkdir /run/app", &Hook{Action: "callret", Func: "mkdir", FuncArgs: []string{"/run/app"}, Mode: 0o777}},
		{"callret:mkdir /run/app 0750", &Hook{Action: "callret", Func: "mkdir", FuncArgs: []string{"/run/app", "0750"}, Mode: 0o750}},
	}
	for _, test := range tests {
		t.Run(test.value, func(t *testing.T) {
			got, err := parseHook(test.value)
			if err != nil {
				t.Fatalf("parseHook(%q) error = %q, want nil", test.value, err)
			}
			test.want.Text = test.value
			if !reflect.DeepEqual(got, test.want) {
				t.Errorf("parseHook(%q) = %+v, want %+v", test.value, got, test.want)
				if got.Mount != nil && test.want.Mount != nil {
					t.Errorf("Mount = %+v, want %+v", *got.Mount, *test.want.Mount)
				}
			}
		})
	}
}

func TestParseHookErrors(t *testing.T) {
	const functions = "supported functions are chdir, mkdir, sync, umask"
	tests := []struct {
		value, want string
	}{
		{"/bin/true", "missing action: write ACTION:ARGS, e.g. exec:/bin/true or mount:proc none /proc"},
		{"write:/etc/motd hi", `unknown hook action "write"; supported actions are exec, mount, umount, mkdir, chdir (alias cd), call, callret`},
		{"EXEC:/bin/true", `unknown hook action "EXEC"; supported actions are exec, mount, umount, mkdir, chdir (alias cd), call, callret`},
		{"exec:", "empty command: name the program to run"},
		{"exec:a > b", `shell syntax ">" is not run by a shell; write sh -c '...' to use a shell`},
		{"mount:proc none", "mount needs at least 3 fields, found 2; write mount:FSTYPE SOURCE TARGET [FLAGS [DATA]], e.g. mount:proc none /proc"},
		{"mount:", "mount needs at least 3 fields, found 0; write mount:FSTYPE SOURCE TARGET [FLAGS [DATA]], e.g. mount:proc none /proc"},
		{"mount:none /a /b bind,", `unknown mount flag ""; supported flags are bind, rec (also recursive), ro (also rdonly, readonly), private, slave, shared, nosuid, nodev, noexec, remount, move, noatime, sync, dirsync, defaults`},
		{"mount:none /a /b rw", `unknown mount flag "rw"; supported flags are bind, rec (also recursive), ro (also rdonly, readonly), private, slave, shared, nosuid, nodev, noexec, remount, move, noatime, sync, dirsync, defaults`},
		{"mount:none /a /b detach", `unknown mount flag "detach"; supported flags are bind, rec (also recursive), ro (also rdonly, readonly), private, slave, shared, nosuid, nodev, noexec, remount, move, noatime, sync, dirsync, defaults`},
		{"umount:", "umount needs 1 or 2 fields, found 0; write umount:TARGET [FLAGS], e.g. umount:/.old_root rec,detach"},
		{"umount:/a rec detach", "umount needs 1 or 2 fields, found 3; write umount:TARGET [FLAGS], e.g. umount:/.old_root rec,detach"},
		{"umount:/a bind", `unknown umount flag "bind"; supported flags are rec (also recursive), detach`},
		{"mkdir:", "mkdir needs a path, e.g. mkdir:/tmp"},
		{"cd:  ", "cd needs a path, e.g. cd:/tmp"},
		{"call:", "call needs a function name; " + functions},
		{"callret:chroot /ns", `unknown function "chroot"; ` + functions},
		{"call:chdir", "function chdir takes 1 argument, a directory, found 0"},
		{"call:chdir /a /b", "function chdir takes 1 argument, a directory, found 2"},
		{"call:sync now", "function sync takes no arguments, found 1"},
		{"call:mkdir", "function mkdir takes a directory and an optional octal mode, found 0 arguments"},
		{"call:mkdir /a 0755 x", "function mkdir takes a directory and an optional octal mode, found 3 arguments"},
		{"call:mkdir /a rwx", `function mkdir: invalid mode "rwx": write an octal mode such as 022 or 0755`},
		{"call:umask", "function umask takes 1 argument, an octal mode such as 022, found 0"},
		{"call:umask 8", `function umask: invalid mode "8": write an octal mode such as 022 or 0755`},
		{"call:umask 17777", `function umask: invalid mode "17777": write an octal mode such as 022 or 0755`},
		{"call:umask -1", `function umask: invalid mode "-1": write an octal mode such as 022 or 0755`},
	}
	for _, test := range tests {
		t.Run(test.value, func(t *testing.T) {
			got, err := parseHook(test.value)
			if err == nil {
				t.Fatalf("parseHook(%q) = %+v, want error %q", test.value, got, test.want)
			}
			if err.Error() != test.want {
				t.Errorf("parseHook(%q) error = %q, want %q", test.value, err, test.want)
			}
		})
	}
}
