package fusectl

import (
	"errors"
	"fmt"

	"fief/mount"
)

// AbortAll aborts the connection of every FUSE mount in infos and returns
// the ids it aborted. It is the last resort for a process that SIGKILL
// cannot end because it waits on a request a hung daemon has already read.
func (c *Control) AbortAll(infos []mount.Info) ([]uint32, error) {
	var aborted []uint32
	var errs []error
	for _, info := range infos {
		if !info.IsFUSE() {
			continue
		}
		id := info.ConnectionID()
		if err := c.Abort(id); err != nil {
			errs = append(errs, fmt.Errorf("connection %d on %q: %w", id, info.MountPoint, err))
			continue
		}
		aborted = append(aborted, id)
	}
	return aborted, errors.Join(errs...)
}
