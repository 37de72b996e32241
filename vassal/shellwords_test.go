package vassal

import (
	"reflect"
	"testing"
)

func TestSplitCommand(t *testing.T) {
	tests := []struct {
		command string
		want    []string
	}{
		{"/bin/true", []string{"/bin/true"}},
		{"  fuse-zip   -r\t/var/www/app001.zip /app  ", []string{"fuse-zip", "-r", "/var/www/app001.zip", "/app"}},
		{"echo 'a b' \"c d\"", []string{"echo", "a b", "c d"}},
		{"echo 'it''s'", []string{"echo", "its"}},
		{`echo 'no \escapes "here"'`, []string{"echo", `no \escapes "here"`}},
		{`echo "a \" b \\ c \$ d \` + "`" + ` e"`, []string{"echo", "a \" b \\ c $ d ` e"}},
		{`echo "keep \n and \x"`, []string{"echo", `keep \n and \x`}},
		{`echo a\ b \'c\' \"d\" \\ \|`, []string{"echo", "a b", "'c'", `"d"`, `\`, "|"}},
		{`echo ab"cd"'ef'gh`, []string{"echo", "abcdefgh"}},
		{`echo '' ""`, []string{"echo", "", ""}},
		{"echo '| || ; & && > >> < $(x) `x` $HOME ${HOME} #c'", []string{"echo", "| || ; & && > >> < $(x) `x` $HOME ${HOME} #c"}},
		{`echo "| ; & > < $HOME #c"`, []string{"echo", "| ; & > < $HOME #c"}},
		{"echo a#b c#", []string{"echo", "a#b", "c#"}},
		{"echo \\#not-a-comment", []string{"echo", "#not-a-comment"}},
		{"echo $ a$ $/ $. $%", []string{"echo", "$", "a$", "$/", "$.", "$%"}},
		{"sh -c 'exec httpd -f >/var/log/httpd.log 2>&1'", []string{"sh", "-c", "exec httpd -f >/var/log/httpd.log 2>&1"}},
		{"unionfs-fuse -ocow,chroot=/ns,default_permissions,allow_other /precise=RO:/cow/user001=RW /ufs",
			[]string{"unionfs-fuse", "-ocow,chroot=/ns,default_permissions,allow_other", "/precise=RO:/cow/user001=RW", "/ufs"}},
		{"echo ünïcode 'ü b'", []string{"echo", "ünïcode", "ü b"}},
		{"env A=1 B=x=y cmd", []string{"env", "A=1", "B=x=y", "cmd"}},
	}
	for _, test := range tests {
		t.Run(test.command, func(t *testing.T) {
			got, err := splitCommand(test.command)
			if err != nil {
				t.Fatalf("splitCommand(%q) error = %q, want nil", test.command, err)
			}
			if !reflect.DeepEqual(got, test.want) {
				t.Errorf("splitCommand(%q) = %q, want %q", test.command, got, test.want)
			}
		})
	}
}

func TestSplitCommandErrors(t *testing.T) {
	syntax := func(construct string) string {
		return `shell syntax "` + construct + `" is not run by a shell; write sh -c '...' to use a shell`
	}
	variable := func(construct string) string {
		return `shell variable "` + construct + `" is not expanded because no shell runs the command; write $(NAME) for an environment variable, or write sh -c '...' to use a shell`
	}
	tests := []struct {
		command, want string
	}{
		{"a | b", syntax("|")},
		{"a|b", syntax("|")},
		{"a || b", syntax("||")},
		{"a ; b", syntax(";")},
		{"a;", syntax(";")},
		{"a & b", syntax("&")},
		{"a && b", syntax("&&")},
		{"a > f", syntax(">")},
		{"a 2>&1", syntax(">")},
		{"a >> f", syntax(">>")},
		{"a < f", syntax("<")},
		{"a << EOF", syntax("<<")},
		{"a `b`", syntax("`")},
		{"a $(b)", syntax("$(")},
		{"a $? $1", syntax("$?")},
		{"a $1", syntax("$1")},
		{"a $$", syntax("$$")},
		{"a $@", syntax("$@")},
		{"a $HOME", variable("$HOME")},
		{"a x$HOME_DIR/y", variable("$HOME_DIR")},
		{"a $_x", variable("$_x")},
		{"a ${HOME}", variable("${")},
		{"a # comment", `an unquoted "#" that starts a word would begin a comment in a shell, but fief passes it to the program; put comments on their own line, or quote the "#"`},
		{"a 'b", "unterminated single quote: add the closing '"},
		{"a \"b", `unterminated double quote: add the closing "`},
		{`a "b\"`, `unterminated double quote: add the closing "`},
		{`a b\`, `the backslash at the end escapes nothing; remove it or write \\ for a literal backslash`},
		{"", "empty command: name the program to run"},
		{"   \t ", "empty command: name the program to run"},
		{"'' arg", "the program name is empty: name the program to run"},
	}
	for _, test := range tests {
		t.Run(test.command, func(t *testing.T) {
			got, err := splitCommand(test.command)
			if err == nil {
				t.Fatalf("splitCommand(%q) = %q, want error %q", test.command, got, test.want)
			}
			if err.Error() != test.want {
				t.Errorf("splitCommand(%q) error = %q, want %q", test.command, err, test.want)
			}
		})
	}
}
