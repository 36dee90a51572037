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
	// retiring is the stream a stop half-closed to end its credit; read until it ends.
	retiring *session
	lastBeat time.Time
	flushC   <-chan time.Time
	stopping bool
	done     chan finished
	quit     chan struct{}
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
	var drainTimer, graceTimer, answerTimer, closeTimer, retireTimer <-chan time.Time
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
			retireTimer = w.beginStop()
			drainTimer = time.After(w.opts.DrainTimeout)
		case <-retireTimer:
			retireTimer = nil
			if w.retiring != nil {
				w.retiring.cancel() // the coordinator did not end it after the half-close
			}
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
		if phase == phaseAnswering && w.results.unansweredCount() == 0 && w.retiring == nil {
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

// beginStop asks for nothing more and gives back the leases not started. Credit still
// outstanding ends with its stream (this worker predates LeaseRequest.withdraw, the simpler way
// the Python SDK now takes it back): rather than be granted leases
// (its own give-backs among them) until that credit is spent, the worker half-closes the stream,
// reads it to its end (grants that crossed the half-close are given back too), and drains on a
// new stream that asks for nothing. Results the old stream did not answer are sent again there.
func (w *Worker) beginStop() (retireTimer <-chan time.Time) {
	w.stopping = true
	w.logf("stopping: giving back %d waiting leases, draining %d running", len(w.waiting), w.running+w.probing)
	if w.sess != nil && w.outstanding > 0 {
		w.logf("ending the stream's credit of %d: draining on a new stream", w.outstanding)
		w.retiring = w.sess
		w.retiring.retired.Store(true)
		w.retiring.out.close()
		w.sess = nil
		w.outstanding = 0
		retireTimer = time.After(closeWait)
	}
	for _, h := range w.waiting {
		w.giveBack(h, nil)
	}
	w.waiting = nil
	w.flush()
	return retireTimer
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
