package vassal

import (
	"errors"
	"fmt"
	"strings"
)

// useShellHint ends the errors about shell syntax, which fief never runs.
const useShellHint = "write sh -c '...' to use a shell"

// splitCommand splits a command into argv with POSIX shell word rules and
// without running a shell. Blanks separate words. Single quotes keep every
// character literally. Double quotes keep every character except \", \\, \$
// and \`, which drop the backslash. Outside quotes a backslash escapes the
// next character.
//
// Unquoted shell syntax is an error, because no shell would interpret it:
// the operators | || ; & && > >> < <<, command substitution with $( or
// backticks, parameter expansion ($NAME, ${, $1, $? and the other special
// parameters) and a "#" that starts a word, which a shell reads as a
// comment.
func splitCommand(command string) ([]string, error) {
	var words []string
	var word strings.Builder
	inWord := false
	endWord := func() {
		if inWord {
			words = append(words, word.String())
			word.Reset()
			inWord = false
		}
	}

	for i := 0; i < len(command); i++ {
		c := command[i]
		switch c {
		case ' ', '\t', '\n', '\r', '\v', '\f':
			endWord()

		case '\\':
			if i+1 == len(command) {
				return nil, errors.New(`the backslash at the end escapes nothing; remove it or write \\ for a literal backslash`)
			}
			i++
			word.WriteByte(command[i])
			inWord = true

		case '\'':
			end := strings.IndexByte(command[i+1:], '\'')
			if end < 0 {
				return nil, errors.New("unterminated single quote: add the closing '")
			}
			word.WriteString(command[i+1 : i+1+end])
			i += end + 1
			inWord = true

		case '"':
			next, err := readDoubleQuoted(command, i, &word)
			if err != nil {
				return nil, err
			}
			i = next
			inWord = true

		case '|', '&', ';', '<', '>', '`':
			return nil, fmt.Errorf("shell syntax %q is not run by a shell; %s", shellOperatorAt(command, i), useShellHint)

		case '$':
			if construct, isVariable := shellExpansionAt(command, i); construct != "" {
				if isVariable {
					return nil, fmt.Errorf("shell variable %q is not expanded because no shell runs the command; write $(NAME) for an environment variable, or %s", construct, useShellHint)
				}
				return nil, fmt.Errorf("shell syntax %q is not run by a shell; %s", construct, useShellHint)
			}
			word.WriteByte(c)
			inWord = true

		case '#':
			if !inWord {
				return nil, errors.New(`an unquoted "#" that starts a word would begin a comment in a shell, but fief passes it to the program; put comments on their own line, or quote the "#"`)
			}
			word.WriteByte(c)

		default:
			word.WriteByte(c)
			inWord = true
		}
	}
	endWord()

	if len(words) == 0 {
		return nil, errors.New("empty command: name the program to run")
	}
	if words[0] == "" {
		return nil, errors.New("the program name is empty: name the program to run")
	}
	return words, nil
}

// readDoubleQuoted appends the contents of the double-quoted string that
// starts at command[start] to word and returns the index of the closing
// quote.
func readDoubleQuoted(command string, start int, word *strings.Builder) (int, error) {
	for i := start + 1; i < len(command); i++ {
		c := command[i]
		switch {
		case c == '"':
			return i, nil
		case c == '\\' && i+1 < len(command) && strings.IndexByte("\"\\$`", command[i+1]) >= 0:
			i++
			word.WriteByte(command[i])
		default:
			word.WriteByte(c)
		}
	}
	return 0, errors.New(`unterminated double quote: add the closing "`)
}

// shellOperatorAt returns the shell operator that starts at command[i],
// using the longest match of the two-character operators.
func shellOperatorAt(command string, i int) string {
	if i+1 < len(command) {
		switch pair := command[i : i+2]; pair {
		case "||", "&&", ">>", "<<":
			return pair
		}
	}
	return command[i : i+1]
}

// shellExpansionAt returns the shell expansion that starts with the "$" at
// command[i], or "" when a shell would keep that "$" literally. IsVariable
// reports a named variable such as $HOME or ${HOME}.
func shellExpansionAt(command string, i int) (construct string, isVariable bool) {
	if i+1 == len(command) {
		return "", false
	}
	next := command[i+1]
	switch {
	case next == '(':
		return "$(", false
	case next == '{':
		return "${", true
	case next == '_' || 'a' <= next && next <= 'z' || 'A' <= next && next <= 'Z':
		end := i + 2
		for end < len(command) && isShellNameByte(command[end]) {
			end++
		}
		return command[i:end], true
	case '0' <= next && next <= '9' || strings.IndexByte("?$!@*#-", next) >= 0:
		return command[i : i+2], false
	}
	return "", false
}

func isShellNameByte(c byte) bool {
	return c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// SplitCommand splits a command line into argv with the rules of exec
// lines: shell words, no shell, and shell syntax rejected.
func SplitCommand(line string) ([]string, error) {
	return splitCommand(line)
}
