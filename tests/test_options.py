"""JobOptions: the one spelling of a job's options, checked against the proto and the CLI's flags."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from google.protobuf.message import Message

from parcelo import JobOptions, RetryPolicy, options
from parcelo.cli import cli, create, option_flags
from parcelo.client import Client
from parcelo.coordinator import jobs
from parcelo.errors import ConfigError
from parcelo.v1 import types_pb2

# Every option set, none to its default: the spec it makes must have every field set.
FULL = JobOptions(
    5,
    10**12,
    max_range_size=1000,
    queue="q:1",
    params={"k": [1, 2]},
    lease_ttl=timedelta(seconds=20, microseconds=5),
    job_id="job-1",
    request_id="req-1",
    retry=RetryPolicy(
        max_attempts=7,
        initial_backoff=timedelta(milliseconds=250),
        max_backoff=timedelta(minutes=2),
        backoff_multiplier=1.5,
        jitter=0.25,
    ),
    pruning=True,
    leaf_timeout=timedelta(hours=1),
    deadline=datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
    priority=-3,
    start_paused=True,
    labels={"team": "search"},
    reduce="merge",
    max_concurrency=3,
    max_leases_per_second=2.5,
    burst=4,
    weight=2,
    fairness_key="tenant-a",
    run_after=datetime(2029, 5, 6, 7, 8, 9, tzinfo=UTC),
    min_range_size=10,
    target_leaf_seconds=timedelta(seconds=30),
    rebalance=False,
    leaf_runs=False,
)
FULL_PARAMS = '{"k":[1,2]}'


def unset_fields(message: Message, prefix: str = "") -> list[str]:
    """Fields of ``message`` (and of its parcelo.v1 sub-messages) left at their zero value."""
    unset = []
    for fd in message.DESCRIPTOR.fields:
        name, value = prefix + fd.name, getattr(message, fd.name)
        if fd.is_repeated:  # maps included
            if not len(value):
                unset.append(name)
        elif fd.message_type is not None:
            if not message.HasField(fd.name):
                unset.append(name)
            elif fd.message_type.file.package == "parcelo.v1":
                unset += unset_fields(value, f"{name}.")
        elif fd.has_presence:  # proto3 optional: set even at its default value
            if not message.HasField(fd.name):
                unset.append(name)
        elif value == fd.default_value:
            unset.append(name)
    return unset


def test_every_jobspec_field_is_reachable_from_an_option() -> None:
    # A new JobSpec (or RetryPolicy) field without an option stays unset here.
    assert unset_fields(FULL.to_proto()) == []
    # ... and FULL keeps up with JobOptions: a new option must be set in it too.
    for value, kind in ((FULL, JobOptions), (FULL.retry, RetryPolicy)):
        for field in dataclasses.fields(kind):
            default = field.default_factory() if callable(field.default_factory) else field.default
            assert getattr(value, field.name) != default, f"FULL leaves {kind.__name__}.{field.name} unset"


def test_unset_options_stay_unset() -> None:
    spec = JobOptions(0, 10, max_range_size=3).to_proto()
    assert spec == types_pb2.JobSpec(range=types_pb2.Range(start=0, end=10), max_range_size=3)
    assert not spec.HasField("retry") and not spec.HasField("lease_ttl") and not spec.HasField("deadline")
    assert set(unset_fields(spec)) >= {"job_id", "queue", "params_json", "lease_ttl", "retry", "labels"}
    partial = JobOptions(0, 10, max_range_size=3, retry=RetryPolicy(jitter=0.5)).to_proto()
    assert partial.retry == types_pb2.RetryPolicy(jitter=0.5)


def test_conversion_of_every_option() -> None:
    spec = FULL.to_proto()
    assert (spec.range.start, spec.range.end, spec.max_range_size) == (5, 10**12, 1000)
    assert (spec.queue, spec.job_id, spec.request_id, spec.params_json) == (
        "q:1",
        "job-1",
        "req-1",
        FULL_PARAMS,
    )
    assert (spec.lease_ttl.seconds, spec.lease_ttl.nanos) == (20, 5000)
    assert spec.leaf_timeout.seconds == 3600
    assert spec.deadline.ToDatetime(tzinfo=UTC) == FULL.deadline
    assert (spec.pruning, spec.priority, spec.start_paused, dict(spec.labels)) == (
        True,
        -3,
        True,
        FULL.labels,
    )
    retry = spec.retry
    assert (retry.max_attempts, retry.backoff_multiplier, retry.jitter) == (7, 1.5, 0.25)
    assert (retry.initial_backoff.ToMilliseconds(), retry.max_backoff.seconds) == (250, 120)


def test_round_trip_through_the_proto() -> None:
    assert JobOptions.from_proto(FULL.to_proto()) == dataclasses.replace(FULL, params=FULL_PARAMS)


@pytest.mark.parametrize(
    "duration",
    [
        timedelta(microseconds=1),
        timedelta(milliseconds=200),
        timedelta(seconds=1.5),
        timedelta(days=400, microseconds=999_999),
        timedelta(seconds=315_576_000_000),  # the widest Duration
    ],
)
def test_durations_round_trip(duration: timedelta) -> None:
    made = JobOptions(
        0,
        1,
        max_range_size=1,
        lease_ttl=duration,
        leaf_timeout=duration,
        retry=RetryPolicy(initial_backoff=duration, max_backoff=duration),
    )
    spec = made.to_proto()
    for value in (spec.lease_ttl, spec.leaf_timeout, spec.retry.initial_backoff, spec.retry.max_backoff):
        assert value.ToTimedelta() == duration
        assert value.seconds * 10**6 + value.nanos // 1000 == duration // timedelta(microseconds=1)
    assert JobOptions.from_proto(spec) == made


def test_zero_backoff_is_kept_and_naive_deadline_is_local_time() -> None:
    spec = JobOptions(0, 1, max_range_size=1, retry=RetryPolicy(initial_backoff=timedelta(0))).to_proto()
    assert spec.retry.HasField("initial_backoff") and spec.retry.initial_backoff.ToTimedelta() == timedelta(0)
    naive = datetime(2030, 6, 1, 12, 30)
    spec = JobOptions(0, 1, max_range_size=1, deadline=naive).to_proto()
    assert spec.deadline.ToDatetime(tzinfo=UTC) == naive.astimezone(UTC)


BASE: dict[str, Any] = {"start": 0, "end": 100, "max_range_size": 10}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"start": -1}, "start"),
        ({"start": "0"}, "start"),
        ({"end": 2**64}, "end"),
        ({"start": 5, "end": 5}, "end"),
        ({"start": 9, "end": 3}, "end"),
        ({"max_range_size": 0}, "max_range_size"),
        ({"max_range_size": 2**64}, "max_range_size"),
        ({"queue": "has space"}, "queue"),
        ({"queue": ""}, "queue"),
        ({"job_id": "x" * 129}, "job_id"),
        ({"job_id": "a:b"}, "job_id"),
        ({"request_id": 7}, "request_id"),
        ({"params": "{nope"}, "params"),
        ({"params": {"a": object()}}, "params"),
        ({"params": {"a": float("nan")}}, "params"),
        ({"params": [1, 2]}, "params"),
        ({"lease_ttl": timedelta(0)}, "lease_ttl"),
        ({"lease_ttl": timedelta(seconds=-1)}, "lease_ttl"),
        ({"lease_ttl": 30.0}, "lease_ttl"),
        ({"leaf_timeout": timedelta(days=4 * 10**6)}, "leaf_timeout"),
        ({"retry": types_pb2.RetryPolicy()}, "retry"),
        ({"deadline": "2030-01-01"}, "deadline"),
        ({"priority": 2**31}, "priority"),
        ({"priority": True}, "priority"),
        ({"labels": {"": "x"}}, "labels"),
        ({"labels": {"a": 1}}, "labels"),
        ({"labels": ["a=b"]}, "labels"),
    ],
)
def test_bad_options_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        JobOptions(**{**BASE, **changes})
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"max_attempts": 0}, "retry.max_attempts"),
        ({"max_attempts": 2**32}, "retry.max_attempts"),
        ({"initial_backoff": timedelta(seconds=-1)}, "retry.initial_backoff"),
        ({"max_backoff": 60}, "retry.max_backoff"),
        ({"backoff_multiplier": 0.5}, "retry.backoff_multiplier"),
        ({"backoff_multiplier": float("nan")}, "retry.backoff_multiplier"),
        ({"backoff_multiplier": float("inf")}, "retry.backoff_multiplier"),
        ({"jitter": 1.5}, "retry.jitter"),
        ({"jitter": float("nan")}, "retry.jitter"),
    ],
)
def test_bad_retry_policies_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        RetryPolicy(**changes)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")


def test_options_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        FULL.priority = 1  # type: ignore[misc]


def test_local_patterns_are_the_coordinators() -> None:
    # Mirrors of the coordinator's checks, so a bad id fails before any call; tied here.
    assert options.JOB_ID_PATTERN.pattern == jobs.JOB_ID_RE.pattern
    assert options.QUEUE_PATTERN.pattern == jobs.QUEUE_RE.pattern


# --- the CLI's flags ---------------------------------------------------------------------------


def test_every_option_has_a_job_create_flag() -> None:
    paths = {f.name for f in dataclasses.fields(JobOptions) if f.name != "retry"}
    paths |= {f"retry.{f.name}" for f in dataclasses.fields(RetryPolicy)}
    assert set(option_flags(create)) - {"as_json"} == paths


def test_job_create_flags_build_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[JobOptions] = []

    def fake_create(client: Client, options: JobOptions) -> types_pb2.Job:
        seen.append(options)
        return types_pb2.Job(id="made")

    monkeypatch.setattr(Client, "create_job", fake_create)
    args = ["--start", "5", "--end", str(10**12), "--max-range-size", "1000", "--queue", "q:1"]
    args += ["--params", FULL_PARAMS, "--lease-ttl", "20.000005", "--id", "job-1", "--request-id", "req-1"]
    args += ["--max-attempts", "7", "--initial-backoff", "0.25", "--max-backoff", "120"]
    args += ["--backoff-multiplier", "1.5", "--jitter", "0.25", "--pruning", "--leaf-timeout", "3600"]
    args += ["--deadline", "2030-01-02T03:04:05.678+00:00", "--priority=-3", "--paused"]
    args += ["--label", "team=search", "--reduce", "merge", "--max-concurrency", "3"]
    args += ["--max-leases-per-second", "2.5", "--burst", "4", "--weight", "2", "--fairness-key", "tenant-a"]
    args += ["--run-after", "2029-05-06T07:08:09+00:00"]
    args += ["--min-range-size", "10", "--target-leaf-seconds", "30", "--no-rebalance", "--no-leaf-runs"]
    result = CliRunner().invoke(cli, ["--target", "127.0.0.1:1", "job", "create", *args])
    assert (result.exit_code, result.stdout) == (0, "made\n"), result.output
    assert seen == [dataclasses.replace(FULL, params=FULL_PARAMS)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--end", "5"], "error: --end must be greater than --start (got --start=5, --end=5)\n"),
        (
            ["--priority", "2147483648"],
            "error: --priority must be a signed 32-bit integer (got 2147483648)\n",
        ),
        (
            ["--max-attempts", str(2**32)],
            "error: --max-attempts must be between 1 and 2**32 - 1 (got 4294967296)\n",
        ),
        (
            ["--id", "a b"],
            "error: --id must be 1-128 characters matching ^[A-Za-z0-9._-]{1,128}$ (got 'a b')\n",
        ),
        (
            ["--params", "[1"],
            "error: --params is not valid JSON: Expecting ',' delimiter: line 1 column 3 (char 2)\n",
        ),
    ],
)
def test_job_create_names_the_flag_of_a_bad_option(args: list[str], message: str) -> None:
    base = [
        "--target",
        "127.0.0.1:1",
        "job",
        "create",
        "--start",
        "5",
        "--end",
        "10",
        "--max-range-size",
        "1",
    ]
    result = CliRunner().invoke(cli, base + args)
    assert (result.exit_code, result.stderr) == (2, message)
