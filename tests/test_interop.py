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
from parcelo.v1 import types_pb2
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
    total, size, stall = 192_000, 1000, 0
    leaves = reference_leaves(0, total, size)  # 256 leaves of 750 ids
    assert len(leaves) == 256 and leaves[0][0] == stall
    job = coordinator.create_job(
        JobOptions(
            0,
            total,
            max_range_size=size,
            params={"sleep": 0.01, "stall_start": stall},
            lease_ttl=timedelta(seconds=2),
            job_id="three",
        )
    )

    def start(command: list[str], name: str) -> Proc:
        proc = Proc(command, log_dir / f"{name}.log", env=env)
        procs.append(proc)
        return proc

    target = coordinator.target
    # First, alone, a Node worker that hangs on the first leaf; it is killed there.
    one_slot = ["--concurrency", "1", "--prefetch", "0"]
    staller = start([*node_worker, "--target", target, "--handler", "stall_first", *one_slot], "node-stall")
    wait_for(lambda: any(s == stall for s, _, _ in runs(run_log, "stalled")), 30, "the Node worker to stall")
    python = start_recording_workers(coordinator, procs, log_dir, run_log, "record", "--concurrency", "2")[0]
    go = start([str(go_worker), "-target", target, "-handler", "record", "-concurrency", "2"], "go")
    nodejs = start([*node_worker, "--target", target, "--handler", "record", "--concurrency", "2"], "node")
    staller_runs = {(s, e) for s, e, _, pid in runs_with_pids(run_log) if pid == staller.pid}
    staller.kill9()

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
    ran = runs(run_log)
    assert {(s, e) for s, e, _ in ran} == set(leaves)  # every id covered
    # Each leaf ran once, but for what the killed worker had started; its stalled leaf ran again.
    counts = Counter((s, e) for s, e, _ in ran)
    assert {key for key, n in counts.items() if n > 1} <= staller_runs
    assert (stall, 2) in {(s, attempt) for s, _, attempt in ran}
    by_pid = Counter(pid for *_, pid in runs_with_pids(run_log))
    languages = {"python": python, "node": nodejs, "go": go}
    for name, proc in languages.items():
        assert by_pid[proc.pid] > 0, f"the {name} worker got no lease: {by_pid}"
    for proc in languages.values():
        assert proc.terminate() == 0
