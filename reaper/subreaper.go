package reaper

import (
	"log/slog"
	"os"

	"golang.org/x/sys/unix"
)

// BecomeSubreaper makes this process the reaper of its orphaned descendants
// when it is not pid 1, and warns that it is not pid 1. Orphans of other
// process trees still go to the real pid 1.
func BecomeSubreaper(log *slog.Logger) {
	if os.Getpid() == 1 {
		return
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		log.Warn("not pid 1 and becoming a child subreaper failed; orphans go to the real pid 1", "pid", os.Getpid(), "err", err)
		return
	}
	log.Warn("not running as pid 1; registered as a child subreaper so orphans of fief's children are reaped here", "pid", os.Getpid())
}
