"""Leases a worker has not started go to an idle worker (DIRECTIVE_ACTION_REVOKE).

The choice (``Dispatcher.revocable``) unit-tested over a real core, then end to end with real
coordinator and worker processes: a worker started a moment after another gets leases to run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from parcelo import JobOptions
from parcelo.coordinator.core import Core
from parcelo.coordinator.dispatcher import Dispatcher, Session
from parcelo.testing import CoordinatorProcess, Proc, wait_for
from parcelo.v1 import jobs_pb2, types_pb2
from tests.support import runs_with_pids, start_recording_workers


def cluster(queue: str = "default") -> tuple[Core, Dispatcher, list[int]]:
    """A core with one job of 8 leaves on ``queue``, 4 of them leased by worker "a"."""
    core = Core(fence_limit=1)
    spec = types_pb2.JobSpec(job_id="j", queue=queue, range=types_pb2.Range(start=0, end=8), max_range_size=1)
    core.create_job(spec, 0.0)
    core.written(core.take_changes())
    leases = core.lease([queue], 4, 1.0, "a")
    return core, Dispatcher(core), [lease.fence for lease in leases]


def idle(worker_id: str, *, credits: int = 4, concurrency: int = 2, queue: str = "default") -> Session:
    """A stream the last dispatch round left with credit (nothing leasable for it)."""
    return Session(worker_id, (queue,), credits=credits, concurrency=concurrency, starved=True)


def test_waiting_leases_are_taken_back_one_per_free_slot_of_an_idle_worker() -> None:
    _, dispatcher, fences = cluster()
    # A worker is never robbed for itself (another stream of its own with credit left).
    dispatcher.add(idle("a"))
    assert dispatcher.revocable(fences, "a") == set()
    dispatcher.add(idle("b"))
    # b has 2 free slots: 2 of a's 4 waiting leases go back, no more.
    assert len(dispatcher.revocable(fences, "a")) == 2
    dispatcher.add(idle("c", concurrency=1))
    assert len(dispatcher.revocable(fences, "a")) == 3


def test_nothing_is_taken_back_for_a_worker_that_is_busy_elsewhere_or_said_no_slots() -> None:
    core, dispatcher, fences = cluster()
    # Busy: b holds as many leases as it has slots.
    core.lease(["default"], 2, 1.0, "b")
    dispatcher.add(idle("b", concurrency=2))
    # Not starved: the last round could grant what it asked for.
    fed = idle("c")
    fed.starved = False
    dispatcher.add(fed)
    # Another queue, and a worker that never said its concurrency (an old SDK).
    dispatcher.add(idle("d", queue="other"))
    dispatcher.add(idle("e", concurrency=0))
    assert dispatcher.revocable(fences, "a") == set()
    # Fences that are not live leases are passed over.
    dispatcher.add(idle("f"))
    assert dispatcher.revocable([10**9], "a") == set()


DONE = {types_pb2.JOB_STATUS_COMPLETED}


def by_pid(run_log: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    for _, _, _, pid in runs_with_pids(run_log):
        counts[pid] = counts.get(pid, 0) + 1
    return counts


@pytest.mark.integration
def test_a_worker_started_later_gets_the_leases_the_first_has_not_started(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    # 4 leaves of a minute: the first worker (2 slots, default flags) takes all 4, runs 2.
    job = coordinator.create_job(JobOptions(0, 4, max_range_size=1, params={"sleep": 60}))
    (first,) = start_recording_workers(coordinator, procs, log_dir, run_log, "record", "--concurrency", "2")
    wait_for(lambda: len(runs_with_pids(run_log)) == 2, 30, "the first worker's two handlers")
    wait_for(lambda: coordinator.get_job(job.id).stats.active_leases == 4, 10, "all 4 leases held")
    (second,) = start_recording_workers(coordinator, procs, log_dir, run_log, "record", "--concurrency", "2")
    # The two the first had not started are taken back and run by the second, long before the
    # first worker's handlers free a slot.
    wait_for(lambda: by_pid(run_log).get(second.pid) == 2, 30, "the second worker to run two leaves")
    assert by_pid(run_log) == {first.pid: 2, second.pid: 2}
    assert sorted((s, e, a) for s, e, a, _ in runs_with_pids(run_log)) == [(i, i + 1, 1) for i in range(4)]
    got = coordinator.get_job(job.id)
    assert (got.stats.active_leases, got.stats.failed_attempts) == (4, 0)  # no attempt counted
    coordinator.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id))


@pytest.mark.integration
def test_a_worker_started_a_moment_later_shares_a_job_of_slow_leaves(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    # The case: 40 leaves of 0.5 s, two workers of 2 slots with default flags, the second
    # started after the first ran its first leaves. A prefetch of 64 once let the first hold all 40.
    job = coordinator.create_job(JobOptions(0, 40, max_range_size=1, params={"sleep": 0.5}))
    (first,) = start_recording_workers(coordinator, procs, log_dir, run_log, "record", "--concurrency", "2")
    wait_for(lambda: runs_with_pids(run_log), 30, "the first worker to start")
    (second,) = start_recording_workers(coordinator, procs, log_dir, run_log, "record", "--concurrency", "2")
    coordinator.wait_status(job.id, DONE, timeout=60)
    counts = by_pid(run_log)
    assert sum(counts.values()) == 40 and set(counts) == {first.pid, second.pid}
    # However long the second took to start, the first kept only about a second of work in hand.
    assert counts[second.pid] >= 5, counts
