"""Operations: online backups (AdminService.Backup, `parcelo admin backup`, SIGUSR1), offline backup,
one coordinator per data dir, health service, metrics."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from parcelo import JobOptions
from parcelo.client import Client
from parcelo.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from parcelo.testing import BIN, CoordinatorProcess, Proc, free_port, wait_for
from parcelo.v1 import types_pb2
from tests.support import RawWorker, reference_leaves, runs, start_recording_workers

pytestmark = pytest.mark.integration


def test_online_and_offline_backups_restore_the_jobs(
    make_coordinator: type[CoordinatorProcess], log_dir: Path, tmp_path: Path
) -> None:
    coord = make_coordinator(tmp_path / "data", log_dir).start()
    coord.create_job(JobOptions(0, 1000, max_range_size=10, job_id="saved"))
    online = coord.online_backup()
    assert online.parent == tmp_path / "data-backups"
    assert coord.stop() == 0

    offline = tmp_path / "offline"
    result = subprocess.run(
        [str(BIN / "parcelo-coordinator"), "--data-dir", str(tmp_path / "data"), "--backup-to", str(offline)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for copy in (online, offline):
        restored = make_coordinator(copy, log_dir).start()
        assert restored.get_job("saved").spec.max_range_size == 10
        restored.stop()


def scrape(coord: CoordinatorProcess) -> str:
    """The coordinator's Prometheus text (its HTTP port's /metrics), or "" while it does not answer."""
    try:
        with urllib.request.urlopen(f"{coord.http_url}/metrics", timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def samples(text: str, name: str) -> dict[str, float]:
    """The values of gauge ``name`` by their ``queue`` label."""
    return {
        sample.labels["queue"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def test_health_and_prometheus_metrics(
    make_coordinator: type[CoordinatorProcess], log_dir: Path, tmp_path: Path
) -> None:
    coord = make_coordinator(tmp_path / "data", log_dir, http=True).start()
    coord.create_job(JobOptions(0, 100, max_range_size=10))
    health = health_pb2_grpc.HealthStub(coord.channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING

    def jobs_metric() -> str:
        text = scrape(coord)
        return text if "parcelo_jobs" in text else ""

    text = wait_for(jobs_metric, 20, "metrics")
    assert 'status="pending"' in text
    assert coord.stop() == 0


def test_online_backups_over_the_api_and_the_cli_during_a_job_restore_it_consistently(
    make_coordinator: type[CoordinatorProcess], procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    coord = make_coordinator(tmp_path / "data", log_dir).start()
    total = 40_000
    # 2,048 leaves; the first one's first attempt hangs, so the job runs until the test ends (its
    # worker heartbeats it), however fast the rest goes.
    job = coord.create_job(
        JobOptions(
            0,
            total,
            max_range_size=20,
            lease_ttl=timedelta(seconds=2),
            params={"stall_start": 0},
            job_id="live",
        )
    )
    run_log = tmp_path / "runs.log"
    start_recording_workers(coord, procs, log_dir, run_log, "stall_first", "--concurrency", "4", n=2)
    wait_for(lambda: coord.get_job(job.id).stats.range_processed > 2_000, 30, "the job to be under way")

    with Client(coord.target) as client:
        seen = coord.get_job(job.id).stats.range_processed
        written = client.backup(tmp_path / "api")
        assert written.path == str(tmp_path / "api") and written.bytes > 0 and written.files > 0
        assert (tmp_path / "api" / "CURRENT").exists()
        # What the API refuses, each with its code and the field named; the daemon goes on.
        with pytest.raises(InvalidArgument, match=r"^INVALID_ARGUMENT: to_dir: must be an absolute path"):
            client.backup("relative/folder")
        with pytest.raises(AlreadyExists, match=r"^ALREADY_EXISTS: to_dir: .* exists"):
            client.backup(tmp_path / "api")
        with pytest.raises(InvalidArgument, match=r"^INVALID_ARGUMENT: to_dir: .* is in the data dir"):
            client.backup(tmp_path / "data" / "inside")
        (tmp_path / "a-file").write_text("")
        with pytest.raises(FailedPrecondition, match=r"^FAILED_PRECONDITION: cannot write a backup to"):
            client.backup(tmp_path / "a-file" / "backup")
    cli = parcelo("--target", coord.target, "admin", "backup", "--to", str(tmp_path / "cli"))
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.startswith(f"backup written to {tmp_path / 'cli'} (") and "bytes in" in cli.stdout
    again = parcelo("--target", coord.target, "admin", "backup", "--to", str(tmp_path / "cli"))
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert again.stderr.strip().splitlines() == [
        f"error: ALREADY_EXISTS: to_dir: {tmp_path / 'cli'} exists; give a new folder"
    ]
    assert coord.proc is not None and coord.proc.alive()

    # A coordinator started from a backup (beside the running one) has the job as it was, holding
    # everything acknowledged before the backup, and runs it to the end with exact stats (the hung
    # leaf's lease, restored live, expires there and runs again).
    for backup in (tmp_path / "api", tmp_path / "cli"):
        restored = make_coordinator(backup, log_dir).start()
        found = restored.get_job("live")
        assert found.status == types_pb2.JOB_STATUS_RUNNING
        assert seen <= found.stats.range_processed < total
        assert found.stats.done_nodes < found.stats.total_nodes
        restored_log = tmp_path / f"runs-{backup.name}.log"
        start_recording_workers(restored, procs, log_dir, restored_log, "stall_first", "--concurrency", "8")
        done = restored.wait_status("live", {types_pb2.JOB_STATUS_COMPLETED}, timeout=60)
        stats = done.stats
        assert (stats.range_processed, stats.active_leases, stats.error_nodes) == (total, 0, 0)
        assert stats.done_nodes == stats.total_nodes
        # It ran exactly the leaves the backup did not hold as done: its stats and nodes agree.
        ran = {(s, e) for s, e, _ in runs(restored_log)}
        assert ran <= set(reference_leaves(0, total, 20))
        assert sum(e - s for s, e in ran) == total - found.stats.range_processed
        assert restored.stop() == 0
    # The backups' flushes never made a write of the running coordinator fail.
    assert coord.proc is not None and "store write failed" not in coord.proc.output()


def test_a_second_coordinator_on_the_same_data_dir_exits_at_once_with_one_line(
    coordinator: CoordinatorProcess,
) -> None:
    data_dir = coordinator.data_dir
    coordinator.create_job(JobOptions(0, 100, max_range_size=10, job_id="mine"))
    second = subprocess.run(
        [
            str(BIN / "parcelo-coordinator"),
            "--data-dir",
            str(data_dir),
            "--listen",
            f"127.0.0.1:{free_port()}",
            # Its own HTTP port would be refused first if another coordinator held the default one.
            "--http-listen",
            "off",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert [line for line in second.stderr.splitlines() if line.startswith("error:")] == [
        f"error: data dir {data_dir} is in use by another coordinator (RocksDB lock {data_dir / 'LOCK'}); "
        "stop that one first, or give another --data-dir"
    ]
    assert second.stderr.strip().splitlines()[-1].startswith("error:")
    # An offline backup of the same dir is refused too, and points at the online one.
    offline = subprocess.run(
        [
            str(BIN / "parcelo-coordinator"),
            "--data-dir",
            str(data_dir),
            "--backup-to",
            str(data_dir) + "-copy",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert offline.returncode == 1 and "Traceback" not in offline.stderr
    assert "parcelo admin backup" in offline.stderr.strip().splitlines()[-1]
    # The first one never noticed.
    assert coordinator.get_job("mine").spec.max_range_size == 10


def test_queue_depth_gauges_count_waiting_leaves_and_held_leases(
    make_coordinator: type[CoordinatorProcess], log_dir: Path, tmp_path: Path
) -> None:
    """What the autoscaler reads: exact per-queue numbers, unsplit nodes counted as their leaves."""
    coord = make_coordinator(tmp_path / "data", log_dir, http=True).start()
    leaves = len(reference_leaves(0, 10_000, 10))  # 1,024 leaves, nearly all inside unsplit nodes
    coord.create_job(JobOptions(0, 10_000, max_range_size=10))
    coord.create_job(JobOptions(0, 300, max_range_size=100, queue="gpu"))  # 4 leaves
    coord.create_job(JobOptions(0, 5000, max_range_size=100, queue="gpu", start_paused=True))
    worker = RawWorker(coord.channel)
    try:
        held = worker.lease(5)
        assert not worker.complete([held[0].fence, held[1].fence]).rejected
        want_pending = {"default": leaves - 5, "gpu": 4}
        want_running = {"default": 3, "gpu": 0}

        def exact() -> str:
            text = scrape(coord)
            pending = samples(text, "parcelo_pending_leaves")
            running = samples(text, "parcelo_running_leases")
            return text if (pending, running) == (want_pending, want_running) else ""

        wait_for(exact, 20, f"pending {want_pending} and running {want_running} in the metrics")
    finally:
        worker.close()
    assert coord.stop() == 0


def parcelo(*args: str) -> subprocess.CompletedProcess[str]:
    """The admin CLI, as a container's health check runs it."""
    return subprocess.run([str(BIN / "parcelo"), *args], capture_output=True, text=True, timeout=30)


def test_health_command_against_a_real_coordinator(coordinator: CoordinatorProcess) -> None:
    ok = parcelo("--target", coordinator.target, "health")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"coordinator at {coordinator.target} is SERVING"
    service = parcelo("--target", coordinator.target, "health", "--service", "parcelo.v1.WorkerService")
    assert service.returncode == 0, service.stderr
    unknown = parcelo("--target", coordinator.target, "health", "--service", "nope")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("error: NOT_FOUND")
    gone = parcelo("--target", f"127.0.0.1:{free_port()}", "health", "--timeout", "2")
    assert gone.returncode == 1
    assert "cannot reach coordinator" in gone.stderr


@pytest.fixture
def not_serving() -> Iterator[str]:
    """A standard health service answering NOT_SERVING, as a coordinator does while its disk is full."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def test_health_command_fails_when_not_serving(not_serving: str) -> None:
    result = parcelo("--target", not_serving, "health")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: coordinator at {not_serving} is NOT_SERVING"
