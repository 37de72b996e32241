package emperor

import (
	"testing"
	"time"
)

func TestBackoffSchedule(t *testing.T) {
	tests := []struct {
		deaths int
		want   time.Duration
	}{
		{0, 0},
		{1, 0},
		{2, 1 * time.Second},
		{3, 2 * time.Second},
		{4, 4 * time.Second},
		{5, 8 * time.Second},
		{6, 16 * time.Second},
		{7, 32 * time.Second},
		{8, 60 * time.Second},
		{9, 60 * time.Second},
		{100, 60 * time.Second},
	}
	for _, tt := range tests {
		if got := Backoff(tt.deaths); got != tt.want {
			t.Errorf("Backoff(%d) = %v, want %v", tt.deaths, got, tt.want)
		}
	}
}
