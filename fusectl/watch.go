// Package fusectl watches the FUSE filesystems of a vassal. It waits for a
// daemon's mount to appear and probes mounts without blocking the caller. It
// aborts hung connections through /sys/fs/fuse/connections, and it gives a
// vassal's user access to /dev/fuse inside the vassal's mount namespace.
package fusectl

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// MountWatcher reports every change of a mount namespace's mount table.
//
// /proc/PID/mountinfo signals POLLPRI|POLLERR after each mount and unmount in
// that namespace. The watcher polls it on its own goroutine, so the blocking
// poll(2) ties up one OS thread and never the caller. The kernel builds
// mountinfo without sending requests to FUSE daemons, so a hung daemon cannot
// stall it.
type MountWatcher struct {
	mu          sync.Mutex
	subscribers map[chan struct{}]struct{}

	file      *os.File
	stopRead  *os.File
	stopWrite *os.File
	closeOnce sync.Once
	done      chan struct{}
}

// WatchMounts starts watching the mount table file, usually an open
// /proc/self/mountinfo. The watcher owns file and closes it. Open file
// without O_NONBLOCK and not with os.Open, because both register it with the
// runtime's epoll, whose own poll of the file can take a change first.
func WatchMounts(file *os.File) (*MountWatcher, error) {
	// The pipe wakes the poll when the watcher is closed.
	stopRead, stopWrite, err := os.Pipe()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("creating the stop pipe of the mount watcher: %w", err)
	}

	w := &MountWatcher{
		subscribers: make(map[chan struct{}]struct{}),
		file:        file,
		stopRead:    stopRead,
		stopWrite:   stopWrite,
		done:        make(chan struct{}),
	}
	go w.loop()
	return w, nil
}

func (w *MountWatcher) loop() {
	defer close(w.done)

	// The file is never read. poll(2) alone reports each change, because
	// the kernel stores the namespace's event count in the open file at
	// open(2) and again with each change it reports.
	// TestWatchMountsReportsChanges checks this and passed on Linux 6.18.
	fds := []unix.PollFd{
		{Fd: int32(w.file.Fd()), Events: unix.POLLPRI},
		{Fd: int32(w.stopRead.Fd()), Events: unix.POLLIN},
	}
	for {
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || fds[1].Revents != 0 {
			return
		}
		if fds[0].Revents&(unix.POLLPRI|unix.POLLERR) != 0 {
			w.broadcast()
		}
	}
}

// Subscribe returns a channel that receives a value after one or more
// changes; changes that happen while a value is pending are merged into it.
// Call the returned function to unsubscribe.
func (w *MountWatcher) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	w.mu.Lock()
	w.subscribers[ch] = struct{}{}
	w.mu.Unlock()
	return ch, func() {
		w.mu.Lock()
		delete(w.subscribers, ch)
		w.mu.Unlock()
	}
}

func (w *MountWatcher) broadcast() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for ch := range w.subscribers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// Close stops the watcher and waits for its goroutine to end.
func (w *MountWatcher) Close() {
	w.closeOnce.Do(func() {
		w.stopWrite.Close()
		<-w.done
		w.stopRead.Close()
		w.file.Close()
	})
}
