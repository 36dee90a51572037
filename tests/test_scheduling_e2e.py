"""Scheduling policy with a real coordinator and real worker processes: what the handlers record
(their own start and end times) and the coordinator's own counts, never sleep-and-hope.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from parcelo import JobOptions
from parcelo.client import Client
from parcelo.testing import CoordinatorProcess, Proc, wait_for
from parcelo.v1 import types_pb2
from tests.support import start_recording_workers

pytestmark = pytest.mark.integration

DONE = {types_pb2.JOB_STATUS_COMPLETED}


def spans(log: Path, job_id: str | None = None) -> list[tuple[float, float]]:
    """(start, end) of every handler run logged by ``tests.handlers.span``."""
    out = []
    for line in log.read_text().splitlines() if log.exists() else []:
        _, _, _, began, ended, job = line.split()
        if job_id is None or job == job_id:
            out.append((float(began), float(ended)))
    return out


def most_at_once(runs: list[tuple[float, float]]) -> int:
    """The most handler runs overlapping at any instant."""
    edges = sorted([(t0, 1) for t0, _ in runs] + [(t1, -1) for _, t1 in runs], key=lambda e: (e[0], e[1]))
    now = peak = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def test_max_concurrency_holds_across_workers_and_changes_while_the_job_runs(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "spans.log"
    job = coordinator.create_job(
        JobOptions(0, 200, max_range_size=1, max_concurrency=3, params={"sleep": 0.15})
    )
    # 40 handler slots offered by two workers; the job allows 3 at a time.
    start_recording_workers(coordinator, procs, log_dir, log, "span", "--concurrency", "20", n=2)
    wait_for(lambda: len(spans(log)) >= 30, 60, "30 runs under the limit of 3")
    assert most_at_once(spans(log)) <= 3
    with Client(coordinator.target) as client:
        client.update_job(job.id, max_concurrency=10)
    coordinator.wait_status(job.id, DONE, timeout=60)
    runs = spans(log)
    assert len(runs) == 200
    assert 3 < most_at_once(runs) <= 10  # more at once after the update, never more than 10


def test_the_rate_limit_bounds_grants_over_time(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "spans.log"
    job = coordinator.create_job(JobOptions(0, 25, max_range_size=1, max_leases_per_second=5))
    created = job.created_at.ToDatetime(tzinfo=UTC).timestamp()
    start_recording_workers(coordinator, procs, log_dir, log, "span", "--concurrency", "16")
    coordinator.wait_status(job.id, DONE, timeout=30)
    starts = sorted(t0 for t0, _ in spans(log))
    assert len(starts) == 25
    # A handler starts after its grant: by any time t, at most burst (5) + 5 per second since the
    # job was created have started (a little slack for the two clocks' reading).
    for i, t in enumerate(starts, 1):
        assert i <= 5 + 5 * (t - created) + 0.5, (i, t - created)
    assert starts[-1] - created >= (25 - 5) / 5 - 0.5  # it did take about 4 s


def test_a_small_job_finishes_first_and_keys_share_by_weight(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "spans.log"
    huge = coordinator.create_job(JobOptions(0, 1 << 40, max_range_size=1, job_id="huge"))
    start_recording_workers(coordinator, procs, log_dir, log, "span", "--concurrency", "8")
    wait_for(lambda: len(spans(log, "huge")) > 50, 30, "the huge job to run")
    small = coordinator.create_job(JobOptions(0, 30, max_range_size=1, job_id="small"))
    coordinator.wait_status(small.id, DONE, timeout=30)
    assert coordinator.get_job(huge.id).status == types_pb2.JOB_STATUS_RUNNING
    with Client(coordinator.target) as client:
        client.cancel_job(huge.id)
    # Two fairness keys, weights 3 and 1, both with more work than the window needs.
    log.unlink()
    coordinator.create_job(
        JobOptions(0, 1 << 40, max_range_size=1, job_id="three", fairness_key="a", weight=3)
    )
    coordinator.create_job(JobOptions(0, 1 << 40, max_range_size=1, job_id="one", fairness_key="b"))
    wait_for(lambda: len(spans(log)) >= 3300, 60, "3,300 runs of the two jobs")
    # A window once both run (past what the workers prefetched before the second job came), many
    # scheduling quanta wide: a key is served up to 64 leases at a time, so a window of a few
    # cycles of 3 x 64 + 64 would weigh where it starts and ends.
    lines = log.read_text().splitlines()[300:3300]
    counts = Counter(line.split()[5] for line in lines)
    assert 2.4 <= counts["three"] / counts["one"] <= 3.6, counts


def test_a_paused_queue_grants_nothing_and_its_limit_bounds_the_sum_of_its_jobs(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "spans.log"
    with Client(coordinator.target) as client:
        client.update_queue("q", max_concurrency=4)
        first = coordinator.create_job(JobOptions(0, 60, max_range_size=1, queue="q", params={"sleep": 0.1}))
        second = coordinator.create_job(JobOptions(0, 60, max_range_size=1, queue="q", params={"sleep": 0.1}))
        start_recording_workers(
            coordinator, procs, log_dir, log, "span", "--queue", "q", "--concurrency", "16"
        )
        wait_for(lambda: len(spans(log)) >= 20, 30, "runs in queue q")
        client.pause_queue("q")
        wait_for(lambda: client.get_queue("q").running_leases == 0, 30, "running leases to finish")
        ran = len(spans(log))
        # Paused: a full second (many dispatch rounds, ten handler lengths) grants nothing more.
        time.sleep(1.0)
        assert len(spans(log)) == ran and client.get_queue("q").paused
        assert client.get_queue("q").pending_leaves == 0  # what an autoscaler reads: nothing to do
        client.resume_queue("q")
        for job in (first, second):
            coordinator.wait_status(job.id, DONE, timeout=60)
    runs = spans(log)
    assert len(runs) == 120 and most_at_once(runs) <= 4


def test_run_after_holds_the_job_until_then(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "spans.log"
    start_recording_workers(coordinator, procs, log_dir, log, "span")
    later = datetime.now(UTC) + timedelta(seconds=1.5)
    job = coordinator.create_job(JobOptions(0, 10, max_range_size=1, run_after=later))
    assert coordinator.get_job(job.id).status == types_pb2.JOB_STATUS_PENDING
    coordinator.wait_status(job.id, DONE, timeout=30)
    assert min(t0 for t0, _ in spans(log)) >= later.timestamp() - 0.05  # none started before
