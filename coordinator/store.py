"""The only code that knows RocksDB: key layout, record encoding, atomic batches, loading.

Key layout (all keys bytes; integers big-endian so keys sort numerically)::

    M fence                      -> u64: fences below this may have been handed out
    J <job_id>                   -> parcelo.v1.Job (spec, status, stats, timestamps)
    N <job_id> 0x00 <start><end> -> node record (see ``encode_node``)
    E <job_id> 0x00 <seq>        -> event (``events.Event.encode``)
    R <request_id>               -> job id created by that CreateJob request

Atomicity: :meth:`Store.write` applies one list of puts and deletes as a
single RocksDB WriteBatch, synced to disk when asked, so a job record and the
node records it summarises never disagree after a crash.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rocksdict import Checkpoint, Options, Rdict, WriteBatch, WriteOptions

from parcelo.coordinator.events import Event
from parcelo.coordinator.tree import Node, Status
from parcelo.v1 import types_pb2

FENCE_KEY = b"Mfence"
_NODE = struct.Struct(">BBHIQQdIH")
_U64 = struct.Struct(">Q")
_SPAN = struct.Struct(">QQ")

Op = tuple[bytes, bytes | None]
"""One write: (key, value) puts, (key, None) deletes."""


def job_key(job_id: str) -> bytes:
    return b"J" + job_id.encode()


def node_prefix(job_id: str) -> bytes:
    return b"N" + job_id.encode() + b"\x00"


def node_key(job_id: str, start: int, end: int) -> bytes:
    return node_prefix(job_id) + _SPAN.pack(start, end)


def event_prefix(job_id: str) -> bytes:
    return b"E" + job_id.encode() + b"\x00"


def event_key(job_id: str, seq: int) -> bytes:
    return event_prefix(job_id) + _U64.pack(seq)


def request_key(request_id: str) -> bytes:
    return b"R" + request_id.encode()


def encode_node(node: Node) -> bytes:
    """A node record: fixed fields, then checkpoint details, last error and progress message."""
    flags = node.is_leaf | (node.probed << 1) | (node.probe << 2)
    error = node.last_error.encode()[:65535]
    return (
        _NODE.pack(
            node.status,
            flags,
            node.depth,
            node.attempts,
            node.fence,
            node.cursor,
            node.not_before,
            len(node.details),
            len(error),
        )
        + node.details
        + error
        + node.message.encode()
    )


def decode_node(start: int, end: int, data: bytes) -> Node:
    status, flags, depth, attempts, fence, cursor, not_before, n_details, n_error = _NODE.unpack_from(data)
    node = Node(start, end, depth, None, bool(flags & 1), bool(flags & 2))
    node.status = Status(status)
    node.probe = bool(flags & 4)
    node.attempts = attempts
    node.fence = fence
    node.cursor = cursor
    node.not_before = not_before
    pos = _NODE.size
    node.details = data[pos : pos + n_details]
    pos += n_details
    node.last_error = data[pos : pos + n_error].decode(errors="replace")
    node.message = data[pos + n_error :].decode(errors="replace")
    return node


@dataclass
class StoredJob:
    """A job as loaded at start: its record, node records and retained events."""

    job: types_pb2.Job
    nodes: list[Node] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    last_seq: int = 0


class Store:
    """An embedded RocksDB under ``path``; thread-safe for one writer and many readers."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        # Small frequent batches: keep the WAL and memtables modest so the data dir stays small.
        options.set_max_total_wal_size(64 << 20)
        options.set_keep_log_file_num(2)
        self._db = Rdict(str(self.path), options)
        self._sync = WriteOptions()
        self._sync.sync = True
        self._nosync = WriteOptions()

    def close(self) -> None:
        self._db.close()

    def write(self, ops: Iterable[Op], *, sync: bool = True) -> int:
        """Apply ``ops`` atomically; with ``sync`` they are on disk when this returns. Returns the op count."""
        batch = WriteBatch(raw_mode=True)
        count = 0
        for key, value in ops:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
            count += 1
        if count:
            self._db.write(batch, self._sync if sync else self._nosync)
        return count

    def delete_prefix(self, prefix: bytes) -> None:
        """Remove every key starting with ``prefix`` (a deleted job's nodes and events), synced."""
        self._db.delete_range(prefix, prefix + b"\xff" * 32, self._sync)

    def _scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db.items(from_key=prefix):
            if not isinstance(key, bytes) or not key.startswith(prefix):
                return
            yield key, value

    def fence_limit(self) -> int:
        """The durable fence high-water mark (1 on a new store: fence 0 means "no lease")."""
        value = self._db.get(FENCE_KEY)
        return _U64.unpack(value)[0] if value else 1

    def request_job(self, request_id: str) -> str | None:
        value = self._db.get(request_key(request_id))
        return value.decode() if value else None

    def load(self, event_window: int) -> list[StoredJob]:
        """Every job with its node records and its newest ``event_window`` events."""
        jobs: list[StoredJob] = []
        for _, value in self._scan(b"J"):
            job = types_pb2.Job()
            job.ParseFromString(value)
            stored = StoredJob(job)
            prefix = node_prefix(job.id)
            skip = len(prefix)
            for key, data in self._scan(prefix):
                start, end = _SPAN.unpack_from(key, skip)
                stored.nodes.append(decode_node(start, end, data))
            last = self._last_event(job.id)
            if last:
                stored.last_seq = last
                first = max(1, last - event_window + 1)
                stored.events = self.read_events(job.id, first - 1, last)
            jobs.append(stored)
        return jobs

    def _last_event(self, job_id: str) -> int:
        prefix = event_prefix(job_id)
        it = self._db.iter()
        it.seek_for_prev(prefix + b"\xff" * 8)
        if it.valid():
            key = it.key()
            if key.startswith(prefix):
                return int(_U64.unpack_from(key, len(prefix))[0])
        return 0

    def read_events(self, job_id: str, after_seq: int, upto_seq: int) -> list[Event]:
        """Stored events with ``after_seq < seq <= upto_seq``, in order."""
        prefix = event_prefix(job_id)
        events = []
        for key, data in self._db.items(from_key=event_key(job_id, after_seq + 1)):
            if not isinstance(key, bytes) or not key.startswith(prefix):
                break
            event = Event.decode(job_id, data)
            if event.seq > upto_seq:
                break
            events.append(event)
        return events

    def backup(self, dest: Path | str) -> None:
        """A consistent copy of the database in ``dest`` (a RocksDB checkpoint: hard links)."""
        dest = Path(dest)
        if dest.exists():
            shutil.rmtree(dest)
        Checkpoint(self._db).create_checkpoint(str(dest))

    def size_bytes(self) -> int:
        """Bytes used by the data dir on disk."""
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
