package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"parcelo.dev/worker/parcelo"
)

// handlers the command can run, by -handler name.
var handlers = map[string]parcelo.Handler{
	"count":                countPrimes,
	"record":               record,
	"stall_first":          stallFirst,
	"checkpoint_then_fail": checkpointThenFail,
}

// pruners the command can answer probes of pruning jobs with, by -should-process name.
var pruners = map[string]parcelo.ShouldProcess{
	"keep_multiples": keepMultiples,
}

// -- the demo ----------------------------------------------------------------------------------

// countParams are the params of a counting job: {"out": "/some/dir"} (optional).
type countParams struct {
	// Out is a directory; when set, each leaf's count is written to OUT/<start>-<end>.
	Out string `json:"out"`
}

const chunk = 20000

// countPrimes counts the primes of its range a chunk at a time, checkpointing after each chunk
// with the count so far (8 bytes, big-endian) so a retry resumes where this attempt stopped, and
// stops as soon as its context is cancelled. The idiomatic shape of a handler.
func countPrimes(ctx context.Context, r parcelo.Range, lc *parcelo.LeaseContext) error {
	var params countParams
	if err := lc.ParamsInto(&params); err != nil {
		return parcelo.Permanent(fmt.Errorf("params: %w", err)) // retrying cannot fix bad params
	}
	var total uint64
	if len(lc.Details) == 8 && r.Start > lc.Leaf.Start {
		total = binary.BigEndian.Uint64(lc.Details) // resumed: the count up to the cursor
	}
	for pos := r.Start; pos < r.End; {
		if err := ctx.Err(); err != nil {
			return err // cancelled or lost: nothing is reported
		}
		upto := pos + chunk
		if upto > r.End || upto < pos {
			upto = r.End
		}
		total += primesIn(pos, upto)
		pos = upto
		lc.Checkpoint(pos, binary.BigEndian.AppendUint64(nil, total))
		lc.Progress(fmt.Sprintf("%d primes below %d", total, pos))
	}
	if params.Out == "" {
		return nil
	}
	// Written under a temporary name and renamed, so a retry rewrites it whole.
	if err := os.MkdirAll(params.Out, 0o755); err != nil {
		return err
	}
	path := filepath.Join(params.Out, fmt.Sprintf("%d-%d", lc.Leaf.Start, lc.Leaf.End))
	tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
	if err := os.WriteFile(tmp, []byte(fmt.Sprint(total)), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// primesIn counts the primes in [start, end) with a segmented sieve.
func primesIn(start, end uint64) uint64 {
	if end <= 2 {
		return 0
	}
	if start < 2 {
		start = 2
	}
	composite := make([]bool, end-start)
	for p := uint64(2); p*p < end; p++ {
		first := (start + p - 1) / p * p
		if first < p*p {
			first = p * p
		}
		for m := first; m < end; m += p {
			composite[m-start] = true
		}
	}
	var n uint64
	for _, c := range composite {
		if !c {
			n++
		}
	}
	return n
}

// -- handlers of tests/test_go_worker.py -----------------------------------------------------------

// keepMultiples keeps the ranges that contain a multiple of 10,000 (tests/handlers.py's rule).
func keepMultiples(ctx context.Context, r parcelo.Range, isLeaf bool) (bool, error) {
	return (r.End-1)/10000 >= (r.Start+9999)/10000, nil
}

// testParams are the params the test handlers read (as tests/handlers.py does).
type testParams struct {
	Sleep      float64 `json:"sleep"`
	StallStart uint64  `json:"stall_start"`
}

func paramsOf(lc *parcelo.LeaseContext) testParams {
	var p testParams
	_ = lc.ParamsInto(&p) // params that are not an object leave the defaults
	return p
}

// logRun appends "<event> <start> <end> <attempt> <pid>\n" to the file named by
// PARCELO_TEST_LOG in one O_APPEND write, the format of tests/handlers.py's _log (one short
// write is atomic, so several worker processes share the file).
func logRun(event string, r parcelo.Range, attempt uint32, last string) error {
	path := os.Getenv("PARCELO_TEST_LOG")
	if path == "" {
		return parcelo.Permanent(errors.New("PARCELO_TEST_LOG is not set"))
	}
	if last == "" {
		last = fmt.Sprint(os.Getpid())
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write([]byte(fmt.Sprintf("%s %d %d %d %s\n", event, r.Start, r.End, attempt, last)))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// sleep waits d, or until ctx is cancelled.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// record logs the run, then sleeps params.sleep seconds (default 0) to stretch the job.
func record(ctx context.Context, r parcelo.Range, lc *parcelo.LeaseContext) error {
	if err := logRun("run", r, lc.Attempt, ""); err != nil {
		return err
	}
	if s := paramsOf(lc).Sleep; s > 0 {
		return sleep(ctx, time.Duration(s*float64(time.Second)))
	}
	return nil
}

// stallFirst logs the run; the first attempt of the leaf starting at params.stall_start (default
// 0) logs "stalled" and blocks until it is cancelled (or its worker killed).
func stallFirst(ctx context.Context, r parcelo.Range, lc *parcelo.LeaseContext) error {
	if err := logRun("run", r, lc.Attempt, ""); err != nil {
		return err
	}
	if r.Start == paramsOf(lc).StallStart && lc.Attempt == 1 {
		if err := logRun("stalled", r, lc.Attempt, ""); err != nil {
			return err
		}
		return sleep(ctx, time.Hour)
	}
	return nil
}

// checkpointThenFail: attempt 1 checkpoints halfway through the leaf with details "half-done" and
// fails (retryable); a later attempt logs "resumed <start> <end> <attempt> <details>", its range
// starting at the checkpoint.
func checkpointThenFail(ctx context.Context, r parcelo.Range, lc *parcelo.LeaseContext) error {
	if err := logRun("run", r, lc.Attempt, ""); err != nil {
		return err
	}
	if lc.Attempt == 1 {
		lc.Checkpoint(lc.Leaf.Start+lc.Leaf.Len()/2, []byte("half-done"))
		return errors.New("transient failure after a checkpoint")
	}
	details := string(lc.Details)
	if details == "" {
		details = "-"
	}
	return logRun("resumed", r, lc.Attempt, details)
}
