package emperor

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"fief/vassal"
)

// Settings are the emperor settings read from a uWSGI-style ini file.
type Settings struct {
	// Dir is the vassal directory, relative paths taken from the ini
	// file's directory.
	Dir string
	// UseClone is the value of emperor-use-clone, "" when absent.
	UseClone string
	// Tyrant is the value of emperor-tyrant.
	Tyrant bool
}

// LoadIni reads the emperor settings of the ini file at path: the keys
// emperor, emperor-use-clone and emperor-tyrant, in a [uwsgi] or [fief]
// section or before any section.
func LoadIni(path string) (Settings, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Settings{}, fmt.Errorf("reading emperor ini file %q: %w", path, err)
	}

	var s Settings
	inSection := true
	scanner := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; scanner.Scan(); line++ {
		text := strings.TrimSpace(scanner.Text())
		switch {
		case text == "" || text[0] == ';' || text[0] == '#':
			continue
		case strings.HasPrefix(text, "[") && strings.HasSuffix(text, "]"):
			name := strings.TrimSpace(text[1 : len(text)-1])
			inSection = name == "uwsgi" || name == "fief"
			continue
		case !inSection:
			continue
		}

		key, value, ok := strings.Cut(text, "=")
		if !ok {
			return Settings{}, fmt.Errorf("%s:%d: %q is not KEY = VALUE", path, line, text)
		}
		key = strings.ReplaceAll(strings.TrimSpace(key), "_", "-")
		value = strings.TrimSpace(value)
		switch key {
		case "emperor":
			value = strings.TrimPrefix(value, "dir://")
			if !filepath.IsAbs(value) {
				value = filepath.Join(filepath.Dir(path), value)
			}
			s.Dir = value
		case "emperor-use-clone":
			if _, err := vassal.ParseCloneFlags(value); err != nil {
				return Settings{}, fmt.Errorf("%s:%d: %w", path, line, err)
			}
			s.UseClone = value
		case "emperor-tyrant":
			switch strings.ToLower(value) {
			case "", "1", "true", "yes", "on":
				s.Tyrant = true
			case "0", "false", "no", "off":
				s.Tyrant = false
			default:
				return Settings{}, fmt.Errorf("%s:%d: invalid emperor-tyrant value %q: use true or false", path, line, value)
			}
		default:
			return Settings{}, fmt.Errorf("%s:%d: unknown emperor key %q; fief reads emperor, emperor-use-clone and emperor-tyrant", path, line, key)
		}
	}
	if err := scanner.Err(); err != nil {
		return Settings{}, fmt.Errorf("reading emperor ini file %q: %w", path, err)
	}
	if s.Dir == "" {
		return Settings{}, fmt.Errorf("%s: missing key emperor: name the vassal directory, e.g. emperor = /etc/fief/vassals", path)
	}
	return s, nil
}
