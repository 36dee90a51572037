"""Defaults shared by the CLIs, the constructors and the coordinator: one table, one place.

Each constant carries a line on why it has the value it has.
"""

from __future__ import annotations

from datetime import timedelta

DEFAULT_TARGET = "localhost:50051"
"""Where the CLI and workers look for a coordinator; overridden by ``PARCELO_TARGET``."""

DEFAULT_LISTEN = "127.0.0.1:50051"
"""Loopback: a coordinator reachable from other hosts must authenticate its callers (docs/security.md)."""

DEFAULT_HTTP_LISTEN = "127.0.0.1:50052"
"""The HTTP port (API, dashboard, metrics) beside the gRPC port, on loopback for the same reason."""

DEFAULT_QUEUE = "default"
"""Queue of jobs and workers that name none."""

LEASE_TTL = timedelta(seconds=30)
"""Long enough to ride out a GC pause or a slow network, short enough to re-run a dead worker's leaf soon."""

MIN_LEASE_TTL = timedelta(milliseconds=200)
"""Below this, heartbeats would be most of the traffic."""

HEARTBEAT_FRACTION = 3
"""Workers heartbeat every TTL / 3, so two lost heartbeats still do not expire a lease."""

MAX_ATTEMPTS = 3
"""Attempts per leaf before it goes to error; matches common job queues (Celery, BullMQ)."""

INITIAL_BACKOFF = timedelta(seconds=1)
"""First retry delay: long enough for a flaky dependency to recover."""

BACKOFF_MULTIPLIER = 2.0
"""Exponential backoff doubles the delay per attempt."""

MAX_BACKOFF = timedelta(seconds=60)
"""Cap on the retry delay so a retried leaf is never parked for long."""

WORKER_CONCURRENCY = 4
"""Handlers run at once by one worker process."""

WORKER_PREFETCH_MAX = 128
"""Most leases a worker keeps in hand beyond its running handlers when no ``prefetch`` is given:
enough to cover the credit round trip (a few ms) at ~40,000 leaves/s per worker, few enough that a
change of priorities or fair shares reaches the handlers within ~130 leases per worker."""

PREFETCH_TIME = timedelta(milliseconds=250)
"""Without a fixed ``prefetch``, a worker keeps about this much work in hand beyond its running
handlers (from the leaves' observed durations): far more than a round trip to the coordinator, and
little enough that a worker started a moment later finds leaves to run."""

SYNC_BATCH_TIME = timedelta(milliseconds=2)
"""A sync handler's thread runs waiting leases one after another for up to this long before it
hands their results back: one thread hop per batch of short leaves, not per leaf, and results
still leave within the completion flush."""

WAITING_REPORT = timedelta(seconds=1)
"""A worker holding leases it has not started heartbeats at least this often, saying which: the
coordinator can take them back for an idle worker (``DIRECTIVE_ACTION_REVOKE``) within a second."""

COMPLETION_BATCH = 256
"""Most completions a worker sends in one message."""

COMPLETION_FLUSH = timedelta(milliseconds=5)
"""A worker holds finished leases this long to send them together."""

DRAIN_TIMEOUT = timedelta(seconds=30)
"""On SIGTERM a worker lets running handlers finish for this long before it gives up."""

RECONNECT_INITIAL = timedelta(milliseconds=100)
"""First reconnect delay of a worker that lost its coordinator."""

RECONNECT_MAX = timedelta(seconds=5)
"""Reconnect delay cap: a restarted coordinator is found within seconds."""

LIST_PAGE_SIZE = 50
"""Jobs per ListJobs page when the caller asks for none."""

MAX_LIST_PAGE_SIZE = 1000
"""Bound on one ListJobs page, so one call cannot build a huge message."""

EVENT_RETENTION = 10_000
"""Events kept per job; a watcher that falls further behind misses the oldest."""

STATS_EVENT_INTERVAL = timedelta(milliseconds=250)
"""STATS_UPDATED events are coalesced to at most four per second per job."""

MAX_RESULT_BYTES = 64 << 10
"""Largest leaf result (JSON, bytes of UTF-8) a coordinator accepts, and largest job result a
``merge`` may grow to (``--max-result-bytes``)."""

SCHEDULE_CATCH_UP = 1
"""Ticks a schedule fires after downtime: the newest one, so a restart runs the job it missed, once."""

SCHEDULE_LATE = timedelta(seconds=5)
"""How late a tick may fire and still count as on time (a schedule with catch-up 0 fires it): a slow
commit or a GC pause is not downtime."""
