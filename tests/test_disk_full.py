"""A real full disk: a coordinator process whose data dir is on a small tmpfs that fills up mid-job.

The in-process twin of this test (tests/test_durability.py) injects the same failure into the
store; this one lets RocksDB itself hit ENOSPC, recover by reopening, and be killed mid-failure.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parcelo import JobOptions
from parcelo.testing import CoordinatorProcess, Proc, wait_for
from parcelo.v1 import types_pb2
from tests.support import reference_leaves, runs, start_recording_workers

pytestmark = pytest.mark.integration

FS_SIZE_MB = 64


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A fresh tmpfs of FS_SIZE_MB mounted for this test (root only: CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; tests/test_durability.py covers the same in-process")
    mount = tmp_path / "fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE_MB}m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(fs: Path) -> Path:
    """Write a file until the filesystem is full; returns it (delete it to give the space back)."""
    filler = fs / "filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError:
            pass
        # The last few KB too, so that RocksDB's next append fails rather than fits.
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def health(coord: CoordinatorProcess) -> int:
    try:
        answer = health_pb2_grpc.HealthStub(coord.channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    except grpc.RpcError:
        return -1
    return int(answer.status)


def test_a_full_disk_holds_every_answer_until_it_is_written_then_goes_on(
    small_fs: Path,
    tmp_path: Path,
    log_dir: Path,
    procs: list[Proc],
    make_coordinator: type[CoordinatorProcess],
) -> None:
    data_dir = small_fs / "data"
    # A short grace: SIGTERM waits that long for the workers' open streams.
    coord = make_coordinator(data_dir, log_dir, extra=["--grace", "2"]).start()
    run_log = tmp_path / "runs.log"
    job = coord.create_job(
        JobOptions(0, 204_800, max_range_size=100, params={"sleep": 0.005}, job_id="disk")
    )  # 2,048 leaves of 100 ids
    start_recording_workers(coord, procs, log_dir, run_log, "record", "--concurrency", "4", n=2)
    total = job.stats.range_total

    def processed() -> int:
        return int(coord.get_job(job.id).stats.range_processed)

    wait_for(lambda: processed() > 10_000, 30, "the job to be under way")

    # 1. The disk fills: writes fail, nothing more is acknowledged or shown, health says so.
    filler = fill(small_fs)
    wait_for(lambda: health(coord) == health_pb2.HealthCheckResponse.NOT_SERVING, 30, "NOT_SERVING")
    frozen = processed()
    assert 0 < frozen < total
    assert "store write failed" in coord.proc.output()  # type: ignore[union-attr]
    # 2. Space comes back: the coordinator reopens its store and goes on by itself.
    filler.unlink()
    wait_for(lambda: health(coord) == health_pb2.HealthCheckResponse.SERVING, 30, "SERVING again")
    wait_for(lambda: processed() > frozen, 30, "progress after the disk has room again")
    # 3. It fills again, and the coordinator is killed while its writes fail.
    filler = fill(small_fs)
    wait_for(lambda: health(coord) == health_pb2.HealthCheckResponse.NOT_SERVING, 30, "NOT_SERVING again")
    coord.kill9()
    filler.unlink()
    # 4. A new coordinator on the same data dir: the workers reconnect and resend; the job completes.
    coord.start()
    done = coord.wait_status(
        job.id, {types_pb2.JOB_STATUS_COMPLETED, types_pb2.JOB_STATUS_FAILED}, timeout=120
    )
    assert done.status == types_pb2.JOB_STATUS_COMPLETED
    leaves = reference_leaves(0, total, 100)
    stats = done.stats
    assert (stats.range_processed, stats.range_total, stats.active_leases) == (total, total, 0)
    assert stats.done_nodes == stats.total_nodes and stats.error_nodes == stats.pending_nodes == 0
    assert {(s, e) for s, e, _ in runs(run_log)} == set(leaves)  # every leaf ran, none unknown
    # 5. And the disk says the same after a clean restart.
    assert coord.stop() == 0
    coord.start()
    assert coord.get_job(job.id).stats == stats
