package initd

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseBootParams(t *testing.T) {
	cmdline := `console=ttyS0 panic=-1 fief.modules=fuse,loop fief.exec="busybox sh -c 'exit 3'" fief.on-exit=halt fief.exit-port=0xf4` + "\n"
	got, err := parseBootParams(cmdline)
	if err != nil {
		t.Fatalf("parseBootParams: %v", err)
	}
	want := bootParams{
		modules:  []string{"fuse", "loop"},
		exec:     "busybox sh -c 'exit 3'",
		onExit:   "halt",
		exitPort: 0xf4,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseBootParams = %+v, want %+v", got, want)
	}
}

func TestParseBootParamsDefaults(t *testing.T) {
	got, err := parseBootParams("console=ttyS0 quiet")
	if err != nil {
		t.Fatalf("parseBootParams: %v", err)
	}
	if got.onExit != "poweroff" || got.exitPort != 0 || got.exec != "" || len(got.modules) != 0 {
		t.Errorf("parseBootParams defaults = %+v", got)
	}
}

func TestParseBootParamsErrors(t *testing.T) {
	for cmdline, want := range map[string]string{
		"fief.on-exit=explode": `invalid fief.on-exit="explode"`,
		"fief.exit-port=zero":  `invalid fief.exit-port="zero"`,
	} {
		_, err := parseBootParams(cmdline)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseBootParams(%q) error = %v, want it to contain %q", cmdline, err, want)
		}
	}
}

func TestModuleLoadOrder(t *testing.T) {
	dir := t.TempDir()
	dep := "kernel/a/top.ko: kernel/b/mid-dep.ko.xz kernel/c/leaf.ko\n" +
		"kernel/b/mid-dep.ko.xz: kernel/c/leaf.ko\n" +
		"kernel/c/leaf.ko:\n"
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	deps, err := parseModulesDep(filepath.Join(dir, "modules.dep"))
	if err != nil {
		t.Fatalf("parseModulesDep: %v", err)
	}
	if got := deps["mid_dep"].path; got != "kernel/b/mid-dep.ko.xz" {
		t.Errorf("path of mid_dep = %q", got)
	}

	var order []string
	loader := &moduleLoader{
		log:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		dir:    dir,
		deps:   deps,
		loaded: map[string]bool{},
		insert: func(name, path string) error {
			order = append(order, name+" "+filepath.Base(path))
			return nil
		},
	}
	if err := loader.load("top", nil); err != nil {
		t.Fatalf("load(top): %v", err)
	}
	if err := loader.load("mid-dep", nil); err != nil {
		t.Fatalf("load(mid-dep) again: %v", err)
	}
	want := []string{"leaf leaf.ko", "mid_dep mid-dep.ko.xz", "top top.ko"}
	if !reflect.DeepEqual(order, want) {
		t.Errorf("insert order = %v, want %v (each module once, dependencies first)", order, want)
	}

	if err := loader.load("nosuchmodule", nil); err == nil || !strings.Contains(err.Error(), `kernel module "nosuchmodule" not found`) {
		t.Errorf("load(nosuchmodule) error = %v", err)
	}
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/fs/fuse/fuse.ko":   "fuse",
		"nf-conntrack":             "nf_conntrack",
		"kernel/x/zstd-mod.ko.zst": "zstd_mod",
		"kernel/x/legacy.ko.gz":    "legacy",
	} {
		if got := moduleName(in); got != want {
			t.Errorf("moduleName(%q) = %q, want %q", in, got, want)
		}
	}
}
