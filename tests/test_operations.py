"""Operations: online backup (SIGUSR1), offline backup, health service, metrics."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parcelo import JobOptions
from parcelo.testing import BIN, CoordinatorProcess, free_port, wait_for

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


def test_health_and_prometheus_metrics(
    make_coordinator: type[CoordinatorProcess], log_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    coord = make_coordinator(tmp_path / "data", log_dir, extra=["--metrics-port", str(port)]).start()
    coord.create_job(JobOptions(0, 100, max_range_size=10))
    health = health_pb2_grpc.HealthStub(coord.channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING

    def scrape() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            return ""

    def jobs_metric() -> str:
        text = scrape()
        return text if "parcelo_jobs" in text else ""

    text = wait_for(jobs_metric, 20, "metrics")
    assert 'status="pending"' in text
    assert coord.stop() == 0
