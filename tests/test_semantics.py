"""Range-tree semantics end to end: pruning, propagation, retries, checkpoints, cancel/pause, events."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from parcelo import JobOptions, RetryPolicy
from parcelo.testing import BIN, CoordinatorProcess, Proc, wait_for
from parcelo.v1 import jobs_pb2, types_pb2, worker_pb2
from tests.support import HANDLERS, RawWorker, pruned_reference, runs, start_recording_workers

pytestmark = pytest.mark.integration

DONE = {types_pb2.JOB_STATUS_COMPLETED}
FAILED = {types_pb2.JOB_STATUS_FAILED}


def worker(
    coord: CoordinatorProcess, procs: list[Proc], log_dir: Path, run_log: Path, handler: str, *args: str
) -> Proc:
    (proc,) = start_recording_workers(coord, procs, log_dir, run_log, handler, *args)
    return proc


def pruning_worker(
    coord: CoordinatorProcess, procs: list[Proc], log_dir: Path, run_log: Path, *args: str
) -> Proc:
    """A worker recording its runs and pruning by the seed's rule (multiples of 10,000)."""
    return worker(
        coord, procs, log_dir, run_log, "record", "--should-process", f"{HANDLERS}:keep_multiples", *args
    )


def test_pruning_runs_exactly_the_kept_leaves(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    job = coordinator.create_job(JobOptions(0, 1_000_000, max_range_size=1000, pruning=True))
    pruning_worker(coordinator, procs, log_dir, run_log)
    done = coordinator.wait_status(job.id, DONE, timeout=60)
    leaves, skipped, nodes = pruned_reference(0, 1_000_000, 1000)
    assert sorted((s, e) for s, e, _ in runs(run_log)) == leaves
    assert len(leaves) == 100  # one leaf per multiple of 10,000
    s = done.stats
    assert s.range_skipped == skipped and s.range_processed == 1_000_000 - skipped
    # A pruned subtree is never split: only the nodes the reference visits were ever created.
    assert s.total_nodes == nodes
    assert s.skipped_nodes + s.done_nodes == s.total_nodes


def test_a_worker_holding_only_probes_asks_for_more_after_answering(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    # With room for one lease and no prefetch, each grant is a single probe: nothing but the
    # answer itself can prompt the worker to ask again.
    run_log = tmp_path / "runs.log"
    job = coordinator.create_job(JobOptions(0, 40_000, max_range_size=1000, pruning=True))
    pruning_worker(coordinator, procs, log_dir, run_log, "--concurrency", "1", "--prefetch", "0")
    coordinator.wait_status(job.id, DONE, timeout=30)
    leaves, _, _ = pruned_reference(0, 40_000, 1000)
    assert sorted((s, e) for s, e, _ in runs(run_log)) == leaves


def test_status_propagation_node_by_node(coordinator: CoordinatorProcess) -> None:
    job = coordinator.create_job(JobOptions(0, 400, max_range_size=100))
    raw = RawWorker(coordinator.channel)
    a, b, c, d = raw.lease(4)
    assert [(x.start, x.end) for x in (a, b, c, d)] == [(0, 100), (100, 200), (200, 300), (300, 400)]
    raw.complete([a.fence])
    raw.fail(worker_pb2.Failure(fence=b.fence, permanent=True, message="bad leaf"))

    def tree() -> types_pb2.TreeNode:
        return coordinator.jobs.GetJobTree(jobs_pb2.GetJobTreeRequest(job_id=job.id, max_depth=5)).root

    root = tree()
    left, right = root.children
    st = types_pb2
    assert root.status == st.NODE_STATUS_RUNNING
    assert left.status == st.NODE_STATUS_ERROR  # both children finished, one in error
    assert [n.status for n in left.children] == [st.NODE_STATUS_DONE, st.NODE_STATUS_ERROR]
    assert left.children[1].last_error == "bad leaf" and left.children[1].attempts == 1
    assert right.status == st.NODE_STATUS_RUNNING
    assert [n.status for n in right.children] == [st.NODE_STATUS_RUNNING, st.NODE_STATUS_RUNNING]
    raw.complete([c.fence, d.fence])
    root = tree()
    right = root.children[1]
    assert right.status == st.NODE_STATUS_DONE and right.collapsed and not right.children
    assert root.status == st.NODE_STATUS_ERROR
    failed = coordinator.wait_status(job.id, FAILED)
    assert "bad leaf" in failed.reason and failed.stats.error_nodes == 3
    raw.close()


def test_retries_permanent_errors_and_retry_failed(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    fixed = tmp_path / "fixed"
    retry = RetryPolicy(max_attempts=3, initial_backoff=timedelta(milliseconds=100), backoff_multiplier=2.0)
    params = {"bad_start": 300, "fixed": str(fixed)}
    job = coordinator.create_job(JobOptions(0, 800, max_range_size=100, retry=retry, params=params))
    worker(coordinator, procs, log_dir, run_log, "flaky")
    failed = coordinator.wait_status(job.id, FAILED, timeout=60)
    ran = runs(run_log)
    assert [a for s, _, a in ran if s == 300] == [1]  # permanent: no retry
    for start in (0, 100, 200, 400, 500, 600, 700):
        assert sorted(a for s, _, a in ran if s == start) == [1, 2]  # transient: retried once
    assert failed.stats.error_nodes >= 1 and "PermanentError: bad record" in failed.reason
    fixed.touch()
    result = __import__("subprocess").run(
        [str(BIN / "parcelo"), "--target", coordinator.target, "job", "retry", job.id],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    done = coordinator.wait_status(job.id, DONE, timeout=60)
    assert done.stats.error_nodes == 0 and done.stats.range_processed == 800


def test_checkpoint_survives_kill9_of_the_worker(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    job = coordinator.create_job(JobOptions(0, 1000, max_range_size=1000, lease_ttl=timedelta(seconds=1)))
    first = worker(coordinator, procs, log_dir, run_log, "checkpoint_then_stall")
    wait_for(lambda: runs(run_log, "checkpointed"), 30, "the checkpoint")
    assert coordinator.get_job(job.id).stats.range_processed == 500  # progress moves inside the leaf
    first.kill9()
    worker(coordinator, procs, log_dir, run_log, "checkpoint_then_stall")
    coordinator.wait_status(job.id, DONE, timeout=30)
    resumed = [line for line in run_log.read_text().splitlines() if line.startswith("resumed")]
    assert resumed == ["resumed 500 1000 2 b'half-done'"]


@pytest.mark.parametrize("handler", ["watch_cancel", "async_watch_cancel"])
def test_cancel_reaches_a_running_handler(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path, handler: str
) -> None:
    run_log = tmp_path / "runs.log"
    job = coordinator.create_job(
        JobOptions(0, 100, max_range_size=100, lease_ttl=timedelta(milliseconds=600))
    )
    worker(coordinator, procs, log_dir, run_log, handler)
    wait_for(lambda: runs(run_log), 30, "the handler to start")
    coordinator.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id))
    wait_for(lambda: runs(run_log, "cancelled"), 10, "the handler to see the cancellation")
    got = coordinator.get_job(job.id)
    assert got.status == types_pb2.JOB_STATUS_CANCELLED and got.stats.failed_attempts == 0


@pytest.mark.parametrize("handler", ["watch_cancel", "async_watch_cancel"])
def test_pause_with_release_then_resume(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path, handler: str
) -> None:
    run_log = tmp_path / "runs.log"
    job = coordinator.create_job(
        JobOptions(0, 100, max_range_size=100, lease_ttl=timedelta(milliseconds=600))
    )
    worker(coordinator, procs, log_dir, run_log, handler)
    wait_for(lambda: runs(run_log), 30, "the handler to start")
    coordinator.jobs.PauseJob(jobs_pb2.PauseJobRequest(job_id=job.id, release=True))
    wait_for(lambda: runs(run_log, "cancelled"), 10, "the handler to be asked to stop")
    wait_for(lambda: coordinator.get_job(job.id).stats.active_leases == 0, 10, "the lease to come back")
    assert coordinator.get_job(job.id).status == types_pb2.JOB_STATUS_PAUSED
    coordinator.jobs.ResumeJob(jobs_pb2.ResumeJobRequest(job_id=job.id))
    wait_for(lambda: len(runs(run_log)) == 2, 10, "the leaf to run again")
    assert [a for _, _, a in runs(run_log)] == [1, 1]  # a release is not an attempt
    coordinator.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id))


def test_watcher_reconnecting_with_its_sequence_sees_every_event_once(
    coordinator: CoordinatorProcess,
) -> None:
    job = coordinator.create_job(JobOptions(0, 64_000, max_range_size=1000))
    raw = RawWorker(coordinator.channel)
    seen: list[types_pb2.JobEvent] = []

    def watch_some(after: int, limit: int) -> None:
        call = coordinator.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job.id, after_seq=after))
        for event in call:
            seen.append(event)
            if len(seen) >= limit:
                call.cancel()
                return

    for _ in range(8):
        leases = raw.lease(8)
        raw.complete([lease.fence for lease in leases])
        watch_some(seen[-1].seq if seen else 0, len(seen) + 7)  # disconnect after a few events
    coordinator.wait_status(job.id, DONE)
    watch_some(seen[-1].seq, 10**9)  # to the end: the stream closes after JOB_COMPLETED
    seqs = [e.seq for e in seen]
    assert seqs == list(range(1, len(seqs) + 1))
    full = list(coordinator.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job.id)))
    assert [(e.seq, e.type, e.range.start) for e in full] == [(e.seq, e.type, e.range.start) for e in seen]
    types = {e.type for e in seen}
    for wanted in (
        "JOB_CREATED",
        "JOB_STARTED",
        "NODE_SPLIT",
        "NODE_STARTED",
        "NODE_COMPLETED",
        "JOB_COMPLETED",
    ):
        assert getattr(types_pb2, f"EVENT_TYPE_{wanted}") in types
    assert seen[-1].type == types_pb2.EVENT_TYPE_JOB_COMPLETED
    raw.close()


def test_watch_of_a_missing_job_is_not_found(coordinator: CoordinatorProcess) -> None:
    with pytest.raises(grpc.RpcError) as err:
        list(coordinator.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id="nope")))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
