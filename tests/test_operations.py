"""Operations: online backup (SIGUSR1), offline backup, one coordinator per data dir, health service, metrics."""

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
    assert "SIGUSR1" in offline.stderr.strip().splitlines()[-1]
    # The first one never noticed.
    assert coordinator.get_job("mine").spec.max_range_size == 10
