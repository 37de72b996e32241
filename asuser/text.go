package asuser

import "iter"

// The string helpers of this package. Package strings imports unicode,
// whose initialization would come late in fief's init order and hold back
// the early start of exec-as-user (see fief/asuser/fastpath), so the few
// functions needed here work on bytes.

// cut is strings.Cut with a one-byte separator.
func cut(s string, sep byte) (before, after string, found bool) {
	if i := index(s, sep); i >= 0 {
		return s[:i], s[i+1:], true
	}
	return s, "", false
}

// index is strings.IndexByte.
func index(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

// split is strings.SplitSeq with a one-byte separator.
func split(s string, sep byte) iter.Seq[string] {
	return func(yield func(string) bool) {
		for {
			before, after, found := cut(s, sep)
			if !yield(before) || !found {
				return
			}
			s = after
		}
	}
}

// lines yields the lines of s without their ends: "\n" and any "\r"
// before it are removed.
func lines(s string) iter.Seq[string] {
	return func(yield func(string) bool) {
		for s != "" {
			line, rest, _ := cut(s, '\n')
			for line != "" && line[len(line)-1] == '\r' {
				line = line[:len(line)-1]
			}
			if !yield(line) {
				return
			}
			s = rest
		}
	}
}

// isBlank reports whether s contains only ASCII white space.
func isBlank(s string) bool {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case ' ', '\t', '\n', '\v', '\f', '\r':
		default:
			return false
		}
	}
	return true
}
