package parcelo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	pb "parcelo.dev/gen/parcelo/v1"
)

var errEOF = io.EOF

// ErrUnanswered is wrapped by the error Run returns when it stopped with results the coordinator
// had not answered within the wait (they may or may not have counted).
var ErrUnanswered = errors.New("results left unanswered")

// Options configure a Worker. Zero values mean the defaults (defaults.go).
type Options struct {
	// Target is the coordinator's host:port.
	Target string
	// Handler runs leaves. Required.
	Handler Handler
	// ShouldProcess answers probes of pruning jobs; nil processes every probed node.
	ShouldProcess ShouldProcess
	// Queues to take leases from, in order of preference; nil: ["default"].
	Queues []string
	// Concurrency is how many handlers run at once; 0: DefaultConcurrency.
	Concurrency int
	// Prefetch is how many leases are kept in hand beyond the running ones; 0: DefaultPrefetch,
	// negative: none.
	Prefetch int
	// WorkerID names the process to the coordinator (the holder of its leases); "": host:pid.
	WorkerID string
	// DrainTimeout bounds how long running handlers get to finish on stop; 0: DefaultDrainTimeout,
	// negative: none (they are cancelled at once).
	DrainTimeout time.Duration
	// Logger receives the worker's log lines; nil: standard error.
	Logger *log.Logger
	// TransportCredentials secure the connection (TLS); nil: plaintext.
	TransportCredentials credentials.TransportCredentials
	// DialOptions are added to the worker's own when it dials (interceptors, per-RPC credentials).
	DialOptions []grpc.DialOption
}

// Stats count what a worker did; handy in tests and logs.
type Stats struct {
	Completed, Skipped, Failed, Released, Rejected, Dropped, Connects int
}

// Worker runs a Handler on leases from a coordinator. Create it with NewWorker; Run it once.
type Worker struct {
	opts Options
	rng  *rand.Rand
	// cancelGrace: how long handlers cancelled at the drain timeout get (a field for tests).
	cancelGrace time.Duration

	statsMu sync.Mutex
	stats   Stats
	ran     bool
	// closing is set when the worker ends its stream itself, so its end is not news.
	closing atomic.Bool

	// What follows belongs to the loop goroutine (Run's).
	held        map[uint64]*held
	waiting     []*held
	running     int // leaf handlers running
	probing     int // probes being answered
	jobs        map[string]jobInfo
	results     *results
	outstanding int // credit asked for on this stream and not yet granted
	sess        *session
	lastBeat    time.Time
	flushC      <-chan time.Time
	stopping    bool
	done        chan finished
	quit        chan struct{}
}

// held is a lease in hand: waiting for a handler slot, or running.
type held struct {
	lease *pb.Lease
	probe bool
	lc    *LeaseContext      // leaves, once started
	ctx   context.Context    // once started
	stop  context.CancelFunc // once started
	// deadline is when the coordinator times the attempt out (JobInfo.leaf_timeout); zero: never.
	deadline time.Time
	// Set by directives and the stop sequence.
	dropped   bool // report nothing: the lease is gone (CANCEL, LOST, JOB_GONE, leaf timeout)
	release   bool // give the lease back with its newest checkpoint (RELEASE, drain timeout)
	abandoned bool // given back while its handler still ran; what it returns is ignored
}

type jobInfo struct {
	params      json.RawMessage
	ttl         time.Duration // 0: unknown
	leafTimeout time.Duration // 0: none
}

// finished is a handler's or a probe's outcome, sent to the loop.
type finished struct {
	h    *held
	err  error
	skip bool
}

// NewWorker checks opts and fills in the defaults.
func NewWorker(opts Options) (*Worker, error) {
	if opts.Target == "" {
		return nil, errors.New("parcelo: Options.Target is required")
	}
	if opts.Handler == nil {
		return nil, errors.New("parcelo: Options.Handler is required")
	}
	if opts.Concurrency < 0 {
		return nil, errors.New("parcelo: Options.Concurrency must not be negative")
	}
	if opts.Concurrency == 0 {
		opts.Concurrency = DefaultConcurrency
	}
	switch {
	case opts.Prefetch == 0:
		opts.Prefetch = DefaultPrefetch
	case opts.Prefetch < 0:
		opts.Prefetch = 0
	}
	switch {
	case opts.DrainTimeout == 0:
		opts.DrainTimeout = DefaultDrainTimeout
	case opts.DrainTimeout < 0:
		opts.DrainTimeout = 0
	}
	if len(opts.Queues) == 0 {
		opts.Queues = []string{DefaultQueue}
	}
	if opts.WorkerID == "" {
		host, err := os.Hostname()
		if err != nil {
			host = "localhost"
		}
		opts.WorkerID = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	if opts.Logger == nil {
		opts.Logger = log.New(os.Stderr, "parcelo-go ", log.LstdFlags|log.Lmicroseconds)
	}
	return &Worker{
		opts:        opts,
		rng:         rand.New(rand.NewSource(time.Now().UnixNano())),
		cancelGrace: cancelGrace,
		held:        map[uint64]*held{},
		jobs:        map[string]jobInfo{},
		results:     newResults(),
		done:        make(chan finished),
		quit:        make(chan struct{}),
	}, nil
}

// WorkerID is the name the worker gives the coordinator.
func (w *Worker) WorkerID() string { return w.opts.WorkerID }

// Stats is a copy of the worker's counters.
func (w *Worker) Stats() Stats {
	w.statsMu.Lock()
	defer w.statsMu.Unlock()
	return w.stats
}

func (w *Worker) tally(f func(*Stats)) {
	w.statsMu.Lock()
	f(&w.stats)
	w.statsMu.Unlock()
}

func (w *Worker) logf(format string, args ...interface{}) { w.opts.Logger.Printf(format, args...) }

// Run works until ctx is cancelled, then stops gracefully: it asks for no more leases, gives back
// those not started, lets running handlers finish within the drain timeout (then cancels them and
// gives their leases back), waits for the answers to its results and closes the stream. It
// returns nil after a clean stop, or an error wrapping ErrUnanswered if answers did not come.
// Handlers keep running across reconnects; Run returns only after the stop.
func (w *Worker) Run(ctx context.Context) error {
	w.statsMu.Lock()
	ran := w.ran
	w.ran = true
	w.statsMu.Unlock()
	if ran {
		return errors.New("parcelo: a Worker runs once")
	}
	defer close(w.quit)
	connCtx, stopConn := context.WithCancel(context.Background())
	events := make(chan interface{})
	connDone := make(chan struct{})
	go func() {
		defer close(connDone)
		w.connectForever(connCtx, events)
	}()
	defer func() {
		stopConn()
		<-connDone
	}()
	return w.loop(ctx, events)
}

// The stop sequence, in order.
const (
	phaseWorking = iota
	phaseDraining
	phaseAnswering
	phaseClosing
)

func (w *Worker) loop(ctx context.Context, events <-chan interface{}) error {
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	phase := phaseWorking
	stopRequested := ctx.Done()
	var drainTimer, graceTimer, answerTimer, closeTimer <-chan time.Time
	var result error
	for {
		select {
		case ev := <-events:
			if down, ok := ev.(sessionDown); ok && phase == phaseClosing && down.s == w.sess {
				return result
			}
			w.onEvent(ev)
		case f := <-w.done:
			w.onFinished(f)
		case now := <-ticker.C:
			if w.sess != nil && now.Sub(w.lastBeat) >= w.heartbeatInterval() {
				w.sendHeartbeat()
			}
		case <-w.flushC:
			w.flush()
		case <-stopRequested:
			stopRequested = nil
			phase = phaseDraining
			w.beginStop()
			drainTimer = time.After(w.opts.DrainTimeout)
		case <-drainTimer:
			drainTimer = nil
			if w.running+w.probing > 0 {
				w.logf("drain timeout: cancelling %d running handlers", w.running+w.probing)
				for _, h := range w.held {
					if h.stop != nil {
						h.release = true
						h.stop()
					}
				}
				graceTimer = time.After(w.cancelGrace)
			}
		case <-graceTimer:
			graceTimer = nil
			w.abandonRunning()
		case <-answerTimer:
			n := w.results.unansweredCount()
			w.logf("stopping with %d results unanswered", n)
			result = fmt.Errorf("parcelo: %d %w", n, ErrUnanswered)
			answerTimer = nil
			phase = phaseClosing
			if w.sess == nil {
				return result
			}
			w.closing.Store(true)
			w.sess.out.close()
			closeTimer = time.After(closeWait)
		case <-closeTimer:
			return result
		}
		if phase == phaseDraining && w.running+w.probing == 0 {
			phase = phaseAnswering
			w.flush()
			answerTimer = time.After(answerWait)
		}
		if phase == phaseAnswering && w.results.unansweredCount() == 0 {
			phase = phaseClosing
			answerTimer = nil
			if w.sess == nil {
				return nil
			}
			w.closing.Store(true)
			w.sess.out.close() // the writer half-closes; the coordinator then ends the stream
			closeTimer = time.After(closeWait)
		}
	}
}

// -- the stream --------------------------------------------------------------------------------

func (w *Worker) onEvent(ev interface{}) {
	switch ev := ev.(type) {
	case sessionUp:
		w.sess = ev.s
		w.outstanding = 0
		w.tally(func(s *Stats) { s.Connects++ })
		w.forgetIdleJobs()
		w.results.resendAll()
		w.flush()
		w.sendHeartbeat()
		w.askForLeases()
	case sessionDown:
		if ev.s == w.sess {
			w.sess = nil
			w.outstanding = 0 // credit ends with the stream
		}
	case received:
		if ev.s != w.sess {
			return
		}
		switch m := ev.msg.GetMsg().(type) {
		case *pb.WorkResponse_Grant:
			w.onGrant(m.Grant)
		case *pb.WorkResponse_Heartbeat:
			w.onDirectives(m.Heartbeat)
		case *pb.WorkResponse_Complete:
			w.onAnswer("complete", m.Complete.GetRequestId(), m.Complete.GetAccepted(), m.Complete.GetRejected())
		case *pb.WorkResponse_Fail:
			w.onAnswer("fail", m.Fail.GetRequestId(), m.Fail.GetAccepted(), m.Fail.GetRejected())
		}
	}
}

// forgetIdleJobs drops the JobInfo of jobs without a held lease: a new stream sends JobInfo again
// with its first lease of each job.
func (w *Worker) forgetIdleJobs() {
	inUse := map[string]bool{}
	for _, h := range w.held {
		inUse[h.lease.GetJobId()] = true
	}
	for id := range w.jobs {
		if !inUse[id] {
			delete(w.jobs, id)
		}
	}
}

func (w *Worker) onGrant(g *pb.LeaseGrant) {
	for _, info := range g.GetJobs() {
		j := jobInfo{params: json.RawMessage(info.GetParamsJson())}
		if len(j.params) == 0 {
			j.params = json.RawMessage("{}")
		}
		if d := info.GetLeaseTtl(); d != nil {
			j.ttl = d.AsDuration()
		}
		if d := info.GetLeafTimeout(); d != nil {
			j.leafTimeout = d.AsDuration()
		}
		w.jobs[info.GetJobId()] = j
	}
	w.outstanding -= len(g.GetLeases())
	if w.outstanding < 0 {
		w.outstanding = 0
	}
	now := time.Now()
	for _, lease := range g.GetLeases() {
		h := &held{lease: lease, probe: lease.GetKind() == pb.LeaseKind_LEASE_KIND_PROBE}
		if t := w.jobs[lease.GetJobId()].leafTimeout; t > 0 && !h.probe {
			h.deadline = now.Add(t)
		}
		w.held[lease.GetFence()] = h
		switch {
		case w.stopping:
			w.giveBack(h, nil)
		case h.probe:
			w.startProbe(h)
		default:
			w.waiting = append(w.waiting, h)
		}
	}
	w.pump()
}

func (w *Worker) onDirectives(resp *pb.HeartbeatResponse) {
	for _, d := range resp.GetDirectives() {
		h := w.held[d.GetFence()]
		if h == nil {
			continue
		}
		switch d.GetAction() {
		case pb.DirectiveAction_DIRECTIVE_ACTION_RELEASE:
			w.logf("lease %d of %s: release (%s)", d.GetFence(), h.lease.GetJobId(), d.GetReason())
			h.release = true
		case pb.DirectiveAction_DIRECTIVE_ACTION_CANCEL, pb.DirectiveAction_DIRECTIVE_ACTION_LOST:
			w.logf("lease %d of %s: %s (%s)", d.GetFence(), h.lease.GetJobId(), d.GetAction(), d.GetReason())
			w.drop(h)
			continue
		default:
			// CONTINUE; SHRINK is reserved and not sent yet (docs/protocol.md): ignored.
			continue
		}
		w.stopHeld(h)
	}
	w.askForLeases()
}

// drop makes a lease report nothing: its handler is cancelled, or it leaves the queue.
func (w *Worker) drop(h *held) {
	if h.dropped {
		return
	}
	h.dropped = true
	w.tally(func(s *Stats) { s.Dropped++ })
	w.stopHeld(h)
}

// stopHeld cancels a running lease's handler, or takes a waiting lease out of the queue (given
// back when released, forgotten when dropped).
func (w *Worker) stopHeld(h *held) {
	if h.stop != nil {
		h.stop()
		return
	}
	for i, x := range w.waiting {
		if x == h {
			w.waiting = append(w.waiting[:i], w.waiting[i+1:]...)
			break
		}
	}
	if h.release && !h.dropped {
		w.giveBack(h, nil)
	} else {
		delete(w.held, h.lease.GetFence())
	}
}

func (w *Worker) onAnswer(kind string, requestID uint64, accepted []uint64, rejected []*pb.Rejection) {
	for _, fence := range accepted {
		w.results.answered(fence)
	}
	for _, r := range rejected {
		res, known := w.results.unanswered[r.GetFence()]
		w.results.answered(r.GetFence())
		w.tally(func(s *Stats) { s.Rejected++ })
		w.logf("%s of lease %d rejected (request %d): %s %s", kind, r.GetFence(), requestID, r.GetReason(), r.GetMessage())
		if r.GetReason() == pb.RejectReason_REJECT_REASON_JOB_GONE && known {
			// The job ended: its other handlers stop too, and report nothing.
			for _, h := range w.held {
				if h.lease.GetJobId() == res.jobID {
					w.drop(h)
				}
			}
		}
	}
	w.pump()
}

func (w *Worker) heartbeatInterval() time.Duration {
	var ttls []time.Duration
	for _, h := range w.held {
		ttls = append(ttls, w.jobs[h.lease.GetJobId()].ttl)
	}
	return heartbeatInterval(w.sess.heartbeat, ttls)
}

// sendHeartbeat lists every held lease, running or waiting, with its newest checkpoint and the
// progress message not yet sent.
func (w *Worker) sendHeartbeat() {
	if w.sess == nil || len(w.held) == 0 {
		return
	}
	w.lastBeat = time.Now()
	fences := make([]uint64, 0, len(w.held))
	for fence := range w.held {
		fences = append(fences, fence)
	}
	sort.Slice(fences, func(i, j int) bool { return fences[i] < fences[j] })
	req := &pb.HeartbeatRequest{WorkerId: w.opts.WorkerID}
	for _, fence := range fences {
		beat := &pb.LeaseHeartbeat{Fence: fence}
		if lc := w.held[fence].lc; lc != nil {
			if cp := lc.lastCheckpoint(); cp != nil {
				cursor := cp.cursor
				beat.Cursor = &cursor // proto3 optional: set only with a checkpoint
				beat.Details = cp.details
			}
			beat.Message = lc.takeMessage()
		}
		req.Leases = append(req.Leases, beat)
	}
	w.sess.out.push(&pb.WorkRequest{Msg: &pb.WorkRequest_Heartbeat{Heartbeat: req}})
}

func (w *Worker) askForLeases() {
	if w.stopping || w.sess == nil {
		return
	}
	n := creditToAsk(w.opts.Concurrency, w.opts.Prefetch, len(w.held), w.outstanding)
	if n == 0 {
		return
	}
	w.outstanding += n
	w.sess.out.push(&pb.WorkRequest{Msg: &pb.WorkRequest_Lease{Lease: &pb.LeaseRequest{Count: uint32(n)}}})
}

// -- running handlers --------------------------------------------------------------------------

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
		w.logf("leaf %s of %s timed out (leaf_timeout)", h.lc.Leaf, h.lease.GetJobId())
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
		message := f.err.Error()
		if len(message) > MaxMessage {
			message = message[:MaxMessage]
		}
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

// -- results and stopping ----------------------------------------------------------------------

func (w *Worker) scheduleFlush() {
	if w.results.pendingCount() >= CompletionBatch {
		w.flush()
	} else if w.flushC == nil {
		w.flushC = time.After(CompletionFlush)
	}
}

// flush sends every pending result; without a stream they wait for the next one.
func (w *Worker) flush() {
	w.flushC = nil
	if w.sess == nil || w.results.pendingCount() == 0 {
		return
	}
	for _, msg := range w.results.take(w.opts.WorkerID) {
		w.sess.out.push(msg)
	}
}

func (w *Worker) beginStop() {
	w.stopping = true
	w.logf("stopping: giving back %d waiting leases, draining %d running", len(w.waiting), w.running+w.probing)
	for _, h := range w.waiting {
		w.giveBack(h, nil)
	}
	w.waiting = nil
	w.flush()
}

// abandonRunning gives back the leases whose handlers ignored their cancelled context.
func (w *Worker) abandonRunning() {
	for _, h := range w.held {
		if h.stop == nil {
			continue
		}
		w.logf("handler of lease %d of %s did not return: giving the lease back without it", h.lease.GetFence(), h.lease.GetJobId())
		h.abandoned = true
		if h.probe {
			w.probing--
		} else {
			w.running--
		}
		var cp *checkpoint
		if h.lc != nil {
			cp = h.lc.lastCheckpoint()
		}
		w.giveBack(h, cp)
	}
	w.flush()
}
