package emperor

import (
	"io"
	"testing"
)

// statusOf returns the status socket's view of s.
func statusOf(t *testing.T, s *supervisor) VassalStatus {
	t.Helper()
	statuses := s.e.board.snapshot()
	if len(statuses) != 1 {
		t.Fatalf("expected 1 vassal on the board, found %d", len(statuses))
	}
	return statuses[0]
}

func TestStatusLineErrorOfCurrentInit(t *testing.T) {
	s := newTestSupervisor(42, io.Discard)
	s.handleStatusLine(`error "mount failed"`, 42)

	if got := statusOf(t, s).Error; got != "mount failed" {
		t.Errorf("expected the error of the running init, got %q", got)
	}
}

func TestStatusLineErrorOfExitedInit(t *testing.T) {
	s := newTestSupervisor(42, io.Discard)
	s.e.board.update(s, func(entry *statusEntry) { entry.status.Pid = 0 })
	s.handleStatusLine(`error "mount failed"`, 42)

	if got := statusOf(t, s).Error; got != "mount failed" {
		t.Errorf("expected the error of the exited init to be kept, got %q", got)
	}
}

func TestStatusLineErrorOfReplacedInit(t *testing.T) {
	s := newTestSupervisor(43, io.Discard)
	s.handleStatusLine(`error "mount failed"`, 42)

	if got := statusOf(t, s).Error; got != "" {
		t.Errorf("expected no error from the replaced init 42 on init 43, got %q", got)
	}
}

func TestStatusLineRunningOfReplacedInit(t *testing.T) {
	s := newTestSupervisor(43, io.Discard)
	s.handleStatusLine("running", 42)

	if got := statusOf(t, s).State; got != StateStarting {
		t.Errorf("expected state %q after a line of the replaced init 42, got %q", StateStarting, got)
	}
}
