package parcelo

import (
	"sort"

	pb "parcelo.dev/gen/parcelo/v1"
)

type resultKind int

const (
	resultComplete resultKind = iota
	resultSkip
	resultFail // a failure or a release: both travel in FailRequest
)

// result is one lease's result, kept until the coordinator answers it.
type result struct {
	kind    resultKind
	failure *pb.Failure // resultFail only
	jobID   string      // to stop the job's other handlers when the answer is JOB_GONE
}

// results holds what the worker owes the coordinator: results not yet sent (pending, in the
// order they were made) and every result not yet answered (unanswered, by fence), sent or not.
// A reconnect makes every unanswered result pending again, so it is sent again on the new stream;
// the coordinator accepts a result sent again and changes nothing (docs/protocol.md, "Sent again").
// Owned by the worker's loop goroutine; not safe for concurrent use.
type results struct {
	pending    []uint64
	unanswered map[uint64]result
	nextID     uint64
}

func newResults() *results {
	return &results{unanswered: map[uint64]result{}}
}

// add records the result of the lease fence, to be sent with the next batch.
func (r *results) add(fence uint64, res result) {
	if _, dup := r.unanswered[fence]; !dup {
		r.pending = append(r.pending, fence)
	}
	r.unanswered[fence] = res
}

// pendingCount is how many results wait to be sent.
func (r *results) pendingCount() int { return len(r.pending) }

// unansweredCount is how many results wait for an answer, sent or not.
func (r *results) unansweredCount() int { return len(r.unanswered) }

// take builds the messages that send every pending result: CompleteRequests (fences and skipped)
// and FailRequests of at most CompletionBatch results each, each with a new request_id.
func (r *results) take(workerID string) []*pb.WorkRequest {
	var out []*pb.WorkRequest
	var fences, skipped []uint64
	var failures []*pb.Failure
	flushComplete := func() {
		if len(fences)+len(skipped) == 0 {
			return
		}
		r.nextID++
		out = append(out, &pb.WorkRequest{Msg: &pb.WorkRequest_Complete{Complete: &pb.CompleteRequest{
			Fences: fences, Skipped: skipped, WorkerId: workerID, RequestId: r.nextID,
		}}})
		fences, skipped = nil, nil
	}
	flushFail := func() {
		if len(failures) == 0 {
			return
		}
		r.nextID++
		out = append(out, &pb.WorkRequest{Msg: &pb.WorkRequest_Fail{Fail: &pb.FailRequest{
			Failures: failures, WorkerId: workerID, RequestId: r.nextID,
		}}})
		failures = nil
	}
	for _, fence := range r.pending {
		res, ok := r.unanswered[fence]
		if !ok {
			continue // answered meanwhile (a reply to an earlier send of it)
		}
		switch res.kind {
		case resultComplete:
			fences = append(fences, fence)
		case resultSkip:
			skipped = append(skipped, fence)
		case resultFail:
			failures = append(failures, res.failure)
		}
		if len(fences)+len(skipped) >= CompletionBatch {
			flushComplete()
		}
		if len(failures) >= CompletionBatch {
			flushFail()
		}
	}
	flushComplete()
	flushFail()
	r.pending = nil
	return out
}

// answered forgets the results of fences the coordinator answered (accepted or rejected).
func (r *results) answered(fence uint64) {
	delete(r.unanswered, fence)
}

// resendAll makes every unanswered result pending again (after a reconnect), in fence order.
func (r *results) resendAll() {
	r.pending = r.pending[:0]
	for fence := range r.unanswered {
		r.pending = append(r.pending, fence)
	}
	sort.Slice(r.pending, func(i, j int) bool { return r.pending[i] < r.pending[j] })
}
