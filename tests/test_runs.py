"""Leaf runs against the pure core (clock passed in), and through a real RocksDB store for restarts:
when runs are granted and how long, what a run's completion, failed leaves, early end, expiry
and a restart do to the tree, and that fair shares count leaves."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from hypothesis import given, settings
from hypothesis import strategies as st

from parcelo.coordinator.core import Core
from parcelo.coordinator.events import MEMORY_WINDOW, EventType
from parcelo.coordinator.jobs import JobState, JobStatus
from parcelo.coordinator.leases import LeafFailure, Lease, LeaseKind, Reject
from parcelo.coordinator.runs import MAX_RUN_LEAVES, MIN_SAMPLES, LeafPace
from parcelo.coordinator.store import Store
from parcelo.coordinator.tree import Status, leaf_at
from parcelo.runs import RunResult, first_leaf, leaves
from parcelo.v1 import types_pb2

SIZE = 10  # ids per leaf


def spec(leaf_count: int = 1024, **fields: Any) -> types_pb2.JobSpec:
    ttl = Duration(seconds=3)
    return types_pb2.JobSpec(
        range=types_pb2.Range(start=0, end=leaf_count * SIZE), max_range_size=SIZE, lease_ttl=ttl, **fields
    )


def new_core(fence_limit: int = 1) -> Core:
    core = Core(fence_limit=fence_limit, seed=7)
    core.fences.made_durable(core.fences.pending_limit() or 0)
    return core


def warm(core: Core, job: JobState, handler_us: int = 2, now: float = 0.0) -> None:
    """Run the first ``MIN_SAMPLES`` leaves one by one, each reporting ``handler_us``."""
    first = core.lease([job.queue], MIN_SAMPLES, now, "a", runs=True)
    assert all(lease.node.end - lease.node.start <= SIZE for lease in first)  # nothing measured yet
    core.complete([r.fence for r in first], [], now, holder="a", handler_us=[handler_us] * len(first))


def events(core: Core, job: JobState, kind: EventType) -> list[Any]:
    """The job's events of ``kind`` (written first: events show once their batch is)."""
    core.written(core.take_changes())
    return [e for e in core.events.recent(job.id, 0)[0] if e.type is kind]


def width(lease: Lease) -> int:
    return lease.end - lease.node.start


def full_run(core: Core, job: JobState, leaf_count: int = MAX_RUN_LEAVES, now: float = 1.0) -> Lease:
    """The first run of a whole subtree of ``leaf_count`` leaves; the ragged start of the frontier
    (the rest of the subtree the warm-up leaves began) is completed on the way."""
    while True:
        [lease] = core.lease([job.queue], 1, now, "a", runs=True)
        if width(lease) == leaf_count * SIZE:
            return lease
        assert width(lease) < leaf_count * SIZE
        core.complete([lease.fence], [], now, holder="a")


def ids_done(job: JobState) -> int:
    return job.tree.range_processed


def test_runs_come_once_leaves_are_measured_short_and_only_to_workers_that_run_them() -> None:
    core = new_core()
    job, _ = core.create_job(spec(), 0)
    warm(core, job)
    plain = core.lease(["default"], 4, 1, "old")
    assert [width(r) for r in plain] == [SIZE] * 4  # a worker without Hello.leaf_runs
    runs = core.lease(["default"], 8, 1, "a", runs=True)
    # The pending nodes as they come, left to right: the rest of the first 64 leaves' subtree,
    # then whole subtrees of 64 leaves. Each is a node of the tree by the rule.
    assert [width(r) // SIZE for r in runs] == [4, 8, 32, 64, 64, 64, 64, 64]
    for run in runs:
        assert run.node.start % width(run) == 0 and not run.node.is_leaf
        assert len(list(leaves(run.node.start, run.node.end, SIZE))) == width(run) // SIZE
    core.complete([r.fence for r in runs], [], 2, holder="a", handler_us=[128] * 8)
    core.complete([r.fence for r in plain], [], 2, holder="old")
    assert ids_done(job) == (MIN_SAMPLES + 4 + 4 + 8 + 32 + 5 * 64) * SIZE
    starts = events(core, job, EventType.NODE_STARTED)
    assert (runs[0].node.start, runs[0].node.end) in {(e.start, e.end) for e in starts}


@pytest.mark.parametrize(
    ("handler_us", "run_leaves"), [(1, 64), (30, 64), (40, 32), (100, 16), (900, 2), (1500, 1), (50_000, 1)]
)
def test_a_run_is_sized_to_about_two_milliseconds_of_handler_time(handler_us: int, run_leaves: int) -> None:
    pace = LeafPace()
    for _ in range(MIN_SAMPLES - 1):
        pace.observe(handler_us, 1)
    assert pace.run_leaves() == 1  # not trusted yet
    pace.observe(handler_us, 1)
    assert pace.run_leaves() == run_leaves
    core = new_core()
    job, _ = core.create_job(spec(), 0)
    warm(core, job, handler_us)
    lease = full_run(core, job, run_leaves)
    [after] = core.lease(["default"], 1, 1, "a", runs=True)
    assert width(after) == width(lease) == run_leaves * SIZE


def test_a_slower_region_shortens_the_runs_that_follow() -> None:
    core = new_core()
    job, _ = core.create_job(spec(4096), 0)
    warm(core, job)
    for now in range(1, 40):
        got = core.lease(["default"], 1, now, "a", runs=True)
        # Each run reports 1 ms a leaf: the mean follows, and runs shrink to 2 leaves.
        core.complete([got[0].fence], [], now, holder="a", handler_us=[1000 * (width(got[0]) // SIZE)])
    [last] = core.lease(["default"], 1, 50, "a", runs=True)
    assert width(last) == 2 * SIZE


@pytest.mark.parametrize(
    "fields",
    [
        {"pruning": True},
        {"leaf_timeout": Duration(seconds=5)},
        {"max_leases_per_second": 1000.0},
        {"reduce": types_pb2.REDUCE_MERGE},
        {"target_leaf_seconds": Duration(seconds=1)},
        {"min_range_size": 6},
        {"leaf_runs": False},
    ],
    ids=["pruning", "leaf-timeout", "rate-limit", "merge", "adaptive", "min-range-size", "off"],
)
def test_jobs_whose_rules_count_or_check_single_leaves_never_get_runs(fields: dict[str, Any]) -> None:
    core = new_core()
    core.create_job(spec(**fields), 0)
    for now in range(1, 60):
        [lease] = core.lease(["default"], 1, now, "a", runs=True)
        probe = lease.kind is LeaseKind.PROBE  # (pruning: probes ask about wide nodes first)
        assert probe or width(lease) <= SIZE
        core.complete([lease.fence], [], now, holder="a", handler_us=[] if probe else [1])


def test_a_whole_job_of_runs_completes_with_every_id_once() -> None:
    core = new_core()
    job, _ = core.create_job(spec(4096, reduce=types_pb2.REDUCE_SUM), 0)
    warm(core, job)
    leases = 0
    while job.status is not JobStatus.COMPLETED:
        got = core.lease(["default"], 16, 2, "a", runs=True)
        assert got, "work left but nothing leased"
        leases += len(got)
        # Each run's result is its leaf count, as a worker that combines `return 1` sends it.
        counts = [str(len(list(leaves(r.node.start, r.end, SIZE)))) for r in got]
        core.complete([r.fence for r in got], [], 2, counts, holder="a", handler_us=[64] * len(got))
    assert job.tree.result == 4096 - MIN_SAMPLES and ids_done(job) == 4096 * SIZE
    assert leases < 4096 // 32  # runs of 64, after the first 16 single leaves
    # The tree collapsed to its root: runs were never split into leaves.
    assert [n.status for n in job.tree.walk()] == [Status.DONE]


def test_failed_leaves_of_a_run_fail_alone_and_the_rest_is_done() -> None:
    core = new_core()
    job, _ = core.create_job(spec(retry=types_pb2.RetryPolicy(max_attempts=3)), 0)
    warm(core, job)
    run = full_run(core, job)
    before = ids_done(job)
    base = run.node.start
    bad = [(base + 3 * SIZE, base + 4 * SIZE), (base + 40 * SIZE, base + 41 * SIZE)]
    failed = {
        run.fence: [
            LeafFailure(*bad[0], "ValueError: flaky"),
            LeafFailure(*bad[1], "PermanentError: corrupt", permanent=True),
        ]
    }
    assert core.complete([run.fence], [], 2, holder="a", failed_leaves=failed) == ([run.fence], [])
    assert ids_done(job) == before + (MAX_RUN_LEAVES - 2) * SIZE
    nodes = {(n.start, n.end): n for n in job.tree.walk()}
    flaky, corrupt = nodes[bad[0]], nodes[bad[1]]
    assert (flaky.status, flaky.attempts, flaky.last_error) == (Status.PENDING, 1, "ValueError: flaky")
    assert (corrupt.status, corrupt.last_error) == (Status.ERROR, "PermanentError: corrupt")
    assert core.stats(job).failed_attempts == 2
    failed_events = events(core, job, EventType.NODE_FAILED)
    assert sorted((e.start, e.end, e.attempt) for e in failed_events) == [(*bad[0], 1), (*bad[1], 1)]
    # The retried leaf comes back alone (a leaf, its second attempt), after its backoff.
    retry_at = flaky.not_before
    later = core.lease(["default"], 4096, retry_at + 1, "a", runs=True)
    again = [r for r in later if (r.node.start, r.node.end) == bad[0]]
    assert len(again) == 1 and again[0].node.attempts == 2
    core.complete([r.fence for r in later], [], retry_at + 1, holder="a")
    assert job.status is JobStatus.FAILED and "1 leaves failed" in job.reason
    assert ids_done(job) == 1023 * SIZE


def test_a_failed_leaf_that_is_no_leaf_of_the_run_is_refused_and_fails_the_run() -> None:
    core = new_core()
    job, _ = core.create_job(spec(), 0)
    warm(core, job)
    run = full_run(core, job)
    base = run.node.start
    refused = []
    for wrong in [(base + 5, base + 15), (base, base + 2 * SIZE), (base - SIZE, base)]:
        [other] = core.lease(["default"], 1, 1, "a", runs=True)
        refused.append(other.node)
        _, [rejection] = core.complete(
            [other.fence], [], 2, holder="a", failed_leaves={other.fence: [LeafFailure(*wrong, "x")]}
        )
        assert rejection.reason is Reject.INVALID_RESULT and "is not a leaf" in rejection.message
    # Each refused report failed its run's attempt for good (the run node is in error).
    assert all(node.status is Status.ERROR and not node.is_leaf for node in refused)
    core.complete([run.fence], [], 2, holder="a")


def test_a_run_ended_early_completes_what_ran_and_the_rest_is_fresh_again() -> None:
    core = new_core()
    job, _ = core.create_job(spec(), 0)
    warm(core, job)
    run = full_run(core, job)
    before = ids_done(job)
    base, end = run.node.start, run.end
    stop = base + 20 * SIZE  # after the first 20 leaves (a RELEASE came)
    assert core.complete([run.fence], [], 2, holder="a", ends=[stop]) == ([run.fence], [])
    assert ids_done(job) == before + 20 * SIZE
    rest = core.lease(["default"], 64, 3, "a", runs=True)
    # The rest was never run: its nodes are fresh, so they go as runs again (nodes of the rule).
    mine = sorted((r.node.start, r.end) for r in rest if base <= r.node.start < end)
    assert mine[0][0] == stop and mine[-1][1] == end
    assert all(r.node.attempts == 1 for r in rest)


def test_an_expired_run_is_retried_leaf_by_leaf_with_its_attempt_counted() -> None:
    core = new_core()
    job, _ = core.create_job(spec(), 0)
    warm(core, job)
    run = full_run(core, job)
    core.tick(1 + 3.5)  # no heartbeat within the TTL
    assert core.leases.get(run.fence) is None
    again = core.lease(["default"], 64, 5, "a", runs=True)
    mine = [r for r in again if run.node.start <= r.node.start < run.node.end]
    assert len(mine) == MAX_RUN_LEAVES and all(width(r) == SIZE for r in mine)
    assert all(r.node.attempts == 2 for r in mine)


def test_a_run_survives_a_restart_and_a_failed_leaf_split_is_restored(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    core = Core(fence_limit=store.fence_limit())

    def commit(c: Core) -> None:
        changes = c.take_changes()
        store.write(store.encode(changes))
        c.written(changes)

    commit(core)
    job, _ = core.create_job(spec(job_id="j"), 0)
    warm(core, job)
    first = full_run(core, job)
    [second] = core.lease(["default"], 1, 1, "a", runs=True)
    bad = (first.node.start + 7 * SIZE, first.node.start + 8 * SIZE)
    core.complete([first.fence], [], 2, holder="a", failed_leaves={first.fence: [LeafFailure(*bad, "e")]})
    commit(core)
    store.close()

    store = Store(tmp_path / "db")
    back = Core(fence_limit=store.fence_limit())
    back.restore(store.load(MEMORY_WINDOW), 5)
    commit(back)
    bjob = back.get("j")
    assert back.stats(bjob) == core.stats(job)
    held = back.leases.get(second.fence)
    assert held is not None and width(held) == MAX_RUN_LEAVES * SIZE
    assert back.complete([second.fence], [], 6, holder="a") == ([second.fence], [])
    nodes = {(n.start, n.end): n for n in bjob.tree.walk()}
    assert nodes[bad].status is Status.PENDING and nodes[bad].attempts == 1
    rest = back.lease(["default"], 4096, 100, "a", runs=True)
    back.complete([r.fence for r in rest], [], 100, holder="a")
    assert bjob.status is JobStatus.COMPLETED and bjob.tree.range_processed == 1024 * SIZE
    store.close()


def test_fair_shares_count_the_leaves_of_runs() -> None:
    core = new_core()
    fast, _ = core.create_job(spec(8192, fairness_key="fast"), 0)
    slow, _ = core.create_job(spec(8192, fairness_key="slow"), 0)
    warm(core, fast, 2)
    warm(core, slow, 50_000)  # too slow for runs: one leaf a lease
    got = core.lease(["default"], 4096, 1, "a", runs=True)
    leaves_of = {fast.id: 0, slow.id: 0}
    for lease in got:
        leaves_of[lease.job_id] += width(lease) // SIZE
    # Equal weights: about equal leaves (within one turn), though far fewer leases of "fast".
    assert abs(leaves_of[fast.id] - leaves_of[slow.id]) <= 2 * MAX_RUN_LEAVES
    assert sum(1 for r in got if r.job_id == fast.id) * 16 < sum(1 for r in got if r.job_id == slow.id)


def test_leaf_at_and_the_sdk_split_agree_with_the_tree() -> None:
    for start, end, size in [(0, 640, 10), (3, 1000, 7), (0, 1, 1), (10, 17, 3)]:
        got = list(leaves(start, end, size))
        assert first_leaf(start, end, size) == got[0][1]
        assert got[0][0] == start and got[-1][1] == end
        assert all(a[1] == b[0] and 0 < b[1] - b[0] <= size for a, b in itertools.pairwise(got))
        assert all(leaf_at(start, end, lo, size) == (lo, hi) for lo, hi in got)
        assert all(leaf_at(start, end, hi - 1, size) == (lo, hi) for lo, hi in got)


def test_a_run_result_combines_like_the_jobs_reduce_and_refuses_what_it_cannot() -> None:
    total = RunResult(types_pb2.REDUCE_SUM)
    for value in (1, 2.5, None, 3):
        assert total.add(value) == ""
    assert total.value == 6.5
    low = RunResult(types_pb2.REDUCE_MIN)
    assert [low.add(v) for v in (5, -2, 9)] == ["", "", ""] and low.value == -2
    high = RunResult(types_pb2.REDUCE_MAX)
    assert [high.add(v) for v in (5, -2, 9)] == ["", "", ""] and high.value == 9
    assert total.add("x") == "reduce sum combines numbers; the result is a string"
    assert total.add(True) == "reduce sum combines numbers; the result is a boolean"
    # In the coordinator's words for a single leaf's NaN or infinity.
    assert total.add(float("nan")) == "the result is not JSON: NaN is not a JSON number"
    assert total.add(float("-inf")) == "the result is not JSON: -Infinity is not a JSON number"
    ignored = RunResult(types_pb2.REDUCE_NONE)
    assert ignored.add("anything") == "" and ignored.value is None


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_mix_of_runs_failures_early_ends_and_expiries_counts_each_id_once(data: st.DataObject) -> None:
    core = new_core()
    job, _ = core.create_job(spec(256, retry=types_pb2.RetryPolicy(max_attempts=100)), 0)
    warm(core, job)
    now = 1.0
    done: list[tuple[int, int]] = []  # ranges whose completion counted
    for _ in range(400):
        if job.status is JobStatus.COMPLETED:
            break
        now += 1.0
        got = core.lease(["default"], data.draw(st.integers(1, 8)), now, "a", runs=True)
        fences, ends, failed = [], [], {}
        for lease in got:
            what = data.draw(st.sampled_from(["done", "fail", "end", "expire"]))
            run = list(leaves(lease.node.start, lease.end, SIZE))
            if what == "expire":
                continue
            fences.append(lease.fence)
            stop = lease.end
            if what == "end" and len(run) > 1:
                stop = run[data.draw(st.integers(1, len(run) - 1))][0]
            ends.append(stop if stop != lease.end else 0)
            ran = [leaf for leaf in run if leaf[1] <= stop]
            bad = (
                data.draw(st.lists(st.sampled_from(ran), max_size=3, unique=True))
                if what == "fail" and len(run) > 1
                else []
            )
            if bad:
                failed[lease.fence] = [LeafFailure(*leaf, "flaky") for leaf in bad]
            done.extend(leaf for leaf in ran if leaf not in bad)
        accepted, rejected = core.complete(fences, [], now, holder="a", ends=ends, failed_leaves=failed)
        assert not rejected and sorted(accepted) == sorted(fences)
        core.tick(now + 3.5)  # the leases not reported expire
        now += 3.5
    # Drain what is left, plainly.
    for _ in range(100):
        if job.status is JobStatus.COMPLETED:
            break
        now += 100
        got = core.lease(["default"], 4096, now, "a", runs=True)
        core.complete([r.fence for r in got], [], now, holder="a")
        done.extend(leaf for r in got for leaf in leaves(r.node.start, r.end, SIZE))
    assert job.status is JobStatus.COMPLETED and ids_done(job) == 256 * SIZE
    warmed = MIN_SAMPLES * SIZE
    counted = sorted(leaf for leaf in done if leaf[0] >= warmed)
    assert counted == [leaf for leaf in leaves(0, 256 * SIZE, SIZE) if leaf[0] >= warmed]
