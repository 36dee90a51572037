r"""Jobs: spec validation, retry policy and the job state machine (no I/O).

The state machine::

    PENDING --first lease--> RUNNING --root done--> COMPLETED
       |  \                   |   \--root in error / deadline--> FAILED --retry--> RUNNING
       |   \--pause--> PAUSED <-resume (back to PENDING or RUNNING)
       \--------------- cancel (from PENDING, RUNNING, PAUSED) --> CANCELLED

Every transition is a :class:`JobState` method that checks it is allowed
(:class:`FailedPrecondition` otherwise) and sets ``updated_at``.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple, TypeVar

from parcelo import defaults
from parcelo.coordinator.errors import FailedPrecondition, InvalidArgument, NotFound
from parcelo.coordinator.tree import RangeTree
from parcelo.v1 import types_pb2

T = TypeVar("T")

MAX_U64 = (1 << 64) - 1
JOB_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
QUEUE_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_PARAMS_BYTES = 1 << 20
MAX_DURATION_MS = (1 << 31) - 1
"""Longest lease TTL or leaf timeout (about 24.8 days): what a worker's timer holds in common
runtimes (JavaScript's ``setTimeout`` fires at once beyond it)."""


def find(jobs: Mapping[str, T], job_id: str) -> T:
    """The job with this id in ``jobs``; :class:`InvalidArgument` or :class:`NotFound` otherwise."""
    if not job_id:
        raise InvalidArgument("job_id", "is required")
    job = jobs.get(job_id)
    if job is None:
        raise NotFound(f"job '{job_id}' not found")
    return job


class JobStatus(IntEnum):
    """Job status; values equal ``parcelo.v1.JobStatus``."""

    PENDING = 1
    RUNNING = 2
    PAUSED = 3
    COMPLETED = 4
    FAILED = 5
    CANCELLED = 6


FINISHED = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
LEASABLE = frozenset({JobStatus.PENDING, JobStatus.RUNNING})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed leaf is retried: exponential backoff with jitter, bounded attempts."""

    max_attempts: int
    initial_backoff: float
    multiplier: float
    max_backoff: float
    jitter: float

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** max(0, attempt - 1))
        if self.jitter:
            base *= 1 + self.jitter * (2 * rng.random() - 1)
        return max(0.0, base)


def _seconds(duration: object) -> float:
    return duration.seconds + duration.nanos / 1e9  # type: ignore[attr-defined,no-any-return]


def validate_spec(spec: types_pb2.JobSpec) -> None:
    """Raise :class:`InvalidArgument` naming the first bad field of ``spec``."""
    if spec.job_id and not JOB_ID_RE.match(spec.job_id):
        raise InvalidArgument("job_id", "must be 1-128 characters of letters, digits, '.', '_' or '-'")
    if spec.queue and not QUEUE_RE.match(spec.queue):
        raise InvalidArgument("queue", "must be 1-128 characters of letters, digits, '.', '_', ':' or '-'")
    if not spec.HasField("range"):
        raise InvalidArgument("range", "is required")
    if spec.range.start >= spec.range.end:
        raise InvalidArgument(
            "range", f"is empty: start ({spec.range.start}) must be less than end ({spec.range.end})"
        )
    if spec.max_range_size == 0:
        raise InvalidArgument("max_range_size", "must be greater than 0")
    if spec.params_json:
        if len(spec.params_json) > MAX_PARAMS_BYTES:
            raise InvalidArgument("params_json", f"is larger than {MAX_PARAMS_BYTES} bytes")
        try:
            json.loads(spec.params_json)
        except ValueError as err:
            raise InvalidArgument("params_json", f"is not valid JSON: {err}") from None
    for name in ("lease_ttl", "leaf_timeout"):
        if spec.HasField(name):
            value = getattr(spec, name)
            if value.seconds < 0 or value.nanos < 0:
                raise InvalidArgument(name, "must not be negative")
            if value.ToMilliseconds() > MAX_DURATION_MS:
                raise InvalidArgument(name, f"must be at most {MAX_DURATION_MS} ms (about 24.8 days)")
    if spec.HasField("lease_ttl") and _seconds(spec.lease_ttl) < defaults.MIN_LEASE_TTL.total_seconds():
        raise InvalidArgument("lease_ttl", f"must be at least {defaults.MIN_LEASE_TTL.total_seconds()} s")
    retry = spec.retry
    if retry.backoff_multiplier < 0 or (0 < retry.backoff_multiplier < 1):
        raise InvalidArgument("retry.backoff_multiplier", "must be 0 (default) or at least 1")
    if not 0 <= retry.jitter <= 1:
        raise InvalidArgument("retry.jitter", "must be between 0 and 1")
    for name, value in (("initial_backoff", retry.initial_backoff), ("max_backoff", retry.max_backoff)):
        if _seconds(value) < 0:
            raise InvalidArgument(f"retry.{name}", "must not be negative")
    for key in spec.labels:
        if not key:
            raise InvalidArgument("labels", "keys must not be empty")
    if spec.reduce not in types_pb2.Reduce.values():
        raise InvalidArgument("reduce", f"{spec.reduce} is not a Reduce value")


def normalized(spec: types_pb2.JobSpec) -> types_pb2.JobSpec:
    """A copy of ``spec`` with defaults filled in, as stored and returned by GetJob."""
    out = types_pb2.JobSpec()
    out.CopyFrom(spec)
    if not out.queue:
        out.queue = defaults.DEFAULT_QUEUE
    if not out.params_json:
        out.params_json = "{}"
    if not out.reduce:
        out.reduce = types_pb2.REDUCE_NONE
    if not out.HasField("lease_ttl"):
        out.lease_ttl.FromTimedelta(defaults.LEASE_TTL)
    retry = out.retry
    if not retry.max_attempts:
        retry.max_attempts = defaults.MAX_ATTEMPTS
    if not retry.HasField("initial_backoff"):
        retry.initial_backoff.FromTimedelta(defaults.INITIAL_BACKOFF)
    if not retry.backoff_multiplier:
        retry.backoff_multiplier = defaults.BACKOFF_MULTIPLIER
    if not retry.HasField("max_backoff"):
        retry.max_backoff.FromTimedelta(defaults.MAX_BACKOFF)
    return out


class JobState:
    """One job: its normalised spec, status, timestamps and range tree."""

    __slots__ = (
        "created_at",
        "deadline",
        "finished_at",
        "id",
        "leaf_timeout",
        "lease_ttl",
        "order",
        "reason",
        "release_requested",
        "retry",
        "spec",
        "started_at",
        "status",
        "tree",
        "updated_at",
    )

    def __init__(
        self, job_id: str, spec: types_pb2.JobSpec, tree: RangeTree, *, now: float, order: int
    ) -> None:
        self.id = job_id
        self.spec = spec
        self.tree = tree
        self.status = JobStatus.PAUSED if spec.start_paused else JobStatus.PENDING
        self.created_at = now
        self.updated_at = now
        self.started_at = 0.0
        self.finished_at = 0.0
        self.reason = ""
        # Creation order: ties between equal priorities go to the older job.
        self.order = order
        # Set by PauseJob(release=True): heartbeats answer RELEASE until resumed.
        self.release_requested = False
        self.lease_ttl = _seconds(spec.lease_ttl)
        self.leaf_timeout = _seconds(spec.leaf_timeout) if spec.HasField("leaf_timeout") else 0.0
        self.deadline = _seconds(spec.deadline) if spec.HasField("deadline") else 0.0
        r = spec.retry
        self.retry = RetryPolicy(
            max_attempts=r.max_attempts,
            initial_backoff=_seconds(r.initial_backoff),
            multiplier=r.backoff_multiplier,
            max_backoff=_seconds(r.max_backoff),
            jitter=r.jitter,
        )

    @property
    def queue(self) -> str:
        return self.spec.queue

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def require(self, allowed: frozenset[JobStatus], action: str) -> None:
        """Raise :class:`FailedPrecondition` unless the job is in one of ``allowed``."""
        if self.status not in allowed:
            raise FailedPrecondition(f"cannot {action} job '{self.id}': it is {self.status.name.lower()}")

    # -- the state machine ------------------------------------------------------------------------

    def _set(self, status: JobStatus, now: float) -> None:
        self.status = status
        self.updated_at = now

    def start(self, now: float) -> None:
        """The first lease of a pending job was handed out."""
        self.require(frozenset({JobStatus.PENDING}), "start")
        self.started_at = now
        self._set(JobStatus.RUNNING, now)

    def pause(self, now: float, *, release: bool) -> bool:
        """Stop handing out leases; returns False when the job already was paused.

        Pausing a paused job again only adds ``release`` (it never withdraws it).
        """
        if self.status is JobStatus.PAUSED:
            if release and not self.release_requested:
                self.release_requested = True
                self.updated_at = now
            return False
        self.require(LEASABLE, "pause")
        self.release_requested = release
        self._set(JobStatus.PAUSED, now)
        return True

    def resume(self, now: float) -> bool:
        """Hand out leases again; returns False when the job was not paused (nothing to do)."""
        if self.status in LEASABLE:
            return False
        self.require(frozenset({JobStatus.PAUSED}), "resume")
        self.release_requested = False
        self._set(JobStatus.RUNNING if self.started_at else JobStatus.PENDING, now)
        return True

    def cancel(self, now: float, reason: str) -> None:
        """End the job as cancelled."""
        self.require(frozenset({JobStatus.PENDING, JobStatus.RUNNING, JobStatus.PAUSED}), "cancel")
        self.finish(JobStatus.CANCELLED, now, reason or "cancelled")

    def finish(self, status: JobStatus, now: float, reason: str = "") -> None:
        """End the job with a terminal ``status`` (completed, failed or cancelled)."""
        if status not in FINISHED:
            raise ValueError(f"{status.name} is not a terminal status")
        self.reason = reason
        self.finished_at = now
        self.release_requested = False
        self._set(status, now)

    def allow_retry(self) -> None:
        """Check that failed leaves may be retried now (not in a cancelled or completed job)."""
        self.require(
            frozenset({JobStatus.FAILED, JobStatus.RUNNING, JobStatus.PAUSED, JobStatus.PENDING}), "retry"
        )

    def retried(self, now: float) -> bool:
        """Failed leaves went back to pending; a failed job runs again. Returns whether it was failed."""
        self.updated_at = now
        if self.status is not JobStatus.FAILED:
            return False
        self.finished_at = 0.0
        self.reason = ""
        self._set(JobStatus.RUNNING, now)
        return True


class QueueDepth(NamedTuple):
    """The work of one queue: leaves waiting to be leased, and leaf leases held by workers."""

    pending: int
    running: int


def queue_depths(jobs: Iterable[JobState], leaf_leases: Mapping[str, int]) -> dict[str, QueueDepth]:
    """Per queue of the given jobs: leaves waiting in its runnable jobs, and its live leaf leases.

    ``leaf_leases`` is live leaf leases by job id. Waiting leaves count only in pending and
    running jobs (a paused job hands out nothing); leases count whatever the job's status,
    since their holders are busy. A queue whose jobs are all idle is there with zeros, so a
    scaler sees its depth fall to 0 rather than a series vanish. O(frontier nodes): for metrics
    scrapes, never the hot path.
    """
    depths: dict[str, QueueDepth] = {}
    for job in jobs:
        pending = job.tree.pending_leaves() if job.status in LEASABLE else 0
        running = leaf_leases.get(job.id, 0)
        was = depths.get(job.queue)
        if was is not None:
            pending += was.pending
            running += was.running
        depths[job.queue] = QueueDepth(pending, running)
    return depths
