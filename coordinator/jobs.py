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
import math
import random
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple, TypeVar

from parcelo import defaults
from parcelo.coordinator.errors import FailedPrecondition, InvalidArgument, NotFound
from parcelo.coordinator.limits import MAX_ID_BYTES, MAX_LABELS_BYTES, MAX_PARAMS_BYTES
from parcelo.coordinator.runs import LeafPace
from parcelo.coordinator.tree import RangeTree
from parcelo.v1 import types_pb2

T = TypeVar("T")

MAX_U64 = (1 << 64) - 1
JOB_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
QUEUE_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_ATTEMPTS = 10_000
"""Most attempts a retry policy may allow."""
MAX_MULTIPLIER = 1_000.0
"""Largest backoff multiplier (a larger one reaches ``max_backoff`` at the second retry anyway)."""
MAX_TIMESTAMP_SECONDS = 253_402_300_799
"""9999-12-31T23:59:59Z: the last second google.protobuf.Timestamp may hold."""
MIN_LEAF_TIMEOUT_MS = 1
MAX_RATE = 1e9
"""Largest ``max_leases_per_second`` (far above what one coordinator grants)."""
MAX_WEIGHT = 1_000_000
MAX_DURATION_MS = (1 << 31) - 1
"""Longest lease TTL or leaf timeout (about 24.8 days): what a worker's timer holds in common
runtimes (JavaScript's ``setTimeout`` fires at once beyond it)."""


def find(jobs: Mapping[str, T], job_id: str) -> T:
    """The job with this id in ``jobs``; :class:`InvalidArgument` or :class:`NotFound` otherwise."""
    if not job_id:
        raise InvalidArgument("job_id", "is required")
    job = jobs.get(job_id)
    if job is None:
        # Echoed clipped: an id longer than any valid one says nothing more.
        raise NotFound(f"job '{job_id[:MAX_ID_BYTES]}' not found")
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
        try:
            grown = self.initial_backoff * self.multiplier ** max(0, attempt - 1)
        except OverflowError:
            grown = math.inf  # past any max_backoff
        base = min(self.max_backoff, grown)
        if self.jitter:
            base *= 1 + self.jitter * (2 * rng.random() - 1)
        return max(0.0, base)


def _seconds(duration: object) -> float:
    return duration.seconds + duration.nanos / 1e9  # type: ignore[attr-defined,no-any-return]


def utf8_size(text: str) -> int:
    """Bytes of ``text`` in UTF-8 (sizes are bounded in bytes, not characters)."""
    return len(text) if text.isascii() else len(text.encode(errors="surrogatepass"))


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def _check_duration(name: str, value: object, *, at_most_ms: int = MAX_DURATION_MS) -> None:
    seconds, nanos = value.seconds, value.nanos  # type: ignore[attr-defined]
    if seconds < 0 or nanos < 0:
        raise InvalidArgument(name, "must not be negative")
    if nanos > 999_999_999:
        raise InvalidArgument(name, "nanos must be at most 999,999,999")
    if seconds * 1000 + nanos // 1_000_000 > at_most_ms:
        raise InvalidArgument(name, f"must be at most {at_most_ms} ms (about 24.8 days)")


def check_rate(field: str, rate: float) -> None:
    """A leases-per-second limit: finite, not negative, at most :data:`MAX_RATE` (0: none)."""
    if not math.isfinite(rate) or rate < 0 or rate > MAX_RATE:
        raise InvalidArgument(field, f"must be a finite number between 0 (no limit) and {MAX_RATE:g}")


def check_weight(weight: int) -> None:
    if not 1 <= weight <= MAX_WEIGHT:
        raise InvalidArgument("weight", f"must be between 1 and {MAX_WEIGHT} (unset: 1)")


def check_timestamp(field: str, value: object) -> None:
    """A google.protobuf.Timestamp between 1970 and 9999."""
    seconds, nanos = value.seconds, value.nanos  # type: ignore[attr-defined]
    if not 0 <= seconds <= MAX_TIMESTAMP_SECONDS or not 0 <= nanos <= 999_999_999:
        raise InvalidArgument(field, "must be between 1970-01-01 and 9999-12-31 (UTC)")


def validate_spec(spec: types_pb2.JobSpec, *, max_params_bytes: int = MAX_PARAMS_BYTES) -> None:
    """Raise :class:`InvalidArgument` naming the first bad field of ``spec``.

    Every number is bounded, so nothing computed from a job later (a retry delay, a deadline)
    can overflow.
    """
    if spec.job_id and not JOB_ID_RE.match(spec.job_id):
        raise InvalidArgument("job_id", "must be 1-128 characters of letters, digits, '.', '_' or '-'")
    if spec.queue and not QUEUE_RE.match(spec.queue):
        raise InvalidArgument("queue", "must be 1-128 characters of letters, digits, '.', '_', ':' or '-'")
    if utf8_size(spec.request_id) > MAX_ID_BYTES:
        raise InvalidArgument("request_id", f"must be at most {MAX_ID_BYTES} bytes")
    if not spec.HasField("range"):
        raise InvalidArgument("range", "is required")
    if spec.range.start >= spec.range.end:
        raise InvalidArgument(
            "range", f"is empty: start ({spec.range.start}) must be less than end ({spec.range.end})"
        )
    if spec.max_range_size == 0:
        raise InvalidArgument("max_range_size", "must be greater than 0")
    if spec.min_range_size > spec.max_range_size:
        raise InvalidArgument(
            "min_range_size",
            f"({spec.min_range_size}) must be at most max_range_size ({spec.max_range_size})",
        )
    if spec.HasField("target_leaf_seconds"):
        _check_duration("target_leaf_seconds", spec.target_leaf_seconds)
        if spec.target_leaf_seconds.ToNanoseconds() == 0:
            raise InvalidArgument("target_leaf_seconds", "must be greater than 0 (unset: off)")
    if spec.params_json:
        size = utf8_size(spec.params_json)
        if size > max_params_bytes:
            raise InvalidArgument(
                "params_json",
                f"is {size} bytes, over the coordinator's --max-params-bytes ({max_params_bytes})",
            )
        try:
            json.loads(spec.params_json, parse_constant=_no_constant)
        except RecursionError:
            raise InvalidArgument("params_json", "is nested too deeply") from None
        except ValueError as err:
            raise InvalidArgument("params_json", f"is not valid JSON: {err}") from None
    for name in ("lease_ttl", "leaf_timeout"):
        if spec.HasField(name):
            _check_duration(name, getattr(spec, name))
    if spec.HasField("lease_ttl") and _seconds(spec.lease_ttl) < defaults.MIN_LEASE_TTL.total_seconds():
        raise InvalidArgument("lease_ttl", f"must be at least {defaults.MIN_LEASE_TTL.total_seconds()} s")
    if spec.HasField("leaf_timeout") and spec.leaf_timeout.ToMilliseconds() < MIN_LEAF_TIMEOUT_MS:
        # Below a millisecond it could not be sent as a timer to any worker; unset means no limit.
        raise InvalidArgument("leaf_timeout", f"must be at least {MIN_LEAF_TIMEOUT_MS} ms (unset: no limit)")
    retry = spec.retry
    if retry.max_attempts > MAX_ATTEMPTS:
        raise InvalidArgument("retry.max_attempts", f"must be at most {MAX_ATTEMPTS}")
    multiplier = retry.backoff_multiplier
    if not math.isfinite(multiplier) or multiplier < 0 or 0 < multiplier < 1 or multiplier > MAX_MULTIPLIER:
        raise InvalidArgument(
            "retry.backoff_multiplier", f"must be 0 (default) or between 1 and {MAX_MULTIPLIER:g}"
        )
    if not 0 <= retry.jitter <= 1:
        raise InvalidArgument("retry.jitter", "must be between 0 and 1")
    for name in ("initial_backoff", "max_backoff"):
        _check_duration(f"retry.{name}", getattr(retry, name))
    if spec.HasField("deadline"):
        check_timestamp("deadline", spec.deadline)
    if spec.HasField("run_after"):
        check_timestamp("run_after", spec.run_after)
    check_rate("max_leases_per_second", spec.max_leases_per_second)
    if spec.HasField("weight"):
        check_weight(spec.weight)
    if spec.fairness_key and not QUEUE_RE.match(spec.fairness_key):
        raise InvalidArgument(
            "fairness_key", "must be 1-128 characters of letters, digits, '.', '_', ':' or '-'"
        )
    size = 0
    for key, value in spec.labels.items():
        if not key:
            raise InvalidArgument("labels", "keys must not be empty")
        size += utf8_size(key) + utf8_size(value)
    if size > MAX_LABELS_BYTES:
        raise InvalidArgument("labels", f"are {size} bytes, over {MAX_LABELS_BYTES}")
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
        "pace",
        "reason",
        "rebalance",
        "release_requested",
        "retry",
        "spec",
        "started_at",
        "status",
        "traceparent",
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
        # The job's W3C trace context ("" for none), handed to workers for their handler spans.
        self.traceparent = ""
        self.lease_ttl = _seconds(spec.lease_ttl)
        self.leaf_timeout = _seconds(spec.leaf_timeout) if spec.HasField("leaf_timeout") else 0.0
        self.deadline = _seconds(spec.deadline) if spec.HasField("deadline") else 0.0
        # Handler time per leaf, from completions: how long a leaf run may be (``runs``).
        self.pace = LeafPace()
        # Whether running leaves of splittable handlers may be split (unset: yes).
        self.rebalance = spec.rebalance if spec.HasField("rebalance") else True
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


def queue_depths(
    jobs: Iterable[JobState], leaf_leases: Mapping[str, int], paused: Collection[str] = ()
) -> dict[str, QueueDepth]:
    """Per queue of the given jobs: leaves waiting in its runnable jobs, and its live leaf leases.

    ``leaf_leases`` is live leaf leases by job id. Waiting leaves count only in pending and
    running jobs of queues not ``paused`` (a paused job or queue hands out nothing); leases count
    whatever the job's status,
    since their holders are busy. A queue whose jobs are all idle is there with zeros, so a
    scaler sees its depth fall to 0 rather than a series vanish. O(frontier nodes): for metrics
    scrapes, never the hot path.
    """
    depths: dict[str, QueueDepth] = {}
    for job in jobs:
        runnable = job.status in LEASABLE and not (paused and job.queue in paused)
        pending = job.tree.pending_leaves() if runnable else 0
        running = leaf_leases.get(job.id, 0)
        was = depths.get(job.queue)
        if was is not None:
            pending += was.pending
            running += was.running
        depths[job.queue] = QueueDepth(pending, running)
    return depths
