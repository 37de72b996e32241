package vassal

import (
	"reflect"
	"strconv"
	"testing"
)

// optionKeysAndLines returns "KEY=VALUE@LINE" for each applied option.
func optionKeysAndLines(cfg *Config) []string {
	var list []string
	for _, option := range cfg.Options {
		list = append(list, option.Key+"="+option.Value+"@"+strconv.Itoa(option.Line))
	}
	return list
}

func TestParseSectionsAndComments(t *testing.T) {
	tests := []struct {
		name, text string
		want       []string
	}{
		{
			name: "keys before any section",
			text: "exec = /bin/app\nuid = app\n",
			want: []string{"exec=/bin/app@1", "uid=app@2"},
		},
		{
			name: "uwsgi section",
			text: "[uwsgi]\nexec = /bin/app\n",
			want: []string{"exec=/bin/app@2"},
		},
		{
			name: "fief section",
			text: "[fief]\nexec = /bin/app\n",
			want: []string{"exec=/bin/app@2"},
		},
		{
			name: "other section ignored",
			text: "exec = /bin/app\n[other]\nuid = ignored\nnot even key value\n[uwsgi]\ngid = app\n",
			want: []string{"exec=/bin/app@1", "gid=app@6"},
		},
		{
			name: "section name with blanks",
			text: "[ other ]\nuid = ignored\n[ fief ]\nexec = /bin/app\n",
			want: []string{"exec=/bin/app@4"},
		},
		{
			name: "section names are case-sensitive",
			text: "exec = /bin/app\n[UWSGI]\nuid = ignored\n",
			want: []string{"exec=/bin/app@1"},
		},
		{
			name: "both sections accumulate",
			text: "[uwsgi]\nenv = A=1\n[fief]\nexec = /bin/app\nenv = B=2\n",
			want: []string{"env=A=1@2", "exec=/bin/app@4", "env=B=2@5"},
		},
		{
			name: "comments and blank lines",
			text: "; semicolon comment\n# hash comment\n   ; indented comment\n\t# tab comment\n\n   \nexec = /bin/app\n",
			want: []string{"exec=/bin/app@7"},
		},
		{
			name: "value verbatim after first equals",
			text: "exec = /bin/app\nenv = A=b=c ; not a comment\n",
			want: []string{"exec=/bin/app@1", "env=A=b=c ; not a comment@2"},
		},
		{
			name: "blanks around key and value",
			text: "  exec\t=\t/bin/app  \nenv=X=1\n",
			want: []string{"exec=/bin/app@1", "env=X=1@2"},
		},
		{
			name: "underscores and dashes",
			text: "exec = /bin/app\nstop_timeout = 3s\nmountpoint_check_interval = 2s\nhook_as_root = mkdir:/x\n",
			want: []string{"exec=/bin/app@1", "stop-timeout=3s@2", "mountpoint-check-interval=2s@3", "hook-as-root=mkdir:/x@4"},
		},
		{
			name: "aliases",
			text: "exec = /bin/app\ncheck-mountpoint = /a\ncheck_mount = /b\nmount-check = /c\n",
			want: []string{"exec=/bin/app@1", "mountpoint-check=/a@2", "mountpoint-check=/b@3", "mountpoint-check=/c@4"},
		},
		{
			name: "repeated keys accumulate",
			text: "exec = /bin/app\nenv = A=1\nenv = A=2\nmountpoint-check = /a\nmountpoint-check = /a\n",
			want: []string{"exec=/bin/app@1", "env=A=1@2", "env=A=2@3", "mountpoint-check=/a@4", "mountpoint-check=/a@5"},
		},
		{
			name: "CRLF line endings and byte order mark",
			text: "\ufeffexec = /bin/app\r\nuid = app\r\n",
			want: []string{"exec=/bin/app@1", "uid=app@2"},
		},
		{
			name: "no final newline",
			text: "exec = /bin/app",
			want: []string{"exec=/bin/app@1"},
		},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			got, err := Parse(testFile, []byte(test.text), fakeOptions(false, nil))
			if err != nil {
				t.Fatalf("Parse(%q) error = %q, want nil", test.text, err)
			}
			if list := optionKeysAndLines(got); !reflect.DeepEqual(list, test.want) {
				t.Errorf("Parse(%q) options = %q, want %q", test.text, list, test.want)
			}
		})
	}
}

func TestParseConditions(t *testing.T) {
	const body = "\nenv = IN=1\nendif =\nexec = /bin/app\n"
	env := map[string]string{"SET": "yes", "EMPTY": "", "DIR": "/srv"}
	existing := []string{"/srv/present", "/etc/fief/vassals/marker"}

	tests := []struct {
		name   string
		text   string
		reload bool
		want   bool // whether the block applies
	}{
		{"if-not-reload on start", "if-not-reload =" + body, false, true},
		{"if-not-reload on reload", "if-not-reload =" + body, true, false},
		{"if-reload on start", "if-reload =" + body, false, false},
		{"if-reload on reload", "if-reload =" + body, true, true},
		{"if_not_reload spelling", "if_not_reload =" + body, false, true},
		{"if-exists present", "if-exists = /srv/present" + body, false, true},
		{"if-exists absent", "if-exists = /srv/absent" + body, false, false},
		{"if-not-exists present", "if-not-exists = /srv/present" + body, false, false},
		{"if-not-exists absent", "if-not-exists = /srv/absent" + body, false, true},
		{"if-exists expands before evaluation", "if-exists = %dmarker" + body, false, true},
		{"if-exists expands environment", "if-exists = $(DIR)/present" + body, false, true},
		{"if-env set", "if-env = SET" + body, false, true},
		{"if-env empty counts as unset", "if-env = EMPTY" + body, false, false},
		{"if-env unset", "if-env = UNSET" + body, false, false},
		{"if-not-env set", "if-not-env = SET" + body, false, false},
		{"if-not-env empty", "if-not-env = EMPTY" + body, false, true},
		{"if-not-env unset", "if-not-env = UNSET" + body, false, true},
		{"endif value ignored", "if-reload =\nenv = IN=1\nendif = anything\nexec = /bin/app\n", true, true},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			got, err := Parse(testFile, []byte(test.text), fakeOptions(test.reload, env, existing...))
			if err != nil {
				t.Fatalf("Parse(%q) error = %q, want nil", test.text, err)
			}
			var wantEnv []string
			if test.want {
				wantEnv = []string{"IN=1"}
			}
			if !reflect.DeepEqual(got.Env, wantEnv) {
				t.Errorf("Parse(%q) with Reload %v: Env = %q, want %q", test.text, test.reload, got.Env, wantEnv)
			}
		})
	}
}

func TestParseSkippedBlocks(t *testing.T) {
	tests := []struct {
		name, text string
		wantEnv    []string
	}{
		{
			name:    "skipped lines define no options",
			text:    "exec = /bin/app\nuid = outer\nif-reload =\nuid = inner\nendif =\nenv = U=%(uid)\n",
			wantEnv: []string{"U=outer"},
		},
		{
			name:    "undefined option in skipped block",
			text:    "exec = /bin/app\nif-reload =\nenv = U=%(never_set)\nendif =\n",
			wantEnv: nil,
		},
		{
			name:    "invalid values in skipped block",
			text:    "exec = /bin/app\nif-reload =\nstop-timeout = soon\nexec = a | b\npivot-root = /x\nendif =\n",
			wantEnv: nil,
		},
		{
			name:    "applied block defines options",
			text:    "exec = /bin/app\nif-not-reload =\nuid = inner\nendif =\nenv = U=%(uid)\n",
			wantEnv: []string{"U=inner"},
		},
		{
			name:    "consecutive blocks",
			text:    "exec = /bin/app\nif-reload =\nenv = A=1\nendif =\nif-not-reload =\nenv = B=1\nendif =\n",
			wantEnv: []string{"B=1"},
		},
		{
			name:    "block across sections",
			text:    "exec = /bin/app\nif-reload =\n[other]\nendif =\n[fief]\nenv = A=1\nendif =\nenv = B=1\n",
			wantEnv: []string{"B=1"},
		},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			got, err := Parse(testFile, []byte(test.text), fakeOptions(false, nil))
			if err != nil {
				t.Fatalf("Parse(%q) error = %q, want nil", test.text, err)
			}
			if !reflect.DeepEqual(got.Env, test.wantEnv) {
				t.Errorf("Parse(%q) Env = %q, want %q", test.text, got.Env, test.wantEnv)
			}
		})
	}
}

func TestParseLineErrors(t *testing.T) {
	const prefix = testFile + ":"
	tests := []struct {
		name, text string
		want       string
	}{
		{"line without equals", "exec = /bin/app\nprocesses 4\n",
			prefix + `2: invalid line "processes 4": write KEY = VALUE, or start a comment with ";" or "#"`},
		{"empty key", "exec = /bin/app\n = 4\n",
			prefix + `2: invalid line "= 4": the key before "=" is empty`},
		{"unclosed section header", "[uwsgi\nexec = /bin/app\n",
			prefix + `1: invalid section header "[uwsgi": add the closing "]"`},
		{"NUL byte", "exec = /bin/app\nenv = A=\x00\n",
			prefix + `2: the line contains a NUL byte; remove it`},
		{"nested if", "exec = /bin/app\nif-not-reload =\nif-env = HOME\nendif =\nendif =\n",
			prefix + `3: if-env inside the if-not-reload block opened on line 2: blocks cannot be nested, so close that block with "endif =" first`},
		{"nested if in skipped block", "exec = /bin/app\nif-reload =\nif-exists = /x\nendif =\n",
			prefix + `3: if-exists inside the if-reload block opened on line 2: blocks cannot be nested, so close that block with "endif =" first`},
		{"endif without if", "exec = /bin/app\nendif =\n",
			prefix + `2: endif without an open if-* block: remove it or add the missing if-* line`},
		{"second endif", "exec = /bin/app\nif-reload =\nendif =\nendif =\n",
			prefix + `4: endif without an open if-* block: remove it or add the missing if-* line`},
		{"unclosed if", "exec = /bin/app\n\nif-not-reload =\nexec-as-user = /bin/true\n",
			prefix + `3: the if-not-reload block is not closed: add "endif =" after its last line`},
		{"unclosed if at end of skipped block", "exec = /bin/app\nif_reload =\n",
			prefix + `2: the if_reload block is not closed: add "endif =" after its last line`},
		{"if-reload with value", "exec = /bin/app\nif-reload = yes\nendif =\n",
			prefix + `2: if-reload takes no value, found "yes"; write "if-reload ="`},
		{"if-exists without path", "exec = /bin/app\nif-exists =\nendif =\n",
			prefix + `2: if-exists needs a path, found an empty value`},
		{"if-env without name", "exec = /bin/app\nif-not-env =\nendif =\n",
			prefix + `2: if-not-env needs an environment variable name, found an empty value`},
		{"if-exists with undefined option", "exec = /bin/app\nif-exists = %(chdir)/x\nendif =\n",
			prefix + `2: undefined option in "%(chdir)": no earlier line sets "chdir"; move the chdir line above this one`},
		{"unknown key in skipped block", "exec = /bin/app\nif-reload =\nexec-as-usr = /bin/true\nendif =\n",
			prefix + `3: unknown key "exec-as-usr"; did you mean "exec-as-user"?`},
		{"unknown magic variable in skipped block", "exec = /bin/app\nif-reload =\nenv = A=%y\nendif =\n",
			prefix + `3: unknown magic variable "%y"; supported are %(key), %n, %s, %p, %d, %e, %% (a literal percent sign) and $(NAME)`},
		{"line without equals in skipped block", "exec = /bin/app\nif-reload =\njunk\nendif =\n",
			prefix + `3: invalid line "junk": write KEY = VALUE, or start a comment with ";" or "#"`},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			_, err := Parse(testFile, []byte(test.text), fakeOptions(false, map[string]string{"HOME": "/root"}))
			if err == nil {
				t.Fatalf("Parse(%q) error = nil, want %q", test.text, test.want)
			}
			if err.Error() != test.want {
				t.Errorf("Parse(%q) error = %q, want %q", test.text, err, test.want)
			}
		})
	}
}
