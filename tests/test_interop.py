"""Workers in three languages side by side on one job: Python (the SDK), Node.js and Go (examples/).

Every one is a real process speaking the protocol of docs/protocol.md to a real coordinator; the
Node and Go workers were written from that page and the .proto files alone.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from parcelo import JobOptions
from parcelo.testing import CoordinatorProcess, Proc, wait_for
from parcelo.v1 import jobs_pb2, types_pb2
from tests.support import reference_leaves, runs, runs_with_pids, start_recording_workers
from tests.toolchains import NODE_DIR

pytestmark = pytest.mark.integration

END = {types_pb2.JOB_STATUS_COMPLETED, types_pb2.JOB_STATUS_FAILED, types_pb2.JOB_STATUS_CANCELLED}


def test_python_node_and_go_workers_share_one_job(
    coordinator: CoordinatorProcess,
    procs: list[Proc],
    log_dir: Path,
    tmp_path: Path,
    node: str,
    go_worker: Path,
) -> None:
    node_worker = [node, str(NODE_DIR / "bin" / "parcelo-node-worker.js")]
    run_log = tmp_path / "runs.log"
    env = {"PARCELO_TEST_LOG": str(run_log)}
    total, size = 192_000, 1000
    leaves = reference_leaves(0, total, size)  # 256 leaves of 750 ids
    assert len(leaves) == 256
    # Paused until every worker is connected, so that all three languages take part.
    job = coordinator.create_job(
        JobOptions(0, total, max_range_size=size, params={"sleep": 0.01}, start_paused=True, job_id="three")
    )
    # A job of its own, on its own queue, for a Node worker that hangs on its first leaf.
    stalled = coordinator.create_job(
        JobOptions(
            0,
            4000,
            max_range_size=1000,
            queue="stall",
            params={"stall_start": 0},
            lease_ttl=timedelta(seconds=2),
            job_id="stall",
        )
    )

    def start(command: list[str], name: str) -> Proc:
        proc = Proc(command, log_dir / f"{name}.log", env=env)
        procs.append(proc)
        return proc

    def connected(proc: Proc) -> bool:
        assert proc.alive(), proc.output()
        return "connected to" in proc.output()

    target = coordinator.target
    one_slot = ["--concurrency", "1", "--prefetch", "0"]
    staller = start(
        [*node_worker, "--target", target, "--queue", "stall", "--handler", "stall_first", *one_slot],
        "node-stall",
    )
    wait_for(lambda: runs(run_log, "stalled"), 30, "the Node worker to stall")
    staller.kill9()
    python = start_recording_workers(
        coordinator,
        procs,
        log_dir,
        run_log,
        "record",
        "--concurrency",
        "2",
        "--queue",
        "default",
        "--queue",
        "stall",
    )[0]
    go = start([str(go_worker), "-target", target, "-handler", "record", "-concurrency", "2"], "go")
    nodejs = start([*node_worker, "--target", target, "--handler", "record", "--concurrency", "2"], "node")
    languages = {"python": python, "node": nodejs, "go": go}
    for name, proc in languages.items():
        wait_for(lambda proc=proc: connected(proc), 30, f"the {name} worker to connect")  # type: ignore[misc]
    coordinator.jobs.ResumeJob(jobs_pb2.ResumeJobRequest(job_id=job.id), timeout=10)

    # A Node client that lets its lease expire, then completes it: refused as stale.
    stale_job = coordinator.create_job(
        JobOptions(0, 10, max_range_size=10, queue="stale", lease_ttl=timedelta(milliseconds=500))
    )
    check = subprocess.run(
        [node, str(NODE_DIR / "bin" / "stale-check.js"), "--target", target, "--queue", "stale"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    verdict = check.stdout.split()
    assert verdict[0] == "rejected" and verdict[-1] == "STALE_FENCE", check.stdout
    assert coordinator.get_job(stale_job.id).stats.range_processed == 0  # the stale result did not count

    done = coordinator.wait_status(job.id, END, timeout=120)
    assert done.status == types_pb2.JOB_STATUS_COMPLETED, done.reason
    stats = done.stats
    assert (stats.range_processed, stats.range_total, stats.active_leases) == (total, total, 0)
    assert stats.done_nodes == stats.total_nodes == 2 * len(leaves) - 1
    main = [(s, e, attempt, pid) for s, e, attempt, pid in runs_with_pids(run_log) if e - s == 750]
    assert sorted((s, e) for s, e, _, _ in main) == leaves  # every id covered exactly once
    by_pid = Counter(pid for *_, pid in main)
    for name, proc in languages.items():
        assert by_pid[proc.pid] > 0, f"the {name} worker got no lease: {by_pid}"
    # The killed Node worker's leaf ran again (attempt 2, elsewhere), and its job completed.
    again = coordinator.wait_status(stalled.id, END, timeout=60)
    assert again.status == types_pb2.JOB_STATUS_COMPLETED and again.stats.range_processed == 4000
    stall_runs = [(s, attempt, pid) for s, e, attempt, pid in runs_with_pids(run_log) if e - s == 1000]
    assert (0, 1, staller.pid) in stall_runs and any(s == 0 and a == 2 for s, a, _ in stall_runs)
    for proc in languages.values():
        assert proc.terminate() == 0
