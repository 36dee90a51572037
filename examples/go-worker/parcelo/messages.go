package parcelo

// What the worker does with each message of the coordinator, and what it sends on its own
// (heartbeats, credit): docs/protocol.md, "The Work stream" and "What every answer means".

import (
	"encoding/json"
	"sort"
	"time"

	pb "parcelo.dev/gen/parcelo/v1"
)

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
		if ev.s == w.retiring {
			w.retiring = nil
		}
	case received:
		if ev.s != w.sess && ev.s != w.retiring {
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
		case w.closing.Load():
			// Credit cannot be taken back: a grant that crosses the half-close cannot be given
			// back on this stream, and the lease expires after its TTL.
			w.logf("lease %d of %s granted after the stream was closed: it will expire", lease.GetFence(), lease.GetJobId())
			delete(w.held, lease.GetFence())
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
			// CONTINUE; SHRINK comes only for leases heartbeated as splittable, which this worker never does.
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
