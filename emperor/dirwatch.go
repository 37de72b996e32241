package emperor

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// dirEvent is one inotify event on the vassal directory.
type dirEvent struct {
	name     string
	mask     uint32
	overflow bool // the kernel dropped events: rescan everything
	gone     bool // the directory itself was removed or moved
}

const watchMask = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO |
	unix.IN_CLOSE_WRITE | unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR

// dirWatch is an inotify watch on the vassal directory. The kernel queues
// its events from watchDir on, and start begins reading them.
type dirWatch struct {
	fd   int
	file *os.File // nil until start
}

// watchDir starts an inotify watch on dir.
func watchDir(dir string) (*dirWatch, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("creating an inotify instance (check fs.inotify.max_user_instances): %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, watchMask); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("watching vassal directory %q: %w", dir, err)
	}
	return &dirWatch{fd: fd}, nil
}

// start sends the watch's events, those queued since watchDir included, to
// the returned channel. The inotify descriptor is non-blocking, so the
// reading goroutine parks in the runtime's poller and costs no thread while
// idle.
func (w *dirWatch) start() <-chan dirEvent {
	w.file = os.NewFile(uintptr(w.fd), "inotify")
	events := make(chan dirEvent, 64)
	go readInotify(w.file, events)
	return events
}

// close ends the watch, and the reading goroutine with it.
func (w *dirWatch) close() {
	if w.file == nil {
		unix.Close(w.fd)
		return
	}
	w.file.Close()
}

func readInotify(file *os.File, events chan<- dirEvent) {
	defer close(events)
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := file.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				events <- dirEvent{overflow: true}
			}
			return
		}

		for offset := 0; offset+unix.SizeofInotifyEvent <= n; {
			raw := (*unix.InotifyEvent)(unsafe.Pointer(&buf[offset]))
			nameBytes := buf[offset+unix.SizeofInotifyEvent : offset+unix.SizeofInotifyEvent+int(raw.Len)]
			offset += unix.SizeofInotifyEvent + int(raw.Len)

			name := string(nameBytes)
			for len(name) > 0 && name[len(name)-1] == 0 {
				name = name[:len(name)-1]
			}

			event := dirEvent{name: name, mask: raw.Mask}
			switch {
			case raw.Mask&unix.IN_Q_OVERFLOW != 0:
				event.overflow = true
			case raw.Mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF|unix.IN_IGNORED) != 0:
				event.gone = true
			}
			events <- event
		}
	}
}
