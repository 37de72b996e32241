package emperor

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"fief/vassal"
)

// DefaultStatusSocket is the path of the socket that serves the emperor's
// status.
const DefaultStatusSocket = "/run/fief/emperor.sock"

// VassalStatus is one vassal in the emperor's status report.
type VassalStatus struct {
	Name  string `json:"name"`
	State string `json:"state"`
	// Pid is the vassal init's pid, 0 when none runs.
	Pid           int        `json:"pid"`
	UptimeSeconds float64    `json:"uptime_seconds"`
	Restarts      int        `json:"restarts"`
	LastExit      string     `json:"last_exit,omitempty"`
	LastExitAt    *time.Time `json:"last_exit_at,omitempty"`
	// Error is the reason the vassal last failed: its file's error, or the
	// last error its vassal init reported. It is cleared when a program
	// starts.
	Error  string               `json:"error,omitempty"`
	Mounts []vassal.MountStatus `json:"mounts"`
}

// Report is the emperor's status report.
type Report struct {
	Pid           int            `json:"pid"`
	Dir           string         `json:"dir"`
	UptimeSeconds float64        `json:"uptime_seconds"`
	Vassals       []VassalStatus `json:"vassals"`
}

// statusBoard holds what the status socket serves. Supervisors write their
// own entry; the socket reads them all.
type statusBoard struct {
	mu      sync.Mutex
	entries map[*supervisor]*statusEntry
}

type statusEntry struct {
	status  VassalStatus
	started time.Time
}

func newStatusBoard() *statusBoard {
	return &statusBoard{entries: make(map[*supervisor]*statusEntry)}
}

// update changes the entry of s under the board's lock.
func (b *statusBoard) update(s *supervisor, fn func(*statusEntry)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	entry := b.entries[s]
	if entry == nil {
		entry = &statusEntry{status: VassalStatus{Name: s.name, Mounts: []vassal.MountStatus{}}}
		b.entries[s] = entry
	}
	fn(entry)
}

func (b *statusBoard) remove(s *supervisor) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.entries, s)
}

func (b *statusBoard) snapshot() []VassalStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]VassalStatus, 0, len(b.entries))
	for _, entry := range b.entries {
		st := entry.status
		if st.Pid != 0 && !entry.started.IsZero() {
			st.UptimeSeconds = time.Since(entry.started).Round(time.Millisecond).Seconds()
		}
		st.Mounts = append([]vassal.MountStatus{}, st.Mounts...)
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// handleStatusLine records one status line of the vassal init pid.
func (s *supervisor) handleStatusLine(line string, pid int) {
	event, err := vassal.ParseStatusEvent(line)
	if err != nil {
		s.log().Warn("invalid status line from the vassal init", "pid", pid, "err", err)
		return
	}
	s.e.board.update(s, func(entry *statusEntry) {
		switch {
		case entry.status.Pid != pid && entry.status.Pid != 0:
			// A late line of an init that a newer one has replaced.
		case event.Error != "":
			// Kept after the init exits, because it is why it exited.
			entry.status.Error = event.Error
		case entry.status.Pid != pid:
			// A late line of an init that has exited.
		case event.Running:
			entry.status.State = StateRunning
			entry.status.Error = ""
		default:
			entry.status.Mounts = event.Mounts
		}
	})
}

// serveStatus listens on path. A client writes one line, "json" or "table",
// and gets the report in that form; rendering it here spares the client a
// JSON decoder. A socket on which another live emperor accepts connections
// is left alone.
func (e *Emperor) serveStatus(path string, started time.Time) (func(), error) {
	if conn, err := dialUnix(path, time.Second); err == nil {
		conn.Close()
		return nil, fmt.Errorf("status socket %q is in use by another emperor; give this one --status-socket PATH", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating the status socket directory: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale status socket %q: %w", path, err)
	}

	listener, err := listenUnix(path)
	if err != nil {
		return nil, fmt.Errorf("listening on status socket %q: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		listener.close()
		return nil, fmt.Errorf("restricting status socket %q to root: %w", path, err)
	}

	go func() {
		for {
			conn, err := listener.accept()
			if err != nil {
				return
			}
			go e.answerStatus(conn, started)
		}
	}()

	e.log.Info("serving status", "socket", path, "pid", os.Getpid())
	return func() {
		listener.close()
		os.Remove(path)
	}, nil
}

// answerStatus reads the requested format from conn and writes the report.
func (e *Emperor) answerStatus(conn *os.File, started time.Time) {
	defer conn.Close()

	request := make([]byte, 16)
	n, _ := conn.Read(request)
	format := strings.TrimSpace(string(request[:n]))

	report := &Report{
		Pid:           os.Getpid(),
		Dir:           e.dir,
		UptimeSeconds: time.Since(started).Round(time.Millisecond).Seconds(),
		Vassals:       e.board.snapshot(),
	}
	var err error
	if format == "json" {
		enc := json.NewEncoder(conn)
		enc.SetIndent("", "  ")
		err = enc.Encode(report)
	} else {
		err = PrintReport(conn, report)
	}
	if err != nil {
		e.log.Debug("writing the status report failed", "err", err)
	}
}

// FetchStatus copies the report of the emperor listening on path to w, as
// JSON or as a table.
func FetchStatus(path string, asJSON bool, w io.Writer) error {
	conn, err := dialUnix(path, 10*time.Second)
	if err != nil {
		return fmt.Errorf("connecting to status socket %q (is the emperor running? give its --status-socket): %w", path, err)
	}
	defer conn.Close()

	request := "table\n"
	if asJSON {
		request = "json\n"
	}
	if _, err := conn.Write([]byte(request)); err != nil {
		return fmt.Errorf("sending the status request to %q: %w", path, err)
	}
	if _, err := io.Copy(w, conn); err != nil {
		return fmt.Errorf("reading the status report from %q: %w", path, err)
	}
	return nil
}

// PrintReport writes report as a table, one vassal a line, with the health
// of each checked mount.
func PrintReport(w io.Writer, report *Report) error {
	fmt.Fprintf(w, "emperor pid %d, %s, up %s, %d vassal(s)\n", report.Pid, report.Dir,
		(time.Duration(report.UptimeSeconds * float64(time.Second))).Round(time.Second), len(report.Vassals))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VASSAL\tSTATE\tPID\tUPTIME\tRESTARTS\tLAST EXIT\tMOUNTS")
	for _, v := range report.Vassals {
		uptime := "-"
		if v.Pid != 0 {
			uptime = (time.Duration(v.UptimeSeconds * float64(time.Second))).Round(time.Second).String()
		}
		pid := "-"
		if v.Pid != 0 {
			pid = strconv.Itoa(v.Pid)
		}
		lastExit := "-"
		if v.LastExit != "" {
			lastExit = v.LastExit
		}
		mounts := "-"
		if len(v.Mounts) > 0 {
			parts := make([]string, 0, len(v.Mounts))
			for _, m := range v.Mounts {
				health := "ok"
				if !m.Healthy {
					health = "failed"
				}
				parts = append(parts, m.Path+" "+health)
			}
			mounts = strings.Join(parts, ", ")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", v.Name, v.State, pid, uptime, v.Restarts, lastExit, mounts)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	for _, v := range report.Vassals {
		if v.Error != "" {
			if _, err := fmt.Fprintf(w, "%s: %s\n", v.Name, v.Error); err != nil {
				return err
			}
		}
	}
	return nil
}
