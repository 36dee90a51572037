package parcelo

import "time"

// Defaults, the same values as the Python SDK's (worker_sdk/defaults.py), each with why.
const (
	// DefaultQueue is the queue of jobs and workers that name none.
	DefaultQueue = "default"
	// DefaultConcurrency is how many handlers one worker process runs at once.
	DefaultConcurrency = 4
	// DefaultPrefetch is how many leases a worker keeps in hand beyond its running handlers;
	// one grant message carries many.
	DefaultPrefetch = 64
	// DefaultDrainTimeout is how long running handlers get to finish on a graceful stop.
	DefaultDrainTimeout = 30 * time.Second
	// DefaultLeaseTTL is the coordinator's default lease TTL, used to pace heartbeats until a
	// job's JobInfo says otherwise.
	DefaultLeaseTTL = 30 * time.Second
	// HeartbeatFraction: heartbeat every TTL / 3, so two lost heartbeats still do not expire a lease.
	HeartbeatFraction = 3
	// CompletionBatch is the most results sent in one message.
	CompletionBatch = 256
	// CompletionFlush is how long finished leases are held to be sent together.
	CompletionFlush = 5 * time.Millisecond
	// ReconnectInitial is the first reconnect delay after the stream broke.
	ReconnectInitial = 100 * time.Millisecond
	// ReconnectMax caps the reconnect delay: a restarted coordinator is found within seconds.
	ReconnectMax = 5 * time.Second
	// MaxMessage bounds a failure's message: the coordinator keeps 4,096 bytes.
	MaxMessage = 4096
	// MaxProgress bounds a progress message: the coordinator keeps 1,024 bytes.
	MaxProgress = 1024
	// MaxReceiveMessage is the largest message the worker accepts from the coordinator (a grant
	// of many leases with large params).
	MaxReceiveMessage = 16 << 20
)

// Bounds of the stop sequence after the drain timeout; not options, as in the Python SDK.
const (
	// cancelGrace is how long handlers cancelled at the drain timeout get to return before their
	// leases are given back without them.
	cancelGrace = 5 * time.Second
	// answerWait is how long a stopping worker waits for the answers to its results.
	answerWait = 10 * time.Second
	// closeWait is how long a stopping worker waits for the coordinator to end the stream after
	// its half-close.
	closeWait = time.Second
	// welcomeWait is how long a new stream waits for the answer to hello.
	welcomeWait = 10 * time.Second
	// tick is how often the worker looks at its heartbeat schedule.
	tick = 50 * time.Millisecond
	// minHeartbeat is the shortest heartbeat interval derived from a lease TTL.
	minHeartbeat = 50 * time.Millisecond
)
