"""The only code that knows RocksDB: key layout, record encoding, atomic batches, loading.

Key layout (all keys bytes; integers big-endian so keys sort numerically)::

    M fence                      -> u64: fences below this may have been handed out
    J <job_id>                   -> parcelo.v1.Job (spec, status, stats, timestamps)
    N <job_id> 0x00 <start><~end> -> node record (see ``encode_node``); ~end = 2^64-1-end, so
                                   key order is pre-order (parents before children)
    E <job_id> 0x00 <first seq>  -> event segment (``events.encode_segment``)

Atomicity: :meth:`Store.write` applies one list of puts and deletes as a
single RocksDB WriteBatch, synced to disk when asked, so a job record and the
node records it summarises never disagree after a crash.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rocksdict import Checkpoint, Options, Rdict, WriteBatch, WriteOptions

from parcelo.coordinator.events import Event, Segment, decode_segment
from parcelo.coordinator.tree import Node, Status
from parcelo.v1 import types_pb2

FENCE_KEY = b"Mfence"
_NODE = struct.Struct(">BBHIQQdIH")
_U64 = struct.Struct(">Q")
_SPAN = struct.Struct(">QQ")
_MAX = (1 << 64) - 1
_STATUSES = (None, *Status)

Op = tuple[bytes, bytes | None]
"""One write: (key, value) puts, (key, None) deletes."""


@dataclass
class Batch:
    """What one group commit writes, atomically."""

    ops: list[Op] = field(default_factory=list)
    # [begin, end) key ranges to delete (a deleted job's nodes and events).
    ranges: list[tuple[bytes, bytes]] = field(default_factory=list)
    # A new fence high-water mark in ``ops``, made durable by this batch.
    fence_limit: int | None = None

    def __bool__(self) -> bool:
        return bool(self.ops or self.ranges)


def job_key(job_id: str) -> bytes:
    return b"J" + job_id.encode()


def node_prefix(job_id: str) -> bytes:
    return b"N" + job_id.encode() + b"\x00"


def node_key(job_id: str, start: int, end: int) -> bytes:
    return node_prefix(job_id) + _SPAN.pack(start, _MAX - end)


def node_suffix(start: int, end: int) -> bytes:
    """The part of a node key after ``node_prefix`` (callers writing many nodes reuse the prefix)."""
    return _SPAN.pack(start, _MAX - end)


def event_prefix(job_id: str) -> bytes:
    return b"E" + job_id.encode() + b"\x00"


def event_key(job_id: str, seq: int) -> bytes:
    return event_prefix(job_id) + _U64.pack(seq)


def prefix_range(prefix: bytes) -> tuple[bytes, bytes]:
    """The key range holding exactly the keys that start with ``prefix`` (which ends in 0x00)."""
    return prefix, prefix[:-1] + b"\x01"


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
    node.status = _STATUSES[status]
    node.probe = bool(flags & 4)
    node.attempts = attempts
    node.fence = fence
    node.cursor = cursor
    node.not_before = not_before
    pos = _NODE.size
    if len(data) > pos:  # most records have no details, error or message
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
    segments: list[Segment] = field(default_factory=list)
    last_seq: int = 0


class Store:
    """An embedded RocksDB under ``path``; thread-safe for one writer and many readers."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        # Small frequent batches of short-lived keys: modest memtables and WAL keep the data dir
        # small (most keys are deleted again before a flush, so flushes are cheap).
        options.set_write_buffer_size(8 << 20)
        options.set_max_total_wal_size(16 << 20)
        options.set_keep_log_file_num(2)
        self._db = Rdict(str(self.path), options)
        self._sync = WriteOptions()
        self._sync.sync = True
        self._nosync = WriteOptions()
        self._wal_fds: dict[str, int] = {}
        self._wal_synced_from = ""

    def close(self) -> None:
        for fd in self._wal_fds.values():
            os.close(fd)
        self._wal_fds.clear()
        self._db.close()

    def write(self, batch: Batch | Iterable[Op], *, sync: bool = True) -> int:
        """Apply a batch atomically; with ``sync`` it is on disk when this returns. Returns the op count."""
        if not isinstance(batch, Batch):
            batch = Batch(ops=list(batch))
        wb = WriteBatch(raw_mode=True)
        for begin, end in batch.ranges:
            wb.delete_range(begin, end)
        put = wb.put
        delete = wb.delete
        for key, value in batch.ops:
            if value is None:
                delete(key)
            else:
                put(key, value)
        count = len(batch.ops) + len(batch.ranges)
        if count:
            # rocksdict holds the GIL for the whole of a synced write, fsync included, which would
            # stall the event loop once per commit. So the batch goes to the WAL unsynced (RocksDB
            # hands it to the OS before returning) and the WAL is then fdatasync'ed here, with the
            # GIL released: the same durability as sync=True, which is the same fdatasync.
            self._db.write(wb, self._nosync)
            if sync:
                self._sync_wal()
        return count

    def _sync_wal(self) -> None:
        """fdatasync every WAL file written since the last sync (normally just the current one)."""
        logs = sorted(name for name in os.listdir(self.path) if name.endswith(".log"))
        fresh = False
        for name in logs:
            if name < self._wal_synced_from:
                continue
            fd = self._wal_fds.get(name)
            if fd is None:
                fd = self._wal_fds[name] = os.open(self.path / name, os.O_RDONLY)
                fresh = True
            os.fdatasync(fd)
        if fresh:
            # A new WAL file must survive a crash too: sync the directory entry.
            dir_fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        if logs:
            self._wal_synced_from = logs[-1]
        for name in [n for n in self._wal_fds if n < self._wal_synced_from]:
            os.close(self._wal_fds.pop(name))

    def _scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db.items(from_key=prefix):
            if not isinstance(key, bytes) or not key.startswith(prefix):
                return
            yield key, value

    def fence_limit(self) -> int:
        """The durable fence high-water mark (1 on a new store: fence 0 means "no lease")."""
        value = self._db.get(FENCE_KEY)
        return _U64.unpack(value)[0] if value else 1

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
                start, inv_end = _SPAN.unpack_from(key, skip)
                stored.nodes.append(decode_node(start, _MAX - inv_end, data))
            prefix = event_prefix(job.id)
            tail: list[Event] = []
            for key, blob in self._scan(prefix):
                events = decode_segment(job.id, blob)
                if not events:
                    continue
                stored.segments.append((int(_U64.unpack_from(key, len(prefix))[0]), events[-1].seq))
                tail = (tail + events)[-event_window:]
            stored.events = tail
            stored.last_seq = tail[-1].seq if tail else 0
            jobs.append(stored)
        return jobs

    def read_events(self, job_id: str, after_seq: int, upto_seq: int) -> list[Event]:
        """Stored events with ``after_seq < seq <= upto_seq``, in order."""
        prefix = event_prefix(job_id)
        it = self._db.iter()
        # The segment holding after_seq + 1 starts at or before it.
        it.seek_for_prev(event_key(job_id, after_seq + 1))
        if not it.valid() or not bytes(it.key()).startswith(prefix):
            it.seek(prefix)
        events: list[Event] = []
        while it.valid():
            key = bytes(it.key())
            if not key.startswith(prefix):
                break
            for event in decode_segment(job_id, bytes(it.value())):
                if event.seq > upto_seq:
                    return events
                if event.seq > after_seq:
                    events.append(event)
            it.next()
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
