"""The per-job event log: numbered events, a recent window in memory, listeners.

Events are numbered per job from 1 without gaps. The newest ``MEMORY_WINDOW``
stay in memory for watchers. The store keeps them in segments, one per job per
group commit (so a batch of thousands of node events costs one RocksDB put),
and drops whole segments once at least ``retention`` newer events are kept; a
watcher that reconnects with its last sequence number misses nothing still
retained.

Nothing is shown before it is on disk: listeners get events, and
:meth:`EventLog.recent` returns them, only once the committer reported the
batch holding them written (:meth:`EventLog.published`).
"""

from __future__ import annotations

import itertools
import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple

from google.protobuf.timestamp_pb2 import Timestamp

from parcelo.v1 import types_pb2

MEMORY_WINDOW = 2048
"""Events per job kept in memory; older retained ones are read from the store."""

_HEAD = struct.Struct(">QBdQQI")
_LEN = struct.Struct(">I")
_STATS = struct.Struct(">13Q")
# Stats as written before JobStats.dynamic_splits (stored events keep their bytes).
_OLD_STATS = struct.Struct(">12Q")
# A node batch record (after its length): first seq, type | BATCH_FLAG, time, count; then
# (start, end, attempt) as little-endian u64 triples, packed in one call.
_BATCH_HEAD = struct.Struct(">QBdI")
_BATCH_FLAG = 0x80


class EventType(IntEnum):
    """Event types; values equal ``parcelo.v1.EventType``."""

    JOB_CREATED = 1
    JOB_STARTED = 2
    JOB_PAUSED = 3
    JOB_RESUMED = 4
    JOB_CANCELLED = 5
    JOB_COMPLETED = 6
    JOB_FAILED = 7
    NODE_SPLIT = 8
    NODE_SKIPPED = 9
    NODE_STARTED = 10
    NODE_COMPLETED = 11
    NODE_FAILED = 12
    STATS_UPDATED = 13
    JOB_DELETED = 14


class Stats(NamedTuple):
    """A job's stats in ``parcelo.v1.JobStats`` field order, then the job status."""

    total_nodes: int
    pending_nodes: int
    running_nodes: int
    done_nodes: int
    skipped_nodes: int
    error_nodes: int
    range_processed: int
    range_skipped: int
    range_total: int
    active_leases: int
    failed_attempts: int
    dynamic_splits: int
    status: int


class Event:
    """One event; compact until a watcher or the store needs it."""

    __slots__ = ("attempt", "end", "job_id", "message", "new_end", "seq", "start", "stats", "time", "type")

    def __init__(
        self,
        job_id: str,
        seq: int,
        type_: EventType,
        time: float,
        start: int = 0,
        end: int = 0,
        attempt: int = 0,
        message: str = "",
        stats: Stats | None = None,
        new_end: int = 0,
    ) -> None:
        self.job_id = job_id
        self.seq = seq
        self.type = type_
        self.time = time
        self.start = start
        self.end = end
        self.attempt = attempt
        self.message = message
        self.stats = stats
        # NODE_SPLIT of a dynamic split: the end the holder kept (node events only, see NodeBatch).
        self.new_end = new_end

    def encode(self) -> bytes:
        """Bytes for the store (fixed header, optional stats, message)."""
        head = _HEAD.pack(self.seq, self.type, self.time, self.start, self.end, self.attempt)
        stats = _STATS.pack(*self.stats) if self.stats else b""
        return head + bytes([len(stats)]) + stats + self.message.encode()

    def framed(self) -> bytes:
        """``encode()`` with its length in front."""
        data = self.encode()
        return _LEN.pack(len(data)) + data

    @classmethod
    def decode(cls, job_id: str, data: bytes) -> Event:
        seq, type_, time, start, end, attempt = _HEAD.unpack_from(data)
        pos = _HEAD.size
        n = data[pos]
        stats: Stats | None = None
        if n == _OLD_STATS.size:
            old = _OLD_STATS.unpack_from(data, pos + 1)
            stats = Stats._make((*old[:-1], 0, old[-1]))
        elif n:
            stats = Stats(*_STATS.unpack_from(data, pos + 1))
        message = data[pos + 1 + n :].decode()
        return cls(job_id, seq, EventType(type_), time, start, end, attempt, message, stats)

    def to_proto(self) -> types_pb2.JobEvent:
        ts = Timestamp()
        ts.FromNanoseconds(int(self.time * 1e9))
        msg = types_pb2.JobEvent(
            seq=self.seq,
            type=self.type.value,  # type: ignore[arg-type]
            job_id=self.job_id,
            time=ts,
            attempt=self.attempt,
            message=self.message,
            new_end=self.new_end,
        )
        if self.end:
            msg.range.start = self.start
            msg.range.end = self.end
        if self.stats:
            stats_to_proto(self.stats, msg.stats)
            msg.status = self.stats.status  # type: ignore[assignment]
        return msg


class NodeBatch:
    """Node events of one type and time with consecutive numbers, kept as one compact record.

    Node events are most of a job's events (about three per leaf); holding them as
    tuples and packing them in one call keeps them off the per-leaf cost. They
    become :class:`Event` objects only when a watcher reads them.
    """

    __slots__ = ("nodes", "seq", "time", "type")

    def __init__(self, seq: int, type_: EventType, time: float, nodes: list[tuple[int, int, int]]) -> None:
        self.seq = seq
        self.type = type_
        self.time = time
        # (start, end, attempt) per event; event i has number seq + i. NODE_SPLIT events hold
        # the end a dynamic split kept in place of the attempt (0: a split by the rule).
        self.nodes = nodes

    @property
    def last(self) -> int:
        return self.seq + len(self.nodes) - 1

    def events(self, job_id: str, after_seq: int = 0) -> list[Event]:
        """The events of this batch numbered above ``after_seq``."""
        skip = max(0, after_seq + 1 - self.seq)
        if self.type is EventType.NODE_SPLIT:
            return [
                Event(job_id, self.seq + i, self.type, self.time, start, end, new_end=new_end)
                for i, (start, end, new_end) in enumerate(self.nodes[skip:], skip)
            ]
        return [
            Event(job_id, self.seq + i, self.type, self.time, start, end, attempt)
            for i, (start, end, attempt) in enumerate(self.nodes[skip:], skip)
        ]

    def framed(self) -> bytes:
        n = len(self.nodes)
        body = struct.pack(f"<{3 * n}Q", *itertools.chain.from_iterable(self.nodes))
        head = _BATCH_HEAD.pack(self.seq, self.type | _BATCH_FLAG, self.time, n)
        return _LEN.pack(len(head) + len(body)) + head + body

    @classmethod
    def decode(cls, data: bytes) -> NodeBatch:
        """From a record without its length prefix."""
        seq, type_, time, n = _BATCH_HEAD.unpack_from(data)
        flat = struct.unpack_from(f"<{3 * n}Q", data, _BATCH_HEAD.size)
        return cls(
            seq,
            EventType(type_ & ~_BATCH_FLAG),
            time,
            list(zip(flat[::3], flat[1::3], flat[2::3], strict=True)),
        )


Entry = Event | NodeBatch
"""What the log holds: single events, and node events in batches."""


def _size(entry: Entry) -> int:
    return 1 if isinstance(entry, Event) else len(entry.nodes)


def _last(entry: Entry) -> int:
    return entry.seq if isinstance(entry, Event) else entry.last


STAT_FIELDS = Stats._fields[:-1]
"""The ``JobStats`` fields, in order (a test ties them to the proto)."""


def stats_to_proto(stats: Stats, out: types_pb2.JobStats) -> None:
    """Fill ``out`` from a stats tuple (STAT_FIELDS order)."""
    for name, value in zip(STAT_FIELDS, stats, strict=False):
        setattr(out, name, value)


def encode_segment(entries: list[Entry]) -> bytes:
    """Length-prefixed records of events and node batches, as one store value."""
    return b"".join([entry.framed() for entry in entries])


def decode_segment(job_id: str, blob: bytes) -> list[Event]:
    """The events of a stored segment, node batches unpacked."""
    out: list[Event] = []
    pos = 0
    while pos < len(blob):
        (size,) = _LEN.unpack_from(blob, pos)
        pos += _LEN.size
        record = blob[pos : pos + size]
        # Byte 8 of a record is its type (after the u64 seq).
        if record[8] & _BATCH_FLAG:
            out.extend(NodeBatch.decode(record).events(job_id))
        else:
            out.append(Event.decode(job_id, record))
        pos += size
    return out


Segment = tuple[int, int]
"""A stored segment: (first seq, last seq)."""

Listener = Callable[[Event], None]


@dataclass
class Drained:
    """What :meth:`EventLog.drain` hands the committer."""

    # Segments to write: (job, first seq, entries).
    written: list[tuple[str, int, list[Entry]]] = field(default_factory=list)
    # Segments to delete: (job, first seq).
    expired: list[tuple[str, int]] = field(default_factory=list)
    # Entries to show once the batch is durable, by job (a deleted job's last events first).
    published: list[tuple[str, list[Entry]]] = field(default_factory=list)


class EventLog:
    """Numbering, memory window and listeners of every job's events."""

    def __init__(self, retention: int) -> None:
        self.retention = retention
        self._seq: dict[str, int] = {}
        # The newest entries of each job, at least MEMORY_WINDOW events when there are that many.
        self._recent: dict[str, deque[Entry]] = {}
        self._recent_size: dict[str, int] = {}
        self._listeners: dict[str, set[Listener]] = {}
        self._segments: dict[str, deque[Segment]] = {}
        # Entries not yet written, grouped by job: drained by the committer.
        self._unwritten: dict[str, list[Entry]] = {}
        # The newest event of each job known to be on disk: what readers may see.
        self._durable: dict[str, int] = {}
        # Unwritten events of deleted jobs: published with the next batch, never written.
        self._farewell: dict[str, list[Entry]] = {}

    def restore(self, job_id: str, last_seq: int, recent: list[Event], segments: list[Segment]) -> None:
        """Resume a job's numbering after a restart."""
        self._seq[job_id] = last_seq
        self._recent[job_id] = deque(recent)
        self._recent_size[job_id] = len(recent)
        self._segments[job_id] = deque(segments)
        self._durable[job_id] = last_seq

    def drain(self) -> Drained:
        """Segments to write and to delete since the last call, and the entries they publish."""
        out = Drained(published=[*self._farewell.items(), *self._unwritten.items()])
        self._farewell = {}
        for job_id, entries in self._unwritten.items():
            first, last = entries[0].seq, _last(entries[-1])
            out.written.append((job_id, first, entries))
            segments = self._segments.setdefault(job_id, deque())
            segments.append((first, last))
            while segments and segments[0][1] <= last - self.retention:
                out.expired.append((job_id, segments.popleft()[0]))
        self._unwritten = {}
        return out

    def published(self, entries_by_job: list[tuple[str, list[Entry]]]) -> None:
        """The entries drained with a batch are on disk: show them to readers and listeners."""
        for job_id, entries in entries_by_job:
            if job_id in self._seq:
                self._durable[job_id] = _last(entries[-1])
            listeners = self._listeners.get(job_id)
            if listeners:
                events = _unpack(job_id, entries)
                for listener in tuple(listeners):
                    for event in events:
                        listener(event)

    def _remember(self, job_id: str, entry: Entry, size: int) -> None:
        recent = self._recent.get(job_id)
        if recent is None:
            recent = self._recent[job_id] = deque()
            self._recent_size[job_id] = 0
        recent.append(entry)
        total = self._recent_size[job_id] + size
        while total - _size(recent[0]) >= MEMORY_WINDOW:
            total -= _size(recent.popleft())
        self._recent_size[job_id] = total
        pending = self._unwritten.get(job_id)
        if pending is None:
            self._unwritten[job_id] = [entry]
        else:
            pending.append(entry)

    def append(
        self,
        job_id: str,
        type_: EventType,
        now: float,
        start: int = 0,
        end: int = 0,
        attempt: int = 0,
        message: str = "",
        stats: Stats | None = None,
    ) -> Event:
        """Number, remember and publish a new event."""
        seq = self._seq.get(job_id, 0) + 1
        self._seq[job_id] = seq
        event = Event(job_id, seq, type_, now, start, end, attempt, message, stats)
        self._remember(job_id, event, 1)
        return event

    def append_nodes(
        self, job_id: str, type_: EventType, now: float, nodes: list[tuple[int, int, int]]
    ) -> None:
        """One event per ``(start, end, attempt)``, held as one :class:`NodeBatch` (the lease hot path).

        The log keeps ``nodes``: the caller hands it over and does not change it afterwards.
        """
        if not nodes:
            return
        seq = self._seq.get(job_id, 0)
        self._seq[job_id] = seq + len(nodes)
        batch = NodeBatch(seq + 1, type_, now, nodes)
        self._remember(job_id, batch, len(nodes))

    def durable_seq(self, job_id: str) -> int:
        """The newest event of the job that is on disk (0: none)."""
        return self._durable.get(job_id, 0)

    def recent(self, job_id: str, after_seq: int) -> tuple[list[Event], bool]:
        """Durable events after ``after_seq`` from memory, and whether memory covered the whole gap."""
        durable = self._durable.get(job_id, 0)
        recent = self._recent.get(job_id)
        if not recent or recent[0].seq > durable:
            return [], after_seq >= durable
        covered = recent[0].seq <= after_seq + 1
        shown = [entry for entry in recent if after_seq < _last(entry) <= durable]
        return _unpack(job_id, shown, after_seq), covered

    def subscribe(self, job_id: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with each new event of ``job_id``; returns the unsubscribe function."""
        self._listeners.setdefault(job_id, set()).add(listener)

        def unsubscribe() -> None:
            listeners = self._listeners.get(job_id)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._listeners[job_id]

        return unsubscribe

    def forget(self, job_id: str) -> None:
        """Drop a deleted job's memory (listeners stay until they unsubscribe).

        Its unwritten events are still published with the next batch (the one that deletes it),
        so a watcher sees ``JOB_DELETED``.
        """
        self._seq.pop(job_id, None)
        self._recent.pop(job_id, None)
        self._recent_size.pop(job_id, None)
        self._segments.pop(job_id, None)
        self._durable.pop(job_id, None)
        unwritten = self._unwritten.pop(job_id, None)
        if unwritten:
            self._farewell[job_id] = unwritten


def _unpack(job_id: str, entries: Iterable[Entry], after_seq: int = 0) -> list[Event]:
    """The events of ``entries`` numbered above ``after_seq``, node batches unpacked."""
    out: list[Event] = []
    for entry in entries:
        if isinstance(entry, Event):
            if entry.seq > after_seq:
                out.append(entry)
        else:
            out.extend(entry.events(job_id, after_seq))
    return out
