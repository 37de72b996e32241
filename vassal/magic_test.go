package vassal

import "testing"

func newTestExpander(file string) *expander {
	options := map[string]string{"uid": "user001", "chdir": "/srv/%n"}
	env := map[string]string{"HOME": "/home/app", "EMPTY": "", "PERCENT": "%n", "DOLLAR": "$(HOME)"}
	return &expander{
		file: newFileNames(file),
		getenv: func(name string) (string, bool) {
			value, ok := env[name]
			return value, ok
		},
		lookup: func(key string) (string, bool) {
			value, ok := options[key]
			return value, ok
		},
	}
}

func TestExpand(t *testing.T) {
	tests := []struct {
		file, value, want string
	}{
		{"/etc/fief/vassals/app.ini", "", ""},
		{"/etc/fief/vassals/app.ini", "plain text", "plain text"},
		{"/etc/fief/vassals/app.ini", "%n", "app"},
		{"/etc/fief/vassals/app.ini", "%s", "app.ini"},
		{"/etc/fief/vassals/app.ini", "%p", "/etc/fief/vassals/app.ini"},
		{"/etc/fief/vassals/app.ini", "%d", "/etc/fief/vassals/"},
		{"/etc/fief/vassals/app.ini", "%dmarker", "/etc/fief/vassals/marker"},
		{"/etc/fief/vassals/app.ini", "%e", "ini"},
		{"/etc/fief/vassals/app.ini", "%%", "%"},
		{"/etc/fief/vassals/app.ini", "100%% sure", "100% sure"},
		{"/etc/fief/vassals/app.ini", "%%n", "%n"},
		{"/etc/fief/vassals/app.ini", "/cow/%(uid)=RW", "/cow/user001=RW"},
		{"/etc/fief/vassals/app.ini", "%(uid)%(uid)", "user001user001"},
		{"/etc/fief/vassals/app.ini", "%(chdir)", "/srv/%n"},
		{"/etc/fief/vassals/app.ini", "$(HOME)/x", "/home/app/x"},
		{"/etc/fief/vassals/app.ini", "[$(UNSET)]", "[]"},
		{"/etc/fief/vassals/app.ini", "[$(EMPTY)]", "[]"},
		{"/etc/fief/vassals/app.ini", "$(PERCENT) $(DOLLAR)", "%n $(HOME)"},
		{"/etc/fief/vassals/app.ini", "$HOME ${HOME} $", "$HOME ${HOME} $"},
		{"/etc/fief/vassals/app.ini", "a ) b (", "a ) b ("},
		{"/app.ini", "%d", "/"},
		{"/app.ini", "%d%n", "/app"},
		{"/etc/fief/vassals/site.tar.ini", "%n %e", "site.tar ini"},
		{"/etc/fief/vassals/noext", "[%n] [%e]", "[noext] []"},
		{"/etc/fief/vassals/.hidden", "[%n] [%e]", "[] [hidden]"},
		{"/etc/fief/vassals/app.ini", "ünïcode %n", "ünïcode app"},
	}
	for _, test := range tests {
		t.Run(test.file+" "+test.value, func(t *testing.T) {
			got, err := newTestExpander(test.file).expand(test.value, false)
			if err != nil {
				t.Fatalf("expand(%q) error = %q, want nil", test.value, err)
			}
			if got != test.want {
				t.Errorf("expand(%q) = %q, want %q", test.value, got, test.want)
			}
		})
	}
}

func TestExpandErrors(t *testing.T) {
	const supported = "supported are %(key), %n, %s, %p, %d, %e, %% (a literal percent sign) and $(NAME)"
	tests := []struct {
		value, want string
	}{
		{"%x", `unknown magic variable "%x"; ` + supported},
		{"a %N b", `unknown magic variable "%N"; ` + supported},
		{"%1", `unknown magic variable "%1"; ` + supported},
		{"% ", `unknown magic variable "% "; ` + supported},
		{"%é", `unknown magic variable "%é"; ` + supported},
		{"%\xff", `unknown magic variable "%\xff"; ` + supported},
		{"50%", `incomplete magic variable "%" at the end of the value; write %% for a literal percent sign`},
		{"%(gid)", `undefined option in "%(gid)": no earlier line sets "gid"; move the gid line above this one`},
		{"%(uid", `unterminated magic variable "%(uid": add the closing ")"`},
		{"a %(", `unterminated magic variable "%(": add the closing ")"`},
		{"$(HOME", `unterminated magic variable "$(HOME": add the closing ")"`},
		{"%()", `empty magic variable "%()": write %(KEY) with the name of an option set on an earlier line`},
		{"$()", `empty magic variable "$()": write $(NAME) with the name of an environment variable`},
	}
	for _, test := range tests {
		t.Run(test.value, func(t *testing.T) {
			_, err := newTestExpander(testFile).expand(test.value, false)
			if err == nil {
				t.Fatalf("expand(%q) error = nil, want %q", test.value, test.want)
			}
			if err.Error() != test.want {
				t.Errorf("expand(%q) error = %q, want %q", test.value, err, test.want)
			}
		})
	}
}

func TestExpandLenient(t *testing.T) {
	e := newTestExpander(testFile)

	got, err := e.expand("[%(gid)] %n", true)
	if err != nil {
		t.Fatalf("lenient expand of an undefined option: error = %q, want nil", err)
	}
	if got != "[] app" {
		t.Errorf("lenient expand = %q, want %q", got, "[] app")
	}

	_, err = e.expand("%q", true)
	if err == nil {
		t.Errorf("lenient expand(%q) error = nil, want an unknown magic variable error", "%q")
	}
}
