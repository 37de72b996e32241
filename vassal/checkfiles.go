package vassal

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// CheckFiles validates the vassal files named by paths (directories stand for
// their *.ini files) and prints the planned setup of each valid one to
// stdout and each error to stderr. It reports whether every file is valid.
func CheckFiles(paths []string, stdout, stderr io.Writer) bool {
	ok := true
	for _, file := range expandPaths(paths, stderr, &ok) {
		cfg, err := ParseFile(file, ParseOptions{})
		if err != nil {
			fmt.Fprintf(stderr, "%v\n", err)
			ok = false
			continue
		}
		// A reload reads the file again with if-reload true, so the
		// blocks a first start skips must be valid too.
		reloadCfg, err := ParseFile(file, ParseOptions{Reload: true})
		if err != nil {
			fmt.Fprintf(stderr, "%v (when the vassal is reloaded)\n", err)
			ok = false
			continue
		}
		printPlan(stdout, cfg, reloadCfg)
	}
	return ok
}

func expandPaths(paths []string, stderr io.Writer, ok *bool) []string {
	var files []string
	for _, path := range paths {
		info, err := os.Stat(path)
		if err != nil {
			fmt.Fprintf(stderr, "checking %q: %v\n", path, err)
			*ok = false
			continue
		}
		if !info.IsDir() {
			files = append(files, path)
			continue
		}
		matches, err := filepath.Glob(filepath.Join(path, "*.ini"))
		if err != nil {
			fmt.Fprintf(stderr, "listing %q: %v\n", path, err)
			*ok = false
			continue
		}
		if len(matches) == 0 {
			fmt.Fprintf(stderr, "%s: no vassal files (*.ini) to check\n", path)
			*ok = false
			continue
		}
		sort.Strings(matches)
		files = append(files, matches...)
	}
	return files
}

func printPlan(w io.Writer, cfg, reloadCfg *Config) {
	fmt.Fprintf(w, "%s: valid\n", cfg.File)

	namespaces := "fs,pid"
	if len(cfg.Unshare) > 0 {
		namespaces += "," + strings.Join(cfg.Unshare, ",")
	}
	fmt.Fprintf(w, "  namespaces:      %s\n", namespaces)

	if cfg.UID != "" || cfg.GID != "" {
		uid, gid := fmt.Sprintf("uid=%q", cfg.UID), fmt.Sprintf("gid=%q", cfg.GID)
		if cfg.UID == "" {
			uid = "uid=0"
		}
		if cfg.GID == "" {
			gid = "the user's primary group"
		}
		fmt.Fprintf(w, "  user:            %s, %s (looked up in the vassal's root at start)\n", uid, gid)
	} else {
		fmt.Fprintf(w, "  user:            root\n")
	}

	printPhase(w, cfg, PhasePreJail)
	if cfg.PivotRoot != nil {
		fmt.Fprintf(w, "  pivot_root:      line %d: into %s, old root at %s\n", cfg.PivotRoot.Line, cfg.PivotRoot.New, cfg.PivotRoot.Old)
	}
	printPhase(w, cfg, PhaseAsRoot)
	printPhase(w, cfg, PhaseAsUser)

	switch {
	case cfg.Exec != nil:
		fmt.Fprintf(w, "  program:         line %d: %s\n", cfg.Exec.Line, quoteArgv(cfg.Exec.Argv))
	default:
		fmt.Fprintf(w, "  program:         %s --ini fd://3 with %d uWSGI option(s)\n", uwsgiProgram, len(cfg.UWSGIOptions))
	}
	if cfg.Chdir != "" {
		fmt.Fprintf(w, "  chdir:           %s\n", cfg.Chdir)
	}
	for _, env := range cfg.Env {
		fmt.Fprintf(w, "  env:             %s\n", env)
	}
	for _, check := range cfg.MountpointChecks {
		fmt.Fprintf(w, "  check:           line %d: %s every %v, timeout %v\n", check.Line, check.Path, cfg.CheckInterval, cfg.CheckTimeout)
	}
	fmt.Fprintf(w, "  stop-timeout:    %v\n", cfg.StopTimeout)
	fmt.Fprintf(w, "  reload:          %s\n", describeReload(cfg, reloadCfg))

	printPhase(w, cfg, PhaseAsUserAtexit)
	printPhase(w, cfg, PhaseAsRootAtexit)
}

func printPhase(w io.Writer, cfg *Config, phase Phase) {
	for _, step := range cfg.Steps[phase] {
		if step.Command != nil {
			fmt.Fprintf(w, "  %-16s line %d: exec %s\n", string(phase)+":", step.Line(), quoteArgv(step.Argv()))
		} else {
			fmt.Fprintf(w, "  %-16s line %d: hook %s\n", string(phase)+":", step.Line(), step.Text())
		}
	}
}

// describeReload describes what a reload runs. A reload keeps the namespaces
// and mounts, runs the as-user phase of the file read with if-reload true, and
// starts the program again. Pre-jail, as-root and atexit steps do not run.
// The description names the as-user and program lines that only a first
// start or only a reload runs.
func describeReload(cfg, reloadCfg *Config) string {
	startLines := stepLines(cfg)
	reloadLines := stepLines(reloadCfg)

	var asUser, skipped, added []int
	for _, step := range reloadCfg.Steps[PhaseAsUser] {
		asUser = append(asUser, step.Line())
	}
	for line := range startLines {
		if !reloadLines[line] {
			skipped = append(skipped, line)
		}
	}
	for line := range reloadLines {
		if !startLines[line] {
			added = append(added, line)
		}
	}
	sort.Ints(skipped)
	sort.Ints(added)

	parts := []string{"keeps the namespaces and mounts"}
	if len(asUser) > 0 {
		parts = append(parts, "runs as-user "+joinLines(asUser))
	}
	if reloadCfg.Exec != nil {
		parts = append(parts, fmt.Sprintf("starts the program of line %d", reloadCfg.Exec.Line))
	} else {
		parts = append(parts, "starts "+uwsgiProgram)
	}
	if len(skipped) > 0 {
		parts = append(parts, "skips "+joinLines(skipped)+" (if-not-reload)")
	}
	if len(added) > 0 {
		parts = append(parts, "adds "+joinLines(added)+" (if-reload)")
	}
	return strings.Join(parts, "; ")
}

// stepLines returns the lines of the as-user steps and of the program in
// cfg, which are the parts of a vassal that a reload runs again.
func stepLines(cfg *Config) map[int]bool {
	lines := make(map[int]bool)
	for _, step := range cfg.Steps[PhaseAsUser] {
		lines[step.Line()] = true
	}
	if cfg.Exec != nil {
		lines[cfg.Exec.Line] = true
	}
	return lines
}

// joinLines renders line numbers as "line 5" or "lines 5, 7".
func joinLines(lines []int) string {
	words := make([]string, len(lines))
	for i, line := range lines {
		words[i] = fmt.Sprint(line)
	}
	if len(lines) == 1 {
		return "line " + words[0]
	}
	return "lines " + strings.Join(words, ", ")
}

// quoteArgv renders argv so that each word's boundaries are visible.
func quoteArgv(argv []string) string {
	words := make([]string, len(argv))
	for i, arg := range argv {
		if arg == "" || strings.ContainsAny(arg, " \t'\"\\") {
			words[i] = fmt.Sprintf("%q", arg)
		} else {
			words[i] = arg
		}
	}
	return strings.Join(words, " ")
}
