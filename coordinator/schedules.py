"""Schedules: recurring jobs made from a template, when a cron expression or an interval says.

The tick arithmetic is pure, over whole seconds since the epoch with the clock passed in:
:func:`next_tick`, :func:`due_ticks` and :func:`job_id_of`. :class:`ScheduleTable` holds the
records durably (the store writes what :meth:`ScheduleTable.take_changes` hands over), and
:class:`ScheduleViews` what readers see once it is written. The core
fires the ticks that come due (:meth:`parcelo.coordinator.core.Core.tick`), so a tick's job and the
record saying it fired are written in one batch: a restart never fires a tick twice.

A tick's job id is ``<schedule id>-<scheduled time as YYYYMMDDTHHMMSSZ, UTC>``; were a tick fired
again anyway (it is not), job creation being idempotent by id would return the job it made.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, croniter
from google.protobuf.duration_pb2 import Duration

from parcelo import defaults
from parcelo.coordinator.errors import AlreadyExists, InvalidArgument, NotFound
from parcelo.v1 import schedules_pb2, types_pb2

ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,111}$")
"""Schedule ids: a job id (128 characters at most) less the 17 of ``-YYYYMMDDTHHMMSSZ``."""
LABEL = "schedule"
"""The label naming the schedule a job was fired by."""
LATE = defaults.SCHEDULE_LATE.total_seconds()
MAX_EVERY = 366 * 86400
"""A year and a day: an ``every`` longer than that is a cron expression's job."""

Overlap = schedules_pb2.Overlap


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument("timezone", f"'{name[:64]}' is not a known IANA time zone") from None


def check(record: schedules_pb2.Schedule) -> None:
    """Raise :class:`InvalidArgument` naming the first bad field of ``record`` (not its template)."""
    if not ID_RE.match(record.id):
        raise InvalidArgument("id", "must be 1-111 characters of letters, digits, '.', '_' or '-'")
    _zone(record.timezone)
    every = record.HasField("every")
    if bool(record.cron) == every:
        raise InvalidArgument("cron", "exactly one of cron and every is required")
    if every:
        if record.every.nanos or not 1 <= record.every.seconds <= MAX_EVERY:
            raise InvalidArgument("every", f"must be a whole number of seconds from 1 to {MAX_EVERY}")
    elif len(record.cron.split()) != 5 and not record.cron.startswith("@"):
        raise InvalidArgument("cron", "must have 5 fields (minute hour day month weekday) or be an alias")
    else:
        try:
            croniter(record.cron)
        except (CroniterBadCronError, ValueError, KeyError) as err:
            raise InvalidArgument("cron", f"'{record.cron[:64]}' does not parse: {err}") from None
    if record.overlap not in Overlap.values():
        raise InvalidArgument("overlap", f"unknown value {record.overlap}")


def catch_up_of(record: schedules_pb2.Schedule) -> int:
    """How many due ticks fire at once (after downtime): the newest ones."""
    return record.catch_up if record.HasField("catch_up") else defaults.SCHEDULE_CATCH_UP


def _cron(record: schedules_pb2.Schedule, at: float) -> croniter:
    return croniter(record.cron, datetime.fromtimestamp(at, _zone(record.timezone)))


def next_tick(record: schedules_pb2.Schedule, after: float) -> int:
    """The first tick of ``record`` strictly after ``after`` (seconds since the epoch)."""
    if record.HasField("every"):
        # Anchored at creation (not itself a tick), so restarts never shift the ticks.
        created, every = record.created_at.seconds, record.every.seconds
        return created + max(math.floor((after - created) / every) + 1, 1) * every
    return int(_cron(record, after).get_next(float))


def _ticks_back(record: schedules_pb2.Schedule, now: float, since: int, count: int) -> list[int]:
    """Up to ``count`` ticks in (``since``, ``now``], newest first."""
    out: list[int] = []
    if record.HasField("every"):
        created, every = record.created_at.seconds, record.every.seconds
        tick = created + math.floor((now - created) / every) * every
        while len(out) < count and tick > since:
            out.append(tick)
            tick -= every
        return out
    # Just past now, so a tick at exactly now counts.
    it = _cron(record, math.floor(now) + 0.5)
    while len(out) < count:
        tick = int(it.get_prev(float))
        if tick <= since:
            break
        out.append(tick)
    return out


def due_ticks(record: schedules_pb2.Schedule, now: float) -> tuple[list[int], int | None]:
    """The ticks of ``record`` to fire at ``now``, oldest first, and the newest tick due.

    Due: after the last tick fired or skipped (after creation at first) and not after ``now``.
    Of those the newest ``catch_up`` fire, the older are skipped; with a catch-up of 0 only a tick
    on time (at most :data:`LATE` seconds late) fires. The newest due tick is None when none is.
    """
    since = record.last_fired_at.seconds if record.HasField("last_fired_at") else record.created_at.seconds
    wanted = catch_up_of(record)
    ticks = _ticks_back(record, now, since, max(wanted, 1))
    if not ticks:
        return [], None
    newest = ticks[0]
    if wanted == 0:
        return ([newest] if now - newest <= LATE else []), newest
    return ticks[::-1], newest


def job_id_of(schedule_id: str, tick: int) -> str:
    """The id of the job fired by ``schedule_id``'s tick at ``tick``: deterministic."""
    return f"{schedule_id}-{datetime.fromtimestamp(tick, UTC):%Y%m%dT%H%M%SZ}"


def job_spec(record: schedules_pb2.Schedule, tick: int) -> types_pb2.JobSpec:
    """The spec of the job ``record``'s tick at ``tick`` creates: the template, its id and label."""
    spec = types_pb2.JobSpec()
    spec.CopyFrom(record.template)
    spec.job_id = job_id_of(record.id, tick)
    spec.request_id = ""
    spec.labels[LABEL] = record.id
    return spec


class ScheduleTable:
    """Every schedule, by id, with when each fires next.

    Args:
        check_template: Raises :class:`InvalidArgument` naming the first bad field of a template.
    """

    def __init__(self, check_template: Callable[[types_pb2.JobSpec], None]) -> None:
        self._check_template = check_template
        self._records: dict[str, schedules_pb2.Schedule] = {}
        # When each unpaused schedule fires next: the tick loop reads only this.
        self._next: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._deleted: set[str] = set()

    def get(self, schedule_id: str) -> schedules_pb2.Schedule:
        """The schedule; :class:`NotFound` when there is none."""
        record = self._records.get(schedule_id)
        if record is None:
            raise NotFound(f"schedule '{schedule_id[:128]}' not found")
        return record

    def all(self) -> list[schedules_pb2.Schedule]:
        """Every schedule, by id."""
        return [self._records[key] for key in sorted(self._records)]

    def create(self, request: schedules_pb2.Schedule, now: float) -> schedules_pb2.Schedule:
        """A new schedule from ``request``'s id, template, timing, policies and paused flag."""
        record = schedules_pb2.Schedule(
            id=request.id,
            template=request.template,
            cron=request.cron,
            timezone=request.timezone,
            overlap=request.overlap,
            paused=request.paused,
        )
        if request.HasField("every"):
            record.every.CopyFrom(request.every)
        if request.HasField("catch_up"):
            record.catch_up = request.catch_up
        # Whole seconds: the ticks of `every`, anchored here, are whole seconds too.
        record.created_at.FromSeconds(math.floor(now))
        self._validate(record)
        if record.id in self._records:
            raise AlreadyExists(f"schedule '{record.id}' already exists")
        self._records[record.id] = record
        self._deleted.discard(record.id)
        self._changed(record)
        return record

    def update(
        self,
        schedule_id: str,
        now: float,
        *,
        cron: str | None = None,
        every: Duration | None = None,
        timezone: str | None = None,
        overlap: schedules_pb2.Overlap.ValueType | None = None,
        catch_up: int | None = None,
        template: types_pb2.JobSpec | None = None,
    ) -> schedules_pb2.Schedule:
        """Change the fields given (None: unchanged); ticks missed before ``now`` are not caught up."""
        record = schedules_pb2.Schedule()
        record.CopyFrom(self.get(schedule_id))
        if cron is not None:
            record.cron = cron
            record.ClearField("every")
        if every is not None:
            record.every.CopyFrom(every)
            record.cron = ""
        if timezone is not None:
            record.timezone = timezone
        if overlap is not None:
            record.overlap = overlap
        if catch_up is not None:
            record.catch_up = catch_up
        if template is not None:
            record.template.CopyFrom(template)
        self._validate(record)
        self._skip_past(record, now)
        self._records[schedule_id] = record
        self._changed(record)
        return record

    def pause(self, schedule_id: str) -> schedules_pb2.Schedule:
        """No tick fires until :meth:`resume`."""
        record = self.get(schedule_id)
        record.paused = True
        self._changed(record)
        return record

    def resume(self, schedule_id: str, now: float) -> schedules_pb2.Schedule:
        """Fire ticks again from ``now`` on: those missed while paused are not caught up."""
        record = self.get(schedule_id)
        if record.paused:
            record.paused = False
            self._skip_past(record, now)
        self._changed(record)
        return record

    def delete(self, schedule_id: str) -> None:
        """Remove the schedule (the jobs it created stay)."""
        self.get(schedule_id)
        del self._records[schedule_id]
        self._next.pop(schedule_id, None)
        self._dirty.discard(schedule_id)
        self._deleted.add(schedule_id)

    def due(self, now: float) -> list[schedules_pb2.Schedule]:
        """The unpaused schedules with a tick due by ``now``."""
        return [self._records[key] for key, at in self._next.items() if at <= now]

    def fired(self, record: schedules_pb2.Schedule, newest: int, job_id: str | None) -> None:
        """``record``'s ticks up to ``newest`` are fired or skipped; ``job_id``: the last job created."""
        record.last_fired_at.FromSeconds(newest)
        if job_id is not None:
            record.last_job_id = job_id
        self._changed(record)

    def triggered(self, record: schedules_pb2.Schedule, job_id: str) -> None:
        """A tick fired by hand created ``job_id``."""
        record.last_job_id = job_id
        self._changed(record)

    def _validate(self, record: schedules_pb2.Schedule) -> None:
        check(record)
        if not record.HasField("template"):
            raise InvalidArgument("template", "is required")
        try:
            self._check_template(job_spec(record, record.created_at.seconds))
        except InvalidArgument as err:
            problem = str(err).removeprefix(f"{err.field}: ")
            raise InvalidArgument(f"template.{err.field}", problem) from None

    def _skip_past(self, record: schedules_pb2.Schedule, now: float) -> None:
        """Count ticks from ``now``: those already due are skipped."""
        _, newest = due_ticks(record, now)
        if newest is not None:
            record.last_fired_at.FromSeconds(newest)

    def _changed(self, record: schedules_pb2.Schedule) -> None:
        self._dirty.add(record.id)
        if record.paused:
            self._next.pop(record.id, None)
            record.ClearField("next_fire_at")
            return
        since = record.last_fired_at if record.HasField("last_fired_at") else record.created_at
        at = self._next[record.id] = next_tick(record, since.seconds)
        record.next_fire_at.FromSeconds(at)

    def take_changes(self) -> dict[str, schedules_pb2.Schedule | None]:
        """Records changed since the last call (copies: to write), None for those deleted."""
        changed: dict[str, schedules_pb2.Schedule | None] = dict.fromkeys(self._deleted)
        for key in self._dirty:
            changed[key] = copy = schedules_pb2.Schedule()
            copy.CopyFrom(self._records[key])
        self._dirty = set()
        self._deleted = set()
        return changed

    def restore(self, records: Iterable[schedules_pb2.Schedule]) -> None:
        """The stored records (start-up)."""
        for record in records:
            self._records[record.id] = record
            self._changed(record)
        self._dirty = set()


class ScheduleViews:
    """The schedules as written to disk: what readers see (as :class:`~parcelo.coordinator.views.JobViews`
    for jobs), so a schedule never names a job a reader cannot find yet."""

    def __init__(self) -> None:
        self._records: dict[str, schedules_pb2.Schedule] = {}

    def written(self, changes: Mapping[str, schedules_pb2.Schedule | None]) -> None:
        """These records are on disk now (None: deleted)."""
        for key, record in changes.items():
            if record is None:
                self._records.pop(key, None)
            else:
                self._records[key] = record

    def get(self, schedule_id: str) -> schedules_pb2.Schedule:
        """The schedule; :class:`NotFound` when there is none."""
        record = self._records.get(schedule_id)
        if record is None:
            raise NotFound(f"schedule '{schedule_id[:128]}' not found")
        return record

    def all(self) -> list[schedules_pb2.Schedule]:
        """Every schedule, by id."""
        return [self._records[key] for key in sorted(self._records)]
