package emperor

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestDirWatchKeepsEventsBeforeStart(t *testing.T) {
	dir := t.TempDir()
	watch, err := watchDir(dir)
	if err != nil {
		t.Fatalf("watchDir: %v", err)
	}
	defer watch.close()

	// The emperor reads events only after its first scan, so a file
	// written during that scan must still reach the loop.
	if err := os.WriteFile(filepath.Join(dir, "app.ini"), []byte("exec = true\n"), 0o644); err != nil {
		t.Fatalf("writing app.ini: %v", err)
	}
	events := watch.start()

	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("expected an event for app.ini, the event channel closed first")
			}
			if ev.name == "app.ini" {
				return
			}
		case <-timeout:
			t.Fatal("expected an event for app.ini within 5 s of start")
		}
	}
}
