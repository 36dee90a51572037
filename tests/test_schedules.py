"""Schedules, clock passed in: tick arithmetic, catch-up, overlap, durability across a restart.

The pure parts (:mod:`parcelo.coordinator.schedules`) and the core firing them are driven with
``now`` as an argument: no test waits for a cron minute.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from parcelo.coordinator.core import Core
from parcelo.coordinator.errors import AlreadyExists, InvalidArgument, NotFound
from parcelo.coordinator.jobs import JobStatus
from parcelo.coordinator.schedules import due_ticks, job_id_of, next_tick
from parcelo.coordinator.store import Store
from parcelo.v1 import schedules_pb2
from tests.test_core import commit, new_core, raw

T0 = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())


def at(text: str) -> int:
    """Seconds since the epoch of an ISO 8601 UTC time."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def record(created: float = T0, **fields: Any) -> schedules_pb2.Schedule:
    every = fields.pop("every", None)
    fields.setdefault("id", "s")
    fields.setdefault("template", raw(0, 10, 10))
    out = schedules_pb2.Schedule(**fields)
    if every is not None:
        out.every.FromSeconds(every)
    out.created_at.FromSeconds(int(created))
    return out


def create(core: Core, now: float = T0, **fields: Any) -> schedules_pb2.Schedule:
    return core.schedules.create(record(**fields), now)


def scheduled(core: Core, schedule_id: str = "s") -> list[str]:
    """Ids of the jobs ``schedule_id`` fired, in creation order."""
    return [job.id for job in core.jobs.values() if job.spec.labels.get("schedule") == schedule_id]


# -- ticks ---------------------------------------------------------------------------------------


def test_job_ids_are_the_schedule_id_and_the_tick_in_utc() -> None:
    assert job_id_of("nightly", at("2026-03-04T05:06:07")) == "nightly-20260304T050607Z"


def test_every_is_anchored_at_creation() -> None:
    r = record(created=T0 + 1, every=10)
    assert next_tick(r, T0) == T0 + 11  # strictly after
    assert next_tick(r, T0 + 11) == T0 + 21
    assert next_tick(r, T0 + 11.5) == T0 + 21


def test_cron_is_read_in_the_time_zone() -> None:
    r = record(cron="0 9 * * *", timezone="Europe/Paris")
    assert next_tick(r, T0) == at("2026-01-01T08:00:00")  # CET: UTC+1
    assert next_tick(r, at("2026-07-01T00:00:00")) == at("2026-07-01T07:00:00")  # CEST: UTC+2
    assert next_tick(record(cron="@hourly"), T0 + 1) == T0 + 3600


def test_catch_up_fires_the_newest_missed_ticks_only() -> None:
    now = T0 + 3600 * 5 + 30  # five hourly ticks missed
    assert due_ticks(record(cron="@hourly"), now) == ([T0 + 3600 * 5], T0 + 3600 * 5)
    three = record(cron="@hourly", catch_up=3)
    assert due_ticks(three, now) == ([T0 + 3600 * 3, T0 + 3600 * 4, T0 + 3600 * 5], T0 + 3600 * 5)
    none = record(cron="@hourly", catch_up=0)
    assert due_ticks(none, now) == ([], T0 + 3600 * 5)  # 30 s late: missed, not caught up
    assert due_ticks(none, T0 + 3600 * 5 + 1) == ([T0 + 3600 * 5], T0 + 3600 * 5)  # on time
    fired = record(cron="@hourly")
    fired.last_fired_at.FromSeconds(T0 + 3600 * 5)
    assert due_ticks(fired, now) == ([], None)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * *"}, "cron"),
        ({"cron": "* * * * * *"}, "cron"),  # seconds are not cron's
        ({"cron": "@sometimes"}, "cron"),
        ({}, "cron"),
        ({"cron": "@daily", "every": 60}, "cron"),
        ({"every": 0}, "every"),
        ({"cron": "@daily", "timezone": "Mars/Olympus"}, "timezone"),
        ({"cron": "@daily", "id": "no spaces"}, "id"),
        ({"cron": "@daily", "template": raw(5, 5)}, "template.range"),
    ],
)
def test_bad_schedules_name_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        new_core().schedules.create(record(**fields), T0)
    assert err.value.field == field


def test_ids_are_unique_and_unknown_ones_are_not_found() -> None:
    core = new_core()
    create(core, cron="@daily")
    with pytest.raises(AlreadyExists):
        create(core, cron="@daily")
    with pytest.raises(NotFound):
        core.schedules.get("other")
    with pytest.raises(NotFound):
        core.trigger_schedule("other", T0)


# -- firing --------------------------------------------------------------------------------------


def test_skip_fires_nothing_while_a_job_of_the_schedule_is_unfinished() -> None:
    core = new_core()
    create(core, every=2)
    core.tick(T0 + 1)
    assert scheduled(core) == []
    core.tick(T0 + 2)
    first = job_id_of("s", T0 + 2)
    assert scheduled(core) == [first]
    assert core.jobs[first].spec.labels["schedule"] == "s"
    core.tick(T0 + 4)  # pending counts as running: skipped
    s = core.schedules.get("s")
    assert (s.last_fired_at.seconds, s.next_fire_at.seconds, s.last_job_id) == (T0 + 4, T0 + 6, first)
    core.cancel(first, T0 + 5)
    core.tick(T0 + 6)
    assert scheduled(core) == [first, job_id_of("s", T0 + 6)]


def test_allow_fires_every_tick_and_cancel_previous_cancels_first() -> None:
    core = new_core()
    create(core, every=2, overlap=schedules_pb2.OVERLAP_ALLOW)
    for now in (T0 + 2, T0 + 4):
        core.tick(now)
    assert scheduled(core) == [job_id_of("s", T0 + 2), job_id_of("s", T0 + 4)]
    core = new_core()
    create(core, every=2, overlap=schedules_pb2.OVERLAP_CANCEL_PREVIOUS)
    for now in (T0 + 2, T0 + 4):
        core.tick(now)
    first, second = scheduled(core)
    assert core.jobs[first].status is JobStatus.CANCELLED
    assert core.jobs[second].status is JobStatus.PENDING


def test_pause_resume_trigger_and_delete() -> None:
    core = new_core()
    create(core, every=2)
    core.schedules.pause("s")
    assert not core.schedules.get("s").HasField("next_fire_at")
    core.tick(T0 + 10)
    assert scheduled(core) == []
    core.schedules.resume("s", T0 + 11)  # ticks missed while paused are not caught up
    core.tick(T0 + 11)
    assert scheduled(core) == []
    core.tick(T0 + 12)
    assert scheduled(core) == [job_id_of("s", T0 + 12)]
    job = core.trigger_schedule("s", T0 + 13.7)  # whatever the overlap policy says
    assert job.id == job_id_of("s", T0 + 13)
    assert core.schedules.get("s").last_job_id == job.id
    core.schedules.delete("s")
    core.tick(T0 + 20)
    assert core.schedules.all() == []
    assert len(scheduled(core)) == 2  # its jobs stay


def test_update_changes_the_timing_and_counts_from_now() -> None:
    core = new_core()
    create(core, every=2)
    changed = core.schedules.update("s", T0 + 7, cron="*/5 * * * *")
    assert not changed.HasField("every")
    assert changed.next_fire_at.seconds == T0 + 300
    with pytest.raises(InvalidArgument) as err:
        core.schedules.update("s", T0 + 8, timezone="Nowhere/Else")
    assert err.value.field == "timezone"
    assert core.schedules.get("s").timezone == ""  # a refused update changes nothing


def restart(store: Store, now: float) -> Core:
    back = new_core()
    back.restore(store.load(10), now)
    back.schedules.restore(store.load_schedules())
    return back


def test_a_restart_never_fires_a_tick_twice_and_catches_up_the_newest(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    core = new_core()
    create(core, every=2, overlap=schedules_pb2.OVERLAP_ALLOW)
    core.tick(T0 + 2)
    commit(core, store)  # the job and the tick that fired it, in one batch
    core = restart(store, T0 + 2.5)
    core.tick(T0 + 2.5)
    assert scheduled(core) == [job_id_of("s", T0 + 2)]
    core.tick(T0 + 9)  # down from 2.5 to 9: ticks 4, 6 and 8 missed; catch-up 1 fires 8
    assert scheduled(core) == [job_id_of("s", T0 + 2), job_id_of("s", T0 + 8)]
    commit(core, store)
    core.schedules.delete("s")
    commit(core, store)
    assert restart(store, T0 + 10).schedules.all() == []


def test_a_tick_fired_again_finds_its_job(tmp_path: Path) -> None:
    # The record saying a tick fired is lost (it never is: same batch); job ids make it harmless.
    core = new_core()
    create(core, every=2, overlap=schedules_pb2.OVERLAP_ALLOW)
    stale = schedules_pb2.Schedule()
    stale.CopyFrom(core.schedules.get("s"))
    core.tick(T0 + 2)
    core.schedules.restore([stale])
    core.tick(T0 + 2)
    assert scheduled(core) == [job_id_of("s", T0 + 2)]
