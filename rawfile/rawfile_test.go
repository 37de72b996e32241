package rawfile

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestReadFileSizes(t *testing.T) {
	dir := t.TempDir()
	// Sizes around the first buffer of 512 bytes and its growth.
	for _, size := range []int{0, 1, 511, 512, 513, 4096, 100_000} {
		content := bytes.Repeat([]byte("0123456789abcdef"), size/16+1)[:size]
		path := filepath.Join(dir, fmt.Sprintf("file-%d", size))
		if err := os.WriteFile(path, content, 0o644); err != nil {
			t.Fatalf("writing %s: %v", path, err)
		}
		got, err := ReadFile(path)
		if err != nil {
			t.Errorf("ReadFile of %d bytes failed: %v", size, err)
			continue
		}
		if !bytes.Equal(got, content) {
			t.Errorf("ReadFile of %d bytes returned %d bytes that differ from the file", size, len(got))
		}
	}
}

func TestReadFileProc(t *testing.T) {
	// /proc files report size 0, so only reading to the end finds it.
	got, err := ReadFile("/proc/self/cmdline")
	if err != nil {
		t.Fatalf("ReadFile(/proc/self/cmdline) failed: %v", err)
	}
	if len(got) == 0 {
		t.Error("expected the test's own command line, got nothing")
	}
}

func TestReadFileMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing")
	_, err := ReadFile(path)
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("expected an error that is os.ErrNotExist, got %v", err)
	}
	var pathErr *os.PathError
	if !errors.As(err, &pathErr) || pathErr.Path != path {
		t.Errorf("expected an *os.PathError for %s, got %#v", path, err)
	}
}

func TestReadDirNamesSorted(t *testing.T) {
	dir := t.TempDir()
	// Enough long names to need several getdents calls of 8 KiB.
	var want []string
	for i := range 300 {
		name := fmt.Sprintf("vassal-%03d-%s.ini", (i*7919)%300, bytes.Repeat([]byte("x"), 40))
		want = append(want, name)
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
			t.Fatalf("writing %s: %v", name, err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "subdir"), 0o755); err != nil {
		t.Fatalf("creating subdir: %v", err)
	}
	want = append(want, "subdir")
	slices.Sort(want)

	got, err := ReadDirNames(dir)
	if err != nil {
		t.Fatalf("ReadDirNames failed: %v", err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("expected the %d names sorted, without . and .., got %d names: %q", len(want), len(got), got)
	}
}

func TestReadDirNamesEmpty(t *testing.T) {
	got, err := ReadDirNames(t.TempDir())
	if err != nil {
		t.Fatalf("ReadDirNames failed: %v", err)
	}
	if len(got) != 0 {
		t.Errorf("expected no names in an empty directory, got %q", got)
	}
}

func TestReadDirNamesErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadDirNames(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("expected os.ErrNotExist for a missing directory, got %v", err)
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatalf("writing %s: %v", file, err)
	}
	var pathErr *os.PathError
	if _, err := ReadDirNames(file); !errors.As(err, &pathErr) {
		t.Errorf("expected an *os.PathError for a file that is not a directory, got %v", err)
	}
}
