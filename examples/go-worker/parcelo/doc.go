// Package parcelo is a Go worker for Parcelo: it pulls leases from a coordinator over one Work
// stream, runs a Handler on each leaf, heartbeats every lease it holds (with the newest
// checkpoint), acts on directives, reports results in batches and keeps them until they are
// answered, reconnects with backoff (handlers keep running, unanswered results are sent again),
// and drains gracefully when its context is cancelled.
//
// It follows docs/protocol.md of the Parcelo repository, as the Python SDK (worker_sdk/worker.py)
// does. A minimal worker:
//
//	handler := func(ctx context.Context, r parcelo.Range, lc *parcelo.LeaseContext) error {
//		for id := r.Start; id < r.End; id++ {
//			if ctx.Err() != nil {
//				return ctx.Err() // cancelled: the result is not reported
//			}
//			// ... work on id ...
//			lc.Checkpoint(id+1, nil)
//		}
//		return nil
//	}
//	w, err := parcelo.NewWorker(parcelo.Options{Target: "localhost:50051", Handler: handler})
//	if err != nil { ... }
//	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
//	defer stop()
//	err = w.Run(ctx) // returns after the drain
package parcelo

// Version of this worker; the coordinator logs it as "parcelo-go/<Version>" (Hello.sdk).
// tests/test_go_worker.py ties it to pyproject.toml's version.
const Version = "0.1.0"

// SDK is what the worker tells the coordinator it runs (Hello.sdk).
const SDK = "parcelo-go/" + Version
