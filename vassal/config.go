package vassal

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ParseOptions are the inputs of Parse that do not come from the file.
type ParseOptions struct {
	Reload bool                        // true when the program is being restarted inside existing namespaces
	Getenv func(string) (string, bool) // nil means os.LookupEnv
	Exists func(path string) bool      // nil means os.Stat == nil
}

// Command is a program and its arguments from an exec or exec-* line.
type Command struct {
	Argv []string
	Line int
	Text string // the expanded value as written
}

// Check is a path from a mountpoint-check line.
type Check struct {
	Path string
	Line int
}

// Phase is the point in a vassal's start or stop where a step runs.
type Phase string

// The phases, in the order of a start followed by a stop.
const (
	PhasePreJail      Phase = "pre-jail"       // as root, before pivot-root
	PhaseAsRoot       Phase = "as-root"        // as root, after pivot-root
	PhaseAsUser       Phase = "as-user"        // after dropping to uid and gid
	PhaseAsUserAtexit Phase = "as-user-atexit" // as the user, after the program exits
	PhaseAsRootAtexit Phase = "as-root-atexit" // as root, after the program exits
)

// Phases lists every phase in the order of a start followed by a stop.
var Phases = []Phase{PhasePreJail, PhaseAsRoot, PhaseAsUser, PhaseAsUserAtexit, PhaseAsRootAtexit}

// Step is one exec-* command or hook-* hook. Exactly one of Command and Hook
// is set.
type Step struct {
	Phase   Phase
	Command *Command
	Hook    *Hook
}

// Argv returns the command a step runs: the exec-* command, or the
// command of an exec: hook. It is nil for other hooks.
func (s Step) Argv() []string {
	if s.Command != nil {
		return s.Command.Argv
	}
	return s.Hook.Argv
}

// Line returns the line of the vassal file the step comes from.
func (s Step) Line() int {
	if s.Command != nil {
		return s.Command.Line
	}
	return s.Hook.Line
}

// Text returns the step's value as written, after expansion.
func (s Step) Text() string {
	if s.Command != nil {
		return s.Command.Text
	}
	return s.Hook.Text
}

// PivotRoot is the value of a pivot-root line. New and Old are cleaned
// absolute paths, and Old lies strictly inside New.
type PivotRoot struct {
	New, Old string
	Line     int
}

// Option is one applied KEY = VALUE line.
type Option struct {
	Key   string // canonical for fief keys, as written with "_" replaced by "-" for uWSGI keys
	Value string // after magic variable expansion
	Line  int
}

// Default durations of the optional duration keys.
const (
	DefaultCheckInterval    = 1 * time.Second
	DefaultCheckTimeout     = 5 * time.Second
	DefaultFuseMountTimeout = 10 * time.Second
	DefaultStopTimeout      = 10 * time.Second
)

// Config is a parsed vassal file. When a key that takes one value (uid,
// gid, chdir, pivot-root and the durations) appears more than once, the last
// applied line wins, as in uWSGI. Exec is the exception: a second exec line
// is an error.
type Config struct {
	File, Name string // absolute path; base name ("app.ini")
	Exec       *Command
	UID, GID   string // raw text, "" when absent
	Chdir      string
	Env        []string         // "K=V" in file order
	Steps      map[Phase][]Step // per phase in file order, never nil
	PivotRoot  *PivotRoot       // nil when absent

	MountpointChecks []Check
	CheckInterval    time.Duration // mountpoint-check-interval
	CheckTimeout     time.Duration // mountpoint-check-timeout
	FuseMountTimeout time.Duration // maximum time a FUSE command may take to make its mount appear
	StopTimeout      time.Duration

	Unshare      []string // namespaces from net, ipc, uts, in first-seen order without duplicates
	UWSGIOptions []Option // uWSGI application options that fief does not handle, in file order
	Options      []Option // every applied option in file order, without if-* and endif lines
}

// ConfigError is the error for an invalid line or file. Line is 0 when the
// error concerns the whole file.
type ConfigError struct {
	File string
	Line int
	Msg  string
}

func (e *ConfigError) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	}
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
}

// ParseFile reads and parses the vassal file at path.
func ParseFile(path string, opts ParseOptions) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading vassal file %q: %w", path, err)
	}
	return Parse(path, data, opts)
}

// Parse parses the contents of the vassal file at path. Path names the file
// in errors and in the magic variables %n, %s, %p, %d and %e, and a relative
// path is made absolute against the working directory. The first invalid
// line stops parsing, and the error is a *ConfigError.
func Parse(path string, data []byte, opts ParseOptions) (*Config, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("resolving vassal file path %q: %w", path, err)
	}
	if opts.Getenv == nil {
		opts.Getenv = os.LookupEnv
	}
	if opts.Exists == nil {
		opts.Exists = func(path string) bool {
			_, err := os.Stat(path)
			return err == nil
		}
	}

	cfg := &Config{
		File:             abs,
		Name:             filepath.Base(abs),
		Steps:            map[Phase][]Step{},
		CheckInterval:    DefaultCheckInterval,
		CheckTimeout:     DefaultCheckTimeout,
		FuseMountTimeout: DefaultFuseMountTimeout,
		StopTimeout:      DefaultStopTimeout,
	}
	p := &parser{cfg: cfg, opts: opts}
	p.expander = expander{
		file:   newFileNames(abs),
		getenv: opts.Getenv,
		lookup: p.lookupOption,
	}

	if err := p.parseLines(data); err != nil {
		return nil, err
	}
	if cfg.Exec == nil && len(cfg.UWSGIOptions) == 0 {
		return nil, &ConfigError{File: abs, Msg: `missing "exec": name the program to run, e.g. exec = /usr/bin/busybox httpd -f -p 8080`}
	}
	return cfg, nil
}

// parser is the state of one Parse call.
type parser struct {
	cfg      *Config
	opts     ParseOptions
	expander expander
	open     *openCondition // the if-* block the current line is in, nil outside blocks
}

func (p *parser) errorf(line int, format string, args ...any) *ConfigError {
	return &ConfigError{File: p.cfg.File, Line: line, Msg: fmt.Sprintf(format, args...)}
}

// lookupOption returns the value of the most recent applied option named
// key, which is matched like a key in the file.
func (p *parser) lookupOption(key string) (string, bool) {
	canonical := normalizeKey(key)
	if info, ok := lookupKey(key); ok {
		canonical = info.canonical
	}
	for _, option := range slices.Backward(p.cfg.Options) {
		if option.Key == canonical {
			return option.Value, true
		}
	}
	return "", false
}

// stepPhases maps each exec-* and hook-* key to its phase.
var stepPhases = sync.OnceValue(func() map[string]Phase {
	return map[string]Phase{
		"exec-pre-jail":       PhasePreJail,
		"exec-as-root":        PhaseAsRoot,
		"exec-as-user":        PhaseAsUser,
		"exec-as-user-atexit": PhaseAsUserAtexit,
		"exec-as-root-atexit": PhaseAsRootAtexit,
		"hook-pre-jail":       PhasePreJail,
		"hook-as-root":        PhaseAsRoot,
		"hook-as-user":        PhaseAsUser,
		"hook-as-user-atexit": PhaseAsUserAtexit,
		"hook-as-root-atexit": PhaseAsRootAtexit,
	}
})

// apply stores one option line that is not in a skipped block. Key is the
// key as written, which error messages repeat.
func (p *parser) apply(key string, info keyInfo, value string, line int) error {
	cfg := p.cfg
	if info.kind == kindUWSGI {
		cfg.UWSGIOptions = append(cfg.UWSGIOptions, Option{Key: info.canonical, Value: value, Line: line})
		cfg.Options = append(cfg.Options, Option{Key: info.canonical, Value: value, Line: line})
		return nil
	}

	invalid := func(format string, args ...any) error {
		return p.errorf(line, "invalid %s value %q: %s", key, value, fmt.Sprintf(format, args...))
	}

	switch info.canonical {
	case "exec":
		if cfg.Exec != nil {
			return p.errorf(line, "exec is set twice, on lines %d and %d: a vassal runs one program, so remove one of them", cfg.Exec.Line, line)
		}
		argv, err := splitCommand(value)
		if err != nil {
			return invalid("%v", err)
		}
		cfg.Exec = &Command{Argv: argv, Line: line, Text: value}

	case "uid":
		if value == "" {
			return invalid("name a user or a numeric uid")
		}
		cfg.UID = value

	case "gid":
		if value == "" {
			return invalid("name a group or a numeric gid")
		}
		cfg.GID = value

	case "chdir":
		if value == "" {
			return invalid("name a directory")
		}
		cfg.Chdir = value

	case "env":
		name, _, found := strings.Cut(value, "=")
		if !found {
			return invalid("write NAME=VALUE")
		}
		if name == "" {
			return invalid(`the name before "=" is empty; write NAME=VALUE`)
		}
		cfg.Env = append(cfg.Env, value)

	case "exec-pre-jail", "exec-as-root", "exec-as-user", "exec-as-user-atexit", "exec-as-root-atexit":
		argv, err := splitCommand(value)
		if err != nil {
			return invalid("%v", err)
		}
		phase := stepPhases()[info.canonical]
		command := &Command{Argv: argv, Line: line, Text: value}
		cfg.Steps[phase] = append(cfg.Steps[phase], Step{Phase: phase, Command: command})

	case "hook-pre-jail", "hook-as-root", "hook-as-user", "hook-as-user-atexit", "hook-as-root-atexit":
		hook, err := parseHook(value)
		if err != nil {
			return invalid("%v", err)
		}
		hook.Line = line
		phase := stepPhases()[info.canonical]
		if (hook.Action == "mount" || hook.Action == "umount") && (phase == PhaseAsUser || phase == PhaseAsUserAtexit) {
			return invalid("%s runs after privileges are dropped, and %s needs root; use hook-as-root or hook-pre-jail", key, hook.Action)
		}
		cfg.Steps[phase] = append(cfg.Steps[phase], Step{Phase: phase, Hook: hook})

	case "pivot-root":
		pivot, err := parsePivotRoot(value)
		if err != nil {
			return invalid("%v", err)
		}
		pivot.Line = line
		cfg.PivotRoot = pivot

	case "mountpoint-check":
		if !filepath.IsAbs(value) {
			return invalid("write an absolute path")
		}
		cfg.MountpointChecks = append(cfg.MountpointChecks, Check{Path: filepath.Clean(value), Line: line})

	case "mountpoint-check-interval", "mountpoint-check-timeout", "fuse-mount-timeout", "stop-timeout":
		duration, err := parsePositiveDuration(value)
		if err != nil {
			return invalid("%v", err)
		}
		switch info.canonical {
		case "mountpoint-check-interval":
			cfg.CheckInterval = duration
		case "mountpoint-check-timeout":
			cfg.CheckTimeout = duration
		case "fuse-mount-timeout":
			cfg.FuseMountTimeout = duration
		case "stop-timeout":
			cfg.StopTimeout = duration
		}

	case "unshare":
		namespaces, err := parseUnshare(value)
		if err != nil {
			return invalid("%v", err)
		}
		for _, namespace := range namespaces {
			if !slices.Contains(cfg.Unshare, namespace) {
				cfg.Unshare = append(cfg.Unshare, namespace)
			}
		}

	default:
		// Every fief key in the key table has a case above.
		panic(fmt.Sprintf("vassal: no handler for key %q", info.canonical))
	}

	cfg.Options = append(cfg.Options, Option{Key: info.canonical, Value: value, Line: line})
	return nil
}

// parsePivotRoot parses "NEW OLD".
func parsePivotRoot(value string) (*PivotRoot, error) {
	fields := strings.Fields(value)
	if len(fields) != 2 {
		return nil, fmt.Errorf("write NEW OLD, two absolute paths with OLD inside NEW, e.g. /ufs /ufs/.old_root")
	}
	newRoot, oldRoot := fields[0], fields[1]
	if !filepath.IsAbs(newRoot) {
		return nil, fmt.Errorf("NEW %q must be an absolute path", newRoot)
	}
	if !filepath.IsAbs(oldRoot) {
		return nil, fmt.Errorf("OLD %q must be an absolute path", oldRoot)
	}
	newRoot, oldRoot = filepath.Clean(newRoot), filepath.Clean(oldRoot)
	prefix := newRoot
	if prefix != "/" {
		prefix += "/"
	}
	if !strings.HasPrefix(oldRoot, prefix) || oldRoot == newRoot {
		return nil, fmt.Errorf("OLD %q must lie inside NEW %q, e.g. %s", oldRoot, newRoot, filepath.Join(newRoot, ".old_root"))
	}
	return &PivotRoot{New: newRoot, Old: oldRoot}, nil
}

// parsePositiveDuration parses a Go duration ("1500ms", "10s") or a bare
// whole number of seconds, and rejects values that are not greater than
// zero.
func parsePositiveDuration(value string) (time.Duration, error) {
	const usage = "write a duration such as 10s or 1500ms, or a whole number of seconds"
	if value != "" && strings.Trim(value, "0123456789") == "" {
		seconds, err := strconv.ParseInt(value, 10, 64)
		if err != nil || seconds > int64(1<<63-1)/int64(time.Second) {
			return 0, fmt.Errorf("the number of seconds is too large; %s", usage)
		}
		if seconds == 0 {
			return 0, fmt.Errorf("the duration must be greater than zero")
		}
		return time.Duration(seconds) * time.Second, nil
	}
	duration, err := time.ParseDuration(value)
	if err != nil {
		return 0, fmt.Errorf("%s", usage)
	}
	if duration <= 0 {
		return 0, fmt.Errorf("the duration must be greater than zero")
	}
	return duration, nil
}

// unshareNamespaces are the namespaces that unshare accepts.
var unshareNamespaces = []string{"net", "ipc", "uts"}

// parseUnshare parses a comma-separated list of namespaces.
func parseUnshare(value string) ([]string, error) {
	var namespaces []string
	for item := range strings.SplitSeq(value, ",") {
		item = strings.TrimSpace(item)
		if !slices.Contains(unshareNamespaces, item) {
			return nil, fmt.Errorf("unsupported namespace %q; supported namespaces are %s", item, strings.Join(unshareNamespaces, ", "))
		}
		namespaces = append(namespaces, item)
	}
	return namespaces, nil
}
