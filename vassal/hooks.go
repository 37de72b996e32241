package vassal

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Hook is a parsed hook-* value of the form ACTION:ARGS. The fields that an
// action does not use are empty.
type Hook struct {
	// Action is exec, mount, umount, mkdir, chdir, call or callret. The
	// alias cd is stored as chdir.
	Action string

	Argv []string // exec: the command, split like an exec-* value

	// Mount holds the arguments of mount, and of umount, which sets only
	// Target and Flags.
	Mount *MountSpec

	Path string // mkdir and chdir: the directory

	// Func and FuncArgs are the C function and its blank-separated
	// arguments for call and callret. With callret, an error returned by
	// the function fails the step, and call ignores the return value.
	Func     string
	FuncArgs []string

	// Mode is the parsed octal mode of call:umask, and of call:mkdir, where
	// it is 0777 unless the second argument sets it.
	Mode uint32

	Line int
	Text string // the expanded value as written, e.g. "mount:proc none /proc"
}

// MountSpec holds the arguments of a mount or umount hook.
type MountSpec struct {
	FSType, Source, Target string
	// Flags are canonical flag names: rdonly and readonly are stored as ro,
	// recursive as rec, and defaults is dropped.
	Flags []string
	Data  string // the fifth field and everything after it, for mount(2)
}

// hookActions lists the hook actions for error messages.
const hookActions = "exec, mount, umount, mkdir, chdir (alias cd), call, callret"

// mountFlags maps each accepted mount flag to its canonical name. The empty
// name means that the flag sets nothing.
var mountFlags = sync.OnceValue(func() map[string]string {
	return map[string]string{
		"bind": "bind", "rec": "rec", "recursive": "rec",
		"ro": "ro", "rdonly": "ro", "readonly": "ro",
		"private": "private", "slave": "slave", "shared": "shared",
		"nosuid": "nosuid", "nodev": "nodev", "noexec": "noexec",
		"remount": "remount", "move": "move", "noatime": "noatime",
		"sync": "sync", "dirsync": "dirsync", "defaults": "",
	}
})

const supportedMountFlags = "bind, rec (also recursive), ro (also rdonly, readonly), private, slave, shared, nosuid, nodev, noexec, remount, move, noatime, sync, dirsync, defaults"

// umountFlags maps each accepted umount flag to its canonical name.
var umountFlags = sync.OnceValue(func() map[string]string {
	return map[string]string{"rec": "rec", "recursive": "rec", "detach": "detach"}
})

const supportedUmountFlags = "rec (also recursive), detach"

// hookFunctions are the C functions that call and callret accept.
var hookFunctions = []string{"chdir", "mkdir", "sync", "umask"}

// parseHook parses an ACTION:ARGS hook value. The caller sets Line.
func parseHook(value string) (*Hook, error) {
	action, args, found := strings.Cut(value, ":")
	if !found {
		return nil, errors.New("missing action: write ACTION:ARGS, e.g. exec:/bin/true or mount:proc none /proc")
	}
	action = strings.TrimSpace(action)
	hook := &Hook{Action: action, Text: value}

	switch action {
	case "exec":
		argv, err := splitCommand(args)
		if err != nil {
			return nil, err
		}
		hook.Argv = argv

	case "mount":
		mount, err := parseMountArgs(args)
		if err != nil {
			return nil, err
		}
		hook.Mount = mount

	case "umount":
		mount, err := parseUmountArgs(args)
		if err != nil {
			return nil, err
		}
		hook.Mount = mount

	case "mkdir", "chdir", "cd":
		if action == "cd" {
			hook.Action = "chdir"
		}
		hook.Path = strings.TrimSpace(args)
		if hook.Path == "" {
			return nil, fmt.Errorf("%s needs a path, e.g. %s:/tmp", action, action)
		}

	case "call", "callret":
		if err := parseCallArgs(hook, args); err != nil {
			return nil, err
		}

	default:
		return nil, fmt.Errorf("unknown hook action %q; supported actions are %s", action, hookActions)
	}
	return hook, nil
}

// parseMountArgs parses "FSTYPE SOURCE TARGET [FLAGS [DATA]]".
func parseMountArgs(args string) (*MountSpec, error) {
	const usage = "write mount:FSTYPE SOURCE TARGET [FLAGS [DATA]], e.g. mount:proc none /proc"
	fields, data := splitFields(args, 4)
	if len(fields) < 3 {
		return nil, fmt.Errorf("mount needs at least 3 fields, found %d; %s", len(fields), usage)
	}
	mount := &MountSpec{FSType: fields[0], Source: fields[1], Target: fields[2], Data: data}
	if len(fields) == 4 {
		flags, err := parseFlagList(fields[3], mountFlags(), "mount", supportedMountFlags)
		if err != nil {
			return nil, err
		}
		mount.Flags = flags
	}
	return mount, nil
}

// parseUmountArgs parses "TARGET [FLAGS]".
func parseUmountArgs(args string) (*MountSpec, error) {
	fields := strings.Fields(args)
	if len(fields) == 0 || len(fields) > 2 {
		return nil, fmt.Errorf("umount needs 1 or 2 fields, found %d; write umount:TARGET [FLAGS], e.g. umount:/.old_root rec,detach", len(fields))
	}
	mount := &MountSpec{Target: fields[0]}
	if len(fields) == 2 {
		flags, err := parseFlagList(fields[1], umountFlags(), "umount", supportedUmountFlags)
		if err != nil {
			return nil, err
		}
		mount.Flags = flags
	}
	return mount, nil
}

// parseFlagList parses a comma-separated flag list into canonical names
// without duplicates.
func parseFlagList(list string, known map[string]string, action, supported string) ([]string, error) {
	var flags []string
	for name := range strings.SplitSeq(list, ",") {
		canonical, ok := known[name]
		if !ok {
			return nil, fmt.Errorf("unknown %s flag %q; supported flags are %s", action, name, supported)
		}
		if canonical != "" && !slices.Contains(flags, canonical) {
			flags = append(flags, canonical)
		}
	}
	return flags, nil
}

// splitFields splits s at runs of blanks into at most n fields and returns
// the rest after the n-th field, with surrounding blanks trimmed.
func splitFields(s string, n int) (fields []string, rest string) {
	rest = strings.TrimLeft(s, " \t")
	for len(fields) < n && rest != "" {
		end := strings.IndexAny(rest, " \t")
		if end < 0 {
			fields = append(fields, rest)
			return fields, ""
		}
		fields = append(fields, rest[:end])
		rest = strings.TrimLeft(rest[end:], " \t")
	}
	return fields, strings.TrimRight(rest, " \t")
}

// parseCallArgs parses "NAME ARGS" of a call or callret hook into hook.
func parseCallArgs(hook *Hook, args string) error {
	fields := strings.Fields(args)
	if len(fields) == 0 {
		return fmt.Errorf("%s needs a function name; supported functions are %s", hook.Action, strings.Join(hookFunctions, ", "))
	}
	hook.Func = fields[0]
	if len(fields) > 1 {
		hook.FuncArgs = fields[1:]
	}
	count := len(hook.FuncArgs)

	switch hook.Func {
	case "chdir":
		if count != 1 {
			return fmt.Errorf("function chdir takes 1 argument, a directory, found %d", count)
		}

	case "sync":
		if count != 0 {
			return fmt.Errorf("function sync takes no arguments, found %d", count)
		}

	case "mkdir":
		if count != 1 && count != 2 {
			return fmt.Errorf("function mkdir takes a directory and an optional octal mode, found %d arguments", count)
		}
		hook.Mode = 0o777
		if count == 2 {
			mode, err := parseOctalMode(hook.FuncArgs[1])
			if err != nil {
				return fmt.Errorf("function mkdir: %w", err)
			}
			hook.Mode = mode
		}

	case "umask":
		if count != 1 {
			return fmt.Errorf("function umask takes 1 argument, an octal mode such as 022, found %d", count)
		}
		mode, err := parseOctalMode(hook.FuncArgs[0])
		if err != nil {
			return fmt.Errorf("function umask: %w", err)
		}
		hook.Mode = mode

	default:
		return fmt.Errorf("unknown function %q; supported functions are %s", hook.Func, strings.Join(hookFunctions, ", "))
	}
	return nil
}

// parseOctalMode parses a permission mode such as 022 or 0755.
func parseOctalMode(text string) (uint32, error) {
	mode, err := strconv.ParseUint(text, 8, 32)
	if err != nil || mode > 0o7777 {
		return 0, fmt.Errorf("invalid mode %q: write an octal mode such as 022 or 0755", text)
	}
	return uint32(mode), nil
}
