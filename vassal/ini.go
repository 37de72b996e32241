package vassal

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
)

// activeSections are the sections whose keys fief reads. Keys before the
// first section header are read too.
var activeSections = []string{"uwsgi", "fief"}

// openCondition is an if-* line whose block has not reached its endif.
type openCondition struct {
	key  string // as written
	line int
	met  bool // whether the lines of the block apply
}

// parseLines parses the lines of a vassal file into p.cfg.
func (p *parser) parseLines(data []byte) error {
	data = bytes.TrimPrefix(data, []byte("\ufeff"))
	inActiveSection := true

	for index, text := range strings.Split(string(data), "\n") {
		line := index + 1
		trimmed := strings.TrimSpace(text)

		if strings.HasPrefix(trimmed, "[") {
			if !strings.HasSuffix(trimmed, "]") {
				return p.errorf(line, `invalid section header %q: add the closing "]"`, trimmed)
			}
			name := strings.TrimSpace(trimmed[1 : len(trimmed)-1])
			inActiveSection = slices.Contains(activeSections, name)
			continue
		}
		if !inActiveSection || trimmed == "" || trimmed[0] == ';' || trimmed[0] == '#' {
			continue
		}
		if strings.IndexByte(trimmed, 0) >= 0 {
			return p.errorf(line, "the line contains a NUL byte; remove it")
		}

		key, value, found := strings.Cut(trimmed, "=")
		if !found {
			return p.errorf(line, `invalid line %q: write KEY = VALUE, or start a comment with ";" or "#"`, trimmed)
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		if key == "" {
			return p.errorf(line, `invalid line %q: the key before "=" is empty`, trimmed)
		}
		if err := p.parseOption(key, value, line); err != nil {
			return err
		}
	}

	if p.open != nil {
		return p.errorf(p.open.line, `the %s block is not closed: add "endif =" after its last line`, p.open.key)
	}
	return nil
}

// parseOption handles one KEY = VALUE line of an active section.
func (p *parser) parseOption(key, rawValue string, line int) error {
	info, ok := lookupKey(key)
	if !ok {
		return p.errorf(line, "%s", unknownKeyMessage(key))
	}

	skipped := p.open != nil && !p.open.met
	value, err := p.expander.expand(rawValue, skipped)
	if err != nil {
		return p.errorf(line, "%v", err)
	}

	switch info.kind {
	case kindCondition:
		if p.open != nil {
			return p.errorf(line, `%s inside the %s block opened on line %d: blocks cannot be nested, so close that block with "endif =" first`, key, p.open.key, p.open.line)
		}
		met, err := p.evaluateCondition(info.canonical, key, value)
		if err != nil {
			return p.errorf(line, "%v", err)
		}
		p.open = &openCondition{key: key, line: line, met: met}
		return nil

	case kindEndif:
		if p.open == nil {
			return p.errorf(line, "%s without an open if-* block: remove it or add the missing if-* line", key)
		}
		p.open = nil
		return nil
	}

	if skipped {
		return nil
	}
	return p.apply(key, info, value, line)
}

// evaluateCondition returns whether the block of an if-* line applies.
// Canonical is the key in canonical spelling and key the key as written.
func (p *parser) evaluateCondition(canonical, key, value string) (bool, error) {
	switch canonical {
	case "if-reload", "if-not-reload":
		if value != "" {
			return false, fmt.Errorf("%s takes no value, found %q; write %q", key, value, key+" =")
		}
		return p.opts.Reload == (canonical == "if-reload"), nil

	case "if-exists", "if-not-exists":
		if value == "" {
			return false, fmt.Errorf("%s needs a path, found an empty value", key)
		}
		return p.opts.Exists(value) == (canonical == "if-exists"), nil

	case "if-env", "if-not-env":
		if value == "" {
			return false, fmt.Errorf("%s needs an environment variable name, found an empty value", key)
		}
		envValue, _ := p.opts.Getenv(value)
		// As in uWSGI, a variable that is set but empty counts as unset.
		return (envValue != "") == (canonical == "if-env"), nil
	}
	panic("vassal: no evaluation for condition " + canonical)
}
