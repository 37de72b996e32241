package vassal

import (
	"slices"
	"strings"
	"testing"
)

func TestLookupKey(t *testing.T) {
	tests := []struct {
		key           string
		wantCanonical string
		wantKind      keyKind
	}{
		{"exec", "exec", kindFief},
		{"pivot_root", "pivot-root", kindFief},
		{"pivot-root", "pivot-root", kindFief},
		{"stop_timeout", "stop-timeout", kindFief},
		{"check-mountpoint", "mountpoint-check", kindFief},
		{"check_mount", "mountpoint-check", kindFief},
		{"mount-check", "mountpoint-check", kindFief},
		{"exec_as_user_atexit", "exec-as-user-atexit", kindFief},
		{"if_not_reload", "if-not-reload", kindCondition},
		{"if-env", "if-env", kindCondition},
		{"endif", "endif", kindEndif},
		{"http_socket", "http-socket", kindUWSGI},
		{"psgi", "psgi", kindUWSGI},
		{"plugins_dir", "plugins-dir", kindUWSGI},
		{"wsgi-file", "wsgi-file", kindUWSGI},
	}
	for _, test := range tests {
		t.Run(test.key, func(t *testing.T) {
			info, ok := lookupKey(test.key)
			if !ok {
				t.Fatalf("lookupKey(%q) found nothing, want %q", test.key, test.wantCanonical)
			}
			if info.canonical != test.wantCanonical {
				t.Errorf("lookupKey(%q) canonical = %q, want %q", test.key, info.canonical, test.wantCanonical)
			}
			if info.kind != test.wantKind {
				t.Errorf("lookupKey(%q) kind = %d, want %d", test.key, info.kind, test.wantKind)
			}
		})
	}

	for _, key := range []string{"Exec", "EXEC", "", "-", "exec ", "chroot", "if-opt", "end-if", "mount-as-root"} {
		if info, ok := lookupKey(key); ok {
			t.Errorf("lookupKey(%q) = %+v, want not found", key, info)
		}
	}
}

func TestLookupKeyMatchesTable(t *testing.T) {
	// lookupKey finds fief's own keys without the table, so both must
	// agree on every key, in both spellings.
	table, _ := keyTables()
	for key, want := range table {
		for _, spelling := range []string{key, strings.ReplaceAll(key, "-", "_")} {
			got, ok := lookupKey(spelling)
			if !ok {
				t.Errorf("lookupKey(%q) found nothing, want %+v", spelling, want)
				continue
			}
			if got != want {
				t.Errorf("lookupKey(%q) = %+v, want %+v from the table", spelling, got, want)
			}
		}
	}
}

func TestUWSGIKeysRequired(t *testing.T) {
	required := []string{
		"http-socket", "http", "https", "socket", "uwsgi-socket", "http11-socket", "shared-socket",
		"psgi", "wsgi-file", "wsgi", "module", "callable", "mount", "manage-script-name",
		"plugins-dir", "plugin-dir", "plugins", "plugin", "master", "processes", "workers",
		"threads", "enable-threads", "offload-threads", "harakiri", "vacuum", "die-on-term",
		"lazy-apps", "buffer-size", "static-map", "static-check", "check-static", "route",
		"logto", "log-format", "disable-logging", "pythonpath", "home", "virtualenv", "venv",
		"chdir2", "max-requests", "cheaper", "psgi-enable-psgix-io", "rack", "php-index",
	}
	for _, key := range required {
		if info, ok := lookupKey(key); !ok || info.kind != kindUWSGI {
			t.Errorf("lookupKey(%q) = %+v, %v, want a uWSGI application key", key, info, ok)
		}
	}
}

func TestUWSGIKeysAreNotFiefKeys(t *testing.T) {
	for _, key := range uwsgiKeys {
		if slices.Contains(fiefKeys, key) || slices.Contains(conditionKeys, key) || key == "endif" {
			t.Errorf("uWSGI key %q is also a fief key", key)
		}
		if _, ok := keyAliases()[key]; ok {
			t.Errorf("uWSGI key %q is also a fief alias", key)
		}
		if normalizeKey(key) != key {
			t.Errorf("uWSGI key %q is not in canonical spelling", key)
		}
	}
}

func TestUnknownKeyMessage(t *testing.T) {
	tests := []struct {
		key, want string
	}{
		{"mountpont-check", `unknown key "mountpont-check"; did you mean "mountpoint-check"?`},
		{"pivotroot", `unknown key "pivotroot"; did you mean "pivot-root"?`},
		{"exec-as-usr", `unknown key "exec-as-usr"; did you mean "exec-as-user"?`},
		{"hook_pre_jali", `unknown key "hook_pre_jali"; did you mean "hook-pre-jail"?`},
		{"if-not-relaod", `unknown key "if-not-relaod"; did you mean "if-not-reload"?`},
		{"end-if", `unknown key "end-if"; did you mean "endif"?`},
		{"http-sockets", `unknown key "http-sockets"; did you mean "http-socket"?`},
		{"proceses", `unknown key "proceses"; did you mean "processes"?`},
		{"unshar", `unknown key "unshar"; did you mean "unshare"?`},
		{"xyzzy", `unknown key "xyzzy": it is not a fief key or a uWSGI application option that fief accepts`},
		{"completely-unrelated-option", `unknown key "completely-unrelated-option": it is not a fief key or a uWSGI application option that fief accepts`},
		{"chroot", `unsupported uWSGI option "chroot": fief does not chroot; use pivot-root = NEW OLD instead`},
		{"umask", `unsupported uWSGI option "umask": set it with a hook instead, e.g. hook-as-user = call:umask 022`},
		{"call-as-user", `unsupported uWSGI option "call-as-user": write hook-as-user = call:FUNCTION ARGS instead`},
		{"umount_as_root", `unsupported uWSGI option "umount_as_root": write hook-as-root = umount:TARGET [FLAGS] instead`},
		{"hook-in-jail", `unsupported uWSGI option "hook-in-jail": fief has no in-jail phase; it runs steps in the phases pre-jail, as-root, as-user, as-user-atexit and as-root-atexit`},
		{"exec-asap", `unsupported uWSGI option "exec-asap": fief has no asap phase; it runs steps in the phases pre-jail, as-root, as-user, as-user-atexit and as-root-atexit`},
	}
	for _, test := range tests {
		t.Run(test.key, func(t *testing.T) {
			if got := unknownKeyMessage(test.key); got != test.want {
				t.Errorf("unknownKeyMessage(%q) = %q, want %q", test.key, got, test.want)
			}
		})
	}
}

func TestEditDistance(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"", "", 0},
		{"", "abc", 3},
		{"abc", "", 3},
		{"abc", "abc", 0},
		{"mountpont-check", "mountpoint-check", 1},
		{"kitten", "sitting", 3},
		{"flaw", "lawn", 2},
		{"ab", "ba", 2},
	}
	for _, test := range tests {
		if got := editDistance(test.a, test.b); got != test.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", test.a, test.b, got, test.want)
		}
	}
}
