"""Operations: online backup (SIGUSR1), offline backup, health service, metrics."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from parcelo import JobOptions
from parcelo.testing import BIN, CoordinatorProcess, free_port, wait_for
from tests.support import RawWorker, reference_leaves

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
