// Command parcelo-go-worker runs one of the handlers of handlers.go on leases from a Parcelo
// coordinator until SIGTERM or SIGINT, then drains and exits 0.
//
//	parcelo-go-worker -target localhost:50051 -handler count -concurrency 4
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"parcelo.dev/worker/parcelo"
)

// queues collects repeated -queue flags.
type queues []string

func (q *queues) String() string     { return strings.Join(*q, ",") }
func (q *queues) Set(v string) error { *q = append(*q, v); return nil }

// seconds is a duration flag that also takes plain seconds ("30" or "30s", "1.5" or "1500ms"),
// so the same value serves parcelo-worker's --drain-timeout SECONDS.
type seconds time.Duration

func (d *seconds) String() string { return time.Duration(*d).String() }
func (d *seconds) Set(v string) error {
	if f, err := strconv.ParseFloat(v, 64); err == nil {
		*d = seconds(f * float64(time.Second))
		return nil
	}
	parsed, err := time.ParseDuration(v)
	if err != nil {
		return errors.New("want a duration such as 30s or 1500ms, or seconds")
	}
	*d = seconds(parsed)
	return nil
}

func main() {
	os.Exit(run())
}

func run() int {
	target := os.Getenv("PARCELO_TARGET")
	if target == "" {
		target = "localhost:50051"
	}
	var qs queues
	flag.StringVar(&target, "target", target, "coordinator `HOST:PORT` (env PARCELO_TARGET)")
	handlerName := flag.String("handler", "", "handler to run: "+strings.Join(names(handlers), ", "))
	pruner := flag.String("should-process", "", "answer probes of pruning jobs with: "+strings.Join(names(pruners), ", ")+" (default: process every node)")
	flag.Var(&qs, "queue", "queue to take leases from (repeatable) (default default)")
	concurrency := flag.Int("concurrency", parcelo.DefaultConcurrency, "run `N` handlers at once")
	prefetch := flag.Int("prefetch", parcelo.DefaultPrefetch, "leases kept in hand beyond the running ones")
	workerID := flag.String("worker-id", "", "name shown to the coordinator (default host:pid)")
	drain := seconds(parcelo.DefaultDrainTimeout)
	flag.Var(&drain, "drain-timeout", "on SIGTERM, how long running handlers get to finish: a duration `D` (30s, 1500ms) or seconds")
	version := flag.Bool("version", false, "print the SDK name and version and exit")
	flag.Parse()
	if *version {
		fmt.Println(parcelo.SDK)
		return 0
	}
	logger := log.New(os.Stderr, "parcelo-go ", log.LstdFlags|log.Lmicroseconds)
	handler, ok := handlers[*handlerName]
	if !ok {
		fmt.Fprintf(os.Stderr, "error: -handler must be one of %s (got %q)\n", strings.Join(names(handlers), ", "), *handlerName)
		return 2
	}
	shouldProcess, ok := pruners[*pruner]
	if !ok && *pruner != "" {
		fmt.Fprintf(os.Stderr, "error: -should-process must be one of %s (got %q)\n", strings.Join(names(pruners), ", "), *pruner)
		return 2
	}
	if *concurrency < 1 || *prefetch < 0 || drain < 0 || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "error: -concurrency must be at least 1, -prefetch and -drain-timeout not negative, and no arguments")
		return 2
	}
	opts := parcelo.Options{
		Target:        target,
		Handler:       handler,
		ShouldProcess: shouldProcess,
		Queues:        qs,
		Concurrency:   *concurrency,
		Prefetch:      *prefetch,
		WorkerID:      *workerID,
		DrainTimeout:  time.Duration(drain),
		Logger:        logger,
	}
	// The Options' zero values mean "the default"; on the command line 0 means none.
	if *prefetch == 0 {
		opts.Prefetch = -1
	}
	if drain == 0 {
		opts.DrainTimeout = -1
	}
	w, err := parcelo.NewWorker(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	logger.Printf("%s starting as %s: handler %s, concurrency %d, target %s", parcelo.SDK, w.WorkerID(), *handlerName, *concurrency, target)
	err = w.Run(ctx)
	s := w.Stats()
	logger.Printf("stopped: %d completed, %d skipped, %d failed, %d released, %d rejected, %d dropped",
		s.Completed, s.Skipped, s.Failed, s.Released, s.Rejected, s.Dropped)
	if errors.Is(err, parcelo.ErrUnanswered) {
		logger.Print(err)
		return 1
	}
	if err != nil {
		logger.Print(err)
		return 1
	}
	return 0
}

// names are the keys of a table of handlers or pruners, sorted.
func names[T any](table map[string]T) []string {
	out := make([]string, 0, len(table))
	for name := range table {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}
