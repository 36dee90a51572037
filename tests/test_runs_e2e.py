"""Leaf runs end to end: a real coordinator process over RocksDB, real worker processes running
sync and async handlers, failing leaves inside runs, and kill -9 of a worker and of the
coordinator while runs are held."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from parcelo import JobOptions, RetryPolicy, result_of
from parcelo.testing import CoordinatorProcess, Proc, wait_for
from parcelo.v1 import jobs_pb2, types_pb2, worker_pb2
from tests.support import RawWorker, reference_leaves, runs, start_recording_workers

pytestmark = pytest.mark.integration

DONE = {types_pb2.JOB_STATUS_COMPLETED, types_pb2.JOB_STATUS_FAILED}
SIZE = 10
NEVER_FAIL = {"every": 1, "offset": -1, "sleep": 0.0003}
"""``width_flaky`` params under which no leaf fails, each leaf taking about 0.35 ms (runs of 4 or
8 leaves; 40,960 leaves on 2 x 4 slots last a few seconds, so a kill lands while runs are held)."""
TTL = timedelta(seconds=2)


def _started_widths(coord: CoordinatorProcess, job_id: str) -> Counter[int]:
    """How many leases of each width (in leaves) the NODE_STARTED events of the (finished) job show."""
    request = jobs_pb2.WatchJobRequest(job_id=job_id, types=[types_pb2.EVENT_TYPE_NODE_STARTED])
    return Counter((e.range.end - e.range.start) // SIZE for e in coord.jobs.WatchJob(request, timeout=20))


@pytest.mark.parametrize("handler", ["record", "arecord"], ids=["sync", "async"])
def test_short_leaves_run_as_runs_and_every_leaf_runs_once(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path, handler: str
) -> None:
    run_log = tmp_path / "runs.log"
    leaves = reference_leaves(0, 40_960, SIZE)
    job = coordinator.create_job(JobOptions(0, 40_960, max_range_size=SIZE))
    start_recording_workers(coordinator, procs, log_dir, run_log, handler, n=2)  # default flags
    done = coordinator.wait_status(job.id, DONE, timeout=60)
    assert done.status == types_pb2.JOB_STATUS_COMPLETED
    assert sorted((s, e) for s, e, _ in runs(run_log)) == leaves  # each leaf once, by the rule
    assert all(attempt == 1 for _, _, attempt in runs(run_log))
    widths = _started_widths(coordinator, job.id)
    # The first leaves went one by one (nothing measured yet, and what the workers prefetched
    # then), then whole subtrees (of up to 64 leaves: about 2 ms of these ~20 µs handlers, fewer
    # on a busy host): most leaves ran in runs.
    assert widths[1] >= 16 and max(widths) in (16, 32, 64)
    assert sum(n * count for n, count in widths.items()) == len(leaves)
    assert sum(n * count for n, count in widths.items() if n > 1) > len(leaves) // 2
    # Runs are never split into their leaves: the tree made fewer nodes than leaves (one leaf a
    # lease makes 2 per leaf: 8,191).
    assert done.stats.total_nodes < len(leaves)
    assert done.stats.range_processed == 40_960


def test_leaf_runs_off_keeps_one_leaf_a_lease(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    job = coordinator.create_job(JobOptions(0, 10_240, max_range_size=SIZE, leaf_runs=False))
    start_recording_workers(coordinator, procs, log_dir, run_log, "record", n=2)
    done = coordinator.wait_status(job.id, DONE, timeout=60)
    assert done.status == types_pb2.JOB_STATUS_COMPLETED
    assert set(_started_widths(coordinator, job.id)) == {1}
    assert done.stats.total_nodes == 2 * 1024 - 1


def test_a_failing_leaf_inside_a_run_is_retried_alone_and_the_rest_counts_once(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    params = {"every": 970, "offset": 370, "bad_start": 25_000}
    job = coordinator.create_job(
        JobOptions(
            0,
            40_960,
            max_range_size=SIZE,
            reduce="sum",
            params=params,
            retry=RetryPolicy(initial_backoff=timedelta(milliseconds=10), max_attempts=3),
        )
    )
    start_recording_workers(coordinator, procs, log_dir, run_log, "width_flaky", n=2)
    done = coordinator.wait_status(job.id, DONE, timeout=60)
    flaky = {s for s, _ in reference_leaves(0, 40_960, SIZE) if s % 970 == 370}
    # Only the bad leaf is missing from the sum: every other id counted exactly once.
    assert done.status == types_pb2.JOB_STATUS_FAILED and "1 leaves failed" in done.reason
    assert result_of(done) == 40_960 - SIZE
    count = Counter(s for s, _, _ in runs(run_log))
    assert {s for s, n in count.items() if n == 2} == flaky
    assert count[25_000] == 1 and set(count.values()) <= {1, 2}
    assert done.stats.failed_attempts == len(flaky) + 1
    attempts = {(s, a) for s, _, a in runs(run_log) if s in flaky}
    assert attempts == {(s, a) for s in flaky for a in (1, 2)}  # the retry ran as attempt 2
    tree = coordinator.jobs.GetJobTree(jobs_pb2.GetJobTreeRequest(job_id=job.id, max_depth=30), timeout=10)
    errors = [n for n in _nodes(tree.root) if n.status == types_pb2.NODE_STATUS_ERROR and n.is_leaf]
    assert [(n.range.start, n.range.end, n.last_error) for n in errors] == [
        (25_000, 25_010, "PermanentError: bad record")
    ]


def _nodes(node: types_pb2.TreeNode) -> list[types_pb2.TreeNode]:
    out = [node]
    for child in node.children:
        out.extend(_nodes(child))
    return out


def test_kill9_of_a_worker_holding_runs_loses_no_id_and_counts_none_twice(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    job = coordinator.create_job(
        JobOptions(0, 409_600, max_range_size=SIZE, reduce="sum", params=NEVER_FAIL, lease_ttl=TTL)
    )
    victim, survivor = start_recording_workers(
        coordinator, procs, log_dir, run_log, "width_flaky", "--prefetch", "64", n=2
    )
    wait_for(lambda: coordinator.get_job(job.id).stats.range_processed >= 40_000, 60, "a tenth done")
    assert coordinator.get_job(job.id).stats.active_leases > 0  # runs are held as it dies
    victim.kill9()
    done = coordinator.wait_status(job.id, DONE, timeout=90)
    assert done.status == types_pb2.JOB_STATUS_COMPLETED
    assert result_of(done) == 409_600  # the killed worker's unacknowledged runs counted once, later
    ran = {s for s, _, _ in runs(run_log)}
    assert ran == {s for s, _ in reference_leaves(0, 409_600, SIZE)}
    assert survivor.alive()
    assert max(_started_widths(coordinator, job.id)) > 1  # runs were granted


def test_kill9_of_the_coordinator_while_runs_are_held_keeps_every_acknowledged_run(
    make_coordinator: type[CoordinatorProcess], procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    coord = make_coordinator(tmp_path / "data", log_dir).start()
    run_log = tmp_path / "runs.log"
    job = coord.create_job(
        JobOptions(0, 409_600, max_range_size=SIZE, reduce="sum", params=NEVER_FAIL, job_id="runs")
    )
    start_recording_workers(coord, procs, log_dir, run_log, "width_flaky", n=2)
    wait_for(lambda: coord.get_job(job.id).stats.range_processed >= 40_000, 60, "a tenth done")
    mid = coord.get_job(job.id)
    before = mid.stats.range_processed
    assert mid.status == types_pb2.JOB_STATUS_RUNNING and before < 409_600
    coord.kill9()
    coord.start()
    assert coord.get_job(job.id).stats.range_processed >= before  # what was shown was written
    done = coord.wait_status(job.id, DONE, timeout=90)
    assert done.status == types_pb2.JOB_STATUS_COMPLETED and result_of(done) == 409_600
    assert {s for s, _, _ in runs(run_log)} == {s for s, _ in reference_leaves(0, 409_600, SIZE)}
    assert max(_started_widths(coord, job.id)) > 1  # runs were granted


def test_pause_with_release_stops_runs_between_leaves_and_no_leaf_runs_twice(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    leaves = reference_leaves(0, 163_840, SIZE)  # 16,384 leaves of about 0.5 ms: runs of 4
    job = coordinator.create_job(JobOptions(0, 163_840, max_range_size=SIZE, params={"sleep": 0.0004}))
    start_recording_workers(coordinator, procs, log_dir, run_log, "record", n=2)
    wait_for(lambda: coordinator.get_job(job.id).stats.range_processed >= 30_000, 60, "a fifth done")
    coordinator.jobs.PauseJob(jobs_pb2.PauseJobRequest(job_id=job.id, release=True), timeout=10)

    # Each run stops after the leaf it is in; what it ran is completed, the rest given back.
    wait_for(lambda: coordinator.get_job(job.id).stats.active_leases == 0, 20, "leases back")
    paused = coordinator.get_job(job.id)  # (paused: nothing changes any more)
    ran_while_paused = len(runs(run_log))
    assert paused.stats.range_processed == ran_while_paused * SIZE < 163_840
    coordinator.jobs.ResumeJob(jobs_pb2.ResumeJobRequest(job_id=job.id), timeout=10)
    done = coordinator.wait_status(job.id, DONE, timeout=60)
    assert done.status == types_pb2.JOB_STATUS_COMPLETED
    assert sorted((s, e) for s, e, _ in runs(run_log)) == leaves  # none twice, none lost
    assert max(_started_widths(coordinator, job.id)) > 1  # runs were granted


def test_a_raw_protocol_worker_following_the_protocol_page_runs_a_leaf_run(
    coordinator: CoordinatorProcess,
) -> None:
    """docs/protocol.md, "Leaf runs", message by message: single leaves until 16 completions
    reported handler_us, then a run; its completion names one failed leaf, which comes back alone
    as attempt 2 while the rest of the run counts as done."""
    retry = RetryPolicy(initial_backoff=timedelta(milliseconds=10))
    job = coordinator.create_job(JobOptions(0, 4096 * SIZE, max_range_size=SIZE, retry=retry))
    raw = RawWorker(coordinator.channel, leaf_runs=True)
    try:
        first = raw.lease_packed(16)
        assert all(lease.end - lease.start == SIZE for lease in first)  # nothing measured yet
        done = raw.complete_request(
            worker_pb2.CompleteRequest(fences=[r.fence for r in first], handler_us=[5] * 16)
        )
        assert sorted(done.accepted) == sorted(r.fence for r in first)
        [run] = raw.lease_packed(1)
        assert SIZE < run.end - run.start <= 64 * SIZE and run.attempt == 1
        leaves = reference_leaves(run.start, run.end, SIZE)
        bad = leaves[1]
        failed = worker_pb2.LeafFailure(fence=run.fence, start=bad[0], end=bad[1], message="RuntimeError: x")
        answer = raw.complete_request(
            worker_pb2.CompleteRequest(
                fences=[run.fence], handler_us=[len(leaves) * 5], failed_leaves=[failed]
            )
        )
        assert list(answer.accepted) == [run.fence] and not answer.rejected
        got = coordinator.get_job(job.id)
        assert got.stats.range_processed == (16 + len(leaves) - 1) * SIZE
        assert got.stats.failed_attempts == 1
        # Everything else, until the failed leaf comes back on its own.
        again: list[tuple[int, int, int]] = []
        while got.status != types_pb2.JOB_STATUS_COMPLETED:
            leases = raw.lease_packed(1)
            again += [(r.start, r.end, r.attempt) for r in leases if r.start == bad[0]]
            raw.complete_request(worker_pb2.CompleteRequest(fences=[r.fence for r in leases]))
            got = coordinator.get_job(job.id)
        assert again == [(bad[0], bad[1], 2)]
        assert got.stats.range_processed == 4096 * SIZE
    finally:
        raw.close()


def test_failed_leaves_a_request_cannot_hold_are_invalid_arguments(coordinator: CoordinatorProcess) -> None:
    coordinator.create_job(JobOptions(0, 100, max_range_size=SIZE))
    raw = RawWorker(coordinator.channel)
    try:
        [lease] = raw.lease(1)
        for failure, why in [
            (
                worker_pb2.LeafFailure(fence=lease.fence + 1, start=0, end=10),
                "not one of this request's fences",
            ),
            (worker_pb2.LeafFailure(fence=lease.fence, start=10, end=10), "empty range"),
        ]:
            request = worker_pb2.CompleteRequest(
                fences=[lease.fence], failed_leaves=[failure], worker_id="raw"
            )
            with pytest.raises(grpc.RpcError) as err:
                coordinator.workers.Complete(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and why in str(err.value.details())
        # The lease is untouched by the refused requests: it completes as usual.
        assert list(raw.complete([lease.fence]).accepted) == [lease.fence]
    finally:
        raw.close()
