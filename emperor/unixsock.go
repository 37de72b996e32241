package emperor

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// The status socket uses raw system calls rather than package net, which
// would add about 0.7 MB to the binary. Nearly all of the binary is resident
// in every emperor and vassal init, so that would show in their RSS.

// unixListener is a listening unix stream socket served by the runtime's
// poller.
type unixListener struct {
	file *os.File
}

func listenUnix(path string) (*unixListener, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.Listen(fd, 16); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &unixListener{file: os.NewFile(uintptr(fd), path)}, nil
}

// accept waits for the next connection and returns it as a blocking file.
func (l *unixListener) accept() (*os.File, error) {
	raw, err := l.file.SyscallConn()
	if err != nil {
		return nil, err
	}
	var conn int
	var acceptErr error
	err = raw.Read(func(fd uintptr) bool {
		conn, _, acceptErr = unix.Accept4(int(fd), unix.SOCK_CLOEXEC)
		return !errors.Is(acceptErr, unix.EAGAIN)
	})
	if err != nil {
		return nil, err
	}
	if acceptErr != nil {
		return nil, acceptErr
	}
	// A client that stops reading must not hold the accepting goroutine.
	timeout := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
	_ = unix.SetsockoptTimeval(conn, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &timeout)
	return os.NewFile(uintptr(conn), "status connection"), nil
}

func (l *unixListener) close() error {
	return l.file.Close()
}

// dialUnix connects to the unix stream socket at path, with a receive
// timeout.
func dialUnix(path string, timeout time.Duration) (*os.File, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("setting the receive timeout: %w", err)
	}
	return os.NewFile(uintptr(fd), path), nil
}
