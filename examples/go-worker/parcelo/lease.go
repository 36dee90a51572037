package parcelo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
)

// Range is a half-open range [Start, End) of ids.
type Range struct {
	Start, End uint64
}

// Len is the number of ids in the range.
func (r Range) Len() uint64 { return r.End - r.Start }

func (r Range) String() string { return fmt.Sprintf("[%d, %d)", r.Start, r.End) }

// Handler runs one attempt at a leaf over r, which is [lc.Cursor, lc.Leaf.End): the whole leaf, or
// what is left of it after an earlier attempt's checkpoint.
//
// Returning nil completes the leaf. Returning an error fails the attempt: it is retried while the
// job's attempts remain, unless the error wraps a *PermanentError. ctx is cancelled when the lease
// must stop (the job was cancelled, the lease was lost, the job was paused with release, the leaf
// timed out, or the worker is stopping past its drain timeout); what the handler returns then is
// not reported as a result (a release is, with the newest checkpoint). Handlers run on their own
// goroutines, up to Options.Concurrency at once; a panic fails the attempt.
type Handler func(ctx context.Context, r Range, lc *LeaseContext) error

// ShouldProcess answers a probe lease of a pruning job: true (process the range) or false (skip
// it: the whole subtree is marked skipped without splitting it). isLeaf says whether the node is a
// leaf. An error fails the probe like a handler's error.
type ShouldProcess func(ctx context.Context, r Range, isLeaf bool) (bool, error)

// PermanentError marks a failure that retrying cannot fix: the leaf goes to error at once.
// Wrap an error with Permanent, or return &PermanentError{Err: err}.
type PermanentError struct {
	Err error
}

func (e *PermanentError) Error() string {
	if e.Err == nil {
		return "permanent error"
	}
	return e.Err.Error()
}

func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent wraps err so that a Handler returning it fails the leaf without retry. nil stays nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// IsPermanent reports whether err wraps a *PermanentError.
func IsPermanent(err error) bool {
	var p *PermanentError
	return errors.As(err, &p)
}

// LeaseContext is what a handler knows about its lease, and how it reports progress.
// Its methods are safe to call from any goroutine.
type LeaseContext struct {
	// JobID is the job the leaf belongs to.
	JobID string
	// Params are the job's params: any JSON value ("{}" when the job gave none).
	Params json.RawMessage
	// Attempt is 1 for the first attempt, 2 for the first retry, ...
	Attempt uint32
	// Fence is the lease's id and fencing token (for logs and idempotency keys).
	Fence uint64
	// Leaf is the whole leaf; the handler's range starts at Cursor.
	Leaf Range
	// Cursor is where this attempt starts: Leaf.Start unless an earlier attempt checkpointed.
	Cursor uint64
	// Details are the bytes saved with that checkpoint, or nil.
	Details []byte

	mu         sync.Mutex
	checkpoint *checkpoint
	message    string
}

type checkpoint struct {
	cursor  uint64
	details []byte
}

// Checkpoint records that every id below cursor is done. The next heartbeats carry it (only the
// newest is sent), and so does a failure or a release; if this attempt dies, the next one starts
// at cursor and gets details. A cursor outside [Leaf.Start, Leaf.End] is clamped into the leaf,
// as the coordinator would.
func (lc *LeaseContext) Checkpoint(cursor uint64, details []byte) {
	if cursor < lc.Leaf.Start {
		cursor = lc.Leaf.Start
	}
	if cursor > lc.Leaf.End {
		cursor = lc.Leaf.End
	}
	kept := append([]byte(nil), details...)
	lc.mu.Lock()
	lc.checkpoint = &checkpoint{cursor: cursor, details: kept}
	lc.mu.Unlock()
}

// Progress sets a free-form progress message, sent with the next heartbeat and shown in the tree
// (made valid UTF-8, at most MaxProgress bytes: what the coordinator keeps).
func (lc *LeaseContext) Progress(message string) {
	message = text(message, MaxProgress)
	lc.mu.Lock()
	lc.message = message
	lc.mu.Unlock()
}

// ParamsInto decodes the job's params into v (json.Unmarshal).
func (lc *LeaseContext) ParamsInto(v interface{}) error {
	return json.Unmarshal(lc.Params, v)
}

// lastCheckpoint is the newest checkpoint, or nil.
func (lc *LeaseContext) lastCheckpoint() *checkpoint {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return lc.checkpoint
}

// takeMessage returns the progress message not yet sent, and forgets it.
func (lc *LeaseContext) takeMessage() string {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	m := lc.message
	lc.message = ""
	return m
}
