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

// watchDir starts an inotify watch on dir and sends its events to the
// returned channel. The inotify descriptor is non-blocking, so the reading
// goroutine parks in the runtime's poller and costs no thread while idle.
func watchDir(dir string) (<-chan dirEvent, func(), error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, nil, fmt.Errorf("creating an inotify instance (check fs.inotify.max_user_instances): %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, watchMask); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("watching vassal directory %q: %w", dir, err)
	}

	file := os.NewFile(uintptr(fd), "inotify")
	events := make(chan dirEvent, 64)
	go readInotify(file, events)
	return events, func() { file.Close() }, nil
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
