package parcelo

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"

	pb "parcelo.dev/gen/parcelo/v1"
)

// session is one Work stream, from its welcome until it breaks. The loop goroutine sends on it
// through its outbox; a writer goroutine is the only one that calls Send (gRPC streams allow one
// sender at a time) and the session goroutine the only one that calls Recv.
type session struct {
	out *outbox
	// heartbeat is the Welcome's heartbeat_interval (0: unset).
	heartbeat time.Duration
	// cancel ends the stream at once.
	cancel context.CancelFunc
	// retired: the worker half-closed it to end its credit and wants a new stream at once.
	retired atomic.Bool
}

// Events from the session goroutine to the loop.
type (
	sessionUp struct{ s *session }
	// sessionDown: the stream s ended (err nil: the coordinator ended it cleanly).
	sessionDown struct {
		s   *session
		err error
	}
	received struct {
		s   *session
		msg *pb.WorkResponse
	}
)

// outbox is an unbounded queue of requests for one stream: the loop never blocks on a slow
// stream (heartbeats and results queue up; gRPC flow control paces the writer).
type outbox struct {
	mu     sync.Mutex
	queue  []*pb.WorkRequest
	closed bool
	ready  chan struct{} // one token when the queue or closed changed
}

func newOutbox() *outbox { return &outbox{ready: make(chan struct{}, 1)} }

func (o *outbox) push(msg *pb.WorkRequest) {
	o.mu.Lock()
	if !o.closed {
		o.queue = append(o.queue, msg)
	}
	o.mu.Unlock()
	o.wake()
}

// close: the writer sends what is queued, then half-closes the stream.
func (o *outbox) close() {
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
	o.wake()
}

func (o *outbox) wake() {
	select {
	case o.ready <- struct{}{}:
	default:
	}
}

// pop waits for the next request; ok is false once the outbox is closed and empty, or ctx ends.
func (o *outbox) pop(ctx context.Context) (msg *pb.WorkRequest, ok bool) {
	for {
		o.mu.Lock()
		if len(o.queue) > 0 {
			msg = o.queue[0]
			o.queue[0] = nil
			o.queue = o.queue[1:]
			o.mu.Unlock()
			return msg, true
		}
		closed := o.closed
		o.mu.Unlock()
		if closed {
			return nil, false
		}
		select {
		case <-o.ready:
		case <-ctx.Done():
			return nil, false
		}
	}
}

// connectForever opens sessions one after another until ctx ends, waiting an exponential backoff
// with jitter between them (from the initial delay again after a stream that got a welcome).
func (w *Worker) connectForever(ctx context.Context, events chan<- interface{}) {
	delays := newBackoff(ReconnectInitial, ReconnectMax, w.rng)
	for {
		welcomed, s, err := w.session(ctx, events)
		if ctx.Err() != nil || w.closing.Load() {
			return
		}
		if s != nil && s.retired.Load() {
			delays.reset()
			continue // the stop ended that stream on purpose: the next one at once
		}
		if welcomed {
			delays.reset()
		}
		if err != nil {
			w.logf("stream to %s ended: %v", w.opts.Target, err)
		} else {
			w.logf("stream to %s ended by the coordinator", w.opts.Target)
		}
		select {
		case <-time.After(delays.delay()):
		case <-ctx.Done():
			return
		}
	}
}

// session runs one stream: dial, hello, welcome, then reads until it breaks. It returns the
// session once the stream got as far as the welcome.
func (w *Worker) session(ctx context.Context, events chan<- interface{}) (bool, *session, error) {
	dial := append([]grpc.DialOption{
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxReceiveMessage)),
		// The channel's own reconnects as fast as ours (grpc-go's default backoff grows to 120 s).
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: grpcbackoff.Config{
				BaseDelay: ReconnectInitial, Multiplier: 2, Jitter: 0.2, MaxDelay: ReconnectMax,
			},
			MinConnectTimeout: welcomeWait,
		}),
	}, w.opts.DialOptions...)
	if w.opts.TransportCredentials != nil {
		dial = append(dial, grpc.WithTransportCredentials(w.opts.TransportCredentials))
	} else {
		dial = append(dial, grpc.WithInsecure())
	}
	conn, err := grpc.DialContext(ctx, w.opts.Target, dial...)
	if err != nil {
		return false, nil, err
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := pb.NewWorkerServiceClient(conn).Work(sctx)
	if err != nil {
		return false, nil, err
	}
	hello := &pb.Hello{WorkerId: w.opts.WorkerID, Queues: w.opts.Queues, Sdk: SDK}
	if err := stream.Send(&pb.WorkRequest{Msg: &pb.WorkRequest_Hello{Hello: hello}}); err != nil {
		return false, nil, recvError(stream, err)
	}
	// A coordinator that accepts the stream but never answers hello must not hold us for ever.
	timer := time.AfterFunc(welcomeWait, cancel)
	first, err := stream.Recv()
	timer.Stop()
	if err != nil {
		return false, nil, err
	}
	welcome := first.GetWelcome()
	if welcome == nil {
		return false, nil, fmt.Errorf("coordinator answered hello with %T, not a welcome", first.GetMsg())
	}
	s := &session{out: newOutbox(), cancel: cancel}
	if d := welcome.GetHeartbeatInterval(); d != nil {
		s.heartbeat = d.AsDuration()
	}
	w.logf("connected to %s as %s (coordinator %s)", w.opts.Target, w.opts.WorkerID, welcome.GetCoordinatorVersion())

	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for {
			msg, ok := s.out.pop(sctx)
			if !ok {
				if sctx.Err() == nil {
					_ = stream.CloseSend() // the worker is done: half-close
				}
				return
			}
			if err := stream.Send(msg); err != nil {
				// A broken stream: Recv sees its error. A message that cannot be sent: end the
				// stream, or it would stay up with nothing written.
				w.logf("sending %s: %v", kindOf(msg), err)
				cancel()
				return
			}
		}
	}()
	defer func() { cancel(); <-writerDone }()

	if !send(ctx, events, sessionUp{s}) {
		return true, s, nil
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			if errors.Is(err, errEOF) {
				err = nil
			}
			send(ctx, events, sessionDown{s, err})
			return true, s, err
		}
		if !send(ctx, events, received{s, msg}) {
			return true, s, nil
		}
	}
}

// kindOf names a request by its oneof field, for logs.
func kindOf(msg *pb.WorkRequest) string {
	switch msg.GetMsg().(type) {
	case *pb.WorkRequest_Hello:
		return "hello"
	case *pb.WorkRequest_Lease:
		return "lease"
	case *pb.WorkRequest_Heartbeat:
		return "heartbeat"
	case *pb.WorkRequest_Complete:
		return "complete"
	case *pb.WorkRequest_Fail:
		return "fail"
	}
	return "?"
}

// recvError: a failed Send reports io.EOF; the stream's real status comes from Recv.
func recvError(stream pb.WorkerService_WorkClient, sendErr error) error {
	if _, err := stream.Recv(); err != nil && !errors.Is(err, errEOF) {
		return err
	}
	return sendErr
}

func send(ctx context.Context, events chan<- interface{}, ev interface{}) bool {
	select {
	case events <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}
