package asuser

import (
	"errors"
	"os"
	"path"
	"strconv"
)

// DefaultPath is used to find programs when the environment has no PATH.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// DedupEnv keeps the last value of each variable, in first-seen order.
func DedupEnv(env []string) []string {
	index := make(map[string]int, len(env))
	out := make([]string, 0, len(env))
	for _, kv := range env {
		name, _, _ := cut(kv, '=')
		if i, ok := index[name]; ok {
			out[i] = kv
			continue
		}
		index[name] = len(out)
		out = append(out, kv)
	}
	return out
}

// EnvValue returns the last value of name in env, or "".
func EnvValue(env []string, name string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, val, ok := cut(env[i], '='); ok && k == name {
			return val
		}
	}
	return ""
}

// LookPath finds program on the PATH of env. exec.LookPath would use the
// process's own PATH, and in a vassal init its result would be stale after
// pivot_root.
func LookPath(program string, env []string) (string, error) {
	if index(program, '/') >= 0 {
		return program, nil
	}
	search := EnvValue(env, "PATH")
	if search == "" {
		search = DefaultPath
	}
	for dir := range split(search, ':') {
		if dir == "" {
			dir = "."
		}
		candidate := path.Join(dir, program)
		info, err := os.Stat(candidate)
		if err == nil && info.Mode().IsRegular() && info.Mode().Perm()&0o111 != 0 {
			return candidate, nil
		}
	}
	return "", errors.New("program " + strconv.Quote(program) + " not found in PATH " + strconv.Quote(search) + ": install it or give its full path")
}
