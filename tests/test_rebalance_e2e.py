"""Dynamic rebalancing with real processes: a coordinator on loopback over RocksDB, worker
processes running a claiming handler, kill -9 of a holder and of the coordinator."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

from google.protobuf.duration_pb2 import Duration

from parcelo import JobOptions, result_of
from parcelo.testing import CoordinatorProcess, Proc, wait_for
from parcelo.v1 import jobs_pb2, jobs_pb2_grpc, types_pb2, worker_pb2, worker_pb2_grpc
from tests.support import (
    Stream,
    async_test,
    inprocess_coordinator,
    loopback_channel,
    raw_spec,
    runs_with_pids,
    start_recording_workers,
    tree_nodes,
)

DONE = {types_pb2.JOB_STATUS_COMPLETED}
# 16 leaves of 64 ids; the ids of the leaf [320, 384) cost 100 times the others.
SLOW = (320, 384)


def skewed(slow_seconds: float = 0.1, **options: object) -> JobOptions:
    return JobOptions(
        0,
        1024,
        max_range_size=64,
        reduce="sum",
        lease_ttl=timedelta(seconds=1.5),  # heartbeats every 0.5 s
        params={"slow": SLOW, "slow_seconds": slow_seconds, "fast_seconds": 0.001},
        **options,  # type: ignore[arg-type]
    )


def claims(log: Path) -> list[tuple[int, int, int]]:
    """``(id, fence, pid)`` of every claim the handlers logged."""
    return [(start, fence, pid) for start, _, fence, pid in runs_with_pids(log, "claim")]


def test_a_slow_leaf_is_split_among_idle_workers_and_every_id_is_claimed_once(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    job = coordinator.create_job(skewed())
    start_recording_workers(coordinator, procs, log_dir, run_log, "claim_ids", "--concurrency", "4", n=2)
    done = coordinator.wait_status(job.id, DONE, timeout=60)
    assert result_of(done) == 1024  # the ids each accepted completion did add up to the range
    seen = claims(run_log)
    assert Counter(i for i, _, _ in seen) == dict.fromkeys(range(1024), 1)
    # The slow leaf went to several leases, none of which did more than half of it: unsplit, one
    # lease would have done all 64 slow ids (6.4 s) while seven slots sat idle.
    per_fence = Counter(fence for i, fence, _ in seen if SLOW[0] <= i < SLOW[1])
    assert done.stats.dynamic_splits >= 2 and len(per_fence) >= 3
    assert max(per_fence.values()) <= 32
    print("splits", done.stats.dynamic_splits, "slow ids per lease", sorted(per_fence.values()))
    # Splits are events, with the range split and the end its holder kept.
    events = list(coordinator.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job.id), timeout=20))
    dynamic = [e for e in events if e.type == types_pb2.EVENT_TYPE_NODE_SPLIT and e.new_end]
    assert len(dynamic) == done.stats.dynamic_splits
    assert all(e.range.start < e.new_end < e.range.end for e in dynamic)
    assert dynamic[0].range.start == SLOW[0] and dynamic[0].range.end == SLOW[1]


def test_a_handler_that_does_not_claim_is_never_split(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    job = coordinator.create_job(
        JobOptions(0, 256, max_range_size=64, lease_ttl=timedelta(seconds=1.5), params={"sleep": 0.3})
    )
    # One leaf of four is slow; plenty of idle slots, but the handler never calls claim.
    start_recording_workers(coordinator, procs, log_dir, run_log, "record", "--concurrency", "4", n=2)
    done = coordinator.wait_status(job.id, DONE, timeout=60)
    assert done.stats.dynamic_splits == 0
    assert sorted((s, e) for s, e, _, _ in runs_with_pids(run_log)) == [
        (0, 64),
        (64, 128),
        (128, 192),
        (192, 256),
    ]


def test_no_rebalance_keeps_a_claiming_handler_whole(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    job = coordinator.create_job(skewed(0.02, rebalance=False))
    start_recording_workers(coordinator, procs, log_dir, run_log, "claim_ids", "--concurrency", "4", n=2)
    done = coordinator.wait_status(job.id, DONE, timeout=60)
    assert done.stats.dynamic_splits == 0 and result_of(done) == 1024
    assert len({fence for i, fence, _ in claims(run_log) if SLOW[0] <= i < SLOW[1]}) == 1


def test_kill9_of_the_holder_after_a_split_reruns_only_what_it_kept(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    job = coordinator.create_job(skewed())
    workers = start_recording_workers(
        coordinator, procs, log_dir, run_log, "claim_ids", "--concurrency", "4", n=2
    )
    wait_for(lambda: coordinator.get_job(job.id).stats.dynamic_splits >= 1, 30, "a dynamic split")
    [(first, holder)] = {(fence, pid) for i, fence, pid in claims(run_log) if i == SLOW[0]}
    victim = next(w for w in workers if w.pid == holder)
    victim.kill9()
    kept_end = min(e.new_end for e in _splits(coordinator, job.id) if e.range.start == SLOW[0])
    # A fresh worker, so that the job has two again.
    start_recording_workers(coordinator, procs, log_dir, run_log, "claim_ids", "--concurrency", "4")
    done = coordinator.wait_status(job.id, DONE, timeout=60)
    assert result_of(done) == 1024  # each id counted once
    seen = claims(run_log)
    counts = Counter(i for i, _, _ in seen)
    assert set(counts) == set(range(1024))
    # Ids run twice: only ones the killed worker had claimed (under the split lease or others it
    # held); under the split lease, it never claimed past the end it kept.
    twice = {i for i, n in counts.items() if n > 1}
    assert twice <= {i for i, _, pid in seen if pid == holder}
    assert all(i < kept_end for i, fence, _ in seen if fence == first)


def _splits(coord: CoordinatorProcess, job_id: str) -> list[types_pb2.JobEvent]:
    request = jobs_pb2.WatchJobRequest(job_id=job_id, types=[types_pb2.EVENT_TYPE_NODE_SPLIT])
    return [e for e in coord.jobs.WatchJob(request, timeout=20) if e.new_end]


def test_a_split_survives_kill9_of_the_coordinator(
    make_coordinator: type[CoordinatorProcess], procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    coord = make_coordinator(tmp_path / "data", log_dir).start()
    run_log = tmp_path / "runs.log"
    job = coord.create_job(skewed(job_id="skewed"))
    start_recording_workers(coord, procs, log_dir, run_log, "claim_ids", "--concurrency", "4", n=2)
    wait_for(lambda: coord.get_job(job.id).stats.dynamic_splits >= 1, 30, "a dynamic split")
    before = coord.get_job(job.id).stats.dynamic_splits
    coord.kill9()
    coord.start()
    after = coord.get_job(job.id)
    assert after.stats.dynamic_splits >= before  # what was acknowledged as written is still there
    tree = coord.jobs.GetJobTree(jobs_pb2.GetJobTreeRequest(job_id=job.id, max_depth=20), timeout=10)
    slow = [n for n in tree_nodes(tree.root) if SLOW[0] <= n.range.start and n.range.end <= SLOW[1]]
    assert any(n.range.end - n.range.start < 64 for n in slow)  # the slow leaf stays split
    done = coord.wait_status(job.id, DONE, timeout=60)
    assert result_of(done) == 1024
    assert set(i for i, _, _ in claims(run_log)) == set(range(1024))


@async_test
async def test_a_raw_protocol_worker_following_the_protocol_page_accepts_a_split(tmp_path: Path) -> None:
    """docs/protocol.md, "Dynamic splits", message by message: heartbeats with claims, the
    unasked SHRINK, the answer, the rest granted to an idle worker, a completion with its end."""
    async with inprocess_coordinator(tmp_path / "data") as coord, loopback_channel(coord.port) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        ttl = Duration()
        ttl.FromMilliseconds(1500)
        await jobs.CreateJob(
            jobs_pb2.CreateJobRequest(spec=raw_spec(1000, 1000, job_id="raw", lease_ttl=ttl))
        )
        holder = Stream(stub)
        await holder.send(hello=worker_pb2.Hello(worker_id="a", concurrency=1))
        await holder.next("welcome")
        await holder.send(lease=worker_pb2.LeaseRequest(count=1))
        [lease] = (await holder.next("grant")).grant.leases
        idle = Stream(stub)
        await idle.send(hello=worker_pb2.Hello(worker_id="b", concurrency=4))
        await idle.next("welcome")
        await idle.send(lease=worker_pb2.LeaseRequest(count=16))  # waits: nothing is pending

        # The handler claims 100 ids a second; its heartbeats say so.
        claimed, began = 0, time.monotonic()
        shrink: worker_pb2.Directive | None = None
        while shrink is None:
            claimed = int((time.monotonic() - began) * 100)
            beat = worker_pb2.LeaseHeartbeat(fence=lease.fence, splittable=True, claimed=claimed)
            await holder.send(heartbeat=worker_pb2.HeartbeatRequest(leases=[beat]))
            answer = (await holder.next("heartbeat")).heartbeat
            shrink = next(
                (d for d in answer.directives if d.action == worker_pb2.DIRECTIVE_ACTION_SHRINK), None
            )
            assert time.monotonic() - began < 8, "no SHRINK came"
        new_end = shrink.new_end
        assert claimed < new_end < 1000 and shrink.fence == lease.fence
        # Accepted at once: nothing at or past new_end was claimed.
        beat = worker_pb2.LeaseHeartbeat(
            fence=lease.fence,
            splittable=True,
            claimed=claimed,
            shrink=worker_pb2.ShrinkAnswer(new_end=new_end, accepted=True),
        )
        await holder.send(heartbeat=worker_pb2.HeartbeatRequest(leases=[beat]))
        # Only now is the rest leased: to the idle worker, as nodes of the rule.
        given: list[worker_pb2.Lease] = []
        while sum(g.end - g.start for g in given) < 1000 - new_end:
            given.extend((await idle.next("grant")).grant.leases)
        assert min(g.start for g in given) == new_end and max(g.end for g in given) == 1000
        await idle.send(complete=worker_pb2.CompleteRequest(fences=[g.fence for g in given]))
        assert len((await idle.next("complete")).complete.accepted) == len(given)
        await holder.send(complete=worker_pb2.CompleteRequest(fences=[lease.fence], ends=[new_end]))
        assert list((await holder.next("complete")).complete.accepted) == [lease.fence]
        job = await jobs.GetJob(jobs_pb2.GetJobRequest(job_id="raw"))
        while job.status != types_pb2.JOB_STATUS_COMPLETED:  # readers see it once it is written
            await asyncio.sleep(0.02)
            job = await jobs.GetJob(jobs_pb2.GetJobRequest(job_id="raw"))
        assert job.stats.range_processed == 1000 and job.stats.dynamic_splits == 1
        holder.call.cancel()
        idle.call.cancel()


def test_adaptive_leaf_size_runs_narrower_leaves_where_ids_are_slow(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    # 16 leaves of 256 ids; ids below 1,024 cost 2 ms (0.5 s a leaf), the others 20 us (5 ms).
    job = coordinator.create_job(
        JobOptions(
            0,
            4096,
            max_range_size=256,
            target_leaf_seconds=timedelta(seconds=0.2),
            params={"slow_below": 1024, "slow_seconds": 0.002, "fast_seconds": 0.00002},
        )
    )
    # One handler slot and no prefetch: each lease is sized after the one before it finished.
    start_recording_workers(
        coordinator, procs, log_dir, run_log, "cost_by_region", "--concurrency", "1", "--prefetch", "0"
    )
    coordinator.wait_status(job.id, DONE, timeout=60)
    ran = sorted((s, e) for s, e, _, _ in runs_with_pids(run_log))
    assert sum(e - s for s, e in ran) == 4096 and all(a[1] == b[0] for a, b in itertools.pairwise(ran))
    slow = [e - s for s, e in ran if e <= 1024]
    fast = [e - s for s, e in ran if s >= 1024]
    # The first leaves ran at full width (nothing measured yet: the worker asks for its next lease
    # before its completion is sent); the slow ones after them are split to 0.2 s or less (64 ids
    # at 2 ms = 0.13 s), the fast region keeps most leaves whole.
    assert slow[0] == 256 and max(slow[2:]) <= 64 and len(slow) >= 8
    assert fast.count(256) >= 8
