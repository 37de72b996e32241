package emperor

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// maxStatusLine is the longest status line kept, the default maximum of a
// bufio.Scanner. A longer line is dropped with a warning.
const maxStatusLine = 64 * 1024

// statusReader reads the status pipes of every vassal init on one goroutine
// through one epoll instance. A goroutine per pipe would cost each idle
// vassal a parked goroutine and its stack in the emperor. The goroutine
// blocks in epoll_wait(2), which ties up one OS thread and no CPU time.
type statusReader struct {
	epfd   int
	stopFD int // an eventfd that ends the loop when written
	log    *slog.Logger

	mu      sync.Mutex
	streams map[int]*statusStream // by the read end's descriptor

	started bool // set by start
	done    chan struct{}
}

// statusStream is the read end of one vassal init's status pipe.
type statusStream struct {
	fd      int
	s       *supervisor
	pid     int
	partial []byte // the start of a line whose newline has not come yet
	// skipping is set while the rest of a dropped long line arrives.
	skipping bool
}

func newStatusReader(log *slog.Logger) (*statusReader, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("creating the epoll instance of the status pipes: %w", err)
	}
	stopFD, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("creating the stop eventfd of the status pipes: %w", err)
	}
	event := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(stopFD)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, stopFD, &event); err != nil {
		unix.Close(stopFD)
		unix.Close(epfd)
		return nil, fmt.Errorf("watching the stop eventfd of the status pipes: %w", err)
	}
	return &statusReader{epfd: epfd, stopFD: stopFD, log: log, streams: make(map[int]*statusStream), done: make(chan struct{})}, nil
}

// start runs the loop that reads the pipes on its own goroutine. Lines
// written before it wait in their pipes. The emperor calls start and close
// from one goroutine.
func (r *statusReader) start() {
	r.started = true
	go r.loop()
}

// newStatusPipe returns a status pipe: the read end, a descriptor that the
// reader takes over in watch, and the write end for the vassal init. Only
// the read end is non-blocking, so the init writes to a blocking pipe.
func newStatusPipe() (int, *os.File, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		return -1, nil, fmt.Errorf("creating the status pipe: %w", err)
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return -1, nil, fmt.Errorf("making the status pipe's read end non-blocking: %w", err)
	}
	return fds[0], os.NewFile(uintptr(fds[1]), "status"), nil
}

// watch reads the status lines of the vassal init pid from fd, which the
// reader closes once the init has closed the write end. On an error it
// closes fd itself.
func (r *statusReader) watch(fd int, s *supervisor, pid int) error {
	r.mu.Lock()
	r.streams[fd] = &statusStream{fd: fd, s: s, pid: pid}
	r.mu.Unlock()

	event := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd)}
	if err := unix.EpollCtl(r.epfd, unix.EPOLL_CTL_ADD, fd, &event); err != nil {
		r.mu.Lock()
		delete(r.streams, fd)
		r.mu.Unlock()
		unix.Close(fd)
		return fmt.Errorf("watching the status pipe: %w", err)
	}
	return nil
}

func (r *statusReader) loop() {
	defer close(r.done)
	events := make([]unix.EpollEvent, 32)
	buf := make([]byte, 4096)
	for {
		n, err := unix.EpollWait(r.epfd, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			r.log.Error("waiting for status pipe events failed, so no vassal status is read until the emperor restarts", "pid", os.Getpid(), "err", err)
			return
		}
		for _, event := range events[:n] {
			fd := int(event.Fd)
			if fd == r.stopFD {
				return
			}
			r.mu.Lock()
			stream := r.streams[fd]
			r.mu.Unlock()
			if stream != nil && !stream.drain(buf) {
				r.forget(stream)
			}
		}
	}
}

// drain reads what the pipe contains and handles each complete line. It
// returns false once the write end is closed or the read fails.
func (st *statusStream) drain(buf []byte) bool {
	for {
		n, err := unix.Read(st.fd, buf)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return true
		case err != nil:
			st.s.log().Warn("reading the status pipe of the vassal init failed", "pid", st.pid, "err", err)
			return false
		case n == 0:
			// The init exited. Like bufio.Scanner, handle a last line
			// without a newline.
			if len(st.partial) > 0 {
				st.s.handleStatusLine(string(bytes.TrimSuffix(st.partial, []byte("\r"))), st.pid)
			}
			return false
		}
		st.split(buf[:n])
	}
}

// split handles each complete line of data and keeps the rest. A line
// longer than maxStatusLine is dropped with a warning, up to its newline.
func (st *statusStream) split(data []byte) {
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		line := data[:i]
		data = data[i+1:]
		switch {
		case st.skipping:
			st.skipping = false
		case len(st.partial)+len(line) > maxStatusLine:
			st.warnLong()
			st.partial = st.partial[:0]
		default:
			if len(st.partial) > 0 {
				line = append(st.partial, line...)
				st.partial = st.partial[:0]
			}
			st.s.handleStatusLine(string(bytes.TrimSuffix(line, []byte("\r"))), st.pid)
		}
	}
	if st.skipping {
		return
	}
	if len(st.partial)+len(data) > maxStatusLine {
		st.warnLong()
		st.partial = nil
		st.skipping = true
		return
	}
	st.partial = append(st.partial, data...)
}

func (st *statusStream) warnLong() {
	st.s.log().Warn("dropped a status line of the vassal init longer than the maximum", "pid", st.pid, "max_bytes", maxStatusLine)
}

// forget stops watching a stream and closes its descriptor.
func (r *statusReader) forget(stream *statusStream) {
	_ = unix.EpollCtl(r.epfd, unix.EPOLL_CTL_DEL, stream.fd, nil)
	r.mu.Lock()
	delete(r.streams, stream.fd)
	r.mu.Unlock()
	unix.Close(stream.fd)
}

// close ends the loop and closes every descriptor still watched.
func (r *statusReader) close() {
	// An eventfd takes a 64-bit counter increment in native byte order.
	var increment [8]byte
	binary.NativeEndian.PutUint64(increment[:], 1)
	_, _ = unix.Write(r.stopFD, increment[:])
	if r.started {
		<-r.done
	}

	r.mu.Lock()
	for fd := range r.streams {
		unix.Close(fd)
	}
	r.streams = nil
	r.mu.Unlock()
	unix.Close(r.stopFD)
	unix.Close(r.epfd)
}
