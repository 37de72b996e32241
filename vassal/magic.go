package vassal

import (
	"fmt"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// supportedMagic lists the magic variables for error messages.
const supportedMagic = "%(key), %n, %s, %p, %d, %e, %% (a literal percent sign) and $(NAME)"

// fileNames are the values of the magic variables that describe the vassal
// file.
type fileNames struct {
	path string // %p: absolute path
	dir  string // %d: directory with a trailing "/"
	base string // %s: file name
	name string // %n: file name without extension
	ext  string // %e: extension without the dot
}

func newFileNames(absPath string) fileNames {
	base := filepath.Base(absPath)
	ext := filepath.Ext(base)
	dir := filepath.Dir(absPath)
	if !strings.HasSuffix(dir, "/") {
		dir += "/"
	}
	return fileNames{
		path: absPath,
		dir:  dir,
		base: base,
		name: strings.TrimSuffix(base, ext),
		ext:  strings.TrimPrefix(ext, "."),
	}
}

// expander replaces magic variables in values.
type expander struct {
	file   fileNames
	getenv func(string) (string, bool)
	lookup func(key string) (string, bool) // value of the most recent applied option named key
}

// expand replaces the magic variables in value in a single pass, so text
// that a variable inserts is never expanded again. When lenient is true, an
// undefined %(key) becomes "" instead of an error, because lines in skipped
// if-* blocks may refer to options that only the other branch sets.
func (e *expander) expand(value string, lenient bool) (string, error) {
	var out strings.Builder
	for i := 0; i < len(value); {
		c := value[i]
		switch {
		case c == '%':
			if i+1 == len(value) {
				return "", fmt.Errorf(`incomplete magic variable "%%" at the end of the value; write %%%% for a literal percent sign`)
			}
			if value[i+1] == '(' {
				key, next, err := parenthesized(value, i)
				if err != nil {
					return "", err
				}
				if key == "" {
					return "", fmt.Errorf(`empty magic variable "%%()": write %%(KEY) with the name of an option set on an earlier line`)
				}
				optionValue, ok := e.lookup(key)
				if !ok && !lenient {
					return "", fmt.Errorf("undefined option in %q: no earlier line sets %q; move the %s line above this one", value[i:next], key, key)
				}
				out.WriteString(optionValue)
				i = next
				continue
			}
			replacement, err := e.fileVariable(value[i+1:])
			if err != nil {
				return "", err
			}
			out.WriteString(replacement)
			i += 2

		case c == '$' && i+1 < len(value) && value[i+1] == '(':
			name, next, err := parenthesized(value, i)
			if err != nil {
				return "", err
			}
			if name == "" {
				return "", fmt.Errorf(`empty magic variable "$()": write $(NAME) with the name of an environment variable`)
			}
			envValue, _ := e.getenv(name)
			out.WriteString(envValue)
			i = next

		default:
			out.WriteByte(c)
			i++
		}
	}
	return out.String(), nil
}

// fileVariable returns the value of the one-letter magic variable that
// starts rest, the text after a "%".
func (e *expander) fileVariable(rest string) (string, error) {
	switch rest[0] {
	case 'n':
		return e.file.name, nil
	case 's':
		return e.file.base, nil
	case 'p':
		return e.file.path, nil
	case 'd':
		return e.file.dir, nil
	case 'e':
		return e.file.ext, nil
	case '%':
		return "%", nil
	}
	_, size := utf8.DecodeRuneInString(rest)
	return "", fmt.Errorf("unknown magic variable %q; supported are %s", "%"+rest[:size], supportedMagic)
}

// parenthesized returns the text between the "(" at value[start+1] and the
// next ")", and the index after the ")".
func parenthesized(value string, start int) (inside string, next int, err error) {
	end := strings.IndexByte(value[start+2:], ')')
	if end < 0 {
		return "", 0, fmt.Errorf(`unterminated magic variable %q: add the closing ")"`, value[start:])
	}
	return value[start+2 : start+2+end], start + 2 + end + 1, nil
}
