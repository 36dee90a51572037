"""The coordinator core with the clock passed in, and its round trip through a real RocksDB store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration

from parcelo import JobOptions, RetryPolicy
from parcelo.coordinator.core import Core
from parcelo.coordinator.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from parcelo.coordinator.events import MEMORY_WINDOW, EventType
from parcelo.coordinator.jobs import JobStatus, QueueDepth, queue_depths
from parcelo.coordinator.leases import Action, Beat, Failure, Reject
from parcelo.coordinator.store import Store
from parcelo.coordinator.tree import Node
from parcelo.v1 import types_pb2

SECOND = timedelta(seconds=1)


def spec(start: int = 0, end: int = 1000, size: int = 100, **options: Any) -> types_pb2.JobSpec:
    """The spec a client sends for these options."""
    return JobOptions(start, end, max_range_size=size, **options).to_proto()


def raw(start: int = 0, end: int = 1000, size: int = 100, **fields: Any) -> types_pb2.JobSpec:
    """A spec as any gRPC client could send it, unchecked: JobOptions refuses most bad ones."""
    return types_pb2.JobSpec(range=types_pb2.Range(start=start, end=end), max_range_size=size, **fields)


def new_core() -> Core:
    core = Core(fence_limit=1, seed=7)
    core.fences.made_durable(core.fences.pending_limit() or 0)
    return core


def lease_one(core: Core, now: float) -> tuple[int, Node]:
    """The fence and node of the one lease the core grants now."""
    [lease] = core.lease(["default"], 1, now)
    return lease.fence, lease.node


def commit(core: Core, store: Store | None = None) -> None:
    """What the committer does with each batch: take the changes, write them, then show them."""
    changes = core.take_changes()
    if store is not None:
        store.write(store.encode(changes))
    core.written(changes)


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (raw(5, 5), "range"),
        (raw(9, 3), "range"),
        (raw(size=0), "max_range_size"),
        (raw(params_json="{nope"), "params_json"),
        (raw(job_id="has space"), "job_id"),
        (raw(lease_ttl=Duration(nanos=10_000_000)), "lease_ttl"),
        (types_pb2.JobSpec(max_range_size=5), "range"),
    ],
)
def test_bad_specs_name_the_field(bad: types_pb2.JobSpec, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        new_core().create_job(bad, 0)
    assert err.value.field == field and str(err.value).startswith(field)


def test_create_is_idempotent_by_job_id_and_request_id() -> None:
    core = new_core()
    a, created = core.create_job(spec(job_id="j1"), 0)
    b, again = core.create_job(spec(job_id="j1"), 1)
    assert created and not again and a is b
    with pytest.raises(AlreadyExists):
        core.create_job(spec(job_id="j1", end=2000), 2)
    c, _ = core.create_job(spec(request_id="r1"), 3)
    d, again = core.create_job(spec(request_id="r1"), 4)
    assert c is d and not again
    # A key reused with a different spec is refused the same way for both keys.
    with pytest.raises(AlreadyExists, match="request_id 'r1' was used for job"):
        core.create_job(spec(request_id="r1", end=2000), 5)
    with pytest.raises(AlreadyExists):
        core.create_job(spec(request_id="r1", job_id="other"), 5)
    # Defaults filled in compare equal to the same values given explicitly.
    e, again = core.create_job(spec(request_id="r1", queue="default"), 6)
    assert e is c and not again
    with pytest.raises(NotFound):
        core.get("nope")


def test_stale_fence_is_rejected_and_changes_nothing() -> None:
    core = new_core()
    job, _ = core.create_job(
        spec(end=100, size=100, lease_ttl=SECOND, retry=RetryPolicy(initial_backoff=timedelta(0))), 0
    )
    old, node = lease_one(core, 0)
    core.tick(1.5)  # no heartbeat: the lease expires and the leaf is pending again
    new, again = lease_one(core, 2)
    assert again is node and new != old and node.attempts == 2
    accepted, rejected = core.complete([old], [], 2)
    assert accepted == [] and rejected[0][:2] == (old, Reject.STALE_FENCE)
    assert node.status.name == "RUNNING" and job.status is JobStatus.RUNNING
    assert core.heartbeat([Beat(old)], 2) == [(old, Action.LOST, "lease expired: no heartbeat within 1 s", 0)]
    accepted, _ = core.complete([new], [], 2)
    assert accepted == [new] and job.status is JobStatus.COMPLETED


def test_heartbeat_keeps_a_lease_alive() -> None:
    core = new_core()
    core.create_job(spec(end=100, size=100, lease_ttl=SECOND), 0)
    fence, _ = lease_one(core, 0)
    for t in (0.8, 1.6, 2.4):
        assert core.heartbeat([Beat(fence)], t)[0][1] is Action.CONTINUE
        core.tick(t + 0.1)
    assert fence in core.leases


def test_retries_then_error_then_job_fails() -> None:
    core = new_core()
    job, _ = core.create_job(
        spec(end=100, size=100, retry=RetryPolicy(max_attempts=2, initial_backoff=SECOND)), 0
    )
    fence, _ = lease_one(core, 0)
    core.fail([Failure(fence, True, "first")], 0)
    assert core.lease(["default"], 1, 0.5) == []  # backing off
    fence, _ = lease_one(core, 1.0)
    core.fail([Failure(fence, True, "second")], 1.0)
    assert job.status is JobStatus.FAILED and "second" in job.reason
    core.retry_failed(job.id, 2)
    fence, _ = lease_one(core, 2)
    core.complete([fence], [], 2)
    assert job.status is JobStatus.COMPLETED


def test_permanent_failure_skips_retries() -> None:
    core = new_core()
    job, _ = core.create_job(spec(end=100, size=100, retry=RetryPolicy(max_attempts=5)), 0)
    fence, node = lease_one(core, 0)
    core.fail([Failure(fence, False, "PermanentError: no")], 0)
    assert job.status is JobStatus.FAILED and node.attempts == 1


def test_pause_resume_cancel() -> None:
    core = new_core()
    job, _ = core.create_job(spec(end=1000, size=100), 0)
    first = [lease.fence for lease in core.lease(["default"], 2, 0)]
    core.pause(job.id, 1)
    assert core.lease(["default"], 5, 1) == []
    with pytest.raises(FailedPrecondition):
        core.retry_failed(job.id, 1)
    core.resume(job.id, 2)
    assert len(core.lease(["default"], 3, 2)) == 3
    core.cancel(job.id, 3, "enough")
    assert job.status is JobStatus.CANCELLED
    beats = core.heartbeat([Beat(f) for f in first], 3)
    assert {a for _, a, _, _ in beats} == {Action.CANCEL}
    with pytest.raises(FailedPrecondition):
        core.resume(job.id, 4)
    _, rejected = core.complete([first[0]], [], 4)
    assert rejected[0][1] is Reject.JOB_GONE


def test_pause_with_release_asks_workers_to_give_leases_back() -> None:
    core = new_core()
    job, _ = core.create_job(spec(end=1000, size=100), 0)
    fence, node = lease_one(core, 0)
    core.pause(job.id, 1, release=True)
    assert core.heartbeat([Beat(fence)], 1)[0][1] is Action.RELEASE
    core.fail([Failure(fence, True, "", released=True, cursor=node.start + 50)], 1)
    assert node.attempts == 0 and node.done_upto == node.start + 50
    core.resume(job.id, 2)
    _, again = lease_one(core, 2)
    assert again is node and again.attempts == 1


def test_queue_depths_count_waiting_leaves_of_runnable_jobs_and_leaf_leases() -> None:
    core = new_core()

    def depths() -> dict[str, QueueDepth]:
        return queue_depths(core.jobs.values(), core.leases.leaf_counts())

    a, _ = core.create_job(spec(end=1000, size=100), 0)  # 16 leaves (1000 -> 500 -> 250 -> 125 -> 62/63)
    b, _ = core.create_job(spec(end=300, size=100, queue="gpu"), 0)  # 4 leaves: 150 -> 75/75
    c, _ = core.create_job(spec(end=500, size=100, queue="gpu"), 0)  # 8 leaves: ... 125 -> 62/63
    core.pause(c.id, 0)
    assert depths() == {"default": QueueDepth(16, 0), "gpu": QueueDepth(4, 0)}
    first = core.lease(["default"], 3, 1)
    core.complete([first[0].fence], [], 1)
    assert depths() == {"default": QueueDepth(13, 2), "gpu": QueueDepth(4, 0)}
    # A paused job's leases still count (their holders are busy); its waiting leaves do not.
    core.resume(c.id, 2)
    [held] = core.lease(["gpu"], 1, 2)
    assert held.job_id == b.id  # the older of two equal priorities
    core.pause(b.id, 3)
    assert depths()["gpu"] == QueueDepth(8, 1)
    core.cancel(a.id, 4)
    assert depths()["default"] == QueueDepth(0, 0)  # still listed, at zero


def test_state_survives_a_round_trip_through_rocksdb(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    core = Core(fence_limit=store.fence_limit())
    assert core.fences.pending_limit() is not None
    commit(core, store)
    assert core.fences.pending_limit() is None
    job, _ = core.create_job(spec(end=10_000, size=100, job_id="rt"), 0)
    leases = core.lease(["default"], 10, 0)
    fences = [lease.fence for lease in leases]
    core.complete(fences[:6], [], 1)
    core.heartbeat([Beat(fences[6], cursor=leases[6].node.start + 7, details=b"d")], 1)
    commit(core, store)
    store.close()

    store = Store(tmp_path / "db")
    back = Core(fence_limit=store.fence_limit())
    back.restore(store.load(MEMORY_WINDOW), 5)
    rjob = back.get("rt")
    assert back.stats(rjob) == core.stats(job)
    assert len(back.leases) == 4 and back.fences.next >= core.fences.next
    assert all(back.leases.get(f) is not None for f in fences[6:])
    node7 = back.leases.get(fences[6])
    assert (
        node7 is not None and node7.node.done_upto == leases[6].node.start + 7 and node7.node.details == b"d"
    )
    events = back.events.recent("rt", 0)[0]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].type is EventType.JOB_CREATED
    store.close()


def test_events_are_kept_in_segments_with_bounded_retention(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    core = Core(fence_limit=store.fence_limit(), event_retention=50)
    core.create_job(spec(end=100_000, size=100, job_id="ev"), 0)
    for step in range(30):
        fences = [lease.fence for lease in core.lease(["default"], 5, step)]
        core.complete(fences, [], step)
        commit(core, store)
    last = core.events.durable_seq("ev")
    kept = store.read_events("ev", 0, last)
    seqs = [e.seq for e in kept]
    assert seqs == list(range(seqs[0], last + 1))  # contiguous up to the newest
    assert 50 <= len(kept) < 50 + 30  # at least the retention, at most one segment more
    assert [e.seq for e in store.read_events("ev", last - 7, last - 2)] == list(range(last - 6, last - 1))
    store.close()
    store = Store(tmp_path / "db")
    back = Core(fence_limit=store.fence_limit(), event_retention=50)
    back.restore(store.load(MEMORY_WINDOW), 100)
    assert back.events.durable_seq("ev") == last
    event = back.events.append("ev", EventType.STATS_UPDATED, 101, stats=back.stats(back.get("ev")))
    assert event.seq == last + 1
    store.close()


def test_leaf_timeout_revokes_the_lease_despite_heartbeats() -> None:
    core = new_core()
    s = spec(
        end=100,
        size=100,
        lease_ttl=SECOND,
        retry=RetryPolicy(initial_backoff=timedelta(0)),
        leaf_timeout=timedelta(milliseconds=2500),
    )
    job, _ = core.create_job(s, 0)
    fence, node = lease_one(core, 0)
    for t in (0.8, 1.6, 2.4):
        core.heartbeat([Beat(fence)], t)
        core.tick(t)
    assert fence in core.leases
    core.tick(2.6)
    assert core.heartbeat([Beat(fence)], 2.7)[0][1] is Action.LOST  # the handler is told to stop
    assert node.attempts == 1 and "timed out" in node.last_error and job.tree.failed_attempts == 1


def test_deadline_fails_the_job() -> None:
    core = new_core()
    s = spec(end=1000, size=100, lease_ttl=100 * SECOND, deadline=datetime.fromtimestamp(50, UTC))
    job, _ = core.create_job(s, 0)
    fence, _ = lease_one(core, 0)
    core.tick(49)
    assert job.status is JobStatus.RUNNING
    core.tick(51)
    assert job.status is JobStatus.FAILED and job.reason == "deadline exceeded"
    assert core.heartbeat([Beat(fence)], 52)[0][1] is Action.CANCEL


def test_stats_events_are_coalesced() -> None:
    core = new_core()
    core.create_job(spec(end=100_000, size=10, job_id="busy"), 0)
    seen: list[EventType] = []
    core.events.subscribe("busy", lambda event: seen.append(event.type))
    for step in range(100):
        now = step * 0.01  # one second of activity, a batch every 10 ms
        core.complete([lease.fence for lease in core.lease(["default"], 50, now)], [], now)
        core.tick(now)
        commit(core)
    assert len(seen) > 10_000  # node events: three per leaf
    assert 1 <= seen.count(EventType.STATS_UPDATED) <= 4  # at most four a second


def test_the_event_that_finishes_a_job_is_its_last() -> None:
    core = new_core()
    core.create_job(spec(end=1000, size=100, job_id="short"), 0)
    seen: list[EventType] = []
    core.events.subscribe("short", lambda event: seen.append(event.type))
    core.tick(1.0)
    while leases := core.lease(["default"], 3, 1.0):
        core.complete([lease.fence for lease in leases], [], 1.0)  # stats change at every batch
    for now in (1.0, 1.5, 3.0, 10.0):
        core.tick(now)
    commit(core)
    assert seen[-1] is EventType.JOB_COMPLETED
    assert EventType.STATS_UPDATED not in seen[seen.index(EventType.JOB_COMPLETED) :]
