package emperor

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"fief/vassal"
)

// newTestSupervisor returns a supervisor whose status entry names the
// vassal init pid, as after a spawn. It logs to logs.
func newTestSupervisor(pid int, logs io.Writer) *supervisor {
	e := &Emperor{board: newStatusBoard(), log: slog.New(slog.NewTextHandler(logs, nil))}
	s := newSupervisor(e, "app.ini", "/vassals/app.ini")
	e.board.update(s, func(entry *statusEntry) {
		entry.status.Pid = pid
		entry.status.State = StateStarting
	})
	return s
}

// startTestStream opens a status pipe watched by reader for s and returns
// its write end.
func startTestStream(t *testing.T, reader *statusReader, s *supervisor, pid int) *os.File {
	t.Helper()
	readFD, write, err := newStatusPipe()
	if err != nil {
		t.Fatalf("newStatusPipe: %v", err)
	}
	if err := reader.watch(readFD, s, pid); err != nil {
		write.Close()
		t.Fatalf("watch: %v", err)
	}
	return write
}

// waitForgotten waits until reader has closed every stream, which it does
// after the end of file of each pipe.
func waitForgotten(t *testing.T, reader *statusReader) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		reader.mu.Lock()
		open := len(reader.streams)
		reader.mu.Unlock()
		if open == 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("expected the reader to close the stream within 5 s of the write end's close")
}

// startedTestReader returns a started status reader that the test closes
// when it ends.
func startedTestReader(t *testing.T) *statusReader {
	t.Helper()
	reader, err := newStatusReader(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("newStatusReader: %v", err)
	}
	reader.start()
	t.Cleanup(reader.close)
	return reader
}

func TestStatusReaderSplitLines(t *testing.T) {
	reader := startedTestReader(t)
	s := newTestSupervisor(42, io.Discard)
	write := startTestStream(t, reader, s, 42)

	mounts := "mounts " + vassal.FormatMountStatus([]vassal.MountStatus{{Path: "/app", Healthy: true}})
	// One line in two writes, then two lines in one write, the last of
	// them without a newline before the end of file.
	pieces := []string{mounts[:5], mounts[5:] + "\n", "running\r\nerror \"checks failed\""}
	for _, piece := range pieces {
		if _, err := write.WriteString(piece); err != nil {
			t.Fatalf("writing %q: %v", piece, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	write.Close()
	waitForgotten(t, reader)

	got := s.e.board.snapshot()
	if len(got) != 1 {
		t.Fatalf("expected 1 vassal on the board, found %d", len(got))
	}
	if got[0].State != StateRunning {
		t.Errorf("expected state %q after the running line, found %q", StateRunning, got[0].State)
	}
	if len(got[0].Mounts) != 1 || got[0].Mounts[0].Path != "/app" || !got[0].Mounts[0].Healthy {
		t.Errorf("expected one healthy mount /app, found %+v", got[0].Mounts)
	}
	if got[0].Error != "checks failed" {
		t.Errorf("expected the last line without a newline to set the error %q, found %q", "checks failed", got[0].Error)
	}
}

func TestStatusReaderReadsLinesQueuedBeforeStart(t *testing.T) {
	reader, err := newStatusReader(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("newStatusReader: %v", err)
	}
	defer reader.close()
	s := newTestSupervisor(9, io.Discard)
	write := startTestStream(t, reader, s, 9)

	// The emperor starts the reader after its first scan, so a vassal init
	// may have written and even exited by then.
	if _, err := write.WriteString("running\n"); err != nil {
		t.Fatalf("writing the running line: %v", err)
	}
	write.Close()
	reader.start()
	waitForgotten(t, reader)

	got := s.e.board.snapshot()
	if len(got) != 1 {
		t.Fatalf("expected 1 vassal on the board, found %d", len(got))
	}
	if got[0].State != StateRunning {
		t.Errorf("expected state %q from the line written before start, found %q", StateRunning, got[0].State)
	}
}

func TestStatusReaderCloseWithoutStart(t *testing.T) {
	reader, err := newStatusReader(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("newStatusReader: %v", err)
	}
	s := newTestSupervisor(11, io.Discard)
	write := startTestStream(t, reader, s, 11)
	defer write.Close()

	closed := make(chan struct{})
	go func() {
		reader.close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("expected close to return within 5 s on a reader that was never started")
	}
}

func TestStatusReaderDropsLongLine(t *testing.T) {
	reader := startedTestReader(t)
	var logs lockedBuffer
	s := newTestSupervisor(7, &logs)
	write := startTestStream(t, reader, s, 7)

	// The write blocks until the reader has drained most of it, so each
	// long line arrives in several reads. The reader drops the first one
	// while it still arrives, and the second one only at its newline.
	longer := "error " + strings.Repeat("x", 3*maxStatusLine) + "\n"
	long := "error " + strings.Repeat("x", maxStatusLine+1) + "\n"
	if _, err := write.WriteString(longer + long + "running\n"); err != nil {
		t.Fatalf("writing: %v", err)
	}
	write.Close()
	waitForgotten(t, reader)

	got := s.e.board.snapshot()
	if len(got) != 1 {
		t.Fatalf("expected 1 vassal on the board, found %d", len(got))
	}
	if got[0].State != StateRunning {
		t.Errorf("expected the line after the long one to set state %q, found %q", StateRunning, got[0].State)
	}
	if got[0].Error != "" {
		t.Errorf("expected no error from the dropped lines, found %d bytes", len(got[0].Error))
	}
	text := logs.String()
	if n := strings.Count(text, "dropped a status line"); n != 2 {
		t.Errorf("expected 2 warnings about the dropped lines, found %d", n)
	}
	// The rest of a long line after the drop is skipped, not parsed.
	if n := strings.Count(text, "invalid status line"); n != 0 {
		t.Errorf("expected no invalid status line from the rest of the dropped lines, found %d", n)
	}
}

// lockedBuffer is a bytes.Buffer that the reader's goroutine and the test
// may use at once.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
