// Command initchild is the program that the container init benchmark runs
// under tini and under "fief --". Each mode does one job and reports
// CLOCK_MONOTONIC timestamps, which the harness compares with its own
// readings of the same clock:
//
//	initchild orphans -n N -program PATH
//	    Start a spawner process that runs PATH N times without waiting for
//	    any of them and then exits, so the N processes become orphans of the
//	    init. Wait until the init has reaped every one of them, then print
//	    one JSON object and exit 0.
//	initchild signal
//	    Write 8 zero bytes to stdout once the SIGUSR1 handler is installed,
//	    then write the time of each SIGUSR1 as 8 bytes (nanoseconds, little
//	    endian). Exit 0 when stdin reaches end of file.
//	initchild exit
//	    Write 8 zero bytes to stdout, read one byte from stdin, write the
//	    current time as 8 bytes and exit 0.
//
// The spawner is this binary with the hidden mode "spawn".
package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// maxOrphans keeps the pids of one run below the kernel's default pid_max
// of 32768, so no pid is reused while the orphan mode checks for it.
const maxOrphans = 30000

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: initchild orphans|signal|exit [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "orphans":
		err = runOrphans(os.Args[2:])
	case "spawn":
		err = runSpawn(os.Args[2:])
	case "signal":
		err = runSignal()
	case "exit":
		err = runExit()
	default:
		err = fmt.Errorf("unknown mode %q: use orphans, signal or exit", os.Args[1])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "initchild %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// monotonic returns CLOCK_MONOTONIC in nanoseconds. Every process on the
// machine reads the same clock unless it runs in a time namespace, which the
// benchmark does not create.
func monotonic() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err)
	}
	return ts.Nano()
}

func writeTime(w io.Writer, ns int64) error {
	var buf [8]byte
	binary.LittleEndian.PutUint64(buf[:], uint64(ns))
	_, err := w.Write(buf[:])
	return err
}

// orphanReport is the JSON object that the orphans mode prints.
type orphanReport struct {
	Orphans   int   `json:"orphans"`
	SpawnedAt int64 `json:"spawned_at"` // the spawner's last timestamp, just before it exited
	ReapedAt  int64 `json:"reaped_at"`  // when no orphan was left, not even as a zombie
}

func orphanFlags(args []string) (int, string, error) {
	fs := flag.NewFlagSet("initchild", flag.ContinueOnError)
	n := fs.Int("n", 10000, "number of orphans")
	program := fs.String("program", "/bin/true", "program each orphan runs")
	if err := fs.Parse(args); err != nil {
		return 0, "", err
	}
	if *n < 1 || *n > maxOrphans {
		return 0, "", fmt.Errorf("invalid -n %d: use 1 to %d", *n, maxOrphans)
	}
	return *n, *program, nil
}

// runOrphans starts the spawner, reads the pids of its children and the time
// of its exit, and polls until every child is reaped.
func runOrphans(args []string) error {
	n, program, err := orphanFlags(args)
	if err != nil {
		return err
	}
	reader, writer, err := os.Pipe()
	if err != nil {
		return err
	}
	spawner := exec.Command(os.Args[0], "spawn", "-n", fmt.Sprint(n), "-program", program)
	spawner.Stdout = writer
	spawner.Stderr = os.Stderr
	if err := spawner.Start(); err != nil {
		return fmt.Errorf("starting the spawner: %w", err)
	}
	writer.Close()

	pids := make([]int, 0, n)
	in := bufio.NewReader(reader)
	var record [8]byte
	for len(pids) < n {
		if _, err := io.ReadFull(in, record[:4]); err != nil {
			spawner.Wait()
			return fmt.Errorf("reading pid %d of %d from the spawner: %w", len(pids)+1, n, err)
		}
		pids = append(pids, int(binary.LittleEndian.Uint32(record[:4])))
	}
	if _, err := io.ReadFull(in, record[:]); err != nil {
		spawner.Wait()
		return fmt.Errorf("reading the spawner's exit time: %w", err)
	}
	spawnedAt := int64(binary.LittleEndian.Uint64(record[:]))
	if err := spawner.Wait(); err != nil {
		return fmt.Errorf("the spawner failed: %w", err)
	}

	// kill(pid, 0) succeeds on a zombie and fails with ESRCH once its
	// parent, now the init, has reaped it. The loop waits on the first pid
	// that is still there, so it makes few system calls while the init works.
	for i := 0; i < len(pids); {
		err := unix.Kill(pids[i], 0)
		switch {
		case errors.Is(err, unix.ESRCH):
			i++
		case err != nil:
			return fmt.Errorf("checking pid %d: %w", pids[i], err)
		default:
			time.Sleep(100 * time.Microsecond)
		}
	}
	reapedAt := monotonic()
	return json.NewEncoder(os.Stdout).Encode(orphanReport{Orphans: n, SpawnedAt: spawnedAt, ReapedAt: reapedAt})
}

// runSpawn starts the program n times with stdio on /dev/null, writes each
// pid as 4 bytes and its own exit time as 8 bytes to stdout, and exits
// without waiting for any child.
func runSpawn(args []string) error {
	n, program, err := orphanFlags(args)
	if err != nil {
		return err
	}
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	attr := &syscall.ProcAttr{Files: []uintptr{null.Fd(), null.Fd(), null.Fd()}}
	argv := []string{program}
	out := bufio.NewWriter(os.Stdout)
	var record [4]byte
	for range n {
		pid, err := syscall.ForkExec(program, argv, attr)
		if err != nil {
			return fmt.Errorf("starting %s: %w", program, err)
		}
		binary.LittleEndian.PutUint32(record[:], uint32(pid))
		if _, err := out.Write(record[:]); err != nil {
			return err
		}
	}
	if err := writeTime(out, monotonic()); err != nil {
		return err
	}
	return out.Flush()
}

// runSignal writes a ready mark and then one timestamp per SIGUSR1.
func runSignal() error {
	signals := make(chan os.Signal, 64)
	signal.Notify(signals, unix.SIGUSR1)
	closed := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, os.Stdin)
		closed <- err
	}()

	if err := writeTime(os.Stdout, 0); err != nil {
		return err
	}
	for {
		select {
		case <-signals:
			if err := writeTime(os.Stdout, monotonic()); err != nil {
				return err
			}
		case err := <-closed:
			return err
		}
	}
}

// runExit writes a ready mark, waits for the harness's byte, then writes the
// time and exits.
func runExit() error {
	if err := writeTime(os.Stdout, 0); err != nil {
		return err
	}
	var b [1]byte
	if _, err := io.ReadFull(os.Stdin, b[:]); err != nil {
		return fmt.Errorf("waiting for the start byte: %w", err)
	}
	return writeTime(os.Stdout, monotonic())
}
