"""Foundation, end to end: a real coordinator process, real RocksDB, real worker processes, real kill -9."""

from __future__ import annotations

import queue
import subprocess
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from parcelo import JobOptions
from parcelo.testing import BIN, Proc, wait_for
from parcelo.testing import CoordinatorProcess as Coordinator
from parcelo.v1 import jobs_pb2, types_pb2, worker_pb2
from tests.support import RawWorker, reference_leaves, runs, start_recording_workers

pytestmark = pytest.mark.integration

COMPLETED: set[int] = {types_pb2.JOB_STATUS_COMPLETED}


def workers(
    coord: Coordinator, procs: list[Proc], log_dir: Path, run_log: Path, handler: str, n: int = 2
) -> None:
    start_recording_workers(coord, procs, log_dir, run_log, handler, "--concurrency", "4", n=n)


def test_job_runs_every_leaf_once_with_exact_stats(
    coordinator: Coordinator, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    # One leaf a lease (no leaf runs), so that the tree's stats count every leaf as a node.
    job = coordinator.create_job(JobOptions(0, 100_000, max_range_size=1000, leaf_runs=False))
    workers(coordinator, procs, log_dir, run_log, "record")
    done = coordinator.wait_status(job.id, COMPLETED | {types_pb2.JOB_STATUS_FAILED})
    assert done.status == types_pb2.JOB_STATUS_COMPLETED
    ran = sorted((s, e) for s, e, _ in runs(run_log))
    assert ran == reference_leaves(0, 100_000, 1000)  # 128 leaves, split rule, each id exactly once
    assert len(ran) == 128
    s = done.stats
    assert (s.total_nodes, s.done_nodes, s.pending_nodes, s.running_nodes, s.error_nodes) == (
        255,
        255,
        0,
        0,
        0,
    )
    assert (s.range_processed, s.range_total, s.range_skipped, s.active_leases) == (100_000, 100_000, 0, 0)
    for proc in procs:
        # SIGTERM before a worker has even connected would hit Python's default handler, not ours.
        wait_for(lambda: "connected to" in proc.output(), 30, "the worker to connect")  # noqa: B023
        assert proc.terminate() == 0, proc.output()


def test_worker_killed_mid_leaf_is_rerun_after_ttl(
    coordinator: Coordinator, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    job = coordinator.create_job(
        JobOptions(0, 8000, max_range_size=1000, lease_ttl=timedelta(seconds=1), params={"stall_start": 0})
    )
    workers(coordinator, procs, log_dir, run_log, "stall_first", n=1)
    wait_for(lambda: runs(run_log, "stalled"), 30, "the first leaf to stall")
    procs[0].kill9()
    workers(coordinator, procs, log_dir, run_log, "stall_first", n=1)
    done = coordinator.wait_status(job.id, COMPLETED, timeout=60)
    attempts = Counter((s, e) for s, e, _ in runs(run_log))
    assert attempts[(0, 1000)] == 2
    assert (0, 1000, 2) in runs(run_log)
    assert done.stats.done_nodes == done.stats.total_nodes
    assert done.stats.failed_attempts >= 1  # the expiry counted as an attempt


def test_coordinator_kill9_loses_no_acknowledged_completion(
    make_coordinator: type[Coordinator], procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    coord = make_coordinator(data, log_dir).start()
    job = coord.create_job(JobOptions(0, 256_000, max_range_size=1000, lease_ttl=timedelta(seconds=2)))
    raw = RawWorker(coord.channel)
    leases = raw.lease(40)
    answer = raw.complete([lease.fence for lease in leases])
    acked = {(lease.start, lease.end) for lease in leases if lease.fence in set(answer.accepted)}
    assert len(acked) == 40
    coord.kill9()  # right after the acknowledgement, before anything else happens

    coord.start()
    run_log = tmp_path / "runs.log"
    workers(coord, procs, log_dir, run_log, "record")
    done = coord.wait_status(job.id, COMPLETED, timeout=90)
    rerun = acked & {(s, e) for s, e, _ in runs(run_log)}
    assert not rerun, f"acknowledged leaves ran again: {sorted(rerun)[:5]}"
    ran = {(s, e) for s, e, _ in runs(run_log)} | acked
    assert sorted(ran) == reference_leaves(0, 256_000, 1000)
    assert done.stats.range_processed == 256_000


def test_workers_ride_through_a_coordinator_kill9(
    make_coordinator: type[Coordinator], procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    coord = make_coordinator(tmp_path / "data", log_dir).start()
    job = coord.create_job(
        JobOptions(0, 400_000, max_range_size=1000, lease_ttl=timedelta(seconds=3), params={"sleep": 0.01})
    )
    run_log = tmp_path / "runs.log"
    workers(coord, procs, log_dir, run_log, "record")
    wait_for(lambda: len(runs(run_log)) > 50, 30, "some leaves to run")
    coord.kill9()
    coord.start()
    done = coord.wait_status(job.id, COMPLETED, timeout=90)
    ran = {(s, e) for s, e, _ in runs(run_log)}
    assert sorted(ran) == reference_leaves(0, 400_000, 1000)
    assert done.stats.done_nodes == done.stats.total_nodes
    for proc in procs:
        assert proc.alive(), proc.output()


def test_stale_completion_is_rejected(coordinator: Coordinator) -> None:
    coordinator.create_job(JobOptions(0, 1000, max_range_size=1000, lease_ttl=timedelta(milliseconds=500)))
    first = RawWorker(coordinator.channel, "first")
    (old,) = first.lease(1)
    second = RawWorker(coordinator.channel, "second")
    (new,) = second.lease(1, timeout=15)  # granted once the first lease expired
    assert (new.start, new.end) == (old.start, old.end) and new.fence != old.fence and new.attempt == 2
    answer = first.complete([old.fence])
    assert list(answer.accepted) == []
    assert answer.rejected[0].fence == old.fence
    assert answer.rejected[0].reason == worker_pb2.REJECT_REASON_STALE_FENCE
    beat = first.heartbeat(worker_pb2.LeaseHeartbeat(fence=old.fence))
    assert beat.directives[0].action == worker_pb2.DIRECTIVE_ACTION_LOST
    assert list(second.complete([new.fence]).accepted) == [new.fence]
    first.close()
    second.close()


# Raw specs, as any gRPC client could send them: JobOptions would refuse to build most of them.
BAD_SPECS = [
    (dict(range=types_pb2.Range(start=5, end=5), max_range_size=10), "range"),
    (dict(range=types_pb2.Range(start=10, end=5), max_range_size=10), "range"),
    (dict(range=types_pb2.Range(start=0, end=100), max_range_size=0), "max_range_size"),
    (
        dict(range=types_pb2.Range(start=0, end=100), max_range_size=10, params_json="{bad json"),
        "params_json",
    ),
]


@pytest.mark.parametrize(("fields", "field"), BAD_SPECS)
def test_bad_create_over_grpc_is_invalid_argument(
    coordinator: Coordinator, fields: dict[str, Any], field: str
) -> None:
    request = jobs_pb2.CreateJobRequest(spec=types_pb2.JobSpec(**fields))
    with pytest.raises(grpc.RpcError) as err:
        coordinator.jobs.CreateJob(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()


def cli(coord: Coordinator, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "parcelo"), "--target", coord.target, *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--start", "5", "--end", "5", "--max-range-size", "10"], ("range", "--end")),
        (["--start", "0", "--end", "100", "--max-range-size", "0"], ("max_range_size", "--max-range-size")),
        (["--start", "0", "--end", "100", "--max-range-size", "10", "--params", "{bad"], ("params",)),
    ],
)
def test_bad_create_over_cli_exits_non_zero_with_one_line(
    coordinator: Coordinator, args: list[str], names: tuple[str, ...]
) -> None:
    result = cli(coordinator, "job", "create", *args)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]  # click usage errors put the message last
    assert any(name in last for name in names), result.stderr
    assert "Traceback" not in result.stderr


def test_errors_over_grpc_and_cli(coordinator: Coordinator) -> None:
    jobs = coordinator.jobs
    with pytest.raises(grpc.RpcError) as err:
        jobs.GetJob(jobs_pb2.GetJobRequest(job_id="missing"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    result = cli(coordinator, "job", "get", "missing")
    assert result.returncode != 0 and "missing" in result.stderr and "NOT_FOUND" in result.stderr

    coordinator.create_job(JobOptions(0, 10, max_range_size=10, job_id="fixed"))
    with pytest.raises(grpc.RpcError) as err:
        coordinator.create_job(JobOptions(0, 20, max_range_size=10, job_id="fixed"))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    result = cli(
        coordinator, "job", "create", "--start", "0", "--end", "20", "--max-range-size", "10", "--id", "fixed"
    )
    assert result.returncode != 0 and "ALREADY_EXISTS" in result.stderr
    again = cli(
        coordinator, "job", "create", "--start", "0", "--end", "10", "--max-range-size", "10", "--id", "fixed"
    )
    assert again.returncode == 0 and again.stdout.strip() == "fixed"  # idempotent

    raw = RawWorker(coordinator.channel)
    (lease,) = raw.lease(1)
    raw.complete([lease.fence])
    coordinator.wait_status("fixed", COMPLETED)
    with pytest.raises(grpc.RpcError) as err:
        jobs.ResumeJob(jobs_pb2.ResumeJobRequest(job_id="fixed"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    result = cli(coordinator, "job", "resume", "fixed")
    assert result.returncode != 0 and "FAILED_PRECONDITION" in result.stderr
    raw.close()
    # The daemon is still fine after all of that.
    assert coordinator.proc is not None and coordinator.proc.alive()
    assert coordinator.get_job("fixed").status == types_pb2.JOB_STATUS_COMPLETED


def test_pause_stops_leases_resume_continues_cancel_ends(coordinator: Coordinator) -> None:
    job = coordinator.create_job(JobOptions(0, 10_000, max_range_size=100))
    raw = RawWorker(coordinator.channel)
    got = raw.lease(5)
    coordinator.jobs.PauseJob(jobs_pb2.PauseJobRequest(job_id=job.id))
    raw.complete([lease.fence for lease in got])  # running leaves may still finish
    assert coordinator.get_job(job.id).status == types_pb2.JOB_STATUS_PAUSED
    with pytest.raises(queue.Empty):  # nothing is granted while paused, and the stream stays up
        raw.lease(1, timeout=1.0)
    coordinator.jobs.ResumeJob(jobs_pb2.ResumeJobRequest(job_id=job.id))
    # The credit asked for while paused is served now.
    more = raw.next("grant").grant.leases
    assert len(more) == 1 and coordinator.get_job(job.id).status == types_pb2.JOB_STATUS_RUNNING
    coordinator.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id, reason="test"))
    cancelled = coordinator.get_job(job.id)
    assert cancelled.status == types_pb2.JOB_STATUS_CANCELLED and cancelled.reason == "test"
    beat = raw.heartbeat(worker_pb2.LeaseHeartbeat(fence=more[0].fence))
    assert beat.directives[0].action == worker_pb2.DIRECTIVE_ACTION_CANCEL
    raw.close()


def test_sigterm_stops_the_coordinator_cleanly(coordinator: Coordinator) -> None:
    coordinator.create_job(JobOptions(0, 100, max_range_size=10))
    proc = coordinator.proc
    assert proc is not None
    assert coordinator.stop() == 0
    assert "stopped" in proc.output()


def test_restart_keeps_jobs(make_coordinator: type[Coordinator], log_dir: Path, tmp_path: Path) -> None:
    coord = make_coordinator(tmp_path / "data", log_dir).start()
    job = coord.create_job(JobOptions(0, 1000, max_range_size=10, job_id="keep", params='{"a": 1}'))
    assert coord.stop() == 0
    coord.start()
    again = coord.get_job("keep")
    assert again.spec.params_json == '{"a": 1}' and again.stats.range_total == 1000
    assert again.created_at == job.created_at
