package initd

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// moduleInitCompressedFile makes finit_module(2) decompress the module
// itself. Kernels without CONFIG_MODULE_DECOMPRESS reject it.
const moduleInitCompressedFile = 4

// moduleDeps maps a module name to its file and dependencies, from
// modules.dep.
type moduleDeps map[string]moduleEntry

type moduleEntry struct {
	path string   // relative to the modules directory
	deps []string // module names, as listed
}

// moduleName turns a path or name such as "kernel/fs/fuse/fuse.ko" or
// "nf-conntrack" into the kernel's spelling, "fuse" or "nf_conntrack".
func moduleName(path string) string {
	name := filepath.Base(path)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		name = strings.TrimSuffix(name, ext)
	}
	name = strings.TrimSuffix(name, ".ko")
	return strings.ReplaceAll(name, "-", "_")
}

// parseModulesDep reads a modules.dep file: "path.ko: dep1.ko dep2.ko".
func parseModulesDep(path string) (moduleDeps, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()

	deps := make(moduleDeps)
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		modulePath, list, ok := strings.Cut(scanner.Text(), ":")
		if !ok {
			continue
		}
		entry := moduleEntry{path: strings.TrimSpace(modulePath)}
		for _, dep := range strings.Fields(list) {
			entry.deps = append(entry.deps, moduleName(dep))
		}
		deps[moduleName(entry.path)] = entry
	}
	return deps, scanner.Err()
}

// loadModules loads each named module from base/RELEASE, its dependencies
// first. A module that is built in or already loaded counts as loaded.
func loadModules(log *slog.Logger, base string, names []string) error {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return fmt.Errorf("reading the kernel release: %w", err)
	}
	dir := filepath.Join(base, unix.ByteSliceToString(uts.Release[:]))
	deps, err := parseModulesDep(filepath.Join(dir, "modules.dep"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("reading the module list: %w", err)
	}

	loader := &moduleLoader{log: log, dir: dir, deps: deps, loaded: make(map[string]bool), insert: insertModule}
	for _, name := range names {
		if err := loader.load(name, nil); err != nil {
			return err
		}
	}
	return nil
}

type moduleLoader struct {
	log    *slog.Logger
	dir    string
	deps   moduleDeps
	loaded map[string]bool
	// insert loads one module file into the kernel.
	insert func(name, path string) error
}

func (l *moduleLoader) load(name string, chain []string) error {
	name = moduleName(name)
	if l.loaded[name] {
		return nil
	}
	for _, seen := range chain {
		if seen == name {
			return fmt.Errorf("module %q depends on itself through %s", name, strings.Join(chain, " -> "))
		}
	}

	entry, ok := l.deps[name]
	if !ok {
		// Built into the kernel, or loaded before fief started.
		if _, err := os.Stat(filepath.Join("/sys/module", name)); err == nil {
			l.loaded[name] = true
			return nil
		}
		return fmt.Errorf("kernel module %q not found in %s/modules.dep and not built into the kernel; check the name on fief.modules= and that the initramfs contains it", name, l.dir)
	}

	for _, dep := range entry.deps {
		if err := l.load(dep, append(chain, name)); err != nil {
			return err
		}
	}

	if err := l.insert(name, filepath.Join(l.dir, entry.path)); err != nil {
		return err
	}
	l.loaded[name] = true
	l.log.Info("loaded kernel module", "module", name)
	return nil
}

// insertModule loads the module file at path with finit_module(2).
func insertModule(name, path string) error {
	file, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("opening kernel module %q: %w", name, err)
	}
	defer file.Close()

	flags := 0
	compressed := strings.HasSuffix(path, ".xz") || strings.HasSuffix(path, ".zst") || strings.HasSuffix(path, ".gz")
	if compressed {
		flags = moduleInitCompressedFile
	}
	err = unix.FinitModule(int(file.Fd()), "", flags)
	switch {
	case err == nil, errors.Is(err, unix.EEXIST):
		return nil
	case compressed:
		return fmt.Errorf("loading kernel module %q from %s: %w; this kernel cannot decompress modules, so ship it uncompressed (fief mkinitramfs does)", name, path, err)
	default:
		return fmt.Errorf("loading kernel module %q from %s: %w", name, path, err)
	}
}
