package parcelo

import (
	"math/rand"
	"time"
)

// creditToAsk is how many leases to ask for now: enough to hold concurrency + prefetch leases,
// counting those held and those asked for and not yet granted (credit cannot be taken back, so
// never more). It asks in batches (at least a quarter of prefetch) to keep lease messages few,
// except when the worker holds nothing and has nothing outstanding.
func creditToAsk(concurrency, prefetch, held, outstanding int) int {
	want := concurrency + prefetch - held - outstanding
	if want <= 0 {
		return 0
	}
	batch := prefetch / 4
	if batch < 1 {
		batch = 1
	}
	if want >= batch || (held == 0 && outstanding == 0) {
		return want
	}
	return 0
}

// backoff yields reconnect delays: exponential from initial to max, each with ±20% jitter.
type backoff struct {
	initial, max, next time.Duration
	rng                *rand.Rand
}

func newBackoff(initial, max time.Duration, rng *rand.Rand) *backoff {
	return &backoff{initial: initial, max: max, next: initial, rng: rng}
}

// delay is the next delay to wait.
func (b *backoff) delay() time.Duration {
	d := time.Duration(float64(b.next) * (0.8 + 0.4*b.rng.Float64()))
	b.next *= 2
	if b.next > b.max {
		b.next = b.max
	}
	return d
}

// reset starts again from the initial delay (after a stream got as far as the welcome).
func (b *backoff) reset() { b.next = b.initial }

// heartbeatInterval is how often to heartbeat every held lease (docs/protocol.md, Heartbeats):
// min(heartbeat_interval, lease_ttl / 3) over the jobs of the leases held, where welcome is the
// Welcome's heartbeat_interval (0: unset) and a job whose TTL is unknown counts as
// DefaultLeaseTTL. A TTL-derived interval is never below minHeartbeat.
func heartbeatInterval(welcome time.Duration, heldTTLs []time.Duration) time.Duration {
	interval := thirdOfShortestTTL(heldTTLs)
	if welcome > 0 && welcome < interval {
		return welcome
	}
	return interval
}

func thirdOfShortestTTL(heldTTLs []time.Duration) time.Duration {
	ttl := time.Duration(0)
	for _, t := range heldTTLs {
		if t <= 0 {
			t = DefaultLeaseTTL
		}
		if ttl == 0 || t < ttl {
			ttl = t
		}
	}
	if ttl == 0 {
		ttl = DefaultLeaseTTL
	}
	interval := ttl / HeartbeatFraction
	if interval < minHeartbeat {
		interval = minHeartbeat
	}
	return interval
}
