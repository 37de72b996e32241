package fusectl

import (
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestProbeAnsweringPath(t *testing.T) {
	p, err := NewProber(0, 0)
	if err != nil {
		t.Fatalf("NewProber: %v", err)
	}
	defer p.Close()
	if err := p.Probe(t.TempDir(), time.Second); err != nil {
		t.Errorf("Probe(temp dir) = %v, want nil", err)
	}
	if err := p.Probe("/nonexistent/path", time.Second); !errors.Is(err, unix.ENOENT) {
		t.Errorf("Probe(missing path) = %v, want ENOENT", err)
	}
}

func TestProbeAfterClose(t *testing.T) {
	p, err := NewProber(0, 0)
	if err != nil {
		t.Fatalf("NewProber: %v", err)
	}
	p.Close()
	p.Close()
	if err := p.Probe(t.TempDir(), time.Second); !errors.Is(err, ErrProberClosed) {
		t.Errorf("Probe after Close = %v, want ErrProberClosed", err)
	}
}

func TestProbeBackToBack(t *testing.T) {
	p, err := NewProber(0, 0)
	if err != nil {
		t.Fatalf("NewProber: %v", err)
	}
	defer p.Close()
	dir := t.TempDir()
	for i := 0; i < 20000; i++ {
		if err := p.Probe(dir, 5*time.Second); err != nil {
			t.Fatalf("probe %d of a healthy directory = %v, want nil", i, err)
		}
	}
}
