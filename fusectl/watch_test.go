package fusectl

import (
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestWatchMountsReportsChanges mounts and unmounts a tmpfs in a private mount
// namespace of one locked thread and expects one report for each, although
// the watcher never reads the mount table file.
func TestWatchMountsReportsChanges(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("must run as root: the test mounts a tmpfs in a new mount namespace")
	}
	dir := t.TempDir()
	failure := make(chan string, 1)
	go func() {
		// The thread stays locked, so the runtime ends it, and its mount
		// namespace, when this goroutine returns.
		runtime.LockOSThread()
		failure <- watchOneMount(dir)
	}()
	if msg := <-failure; msg != "" {
		t.Fatal(msg)
	}
}

// watchOneMount runs on a locked thread. It returns "" on success, else the
// failure.
func watchOneMount(dir string) string {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return "unshare(CLONE_NEWNS): " + err.Error()
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return "making / private in the new namespace: " + err.Error()
	}
	// os.Open would register the descriptor with the runtime's epoll,
	// whose own poll of the file could take a change before the watcher.
	fd, err := unix.Open("/proc/thread-self/mountinfo", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "opening /proc/thread-self/mountinfo: " + err.Error()
	}
	watcher, err := WatchMounts(os.NewFile(uintptr(fd), "mountinfo"))
	if err != nil {
		return "WatchMounts: " + err.Error()
	}
	defer watcher.Close()
	changes, unsubscribe := watcher.Subscribe()
	defer unsubscribe()

	time.Sleep(50 * time.Millisecond)
	select {
	case <-changes:
		return "expected no report before any mount, got one"
	default:
	}

	if err := unix.Mount("fief-test", dir, "tmpfs", 0, "size=64k"); err != nil {
		return "mounting a tmpfs on " + dir + ": " + err.Error()
	}
	select {
	case <-changes:
	case <-time.After(5 * time.Second):
		unix.Unmount(dir, unix.MNT_DETACH)
		return "expected a report within 5 s of the mount, got none"
	}

	if err := unix.Unmount(dir, 0); err != nil {
		return "unmounting " + dir + ": " + err.Error()
	}
	select {
	case <-changes:
	case <-time.After(5 * time.Second):
		return "expected a report within 5 s of the unmount, got none"
	}
	return ""
}
