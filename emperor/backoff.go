package emperor

import "time"

const (
	// QuickDeath is how long a vassal must run for its death to count as
	// the start of a new series instead of one more failure in a row.
	QuickDeath = 10 * time.Second
	// MinBackoff is the delay before the second respawn of a series.
	MinBackoff = time.Second
	// MaxBackoff caps the delay between respawns.
	MaxBackoff = 60 * time.Second
)

// Backoff returns how long to wait before respawning a vassal that died
// without being asked to. deaths counts the unrequested deaths in a row, this
// one included, where each death after the first came within QuickDeath of
// its start. The first death respawns at once, the second after MinBackoff,
// and each further one doubles the delay up to MaxBackoff.
func Backoff(deaths int) time.Duration {
	if deaths <= 1 {
		return 0
	}
	delay := MinBackoff
	for i := 2; i < deaths; i++ {
		delay *= 2
		if delay >= MaxBackoff {
			return MaxBackoff
		}
	}
	return delay
}
