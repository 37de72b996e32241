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
		printPlan(stdout, cfg)
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

func printPlan(w io.Writer, cfg *Config) {
	fmt.Fprintf(w, "%s: valid\n", cfg.File)

	namespaces := "fs,pid"
	if len(cfg.Unshare) > 0 {
		namespaces += "," + strings.Join(cfg.Unshare, ",")
	}
	fmt.Fprintf(w, "  namespaces:      %s\n", namespaces)

	if cfg.UID != "" || cfg.GID != "" {
		fmt.Fprintf(w, "  user:            uid=%q gid=%q (looked up in the vassal's root at start)\n", cfg.UID, cfg.GID)
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
