"""Dynamic rebalancing and adaptive leaf size against the pure core (clock passed in), and through
a real RocksDB store for restarts."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from hypothesis import example, given, settings
from hypothesis import strategies as st

from parcelo.context import Context, Range
from parcelo.coordinator.core import Core
from parcelo.coordinator.errors import InvalidArgument
from parcelo.coordinator.events import MEMORY_WINDOW, EventType
from parcelo.coordinator.jobs import JobState, JobStatus
from parcelo.coordinator.leases import Action, Beat, Failure, Lease, Reject
from parcelo.coordinator.store import Store
from parcelo.coordinator.tree import Status, grid_point, split_point
from parcelo.v1 import types_pb2

TTL = 3.0  # heartbeat interval 1 s: a proposal keeps 1 s of work and gives away at least 2 s


def spec(end: int = 1000, size: int = 1000, **fields: Any) -> types_pb2.JobSpec:
    ttl = Duration()
    ttl.FromMilliseconds(int(TTL * 1000))
    return types_pb2.JobSpec(
        range=types_pb2.Range(start=0, end=end), max_range_size=size, lease_ttl=ttl, **fields
    )


def new_core(fence_limit: int = 1) -> Core:
    core = Core(fence_limit=fence_limit, seed=7)
    core.fences.made_durable(core.fences.pending_limit() or 0)
    return core


def commit(core: Core, store: Store) -> None:
    changes = core.take_changes()
    store.write(store.encode(changes))
    core.written(changes)


def running(core: Core, job: JobState, now: float, holder: str = "a") -> Lease:
    """The job's one leaf, leased to ``holder`` and heartbeated as a splittable handler that
    claims 100 ids a second: 0 claimed at ``now``, 100 a second later."""
    [lease] = core.lease(["default"], 1, now, holder)
    core.heartbeat([Beat(lease.fence, claimed=0)], now, holder)
    core.heartbeat([Beat(lease.fence, claimed=100)], now + 1, holder)
    return lease


def covered(job: JobState) -> list[tuple[int, int, Status]]:
    return sorted((n.start, n.end, n.status) for n in job.tree.walk() if n.left is None)


def all_grid_points(start: int, end: int, min_size: int) -> set[int]:
    if end - start < 2 * min_size:
        return set()
    mid = split_point(start, end)
    return {mid} | all_grid_points(start, mid, min_size) | all_grid_points(mid, end, min_size)


@given(st.integers(0, 10**6), st.integers(1, 3000), st.integers(0, 4000), st.integers(1, 64))
def test_grid_point_is_the_smallest_split_point_by_the_rule_at_or_above(
    start: int, width: int, offset: int, min_size: int
) -> None:
    end = start + width
    points = all_grid_points(start, end, min_size)
    above = [p for p in points if p >= start + offset]
    assert grid_point(start, end, start + offset, min_size) == (min(above) if above else 0)


def test_an_idle_queue_gets_a_proposal_and_an_accepted_split_hands_out_the_rest() -> None:
    core = new_core()
    job, _ = core.create_job(spec(), 0)
    lease = running(core, job, 0)
    # Position 100 + one heartbeat of work at 100 ids/s: the first split point at or above 200.
    [(holder, fence, new_end)] = core.propose_splits({"default"}, 1)
    assert (holder, fence, new_end) == ("a", lease.fence, 200)
    assert core.propose_splits({"default"}, 1.1) == []  # one proposal at a time per lease
    # Until answered, every heartbeat answer repeats it.
    assert core.heartbeat([Beat(fence, claimed=110)], 1.1, "a") == [(fence, Action.SHRINK, "", 200)]
    assert core.leases.get(fence) is lease and not core.lease(["default"], 8, 1.1, "b")

    core.heartbeat([Beat(fence, claimed=120, shrink=(200, True))], 1.2, "a")
    assert lease.end == 200 and job.tree.dynamic_splits == 1
    assert core.stats(job).dynamic_splits == 1
    rest = core.lease(["default"], 8, 1.3, "b")
    # The given part, as nodes of the rule: 0 | 500, 0 | 250, 125 | 250, ... down to 200.
    given = [(200, 202), (202, 218), (218, 250), (250, 500), (500, 1000)]
    assert sorted((r.node.start, r.node.end) for r in rest) == given
    assert all(r.node.attempts == 1 for r in rest)
    assert core.heartbeat([Beat(fence, claimed=130, shrink=(200, True))], 1.4, "a")[0][1] is Action.CONTINUE
    assert lease.end == 200 and job.tree.dynamic_splits == 1  # the answer again changes nothing

    assert core.complete([fence], [], 2, ends=[200], holder="a") == ([fence], [])
    core.complete([r.fence for r in rest], [], 3, holder="b")
    assert job.status is JobStatus.COMPLETED
    assert job.tree.range_processed == 1000 and job.tree.root.status is Status.DONE
    changes = core.take_changes()
    core.written(changes)
    splits = [e for e in core.events.recent(job.id, 0)[0] if e.type is EventType.NODE_SPLIT]
    assert [(e.start, e.end, e.new_end) for e in splits] == [(0, 1000, 200)]


def test_a_refused_or_unanswered_proposal_changes_nothing() -> None:
    core = new_core()
    job, _ = core.create_job(spec(), 0)
    lease = running(core, job, 0)
    [(_, fence, new_end)] = core.propose_splits({"default"}, 1)
    # The holder claimed past the proposal before it arrived: it refuses, and the leaf stays whole.
    core.heartbeat([Beat(fence, claimed=new_end + 1, shrink=(new_end, False))], 1.1, "a")
    assert lease.end == 1000 and lease.proposed == 0 and lease.more == ()
    assert covered(job) == [(0, 1000, Status.RUNNING)] and job.tree.dynamic_splits == 0
    # A new proposal is made from the new position.
    [(_, _, again)] = core.propose_splits({"default"}, 1.1)
    assert again > new_end
    core.complete([fence], [], 2, holder="a")  # it ran everything: unanswered, still whole
    assert job.status is JobStatus.COMPLETED and job.tree.range_processed == 1000


def test_the_holder_refuses_a_proposal_it_claimed_past_between_proposal_and_answer() -> None:
    ctx = Context(job_id="j", params={}, attempt=1, fence=1, leaf=Range(0, 1000), cursor=0, details=None)
    assert not ctx.splittable and ctx.claimed == 0
    assert all(ctx.claim(i) for i in range(250))
    assert ctx.splittable and ctx.claimed == 250
    assert not ctx.shrink(200)  # claimed 200..249 already
    assert ctx.end == 1000 and ctx.claim(999)
    ctx = Context(job_id="j", params={}, attempt=1, fence=1, leaf=Range(0, 1000), cursor=0, details=None)
    assert ctx.claim(199) and ctx.shrink(200) and ctx.shrink(200)  # asked again: yes again
    assert ctx.end == 200 and not ctx.claim(200) and ctx.claim(150)
    assert not ctx.shrink(500)  # never grows back


def test_no_proposal_without_claims_while_work_is_pending_or_below_the_limits() -> None:
    core = new_core()
    core.create_job(spec(), 0)
    [lease] = core.lease(["default"], 1, 0, "a")
    core.heartbeat([Beat(lease.fence)], 1, "a")
    core.heartbeat([Beat(lease.fence)], 2, "a")
    assert core.propose_splits({"default"}, 2) == []  # never claims: never split
    other, _ = core.create_job(spec(), 0)
    lease2 = running(core, other, 2)  # other's only leaf is running too, but job 3 has work
    core.create_job(spec(), 3)
    assert core.propose_splits({"default"}, 3) == []
    core.lease(["default"], 1, 3, "c")
    assert [p[1] for p in core.propose_splits({"default"}, 3)] == [lease2.fence]
    assert core.propose_splits({"other-queue"}, 3) == []
    # Not worth it: the part given away would take under two heartbeat intervals.
    core.create_job(spec(end=300), 4)
    [small] = core.lease(["default"], 1, 4, "d")
    core.heartbeat([Beat(small.fence, claimed=0)], 4, "d")
    core.heartbeat([Beat(small.fence, claimed=100)], 5, "d")
    assert all(p[1] != small.fence for p in core.propose_splits({"default"}, 5))
    # min_range_size: no node narrower.
    wide, _ = core.create_job(spec(end=1000, min_range_size=400), 6)
    assert wide.tree.min_range_size == 400
    assert wide.tree.split_end(running(core, wide, 6), 200) == 500


def test_rebalance_off_and_paused_jobs_are_not_split() -> None:
    core = new_core()
    job, _ = core.create_job(spec(rebalance=False), 0)
    running(core, job, 0)
    assert core.propose_splits({"default"}, 1) == []
    paused, _ = core.create_job(spec(), 0)
    running(core, paused, 0)
    core.pause(paused.id, 1)
    assert core.propose_splits({"default"}, 1) == []


def test_a_split_leaves_the_holder_several_nodes_and_every_path_stays_exact() -> None:
    core = new_core()
    job, _ = core.create_job(spec(end=1024, size=1024), 0)
    lease = running(core, job, 0)
    core.heartbeat([Beat(lease.fence, cursor=600, details=b"at600", claimed=700)], 1.5, "a")
    # Claimed past the middle: the holder keeps [0, 512) and [512, 768) (two nodes), gives [768, 1024).
    core.heartbeat([Beat(lease.fence, claimed=700, shrink=(768, True))], 1.6, "a")
    assert [(n.start, n.end) for n in lease.nodes] == [(0, 512), (512, 768)]
    assert [n.done_upto for n in lease.nodes] == [512, 600] and lease.more[0].details == b"at600"
    assert job.tree.range_processed == 600
    stats = core.stats(job)
    assert stats.total_nodes == stats.pending_nodes + stats.running_nodes + stats.done_nodes
    # The holder dies: only what it kept is run again, each node from the checkpoint, as attempt 2
    # ([0, 512) is wholly checkpointed: its run is empty).
    core.tick(1.6 + TTL + 0.1)
    again = core.lease(["default"], 8, 5, "b")
    assert sorted((r.node.start, r.node.end, r.node.done_upto, r.node.attempts) for r in again) == [
        (0, 512, 512, 2),
        (512, 768, 600, 2),
        (768, 1024, 768, 1),
    ]
    assert core.stats(job).failed_attempts == 1  # one attempt failed, though it held two nodes
    core.complete([r.fence for r in again], [], 6, holder="b")
    assert job.status is JobStatus.COMPLETED and job.tree.range_processed == 1024


def test_a_split_survives_a_restart_and_an_answer_lost_with_it_is_applied_again(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    core = Core(fence_limit=store.fence_limit())
    commit(core, store)
    job, _ = core.create_job(spec(job_id="j"), 0)
    lease = running(core, job, 0)
    core.heartbeat([Beat(lease.fence, claimed=150, shrink=(200, True))], 1.2, "a")
    commit(core, store)
    store.close()

    store = Store(tmp_path / "db")
    back = Core(fence_limit=store.fence_limit())
    back.restore(store.load(MEMORY_WINDOW), 5)
    commit(back, store)  # fences for new leases
    bjob = back.get("j")
    held = back.leases.get(lease.fence)
    assert held is not None and held.end == 200 and bjob.tree.dynamic_splits == 1
    assert back.stats(bjob) == core.stats(job)._replace(active_leases=1)
    rest = back.lease(["default"], 8, 5, "b")
    given = [(200, 202), (202, 218), (218, 250), (250, 500), (500, 1000)]
    assert sorted((r.node.start, r.node.end) for r in rest) == given
    # Accepted again after the split was lost: here, a second split no commit saw.
    back.heartbeat([Beat(lease.fence, claimed=160, shrink=(175, True))], 5.1, "a")
    assert back.leases.get(lease.fence) is held and held.end == 175
    store.close()
    store = Store(tmp_path / "db")  # the second split was never written: gone with a crash
    lost = Core(fence_limit=store.fence_limit())
    lost.restore(store.load(MEMORY_WINDOW), 6)
    commit(lost, store)
    ljob = lost.get("j")
    # The completion says where it stopped: the split it implies is made before it counts.
    assert lost.complete([lease.fence], [], 7, ends=[175], holder="a") == ([lease.fence], [])
    assert ljob.tree.dynamic_splits == 2 and ljob.tree.range_processed == 175
    pending = sorted((r.node.start, r.node.end) for r in lost.lease(["default"], 64, 7, "b"))
    # Everything from 175 on runs again: b's leases of the first restart were never written.
    assert pending[0][0] == 175 and pending[-1] == (500, 1000)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(pending))
    store.close()


def test_a_completion_that_ends_off_the_grid_is_refused_and_fails_the_leaf() -> None:
    core = new_core()
    job, _ = core.create_job(spec(min_range_size=100), 0)  # split points 500, 250, 750, 125...
    lease = running(core, job, 0)
    _, rejected = core.complete([lease.fence], [], 2, ends=[333], holder="a")
    assert rejected[0].reason is Reject.INVALID_RESULT
    assert job.status is JobStatus.FAILED and job.tree.range_processed == 0


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"min_range_size": 2000}, "min_range_size"),
        ({"target_leaf_seconds": Duration(seconds=-1)}, "target_leaf_seconds"),
        ({"target_leaf_seconds": Duration()}, "target_leaf_seconds"),
    ],
)
def test_bad_rebalancing_fields_are_invalid_argument(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        new_core().create_job(spec(**fields), 0)
    assert err.value.field == field


def test_adaptive_leaf_size_makes_leaves_narrower_where_ids_are_slow() -> None:
    core = new_core()
    target = Duration()
    target.FromMilliseconds(500)
    job, _ = core.create_job(spec(end=1 << 16, size=1024, target_leaf_seconds=target), 0)
    widths: dict[str, list[int]] = {"slow": [], "fast": []}
    now = 0.0
    while job.status is not JobStatus.COMPLETED:
        leases = core.lease(["default"], 1, now, "a")
        for lease in leases:
            node = lease.node
            # Ids below 8192 cost 1 ms each; the others 10 us.
            per_id = 1e-3 if node.start < 8192 else 1e-5
            widths["slow" if node.start < 8192 else "fast"].append(node.width)
            core.complete([lease.fence], [], now, handler_us=[int(node.width * per_id * 1e6)], holder="a")
        now += 0.01
    assert job.tree.range_processed == 1 << 16
    # Slow leaves: 512 ids take 0.5 s, so after the first (nothing measured yet) they are narrower.
    assert widths["slow"][0] == 1024 and max(widths["slow"][1:]) <= 256
    assert widths["fast"][-8:] == [1024] * 8
    assert sum(widths["slow"]) == 8192


class _Holder:
    """A model worker holding one lease: it claims ids one at a time, as the SDK does."""

    def __init__(self, lease: Lease) -> None:
        self.fence = lease.fence
        self.start = lease.node.done_upto
        self.end = lease.end
        self.claimed = self.start

    def shrink(self, new_end: int) -> bool:
        if new_end == self.end:
            return True
        if not self.start <= self.claimed <= new_end < self.end:
            return False
        self.end = new_end
        return True


@settings(max_examples=300, deadline=None)
# Always among the examples: a split accepted, then a lost holder after it.
@example([(0, 7), (1, 0), (1, 0), (2, 0), (0, 7), (1, 0), (1, 0), (2, 19), (4, 0)], 3)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1 << 16)), max_size=120), st.integers(1, 8))
def test_coverage_stays_exact_over_random_claims_proposals_completions_and_expiries(
    steps: list[tuple[int, int]], min_size: int
) -> None:
    """Whatever the order of claims, proposals, answers, completions and lost holders, each id
    of the range is counted done by exactly one accepted completion."""
    core = new_core()
    retry = types_pb2.RetryPolicy(max_attempts=100)  # lost holders never fail the job
    job, _ = core.create_job(spec(end=4096, size=1024, min_range_size=min_size, retry=retry), 0)
    holders: dict[int, _Holder] = {}
    proposals: dict[int, int] = {}
    done = [0] * 4096
    now = 0.0

    def complete(h: _Holder) -> None:
        accepted, _ = core.complete([h.fence], [], now, ends=[h.end], holder="w")
        if accepted:
            for i in range(h.start, h.end):
                done[i] += 1
        holders.pop(h.fence)

    for op, value in steps:
        # Claims of 1-10 ids per 0.2 s: slow enough for the 1,024-wide leaves to be worth splitting.
        now += 0.2
        live = [h for h in holders.values() if core.leases.get(h.fence) is not None]
        if op == 0 or not live:
            for lease in core.lease(["default"], 1 + value % 8, now, "w"):
                holders[lease.fence] = _Holder(lease)
            continue
        h = live[value % len(live)]
        if op in (1, 5):  # the handlers (op 1: claim more and) heartbeat; the coordinator proposes
            for i, other in enumerate(live):
                if op == 1:
                    other.claimed = min(other.end, other.claimed + 1 + (value + i) % 10)
            core.heartbeat([Beat(o.fence, claimed=o.claimed) for o in live], now, "w")
            for _, fence, new_end in core.propose_splits({"default"}, now):
                proposals[fence] = new_end
        elif op == 2:  # the holders answer, some after claiming past the proposal
            for fence, new_end in list(proposals.items()):
                answering = holders.get(fence)
                del proposals[fence]
                if answering is None:
                    continue
                answering.claimed = min(answering.end, answering.claimed + value % 20)
                accepted = answering.shrink(new_end)
                beat = Beat(fence, claimed=answering.claimed, shrink=(new_end, accepted))
                core.heartbeat([beat], now, "w")
        elif op == 3:
            h.claimed = h.end
            complete(h)
        else:  # a holder stops heartbeating: its leases expire, its late result is stale
            now += TTL + 1
            core.tick(now)
            for other in list(holders.values()):
                if core.leases.get(other.fence) is None:
                    complete(other)
    while job.status is not JobStatus.COMPLETED:
        now += 1
        for h in list(holders.values()):
            complete(h)
        for lease in core.lease(["default"], 64, now, "w"):
            holders[lease.fence] = _Holder(lease)
        assert holders or job.status is JobStatus.COMPLETED
    assert done == [1] * 4096
    assert job.tree.range_processed == 4096
    assert all(n.end - n.start >= min_size for n in job.tree.walk())


def test_release_and_a_permanent_failure_after_a_split_cover_what_the_holder_kept() -> None:
    core = new_core()
    job, _ = core.create_job(spec(end=1024, size=1024), 0)
    lease = running(core, job, 0)
    core.heartbeat([Beat(lease.fence, claimed=700, shrink=(768, True))], 1.5, "a")
    given = core.lease(["default"], 8, 1.6, "b")
    # Paused with release: the holder checkpoints at 650 and gives its lease back.
    core.pause(job.id, 2, release=True)
    assert core.heartbeat([Beat(lease.fence, claimed=700)], 2, "a")[0][1] is Action.RELEASE
    failure = Failure(lease.fence, retryable=True, message="released", released=True, cursor=650)
    assert core.fail([failure], 2.1, "a") == ([lease.fence], [])
    assert job.tree.range_processed == 650 and core.stats(job).failed_attempts == 0
    core.resume(job.id, 3)
    again = core.lease(["default"], 8, 3, "a")
    assert sorted((r.node.start, r.node.end, r.node.done_upto, r.node.attempts) for r in again) == [
        (0, 512, 512, 1),
        (512, 768, 650, 1),
    ]
    # One of them fails for good: only that node is in error; RetryFailed runs it again.
    core.fail([Failure(again[0].fence, retryable=False, message="bad")], 4, "a")
    core.complete([r.fence for r in again[1:]], [], 4, holder="a")
    core.complete([g.fence for g in given], [], 4, holder="b")
    assert job.status is JobStatus.FAILED
    [bad] = [n for n in job.tree.walk() if n.status is Status.ERROR and n.left is None]
    assert (bad.start, bad.end) == (again[0].node.start, again[0].node.end)
    core.retry_failed(job.id, 5)
    [retry] = core.lease(["default"], 8, 5, "a")
    core.complete([retry.fence], [], 6, holder="a")
    assert job.status is JobStatus.COMPLETED and job.tree.range_processed == 1024
    stats = core.stats(job)
    # The root and the four nodes the split made, all done (the tree collapsed into the root).
    assert (stats.total_nodes, stats.done_nodes, stats.dynamic_splits) == (5, 5, 1)
    assert job.tree.root.left is None
