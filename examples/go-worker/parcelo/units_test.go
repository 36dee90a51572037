package parcelo

import (
	"errors"
	"fmt"
	"math/rand"
	"testing"
	"time"

	pb "parcelo.dev/gen/parcelo/v1"
)

func TestCreditKeepsConcurrencyPlusPrefetchAndAsksInBatches(t *testing.T) {
	cases := []struct{ concurrency, prefetch, held, outstanding, want int }{
		{4, 64, 0, 0, 68},  // a new stream asks for everything it can hold
		{4, 64, 68, 0, 0},  // full
		{4, 64, 60, 0, 0},  // 8 free: below the batch of 64/4 = 16, wait
		{4, 64, 52, 0, 16}, // a batch
		{4, 64, 10, 58, 0}, // what is outstanding counts: never more than 68 in all
		{1, 0, 0, 0, 1},    // no prefetch: one at a time
		{1, 0, 1, 0, 0},
		{4, 2, 5, 0, 1},   // batch of at least 1
		{4, 64, 0, 60, 0}, // 8 more would do, but credit is coming: wait for a batch
		{2, 3, 0, 0, 5},
	}
	for _, c := range cases {
		got := creditToAsk(c.concurrency, c.prefetch, c.held, c.outstanding)
		if got != c.want {
			t.Errorf("creditToAsk(%d, %d, %d, %d) = %d, want %d", c.concurrency, c.prefetch, c.held, c.outstanding, got, c.want)
		}
	}
}

func TestBackoffGrowsToItsCapWithJitterAndResets(t *testing.T) {
	b := newBackoff(100*time.Millisecond, time.Second, rand.New(rand.NewSource(1)))
	base := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, ms := range base {
		d := b.delay()
		lo, hi := ms*time.Millisecond*8/10, ms*time.Millisecond*12/10
		if d < lo || d > hi {
			t.Fatalf("delay %d = %v, want within [%v, %v]", i, d, lo, hi)
		}
	}
	b.reset()
	if d := b.delay(); d > 120*time.Millisecond {
		t.Fatalf("after reset: %v", d)
	}
}

func TestHeartbeatIntervalIsTheShorterOfTheWelcomesAndAThirdOfTheShortestTTL(t *testing.T) {
	if got := heartbeatInterval(2*time.Second, []time.Duration{9 * time.Second}); got != 2*time.Second {
		t.Errorf("welcome interval shorter than TTL / 3: %v", got)
	}
	if got := heartbeatInterval(2*time.Second, []time.Duration{300 * time.Millisecond}); got != 100*time.Millisecond {
		t.Errorf("TTL / 3 shorter than the welcome interval: %v", got)
	}
	if got := heartbeatInterval(20*time.Millisecond, nil); got != 20*time.Millisecond {
		t.Errorf("welcome interval, nothing held: %v", got)
	}
	if got := heartbeatInterval(0, []time.Duration{3 * time.Second, 900 * time.Millisecond}); got != 300*time.Millisecond {
		t.Errorf("shortest TTL / 3: %v", got)
	}
	if got := heartbeatInterval(0, nil); got != DefaultLeaseTTL/3 {
		t.Errorf("nothing held: %v", got)
	}
	if got := heartbeatInterval(0, []time.Duration{0}); got != DefaultLeaseTTL/3 {
		t.Errorf("unknown TTL: %v", got)
	}
	if got := heartbeatInterval(0, []time.Duration{60 * time.Millisecond}); got != minHeartbeat {
		t.Errorf("floor: %v", got)
	}
}

func TestResultsBatchWithRequestIDsAndAreResentUntilAnswered(t *testing.T) {
	r := newResults()
	for fence := uint64(1); fence <= CompletionBatch+2; fence++ {
		r.add(fence, result{kind: resultComplete})
	}
	cursor := uint64(7)
	r.add(1000, result{kind: resultFail, failure: &pb.Failure{Fence: 1000, Message: "x", Cursor: &cursor}})
	r.add(1001, result{kind: resultSkip})
	msgs := r.take("w")
	if len(msgs) != 3 {
		t.Fatalf("want 2 complete requests and 1 fail request, got %d", len(msgs))
	}
	first, second, fail := msgs[0].GetComplete(), msgs[1].GetComplete(), msgs[2].GetFail()
	if len(first.GetFences()) != CompletionBatch || first.GetRequestId() != 1 || first.GetWorkerId() != "w" {
		t.Errorf("first batch: %d fences, request %d", len(first.GetFences()), first.GetRequestId())
	}
	if len(second.GetFences()) != 2 || len(second.GetSkipped()) != 1 || second.GetRequestId() != 2 {
		t.Errorf("second batch: %v %v %d", second.GetFences(), second.GetSkipped(), second.GetRequestId())
	}
	if fail.GetRequestId() != 3 || len(fail.GetFailures()) != 1 || fail.GetFailures()[0].GetCursor() != 7 {
		t.Errorf("fail batch: %v", fail)
	}
	if r.pendingCount() != 0 || r.unansweredCount() != CompletionBatch+4 {
		t.Fatalf("after take: %d pending, %d unanswered", r.pendingCount(), r.unansweredCount())
	}
	for fence := uint64(1); fence <= CompletionBatch; fence++ {
		r.answered(fence)
	}
	r.resendAll() // a reconnect: what was not answered goes again, in fence order
	again := r.take("w")
	if len(again) != 2 {
		t.Fatalf("resend: %d messages", len(again))
	}
	got := fmt.Sprint(again[0].GetComplete().GetFences(), again[0].GetComplete().GetSkipped())
	want := fmt.Sprint([]uint64{CompletionBatch + 1, CompletionBatch + 2}, []uint64{1001})
	if got != want || again[0].GetComplete().GetRequestId() != 4 {
		t.Errorf("resent %s (request %d), want %s", got, again[0].GetComplete().GetRequestId(), want)
	}
	if again[1].GetFail().GetFailures()[0].GetFence() != 1000 {
		t.Errorf("resent failure: %v", again[1].GetFail())
	}
}

func TestPermanentErrorsAreFoundThroughWrapping(t *testing.T) {
	base := errors.New("bad record")
	if !IsPermanent(fmt.Errorf("leaf 7: %w", Permanent(base))) {
		t.Error("a wrapped PermanentError is permanent")
	}
	if IsPermanent(base) || IsPermanent(nil) || Permanent(nil) != nil {
		t.Error("plain errors and nil are not permanent")
	}
	if !errors.Is(Permanent(base), base) || Permanent(base).Error() != "bad record" {
		t.Error("PermanentError unwraps to its error and keeps its message")
	}
}

func TestCheckpointIsClampedIntoTheLeaf(t *testing.T) {
	lc := &LeaseContext{Leaf: Range{100, 200}}
	if lc.lastCheckpoint() != nil {
		t.Fatal("no checkpoint yet")
	}
	details := []byte("d")
	lc.Checkpoint(250, details)
	details[0] = 'x' // the caller's slice may be reused
	if cp := lc.lastCheckpoint(); cp.cursor != 200 || string(cp.details) != "d" {
		t.Errorf("clamped to the end: %+v", cp)
	}
	lc.Checkpoint(50, nil)
	if cp := lc.lastCheckpoint(); cp.cursor != 100 {
		t.Errorf("clamped to the start: %+v", cp)
	}
	lc.Progress("half")
	if lc.takeMessage() != "half" || lc.takeMessage() != "" {
		t.Error("a progress message is sent once")
	}
}
