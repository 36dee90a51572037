"""The queues' own settings: their concurrency and rate limits and whether they are paused.

Durable (the store writes the records :meth:`QueueTable.take_changes` hands over); the scheduler
enforces them. A queue needs no record to exist: jobs and workers name queues; a record appears
when a queue is first given a limit or paused.
"""

from __future__ import annotations

from collections.abc import Iterable

from parcelo.coordinator.errors import InvalidArgument, NotFound
from parcelo.coordinator.jobs import QUEUE_RE, check_rate
from parcelo.coordinator.scheduler import Scheduler, bucket
from parcelo.v1 import queues_pb2


def check_name(name: str) -> None:
    if not QUEUE_RE.match(name):
        raise InvalidArgument("name", "must be 1-128 characters of letters, digits, '.', '_', ':' or '-'")


class QueueTable:
    """The settings of every queue that has any, applied to ``scheduler``."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._records: dict[str, queues_pb2.Queue] = {}
        self._dirty: set[str] = set()

    def get(self, name: str) -> queues_pb2.Queue | None:
        """The settings of ``name`` (limits and paused; no counts), or None when it has none."""
        return self._records.get(name)

    def names(self) -> Iterable[str]:
        return self._records.keys()

    def paused(self) -> set[str]:
        """The queues paused now."""
        return {name for name, record in self._records.items() if record.paused}

    def update(
        self,
        name: str,
        now: float,
        *,
        max_concurrency: int | None = None,
        max_leases_per_second: float | None = None,
        burst: int | None = None,
    ) -> queues_pb2.Queue:
        """Change the limits given (the others stay). Raises :class:`InvalidArgument` naming a bad one."""
        check_name(name)
        if max_leases_per_second is not None:
            check_rate("max_leases_per_second", max_leases_per_second)
        record = self._record(name)
        if max_concurrency is not None:
            record.max_concurrency = max_concurrency
        if max_leases_per_second is not None:
            record.max_leases_per_second = max_leases_per_second
        if burst is not None:
            record.burst = burst
        self._changed(name, now)
        return record

    def pause(self, name: str, now: float) -> queues_pb2.Queue:
        """No lease from the queue until :meth:`resume` (running leases go on)."""
        check_name(name)
        record = self._record(name)
        record.paused = True
        self._changed(name, now)
        return record

    def resume(self, name: str, now: float) -> queues_pb2.Queue:
        """Lease from the queue again; :class:`NotFound` when it has no settings at all."""
        record = self._records.get(name)
        if record is None:
            raise NotFound(f"queue '{name[:128]}' is not paused and has no limits")
        record.paused = False
        self._changed(name, now)
        return record

    def _record(self, name: str) -> queues_pb2.Queue:
        record = self._records.get(name)
        if record is None:
            record = self._records[name] = queues_pb2.Queue(name=name)
        return record

    def _changed(self, name: str, now: float) -> None:
        self._dirty.add(name)
        self._apply(self._records[name], now)

    def _apply(self, record: queues_pb2.Queue, now: float) -> None:
        state = self._scheduler.queue(record.name)
        state.paused = record.paused
        state.max_concurrency = record.max_concurrency
        state.bucket = bucket(record.max_leases_per_second, record.burst, now)

    def take_changes(self) -> dict[str, queues_pb2.Queue]:
        """Records changed since the last call (copies: to write)."""
        changed: dict[str, queues_pb2.Queue] = {}
        for name in self._dirty:
            changed[name] = copy = queues_pb2.Queue()
            copy.CopyFrom(self._records[name])
        self._dirty = set()
        return changed

    def restore(self, records: Iterable[queues_pb2.Queue], now: float) -> None:
        """The stored records (start-up)."""
        for record in records:
            self._records[record.name] = record
            self._apply(record, now)
