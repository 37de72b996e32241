package emperor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeIni(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "emperor.ini")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadIniTutorial(t *testing.T) {
	path := writeIni(t, "[uwsgi]\nemperor = /etc/uwsgi/vassals\nemperor-use-clone = fs,pid\n")
	got, err := LoadIni(path)
	if err != nil {
		t.Fatalf("LoadIni: %v", err)
	}
	want := Settings{Dir: "/etc/uwsgi/vassals", UseClone: "fs,pid"}
	if got != want {
		t.Errorf("LoadIni = %+v, want %+v", got, want)
	}
}

func TestLoadIniRelativeDir(t *testing.T) {
	path := writeIni(t, "; comment\nemperor = vassals\n[other]\nemperor = ignored\n")
	got, err := LoadIni(path)
	if err != nil {
		t.Fatalf("LoadIni: %v", err)
	}
	if want := filepath.Join(filepath.Dir(path), "vassals"); got.Dir != want {
		t.Errorf("Dir = %q, want %q", got.Dir, want)
	}
}

func TestLoadIniErrors(t *testing.T) {
	tests := []struct {
		text string
		want string
	}{
		{"emperor = /v\nemperor-tyrnat = true\n", `:2: unknown emperor key "emperor-tyrnat"`},
		{"emperor = /v\nemperor-tyrant = maybe\n", `:2: invalid emperor-tyrant value "maybe"`},
		{"emperor = /v\nemperor-use-clone = fs,bogus\n", `:2: unknown namespace "bogus"`},
		{"emperor-use-clone = fs\n", `missing key emperor`},
		{"emperor /v\n", `:1: "emperor /v" is not KEY = VALUE`},
	}
	for _, tt := range tests {
		_, err := LoadIni(writeIni(t, tt.text))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("LoadIni(%q) error = %v, want it to contain %q", tt.text, err, tt.want)
		}
	}
}
