package parcelo

// Running handlers and probes on their goroutines, and turning their outcomes into results.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	pb "parcelo.dev/gen/parcelo/v1"
)

// pump starts waiting leaves while handler slots are free, then asks for credit.
func (w *Worker) pump() {
	for len(w.waiting) > 0 && w.running < w.opts.Concurrency && !w.stopping {
		h := w.waiting[0]
		w.waiting[0] = nil
		w.waiting = w.waiting[1:]
		w.startLeaf(h)
	}
	w.askForLeases()
}

func (w *Worker) startLeaf(h *held) {
	l := h.lease
	cursor := l.GetCursor()
	if cursor < l.GetStart() {
		cursor = l.GetStart()
	}
	var details []byte
	if len(l.GetDetails()) > 0 {
		details = l.GetDetails()
	}
	h.lc = &LeaseContext{
		JobID:   l.GetJobId(),
		Params:  w.jobs[l.GetJobId()].params,
		Attempt: l.GetAttempt(),
		Fence:   l.GetFence(),
		Leaf:    Range{l.GetStart(), l.GetEnd()},
		Cursor:  cursor,
		Details: details,
	}
	if h.lc.Params == nil {
		h.lc.Params = json.RawMessage("{}")
	}
	if h.deadline.IsZero() {
		h.ctx, h.stop = context.WithCancel(context.Background())
	} else {
		h.ctx, h.stop = context.WithDeadline(context.Background(), h.deadline)
	}
	w.running++
	r := Range{cursor, l.GetEnd()}
	go func() {
		err := safely(func() error { return w.opts.Handler(h.ctx, r, h.lc) })
		w.report(finished{h: h, err: err})
	}()
}

func (w *Worker) startProbe(h *held) {
	h.ctx, h.stop = context.WithCancel(context.Background())
	w.probing++
	l := h.lease
	go func() {
		keep := true
		err := safely(func() error {
			if w.opts.ShouldProcess == nil {
				return nil
			}
			var err error
			keep, err = w.opts.ShouldProcess(h.ctx, Range{l.GetStart(), l.GetEnd()}, l.GetIsLeaf())
			return err
		})
		w.report(finished{h: h, err: err, skip: err == nil && !keep})
	}()
}

// text makes s fit a proto string field: valid UTF-8 (Marshal refuses anything else, which
// would break the stream on every resend) and at most max bytes, cut at a character boundary.
func text(s string, max int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// safely runs f, turning a panic into an error.
func safely(f func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return f()
}

func (w *Worker) report(f finished) {
	select {
	case w.done <- f:
	case <-w.quit: // the worker stopped without this one (abandoned after the drain)
	}
}

func (w *Worker) onFinished(f finished) {
	h := f.h
	if h.abandoned {
		return
	}
	if h.probe {
		w.probing--
	} else {
		w.running--
	}
	timedOut := errors.Is(h.ctx.Err(), context.DeadlineExceeded)
	h.stop()
	fence := h.lease.GetFence()
	if timedOut && !h.dropped && !h.release {
		// The coordinator timed this attempt out at the same moment: a result would be refused.
		w.logf("leaf [%d, %d) of %s timed out (leaf_timeout)", h.lease.GetStart(), h.lease.GetEnd(), h.lease.GetJobId())
		h.dropped = true
		w.tally(func(s *Stats) { s.Dropped++ })
	}
	if w.held[fence] != h || h.dropped {
		delete(w.held, fence)
		w.pump()
		return
	}
	var cp *checkpoint
	if h.lc != nil {
		cp = h.lc.lastCheckpoint()
	}
	switch {
	case h.release:
		w.giveBack(h, cp)
	case f.err == nil:
		delete(w.held, fence)
		kind := resultComplete
		if f.skip {
			kind = resultSkip
			w.tally(func(s *Stats) { s.Skipped++ })
		} else {
			w.tally(func(s *Stats) { s.Completed++ })
		}
		w.results.add(fence, result{kind: kind, jobID: h.lease.GetJobId()})
	default:
		delete(w.held, fence)
		message := text(f.err.Error(), MaxMessage)
		failure := &pb.Failure{Fence: fence, Message: message, Permanent: IsPermanent(f.err)}
		if cp != nil {
			cursor := cp.cursor
			failure.Cursor = &cursor
			failure.Details = cp.details
		}
		w.results.add(fence, result{kind: resultFail, failure: failure, jobID: h.lease.GetJobId()})
		w.tally(func(s *Stats) { s.Failed++ })
		w.logf("leaf [%d, %d) of %s failed (attempt %d, permanent %v): %s", h.lease.GetStart(),
			h.lease.GetEnd(), h.lease.GetJobId(), h.lease.GetAttempt(), failure.Permanent, message)
	}
	w.scheduleFlush()
	w.pump()
}

// giveBack returns a lease unfinished (released: not an attempt), with its newest checkpoint.
func (w *Worker) giveBack(h *held, cp *checkpoint) {
	fence := h.lease.GetFence()
	delete(w.held, fence)
	failure := &pb.Failure{Fence: fence, Released: true, Message: "released"}
	if cp != nil {
		cursor := cp.cursor
		failure.Cursor = &cursor
		failure.Details = cp.details
	}
	w.results.add(fence, result{kind: resultFail, failure: failure, jobID: h.lease.GetJobId()})
	w.tally(func(s *Stats) { s.Released++ })
	w.scheduleFlush()
}
