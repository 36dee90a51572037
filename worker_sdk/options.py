"""A job's options: the one place that spells them, and their conversion to ``parcelo.v1.JobSpec``.

The client (:meth:`parcelo.client.Client.create_job`), the admin CLI (``parcelo job create``) and the
testing aid (:meth:`parcelo.testing.CoordinatorProcess.create_job`) all take a :class:`JobOptions`,
so a new job field is added to the proto, here, and as a CLI flag, nowhere else.

Options left unset (``None``, or the proto's zero value) stay unset in the ``JobSpec``, so the
coordinator's defaults (:mod:`parcelo.defaults`) apply. What can be checked without the coordinator
is checked when the options are built: a :class:`parcelo.errors.ConfigError` names the field
(``"retry.jitter: must be between 0 and 1 (got 1.5)"``, ``err.field == "retry.jitter"``). Rules
that belong to the coordinator's configuration (the shortest lease TTL, the largest params) are
left to it; it answers ``INVALID_ARGUMENT`` naming the field.

Example::

    from datetime import timedelta
    from parcelo import JobOptions, RetryPolicy

    options = JobOptions(
        0,
        10**9,
        max_range_size=10**6,
        params={"bucket": "s3://x"},
        lease_ttl=timedelta(seconds=20),
        retry=RetryPolicy(max_attempts=5, initial_backoff=timedelta(milliseconds=500)),
        labels={"team": "search"},
    )
    spec = options.to_proto()  # parcelo.v1.types_pb2.JobSpec
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from parcelo.errors import ConfigError
from parcelo.v1 import types_pb2

__all__ = ["JobOptions", "RetryPolicy", "encode_params"]

MAX_U64 = (1 << 64) - 1
MAX_U32 = (1 << 32) - 1
INT32 = range(-(1 << 31), 1 << 31)

# The widest google.protobuf.Duration (about 10,000 years); timedelta goes further.
_MAX_DURATION = timedelta(seconds=315_576_000_000)

# The id format documented on JobSpec.job_id, and the queue names the coordinator accepts;
# tests/test_options.py ties both to the coordinator's own patterns.
JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
QUEUE_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

ReduceName = Literal["none", "sum", "min", "max", "merge"]
"""How a job combines its leaves' results (``parcelo.v1.Reduce`` without its prefix)."""
REDUCES: tuple[str, ...] = get_args(ReduceName)


def _bad(name: str, problem: str) -> ConfigError:
    return ConfigError(f"{name}: {problem}", field=name)


def encode_params(params: Mapping[str, Any] | str | None) -> str:
    """Turn job params into the JSON text carried by ``JobSpec.params_json``.

    Args:
        params: A mapping serialised as JSON, JSON text (checked, passed on unchanged) or ``None``.

    Returns:
        The JSON text; empty for ``None``, which the coordinator reads as ``{}``.

    Raises:
        ConfigError: ``params`` is a string that is not JSON, or a mapping JSON cannot encode
            (``err.field == "params"``).
    """
    if params is None:
        return ""
    if isinstance(params, str):
        try:
            json.loads(params)
        except json.JSONDecodeError as err:
            raise _bad("params", f"is not valid JSON: {err}") from err
        return params
    if not isinstance(params, Mapping):
        raise _bad("params", f"must be a mapping or JSON text, got {type(params).__name__}")
    try:
        return json.dumps(params, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise _bad("params", f"cannot be encoded as JSON: {err}") from err


def _check_int(name: str, value: object, allowed: range, what: str) -> None:
    # bool is an int to Python but never a count, an id or a priority.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(name, f"must be an integer, got {type(value).__name__}")
    if value not in allowed:
        raise _bad(name, f"must be {what} (got {value})")


def _check_duration(name: str, value: timedelta | None, *, zero_ok: bool) -> None:
    if value is None:
        return
    if not isinstance(value, timedelta):
        raise _bad(name, f"must be a datetime.timedelta, got {type(value).__name__}")
    if value < timedelta(0) or (value == timedelta(0) and not zero_ok):
        raise _bad(name, f"must be {'zero or more' if zero_ok else 'positive'} (got {value})")
    if value > _MAX_DURATION:
        raise _bad(name, f"must be at most {_MAX_DURATION.days} days (got {value})")


def _duration(value: timedelta | None) -> Duration | None:
    if value is None:
        return None
    out = Duration()
    out.FromTimedelta(value)
    return out


def _timestamp(value: datetime) -> Timestamp:
    # A naive datetime means local time, as datetime.timestamp() reads it; protobuf would take it as UTC.
    if value.tzinfo is None:
        value = value.astimezone()
    out = Timestamp()
    out.FromDatetime(value.astimezone(UTC))
    return out


@dataclass(frozen=True)
class RetryPolicy:
    """How failed attempts of a leaf are retried: exponential backoff with jitter, bounded attempts.

    Every field left ``None`` takes the coordinator's default (:mod:`parcelo.defaults`).

    Attributes:
        max_attempts: Attempts per leaf, the first included (at least 1).
        initial_backoff: Delay before a leaf's second attempt (zero retries at once).
        max_backoff: Upper bound of the retry delay.
        backoff_multiplier: Factor applied to the delay after each attempt (at least 1).
        jitter: Random fraction in [0, 1] added to or taken from each delay.

    Raises:
        ConfigError: A value is out of range; ``err.field`` is ``"retry.<name>"``.
    """

    _: KW_ONLY
    max_attempts: int | None = None
    initial_backoff: timedelta | None = None
    max_backoff: timedelta | None = None
    backoff_multiplier: float | None = None
    jitter: float | None = None

    def __post_init__(self) -> None:
        if self.max_attempts is not None:
            _check_int(
                "retry.max_attempts", self.max_attempts, range(1, MAX_U32 + 1), "between 1 and 2**32 - 1"
            )
        _check_duration("retry.initial_backoff", self.initial_backoff, zero_ok=True)
        _check_duration("retry.max_backoff", self.max_backoff, zero_ok=True)
        # Comparisons are written so that NaN fails them.
        multiplier = self.backoff_multiplier
        if multiplier is not None and not (math.isfinite(multiplier) and multiplier >= 1):
            raise _bad(
                "retry.backoff_multiplier", f"must be a finite number of at least 1 (got {multiplier})"
            )
        if self.jitter is not None and not 0 <= self.jitter <= 1:
            raise _bad("retry.jitter", f"must be between 0 and 1 (got {self.jitter})")

    def to_proto(self) -> types_pb2.RetryPolicy:
        """The policy as ``parcelo.v1.RetryPolicy``; unset fields stay at the proto's "default" value."""
        return types_pb2.RetryPolicy(
            max_attempts=self.max_attempts or 0,
            initial_backoff=_duration(self.initial_backoff),
            max_backoff=_duration(self.max_backoff),
            backoff_multiplier=self.backoff_multiplier or 0.0,
            jitter=self.jitter or 0.0,
        )

    @classmethod
    def from_proto(cls, retry: types_pb2.RetryPolicy) -> RetryPolicy:
        """The policy of a ``parcelo.v1.RetryPolicy``; zero values (the proto's "default") read as unset."""
        return cls(
            max_attempts=retry.max_attempts or None,
            initial_backoff=retry.initial_backoff.ToTimedelta()
            if retry.HasField("initial_backoff")
            else None,
            max_backoff=retry.max_backoff.ToTimedelta() if retry.HasField("max_backoff") else None,
            backoff_multiplier=retry.backoff_multiplier or None,
            jitter=retry.jitter or None,
        )


@dataclass(frozen=True)
class JobOptions:
    """Everything a client says about a job it creates over the half-open range ``[start, end)``.

    Unset options take the coordinator's defaults (see :mod:`parcelo.defaults`). With ``job_id``
    or ``request_id`` creation is idempotent: repeating it returns the job created first.

    Attributes:
        start: First id of the range (unsigned 64-bit).
        end: One past the last id; greater than ``start``.
        max_range_size: Widest range one leaf (one handler call) covers; at least 1.
        queue: Queue whose workers run the job; ``None`` means ``"default"``.
        params: JSON-able mapping or JSON text handed to every handler call; ``None`` means ``{}``.
        lease_ttl: A lease not heartbeated within this time expires.
        job_id: Caller-chosen id (``[A-Za-z0-9._-]``, 1..128 chars); ``None``: the coordinator picks one.
        request_id: Idempotency key.
        retry: How failed attempts are retried.
        pruning: Ask workers' ``should_process`` before splitting or running a node.
        leaf_timeout: Longest time one attempt may take, heartbeats notwithstanding.
        deadline: The job fails if not completed by then (a naive datetime is local time).
        priority: Higher runs first among the jobs of a queue (signed 32-bit).
        start_paused: Create the job paused; ``resume_job`` starts it.
        labels: Free-form labels shown with the job.
        max_concurrency: Leaf leases held by workers at once, across all of them (0: no limit).
        max_leases_per_second: Leases granted per second at most (0: no limit).
        burst: Leases the rate limit lets through at once (0: the rate rounded up).
        weight: The share of the job's fairness key among the keys of its priority (``None``: 1).
        fairness_key: Jobs with one key share one share (``None``: the job's own id).
        run_after: No lease before then: a datetime (naive is local time) or a delay from when the
            options are sent.
        reduce: How the handlers' return values combine into the job's result: ``"sum"``,
            ``"min"``, ``"max"`` (numbers), ``"merge"`` (JSON objects, numbers summed key by key)
            or ``"none"``; ``None`` means ``"none"`` (results are not kept).
        min_range_size: No dynamic split or adaptive leaf size makes a node narrower (0: 1); at
            most ``max_range_size``.
        target_leaf_seconds: Adaptive leaf size: split leaves estimated to run longer than this
            before leasing them (``None``: off).
        rebalance: Split running leaves of handlers that claim their positions
            (``ctx.claim``) when workers wait and nothing is pending.
        leaf_runs: Lease whole subtrees of short leaves (a couple of milliseconds of handler
            time in all) as one unit to workers that run them; ``False`` keeps every lease one
            leaf, each with its own attempts, checkpoints and claims.

    Raises:
        ConfigError: An option is out of range or of the wrong type; ``err.field`` names it.
    """

    start: int
    end: int
    _: KW_ONLY
    max_range_size: int
    queue: str | None = None
    params: Mapping[str, Any] | str | None = None
    lease_ttl: timedelta | None = None
    job_id: str | None = None
    request_id: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    pruning: bool = False
    leaf_timeout: timedelta | None = None
    deadline: datetime | None = None
    priority: int = 0
    start_paused: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    reduce: ReduceName | None = None
    max_concurrency: int = 0
    max_leases_per_second: float = 0.0
    burst: int = 0
    weight: int | None = None
    fairness_key: str | None = None
    run_after: datetime | timedelta | None = None
    min_range_size: int = 0
    target_leaf_seconds: timedelta | None = None
    rebalance: bool = True
    leaf_runs: bool = True

    def __post_init__(self) -> None:
        _check_int("start", self.start, range(MAX_U64 + 1), "between 0 and 2**64 - 1")
        _check_int("end", self.end, range(MAX_U64 + 1), "between 0 and 2**64 - 1")
        if self.end <= self.start:
            raise _bad("end", f"must be greater than start (got start={self.start}, end={self.end})")
        _check_int("max_range_size", self.max_range_size, range(1, MAX_U64 + 1), "between 1 and 2**64 - 1")
        for name, pattern in (("job_id", JOB_ID_PATTERN), ("queue", QUEUE_PATTERN)):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and pattern.match(value)):
                raise _bad(name, f"must be 1-128 characters matching {pattern.pattern} (got {value!r})")
        if self.request_id is not None and not isinstance(self.request_id, str):
            raise _bad("request_id", f"must be a string, got {type(self.request_id).__name__}")
        encode_params(self.params)
        _check_duration("lease_ttl", self.lease_ttl, zero_ok=False)
        _check_duration("leaf_timeout", self.leaf_timeout, zero_ok=False)
        if not isinstance(self.retry, RetryPolicy):
            raise _bad("retry", f"must be a parcelo.RetryPolicy, got {type(self.retry).__name__}")
        if self.deadline is not None and not isinstance(self.deadline, datetime):
            raise _bad("deadline", f"must be a datetime.datetime, got {type(self.deadline).__name__}")
        _check_int("priority", self.priority, INT32, "a signed 32-bit integer")
        if not isinstance(self.labels, Mapping):
            raise _bad("labels", f"must be a mapping, got {type(self.labels).__name__}")
        for key, value in self.labels.items():
            if not isinstance(key, str) or not key or not isinstance(value, str):
                raise _bad(
                    "labels", f"keys must be non-empty strings and values strings (got {key!r}: {value!r})"
                )
        _check_int("max_concurrency", self.max_concurrency, range(MAX_U32 + 1), "between 0 and 2**32 - 1")
        _check_int("burst", self.burst, range(MAX_U32 + 1), "between 0 and 2**32 - 1")
        rate = self.max_leases_per_second
        if (
            isinstance(rate, bool)
            or not isinstance(rate, (int, float))
            or not math.isfinite(rate)
            or rate < 0
        ):
            raise _bad("max_leases_per_second", f"must be a finite number, 0 or more (got {rate!r})")
        if self.weight is not None:
            _check_int("weight", self.weight, range(1, MAX_U32 + 1), "between 1 and 2**32 - 1")
        if self.fairness_key is not None and not (
            isinstance(self.fairness_key, str) and QUEUE_PATTERN.match(self.fairness_key)
        ):
            raise _bad(
                "fairness_key",
                f"must be 1-128 characters matching {QUEUE_PATTERN.pattern} (got {self.fairness_key!r})",
            )
        if self.run_after is not None and not isinstance(self.run_after, (datetime, timedelta)):
            raise _bad("run_after", f"must be a datetime or a timedelta, got {type(self.run_after).__name__}")
        _check_int("min_range_size", self.min_range_size, range(MAX_U64 + 1), "between 0 and 2**64 - 1")
        if self.min_range_size > self.max_range_size:
            raise _bad(
                "min_range_size",
                f"must be at most max_range_size ({self.max_range_size}), got {self.min_range_size}",
            )
        _check_duration("target_leaf_seconds", self.target_leaf_seconds, zero_ok=False)
        for name in ("rebalance", "leaf_runs"):
            if not isinstance(getattr(self, name), bool):
                raise _bad(name, f"must be True or False, got {getattr(self, name)!r}")
        if self.reduce is not None and self.reduce not in REDUCES:
            raise _bad("reduce", f"must be one of {', '.join(REDUCES)} (got {self.reduce!r})")

    def to_proto(self) -> types_pb2.JobSpec:
        """The options as the ``parcelo.v1.JobSpec`` of a ``CreateJob`` request.

        Raises:
            ConfigError: ``params`` is a mapping that changed since and JSON cannot encode it.
        """
        return types_pb2.JobSpec(
            job_id=self.job_id or "",
            request_id=self.request_id or "",
            queue=self.queue or "",
            range=types_pb2.Range(start=self.start, end=self.end),
            max_range_size=self.max_range_size,
            params_json=encode_params(self.params),
            lease_ttl=_duration(self.lease_ttl),
            # An untouched policy stays unset on the wire, like every other unset option.
            retry=None if self.retry == RetryPolicy() else self.retry.to_proto(),
            pruning=self.pruning,
            leaf_timeout=_duration(self.leaf_timeout),
            deadline=None if self.deadline is None else _timestamp(self.deadline),
            priority=self.priority,
            start_paused=self.start_paused,
            labels=dict(self.labels),
            reduce=types_pb2.Reduce.Value(f"REDUCE_{(self.reduce or 'unspecified').upper()}"),
            max_concurrency=self.max_concurrency,
            max_leases_per_second=self.max_leases_per_second,
            burst=self.burst,
            weight=self.weight,
            fairness_key=self.fairness_key or "",
            run_after=None if self.run_after is None else _timestamp(_instant(self.run_after)),
            min_range_size=self.min_range_size,
            target_leaf_seconds=_duration(self.target_leaf_seconds),
            # Unset on the wire unless turned off, like every option at its default.
            rebalance=None if self.rebalance else False,
            leaf_runs=None if self.leaf_runs else False,
        )

    @classmethod
    def from_proto(cls, spec: types_pb2.JobSpec) -> JobOptions:
        """The options of a ``JobSpec`` (e.g. ``job.spec`` as the coordinator returns it).

        Proto3 has no "unset" for strings and numbers: empty and zero values read as unset,
        ``params`` comes back as the JSON text and ``deadline`` as an aware UTC datetime.

        Raises:
            ConfigError: The spec holds values no :class:`JobOptions` can (an empty range).
        """
        return cls(
            spec.range.start,
            spec.range.end,
            max_range_size=spec.max_range_size,
            queue=spec.queue or None,
            params=spec.params_json or None,
            lease_ttl=spec.lease_ttl.ToTimedelta() if spec.HasField("lease_ttl") else None,
            job_id=spec.job_id or None,
            request_id=spec.request_id or None,
            retry=RetryPolicy.from_proto(spec.retry),
            pruning=spec.pruning,
            leaf_timeout=spec.leaf_timeout.ToTimedelta() if spec.HasField("leaf_timeout") else None,
            deadline=spec.deadline.ToDatetime(tzinfo=UTC) if spec.HasField("deadline") else None,
            priority=spec.priority,
            start_paused=spec.start_paused,
            labels=dict(spec.labels),
            reduce=_reduce_name(spec.reduce),
            max_concurrency=spec.max_concurrency,
            max_leases_per_second=spec.max_leases_per_second,
            burst=spec.burst,
            weight=spec.weight if spec.HasField("weight") else None,
            fairness_key=spec.fairness_key or None,
            run_after=spec.run_after.ToDatetime(tzinfo=UTC) if spec.HasField("run_after") else None,
            min_range_size=spec.min_range_size,
            target_leaf_seconds=(
                spec.target_leaf_seconds.ToTimedelta() if spec.HasField("target_leaf_seconds") else None
            ),
            rebalance=spec.rebalance if spec.HasField("rebalance") else True,
            leaf_runs=spec.leaf_runs if spec.HasField("leaf_runs") else True,
        )


def _instant(when: datetime | timedelta) -> datetime:
    """A run_after as a time: a delay counts from now."""
    return datetime.now(UTC) + when if isinstance(when, timedelta) else when


def _reduce_name(value: types_pb2.Reduce.ValueType) -> ReduceName | None:
    if not value:
        return None
    name = types_pb2.Reduce.Name(value).removeprefix("REDUCE_").lower()
    assert name in REDUCES
    return name  # type: ignore[return-value]
