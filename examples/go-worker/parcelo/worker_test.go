package parcelo

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "parcelo.dev/gen/parcelo/v1"
)

// An in-process fake coordinator whose Work streams the test scripts message by message, to pin
// down the worker's side of the protocol (the Python tests run it against the real coordinator).

type fakeCoordinator struct {
	pb.UnimplementedWorkerServiceServer
	streams chan *fakeStream
	// holdOpen: streams stay open after the worker half-closes, until the test ends them.
	holdOpen atomic.Bool
}

type fakeStream struct {
	srv pb.WorkerService_WorkServer
	in  chan *pb.WorkRequest // closed when the worker half-closes or the stream breaks
	end chan error           // the status to end the stream with
	// halfClosed is closed when the worker half-closes; the stream then ends (as the real
	// coordinator's does) unless it is held open to send more.
	halfClosed chan struct{}
	holdOpen   bool
}

func (f *fakeCoordinator) Work(srv pb.WorkerService_WorkServer) error {
	s := &fakeStream{
		srv: srv, in: make(chan *pb.WorkRequest, 1000), end: make(chan error, 1),
		halfClosed: make(chan struct{}), holdOpen: f.holdOpen.Load(),
	}
	go func() {
		defer close(s.in)
		for {
			msg, err := srv.Recv()
			if err != nil {
				if err == io.EOF {
					close(s.halfClosed)
				}
				return
			}
			s.in <- msg
		}
	}()
	f.streams <- s
	halfClosed := s.halfClosed
	if s.holdOpen {
		halfClosed = nil
	}
	select {
	case err := <-s.end:
		return err
	case <-halfClosed:
		time.Sleep(10 * time.Millisecond) // the test reads what came before the half-close
		return nil
	case <-srv.Context().Done():
		return nil
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// harness: a fake coordinator and a running worker; stop drains the worker and returns Run's error.
type harness struct {
	t       *testing.T
	fake    *fakeCoordinator
	worker  *Worker
	stop    context.CancelFunc
	runErr  chan error
	logs    *syncBuffer
	stopped bool
}

func newHarness(t *testing.T, handler Handler, concurrency, prefetch int, tune ...func(*Options)) *harness {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer()
	fake := &fakeCoordinator{streams: make(chan *fakeStream, 10)}
	pb.RegisterWorkerServiceServer(server, fake)
	go func() { _ = server.Serve(lis) }()
	logs := &syncBuffer{}
	opts := Options{
		Target: lis.Addr().String(), Handler: handler, Concurrency: concurrency, Prefetch: prefetch,
		WorkerID: "test", DrainTimeout: 2 * time.Second, Logger: log.New(logs, "", log.Lmicroseconds),
	}
	for _, f := range tune {
		f(&opts)
	}
	w, err := NewWorker(opts)
	if err != nil {
		t.Fatal(err)
	}
	w.cancelGrace = 200 * time.Millisecond
	ctx, stop := context.WithCancel(context.Background())
	h := &harness{t: t, fake: fake, worker: w, stop: stop, runErr: make(chan error, 1), logs: logs}
	go func() { h.runErr <- w.Run(ctx) }()
	t.Cleanup(func() {
		if !h.stopped {
			stop()
			select {
			case <-h.runErr:
			case <-time.After(20 * time.Second):
			}
		}
		server.Stop()
		if t.Failed() {
			t.Logf("worker log:\n%s", logs.String())
		}
	})
	return h
}

// accept takes the worker's next stream: hello, then a welcome with a 20 ms heartbeat interval.
func (h *harness) accept() *fakeStream {
	h.t.Helper()
	var s *fakeStream
	select {
	case s = <-h.fake.streams:
	case <-time.After(5 * time.Second):
		h.t.Fatal("the worker did not open a stream")
	}
	hello := h.next(s, "hello").GetHello()
	if hello.GetWorkerId() != "test" || hello.GetSdk() != SDK || len(hello.GetQueues()) != 1 || hello.GetQueues()[0] != "default" {
		h.t.Fatalf("hello: %v", hello)
	}
	h.send(s, &pb.WorkResponse{Msg: &pb.WorkResponse_Welcome{Welcome: &pb.Welcome{
		HeartbeatInterval: durationpb.New(20 * time.Millisecond),
	}}})
	return s
}

// next is the next request of kind on s (those of other kinds are skipped); "" for end of stream.
func (h *harness) next(s *fakeStream, kind string) *pb.WorkRequest {
	h.t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case msg, ok := <-s.in:
			if !ok {
				if kind == "" {
					return nil
				}
				h.t.Fatalf("the stream ended while waiting for %s", kind)
			}
			if kindOf(msg) == kind {
				return msg
			}
		case <-deadline:
			h.t.Fatalf("no %s request within 5 s", kind)
		}
	}
}

func (h *harness) send(s *fakeStream, msg *pb.WorkResponse) {
	h.t.Helper()
	if err := s.srv.Send(msg); err != nil {
		h.t.Fatalf("send: %v", err)
	}
}

func (h *harness) grant(s *fakeStream, leases ...*pb.Lease) {
	h.grantWith(s, &pb.JobInfo{JobId: "j", ParamsJson: `{"n": 1}`, LeaseTtl: durationpb.New(3 * time.Second)}, leases...)
}

func (h *harness) grantWith(s *fakeStream, info *pb.JobInfo, leases ...*pb.Lease) {
	h.send(s, &pb.WorkResponse{Msg: &pb.WorkResponse_Grant{Grant: &pb.LeaseGrant{
		Leases: leases, Jobs: []*pb.JobInfo{info},
	}}})
}

func leaf(fence, start, end uint64) *pb.Lease {
	return &pb.Lease{Fence: fence, JobId: "j", Kind: pb.LeaseKind_LEASE_KIND_LEAF, Start: start, End: end, Attempt: 1, Cursor: start}
}

func (h *harness) accept1(s *fakeStream, kind string, req *pb.WorkRequest) {
	var fences []uint64
	var id uint64
	if kind == "complete" {
		fences, id = req.GetComplete().GetFences(), req.GetComplete().GetRequestId()
		h.send(s, &pb.WorkResponse{Msg: &pb.WorkResponse_Complete{Complete: &pb.CompleteResponse{Accepted: fences, RequestId: id}}})
		return
	}
	for _, f := range req.GetFail().GetFailures() {
		fences = append(fences, f.GetFence())
	}
	h.send(s, &pb.WorkResponse{Msg: &pb.WorkResponse_Fail{Fail: &pb.FailResponse{Accepted: fences, RequestId: req.GetFail().GetRequestId()}}})
}

func (h *harness) finish() error {
	h.t.Helper()
	h.stop()
	h.stopped = true
	select {
	case err := <-h.runErr:
		return err
	case <-time.After(20 * time.Second):
		h.t.Fatal("Run did not return after the stop")
	}
	return nil
}

func TestUnansweredResultsAreSentAgainAfterAReconnect(t *testing.T) {
	ran := make(chan *LeaseContext, 1)
	h := newHarness(t, func(ctx context.Context, r Range, lc *LeaseContext) error {
		ran <- lc
		return nil
	}, 2, 2)
	s := h.accept()
	if n := h.next(s, "lease").GetLease().GetCount(); n != 4 {
		t.Fatalf("first credit: %d, want concurrency + prefetch = 4", n)
	}
	h.grant(s, leaf(7, 0, 100))
	lc := <-ran
	if lc.JobID != "j" || string(lc.Params) != `{"n": 1}` || lc.Fence != 7 || lc.Leaf != (Range{0, 100}) || lc.Details != nil {
		t.Fatalf("lease context: %+v", lc)
	}
	first := h.next(s, "complete").GetComplete()
	if len(first.GetFences()) != 1 || first.GetFences()[0] != 7 || first.GetRequestId() == 0 {
		t.Fatalf("complete: %v", first)
	}
	s.end <- status.Error(codes.Unavailable, "coordinator restarting") // the answer is lost

	s2 := h.accept()
	again := h.next(s2, "complete")
	if got := again.GetComplete(); len(got.GetFences()) != 1 || got.GetFences()[0] != 7 || got.GetRequestId() <= first.GetRequestId() {
		t.Fatalf("resent: %v (first request %d)", got, first.GetRequestId())
	}
	h.accept1(s2, "complete", again)
	if n := h.next(s2, "lease").GetLease().GetCount(); n != 4 {
		t.Fatalf("credit on the new stream: %d", n)
	}
	if err := h.finish(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if st := h.worker.Stats(); st.Completed != 1 || st.Connects != 2 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestHeartbeatsCarryTheNewestCheckpointAndDirectivesStopHandlers(t *testing.T) {
	proceed := make(chan struct{})
	stopped := make(chan uint64, 2)
	h := newHarness(t, func(ctx context.Context, r Range, lc *LeaseContext) error {
		<-proceed
		lc.Checkpoint(r.Start+5, []byte("five"))
		lc.Progress("working")
		<-ctx.Done()
		stopped <- lc.Fence
		return ctx.Err()
	}, 2, -1) // no prefetch
	s := h.accept()
	h.next(s, "lease")
	h.grant(s, leaf(1, 0, 10), leaf(2, 10, 20))
	beat := h.next(s, "heartbeat").GetHeartbeat()
	if len(beat.GetLeases()) != 2 || beat.GetLeases()[0].Cursor != nil || beat.GetLeases()[1].Cursor != nil {
		t.Fatalf("a heartbeat before any checkpoint sets no cursor: %v", beat)
	}
	close(proceed)
	for {
		beat = h.next(s, "heartbeat").GetHeartbeat()
		l := beat.GetLeases()
		if l[0].Cursor != nil && l[1].Cursor != nil {
			if l[0].GetCursor() != 5 || l[1].GetCursor() != 15 || string(l[0].GetDetails()) != "five" {
				t.Fatalf("checkpoints: %v", beat)
			}
			break
		}
	}
	h.send(s, &pb.WorkResponse{Msg: &pb.WorkResponse_Heartbeat{Heartbeat: &pb.HeartbeatResponse{Directives: []*pb.Directive{
		{Fence: 1, Action: pb.DirectiveAction_DIRECTIVE_ACTION_RELEASE},
		{Fence: 2, Action: pb.DirectiveAction_DIRECTIVE_ACTION_LOST},
	}}}})
	got := map[uint64]bool{<-stopped: true, <-stopped: true}
	if !got[1] || !got[2] {
		t.Fatalf("both handlers are cancelled: %v", got)
	}
	fail := h.next(s, "fail")
	failures := fail.GetFail().GetFailures()
	if len(failures) != 1 || failures[0].GetFence() != 1 || !failures[0].GetReleased() || failures[0].Cursor == nil || failures[0].GetCursor() != 5 {
		t.Fatalf("RELEASE gives the lease back with its checkpoint, LOST reports nothing: %v", fail)
	}
	h.accept1(s, "fail", fail)
	if err := h.finish(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if st := h.worker.Stats(); st.Released != 1 || st.Dropped != 1 || st.Completed != 0 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestStopGivesBackWaitingLeasesLetsRunningOnesFinishAndClosesTheStream(t *testing.T) {
	release := make(chan struct{})
	h := newHarness(t, func(ctx context.Context, r Range, lc *LeaseContext) error {
		if r.Start == 0 {
			<-release
			return nil
		}
		return Permanent(context.Canceled) // never runs: its lease waits for the only slot
	}, 1, 2)
	s := h.accept()
	h.next(s, "lease")
	h.grant(s, leaf(1, 0, 10), leaf(2, 10, 20), leaf(3, 20, 30))
	time.Sleep(50 * time.Millisecond) // the first handler runs
	h.stop()
	h.stopped = true
	fail := h.next(s, "fail")
	var back []uint64
	for _, f := range fail.GetFail().GetFailures() {
		if !f.GetReleased() || f.Cursor != nil {
			t.Fatalf("given back unstarted: %v", f)
		}
		back = append(back, f.GetFence())
	}
	if len(back) != 2 || back[0] != 2 || back[1] != 3 {
		t.Fatalf("gave back %v, want [2 3]", back)
	}
	h.accept1(s, "fail", fail)
	close(release)
	done := h.next(s, "complete")
	if f := done.GetComplete().GetFences(); len(f) != 1 || f[0] != 1 {
		t.Fatalf("the running leaf completes: %v", done)
	}
	select {
	case err := <-h.runErr:
		t.Fatalf("Run returned before its results were answered: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	h.accept1(s, "complete", done)
	if msg := h.next(s, ""); msg != nil {
		t.Fatalf("after the answers the worker half-closes: got %v", msg)
	}
	s.end <- nil
	select {
	case err := <-h.runErr:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
}

func TestFailuresCarryMessageCheckpointAndPermanence(t *testing.T) {
	h := newHarness(t, func(ctx context.Context, r Range, lc *LeaseContext) error {
		if r.Start == 0 {
			lc.Checkpoint(3, []byte("three"))
			return context.DeadlineExceeded // any error: retryable
		}
		if r.Start == 10 {
			panic("boom")
		}
		if r.Start == 30 {
			return errors.New("bad \xff byte " + strings.Repeat("é", MaxMessage))
		}
		return Permanent(errTest)
	}, 4, -1) // no prefetch
	s := h.accept()
	h.next(s, "lease")
	h.grant(s, leaf(1, 0, 10), leaf(2, 10, 20), leaf(3, 20, 30), leaf(4, 30, 40))
	byFence := map[uint64]*pb.Failure{}
	for len(byFence) < 4 {
		fail := h.next(s, "fail")
		for _, f := range fail.GetFail().GetFailures() {
			byFence[f.GetFence()] = f
		}
		h.accept1(s, "fail", fail)
	}
	if f := byFence[1]; f.GetPermanent() || f.Cursor == nil || f.GetCursor() != 3 || string(f.GetDetails()) != "three" || f.GetReleased() {
		t.Errorf("retryable with checkpoint: %v", f)
	}
	if f := byFence[2]; f.GetPermanent() || f.Cursor != nil || f.GetMessage() != "panic: boom" {
		t.Errorf("a panic fails the attempt: %v", f)
	}
	if f := byFence[3]; !f.GetPermanent() || f.GetMessage() != "bad record" {
		t.Errorf("permanent: %v", f)
	}
	if m := byFence[4].GetMessage(); !utf8.ValidString(m) || len(m) > MaxMessage || !strings.HasPrefix(m, "bad \uFFFD byte é") {
		t.Errorf("a message is made valid UTF-8 and cut at a character: %q...", m[:20])
	}
	if err := h.finish(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

var errTest = errorString("bad record")

type errorString string

func (e errorString) Error() string { return string(e) }

func TestALeafTimeoutEndsTheHandlersContextAndReportsNothing(t *testing.T) {
	deadline := make(chan error, 1)
	h := newHarness(t, func(ctx context.Context, r Range, lc *LeaseContext) error {
		<-ctx.Done()
		deadline <- ctx.Err()
		return ctx.Err()
	}, 1, -1) // no prefetch
	s := h.accept()
	h.next(s, "lease")
	h.grantWith(s, &pb.JobInfo{JobId: "j", LeafTimeout: durationpb.New(100 * time.Millisecond)}, leaf(1, 0, 10))
	select {
	case err := <-deadline:
		if err != context.DeadlineExceeded {
			t.Fatalf("ctx ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the leaf timeout did not end the handler's context")
	}
	if n := h.next(s, "lease").GetLease().GetCount(); n != 1 {
		t.Fatalf("the slot is free again: credit %d", n)
	}
	if err := h.finish(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if st := h.worker.Stats(); st.Dropped != 1 || st.Failed != 0 || st.Completed != 0 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestJobGoneStopsTheJobsOtherHandlers(t *testing.T) {
	stopped := make(chan uint64, 1)
	h := newHarness(t, func(ctx context.Context, r Range, lc *LeaseContext) error {
		if lc.Fence == 1 {
			return nil
		}
		<-ctx.Done()
		stopped <- lc.Fence
		return ctx.Err()
	}, 2, -1) // no prefetch
	s := h.accept()
	h.next(s, "lease")
	h.grant(s, leaf(1, 0, 10), leaf(2, 10, 20))
	done := h.next(s, "complete").GetComplete()
	h.send(s, &pb.WorkResponse{Msg: &pb.WorkResponse_Complete{Complete: &pb.CompleteResponse{
		Rejected:  []*pb.Rejection{{Fence: 1, Reason: pb.RejectReason_REJECT_REASON_JOB_GONE, Message: "cancelled"}},
		RequestId: done.GetRequestId(),
	}}})
	select {
	case fence := <-stopped:
		if fence != 2 {
			t.Fatalf("stopped %d", fence)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("JOB_GONE did not stop the job's other handler")
	}
	if err := h.finish(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if st := h.worker.Stats(); st.Rejected != 1 || st.Dropped != 1 || st.Failed != 0 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestPastTheDrainTimeoutHandlersAreCancelledAndTheirLeasesGivenBack(t *testing.T) {
	h := newHarness(t, func(ctx context.Context, r Range, lc *LeaseContext) error {
		lc.Checkpoint(r.Start+2, nil)
		if r.Start == 0 {
			<-ctx.Done() // honours the cancellation
			return ctx.Err()
		}
		time.Sleep(time.Hour) // ignores it: abandoned after the grace
		return nil
	}, 2, -1, func(o *Options) { o.DrainTimeout = 100 * time.Millisecond })
	s := h.accept()
	h.next(s, "lease")
	h.grant(s, leaf(1, 0, 10), leaf(2, 10, 20))
	time.Sleep(50 * time.Millisecond)
	h.stop()
	h.stopped = true
	back := map[uint64]uint64{}
	for len(back) < 2 {
		fail := h.next(s, "fail")
		for _, f := range fail.GetFail().GetFailures() {
			if !f.GetReleased() || f.Cursor == nil {
				t.Fatalf("given back with its checkpoint: %v", f)
			}
			back[f.GetFence()] = f.GetCursor()
		}
		h.accept1(s, "fail", fail)
	}
	if back[1] != 2 || back[2] != 12 {
		t.Fatalf("released at %v", back)
	}
	s.end <- nil
	select {
	case err := <-h.runErr:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
}

func TestStopEndsOutstandingCreditWithItsStreamAndDrainsOnANewOne(t *testing.T) {
	release := make(chan struct{})
	h := newHarness(t, func(ctx context.Context, r Range, lc *LeaseContext) error {
		<-release
		return nil
	}, 2, 2)
	h.fake.holdOpen.Store(true) // the first stream: the test sends a grant after the half-close
	s := h.accept()
	if n := h.next(s, "lease").GetLease().GetCount(); n != 4 {
		t.Fatalf("credit %d", n)
	}
	h.grant(s, leaf(1, 0, 10)) // 3 more are outstanding
	time.Sleep(50 * time.Millisecond)
	h.stop()
	h.stopped = true
	if msg := h.next(s, ""); msg != nil {
		t.Fatalf("the stop half-closes the stream holding credit: got %v", msg)
	}
	h.grant(s, leaf(9, 90, 100)) // crossed the half-close: given back on the next stream
	s.end <- nil
	h.fake.holdOpen.Store(false)

	s2 := h.accept()
	var released, completed []uint64
	for msg := range s2.in {
		switch kindOf(msg) {
		case "lease":
			t.Fatalf("a draining worker asks for no credit: %v", msg)
		case "fail":
			for _, f := range msg.GetFail().GetFailures() {
				if f.GetReleased() {
					released = append(released, f.GetFence())
				}
			}
			h.accept1(s2, "fail", msg)
			close(release) // now the running leaf finishes
		case "complete":
			completed = append(completed, msg.GetComplete().GetFences()...)
			h.accept1(s2, "complete", msg)
		}
	}
	if len(released) != 1 || released[0] != 9 || len(completed) != 1 || completed[0] != 1 {
		t.Fatalf("released %v, completed %v", released, completed)
	}
	select {
	case err := <-h.runErr:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
}
