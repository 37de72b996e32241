package emperor

import (
	"io"
	"testing"
)

func TestStatusLineByInitPid(t *testing.T) {
	cases := []struct {
		name       string
		currentPid int    // the board's pid when the line arrives, 0 after an exit
		line       string // written by init 42
		wantError  string
		wantState  string
	}{
		{"error of the running init", 42, `error "mount failed"`, "mount failed", StateStarting},
		{"error of the exited init", 0, `error "mount failed"`, "mount failed", StateStarting},
		{"error of a replaced init", 43, `error "mount failed"`, "", StateStarting},
		{"running of the running init", 42, "running", "", StateRunning},
		{"running of a replaced init", 43, "running", "", StateStarting},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newTestSupervisor(c.currentPid, io.Discard)
			s.handleStatusLine(c.line, 42)

			statuses := s.e.board.snapshot()
			if len(statuses) != 1 {
				t.Fatalf("expected 1 vassal on the board, found %d", len(statuses))
			}
			if statuses[0].Error != c.wantError {
				t.Errorf("expected error %q, got %q", c.wantError, statuses[0].Error)
			}
			if statuses[0].State != c.wantState {
				t.Errorf("expected state %q, got %q", c.wantState, statuses[0].State)
			}
		})
	}
}
