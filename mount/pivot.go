package mount

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// PivotRoot makes newRoot the root of this mount namespace and leaves the
// old root mounted at putOld, which must lie inside newRoot. newRoot must be
// a mount point whose parent mount is not shared; [BindSelf] makes it one.
// The current directory becomes the new root.
func PivotRoot(newRoot, putOld string) error {
	if err := unix.PivotRoot(newRoot, putOld); err != nil {
		return &pivotError{newRoot: newRoot, putOld: putOld, err: err}
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("changing to the new root after pivot_root: %w", err)
	}
	return nil
}

type pivotError struct {
	newRoot, putOld string
	err             error
}

func (e *pivotError) Error() string {
	hint := ""
	switch e.err {
	case unix.EINVAL:
		hint = " (the current root may have no parent mount, as an initramfs root does, or a mount involved is shared)"
	case unix.EBUSY:
		hint = " (the new root or the old root's place is on the current root's mount)"
	}
	return fmt.Sprintf("pivot_root new_root=%q put_old=%q: %v%s", e.newRoot, e.putOld, e.err, hint)
}

func (e *pivotError) Unwrap() error { return e.err }

// BindSelf bind-mounts dir onto itself, recursively, so that it becomes a
// mount point.
func BindSelf(dir string) error {
	return Mount(dir, dir, "", unix.MS_BIND|unix.MS_REC, "")
}
