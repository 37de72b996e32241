package vassal

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
)

// MountStatus is the health of one mountpoint-check path, as the vassal init
// reports it to the emperor.
type MountStatus struct {
	Path    string `json:"path"`
	Healthy bool   `json:"healthy"`
	Detail  string `json:"detail,omitempty"`
}

// statusReporter reports the vassal's state to the emperor on an inherited
// pipe, one line per event. A "mounts " line carries the health of the mount
// checks in the format of [FormatMountStatus]. "running" follows the start
// of the program, and "error " with a quoted message follows a failed start
// or check. A nil reporter writes nothing.
type statusReporter struct {
	mu     sync.Mutex
	file   *os.File
	mounts []MountStatus
}

// set replaces the whole list, as after the checks start.
func (r *statusReporter) set(mounts []MountStatus) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mounts = mounts
	r.send()
}

// fail marks one path unhealthy.
func (r *statusReporter) fail(path, detail string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range r.mounts {
		if r.mounts[i].Path == path {
			r.mounts[i].Healthy = false
			r.mounts[i].Detail = detail
		}
	}
	r.send()
}

// running reports that the program has started.
func (r *statusReporter) running() {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.write("running")
}

// failed reports why the vassal is stopping or could not start.
func (r *statusReporter) failed(err error) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.write("error " + strconv.Quote(err.Error()))
}

// send writes the current list.
func (r *statusReporter) send() {
	r.write("mounts " + FormatMountStatus(r.mounts))
}

// write sends one line. A write error means the emperor is gone, so it is
// ignored.
func (r *statusReporter) write(line string) {
	_, _ = r.file.Write([]byte(line + "\n"))
}

// StatusEvent is one line of the vassal init's status pipe.
type StatusEvent struct {
	Mounts  []MountStatus // set for a "mounts" line
	Running bool          // set for a "running" line
	Error   string        // set for an "error" line
}

// ParseStatusEvent decodes one line written by a statusReporter.
func ParseStatusEvent(line string) (StatusEvent, error) {
	kind, rest, _ := strings.Cut(line, " ")
	switch kind {
	case "mounts":
		mounts, err := ParseMountStatus(rest)
		return StatusEvent{Mounts: mounts}, err
	case "running":
		return StatusEvent{Running: true}, nil
	case "error":
		message, err := strconv.Unquote(rest)
		if err != nil {
			return StatusEvent{}, fmt.Errorf("parsing the error in %q: %w", line, err)
		}
		return StatusEvent{Error: message}, nil
	}
	return StatusEvent{}, fmt.Errorf("unknown status line %q", line)
}

// FormatMountStatus renders mounts as one line of Go-quoted fields, three
// per mount: path, "ok" or "failed", and detail. Decoding it needs no
// reflection, unlike JSON, which keeps the binary and so every fief
// process smaller.
func FormatMountStatus(mounts []MountStatus) string {
	var b strings.Builder
	for i, m := range mounts {
		if i > 0 {
			b.WriteByte(' ')
		}
		health := "failed"
		if m.Healthy {
			health = "ok"
		}
		b.WriteString(strconv.Quote(m.Path) + " " + health + " " + strconv.Quote(m.Detail))
	}
	return b.String()
}

// ParseMountStatus decodes a line written by [FormatMountStatus].
func ParseMountStatus(line string) ([]MountStatus, error) {
	mounts := []MountStatus{}
	rest := strings.TrimSpace(line)
	for rest != "" {
		path, after, err := unquotePrefix(rest)
		if err != nil {
			return nil, fmt.Errorf("parsing the path in %q: %w", line, err)
		}
		health, after, ok := strings.Cut(strings.TrimLeft(after, " "), " ")
		if !ok || (health != "ok" && health != "failed") {
			return nil, fmt.Errorf("parsing the health in %q: want ok or failed", line)
		}
		detail, after, err := unquotePrefix(strings.TrimLeft(after, " "))
		if err != nil {
			return nil, fmt.Errorf("parsing the detail in %q: %w", line, err)
		}
		mounts = append(mounts, MountStatus{Path: path, Healthy: health == "ok", Detail: detail})
		rest = strings.TrimLeft(after, " ")
	}
	return mounts, nil
}

func unquotePrefix(s string) (string, string, error) {
	quoted, err := strconv.QuotedPrefix(s)
	if err != nil {
		return "", "", err
	}
	value, err := strconv.Unquote(quoted)
	if err != nil {
		return "", "", err
	}
	return value, s[len(quoted):], nil
}
