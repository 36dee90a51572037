"""Schedules on a real coordinator process with a real worker: the CLI creates one, its ticks fire
jobs with deterministic ids and skip while one runs, and a ``kill -9`` restart neither fires a
tick twice nor catches up more than the newest missed tick.

Ticks come every 2 s, anchored at the schedule's creation, so the test waits on observed state
(the schedule's last tick, the jobs' statuses) and on the wall clock only where the cadence needs.
"""

from __future__ import annotations

import re
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from parcelo.client import Client
from parcelo.coordinator.schedules import job_id_of
from parcelo.errors import AlreadyExists, InvalidArgument, NotFound
from parcelo.options import JobOptions
from parcelo.testing import BIN, CoordinatorProcess, Proc, wait_for
from parcelo.v1 import schedules_pb2, types_pb2
from tests.support import start_recording_workers

COMPLETED = types_pb2.JOB_STATUS_COMPLETED


def parcelo(coord: CoordinatorProcess, *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "parcelo"), "--target", coord.target, *args], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def fired(client: Client, schedule_id: str) -> set[str]:
    return {job.id for job in client.list_jobs() if job.spec.labels.get("schedule") == schedule_id}


def last_tick(client: Client) -> schedules_pb2.Schedule:
    return client.get_schedule("tick")


@pytest.mark.timeout(60)
def test_every_2s_skips_while_a_job_runs_and_a_kill9_restart_fires_no_tick_twice(
    make_coordinator: type[CoordinatorProcess], procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    coord = make_coordinator(tmp_path / "data", log_dir).start()
    start_recording_workers(coord, procs, log_dir, tmp_path / "runs.log", "record")
    with Client(coord.target) as client:
        # Connected before the first tick, so each job starts at once and ends on time.
        wait_for(client.list_workers, 20, "the worker to connect")
    # A job of 2.5 s: running at the next tick (skipped), done before the one after.
    out = parcelo(
        coord,
        *("schedule", "create", "tick", "--every", "2s", "--overlap", "skip"),
        *("--start", "0", "--end", "1", "--max-range-size", "1", "--params", '{"sleep": 2.5}'),
    )
    assert out.strip() == "tick"
    with Client(coord.target) as client:
        created = client.get_schedule("tick").created_at.seconds
        first = created + 2
        first_job = job_id_of("tick", first)
        assert re.fullmatch(r"tick-\d{8}T\d{6}Z", first_job)
        assert wait_for(lambda: last_tick(client).last_job_id, 10, "the first tick") == first_job
        job = client.get_job(first_job)
        assert job.spec.labels["schedule"] == "tick"
        wait_for(lambda: last_tick(client).last_fired_at.seconds >= first + 2, 10, "the second tick")
        assert fired(client, "tick") == {first_job}  # skipped: the first job runs
        client.wait(job.id, timeout=10)
        before = fired(client, "tick")
        assert before == {job.id}
        assert last_tick(client).last_fired_at.seconds < first + 4
    coord.kill9()  # before the tick at first + 4
    # Down over the ticks at first + 4 and first + 6: with a catch-up of 1 only the newest fires.
    wait_for(lambda: time.time() >= first + 6.3, 15, "two ticks missed", interval=0.1)
    coord.start()
    with Client(coord.target) as client:
        wait_for(lambda: fired(client, "tick") > before, 10, "the newest missed tick")
        after = fired(client, "tick")
        # However long the restart took, the ticks missed meanwhile fire as one: the newest.
        newest = min(after - before)
        missed = range(first + 4, int(datetime.strptime(newest[5:], "%Y%m%dT%H%M%S%z").timestamp()), 2)
        assert len(missed) >= 1
        for tick in missed:
            with pytest.raises(NotFound):
                client.get_job(job_id_of("tick", tick))
        listed = parcelo(coord, "schedule", "list", "--json")
        assert '"id": "tick"' in listed


def test_bad_input_and_the_admin_calls_over_grpc(coordinator: CoordinatorProcess) -> None:
    template = JobOptions(0, 10, max_range_size=10)
    with Client(coordinator.target) as client:
        with pytest.raises(InvalidArgument, match=r"^INVALID_ARGUMENT: timezone: 'Mars/Olympus'"):
            client.create_schedule("s", template, cron="@daily", timezone="Mars/Olympus")
        with pytest.raises(
            InvalidArgument, match=r"^INVALID_ARGUMENT: cron: '61 [*] [*] [*] [*]' does not parse"
        ):
            client.create_schedule("s", template, cron="61 * * * *")
        created = client.create_schedule("s", template, cron="0 9 * * 1", timezone="Europe/Paris", catch_up=0)
        assert created.next_fire_at.seconds > time.time()
        with pytest.raises(AlreadyExists):
            client.create_schedule("s", template, every=timedelta(hours=1))
        with pytest.raises(NotFound):
            client.get_schedule("other")
        assert client.pause_schedule("s").paused
        job = client.trigger_schedule("s")  # paused or not
        assert job.id.startswith("s-") and job.spec.labels["schedule"] == "s"
        assert client.get_schedule("s").last_job_id == job.id
        assert not client.resume_schedule("s").paused
        changed = client.update_schedule("s", every=timedelta(minutes=5), overlap="allow")
        assert (changed.cron, changed.every.seconds, changed.overlap) == (
            "",
            300,
            schedules_pb2.OVERLAP_ALLOW,
        )
        assert [s.id for s in client.list_schedules()] == ["s"]
        client.delete_schedule("s")
        assert client.list_schedules() == []
        client.get_job(job.id)  # its jobs stay
