"""The only code that knows RocksDB: atomic batches, syncing, loading, backups.

The core hands over what changed in domain terms (:class:`~parcelo.coordinator.changes.Changes`);
:meth:`Store.encode` turns it into keys and bytes (the layout and records are
:mod:`parcelo.coordinator.records`, pure and compiled), :meth:`Store.write` applies them as one
batch.

Atomicity: :meth:`Store.write` applies one list of puts and deletes as a
single RocksDB WriteBatch, synced to disk when asked, so a job record and the
node records it summarises never disagree after a crash. A batch that failed
may be written again whole (every op is idempotent), after :meth:`Store.reopen`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from rocksdict import Checkpoint, Options, Rdict, WriteBatch, WriteOptions

from parcelo.coordinator.changes import Changes
from parcelo.coordinator.codec import StoredJob
from parcelo.coordinator.events import Event, decode_segment
from parcelo.coordinator.records import (
    ACCEPTED_PREFIX,
    FENCE_KEY,
    FORMAT_KEY,
    FORMAT_VERSION,
    MAX_U64,
    QUEUE_PREFIX,
    READABLE_VERSIONS,
    SCHEDULE_PREFIX,
    SPAN,
    U32,
    U64,
    Batch,
    Op,
    decode_node,
    encode_changes,
    event_key,
    event_prefix,
    node_prefix,
)
from parcelo.v1 import queues_pb2, schedules_pb2, types_pb2

_FLUSH_PROPERTIES = ("rocksdb.mem-table-flush-pending", "rocksdb.num-running-flushes")

FLUSH_WAIT = 10.0
"""Seconds a backup waits for its background flush before the checkpoint flushes what is left itself."""


class StoreFormatError(Exception):
    """Raised when a data dir was written in a format this coordinator cannot read."""


class StoreInUseError(Exception):
    """Raised when another process (a coordinator) holds the data dir's RocksDB lock."""


class Store:
    """An embedded RocksDB under ``path``; thread-safe for one writer and many readers."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._nosync = WriteOptions()
        self._wal_fds: dict[str, int] = {}
        self._wal_synced_from = ""
        # Held by whatever closes or replaces the database (close, reopen) and by a backup, which
        # runs in a thread of its own: a checkpoint must never read a database being closed.
        self._lifecycle = threading.Lock()
        try:
            self._db = self._open()
        except Exception as err:
            # RocksDB's words for a lock held elsewhere: "While lock file: DIR/LOCK: Resource
            # temporarily unavailable" (another process), "lock hold by current process" (this one).
            if "/LOCK:" not in str(err):
                raise
            raise StoreInUseError(
                f"data dir {self.path} is in use by another coordinator (RocksDB lock {self.path / 'LOCK'}); "
                "stop that one first, or give another --data-dir"
            ) from None
        self._check_format()

    def _open(self) -> Rdict:
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        # Small frequent batches of short-lived keys: modest memtables and WAL keep the data dir
        # small (most keys are deleted again before a flush, so flushes are cheap).
        options.set_write_buffer_size(8 << 20)
        options.set_max_total_wal_size(16 << 20)
        options.set_keep_log_file_num(2)
        return Rdict(str(self.path), options)

    def _check_format(self) -> None:
        stored = self._db.get(FORMAT_KEY)
        if stored is not None:
            version = U32.unpack(stored)[0]
        else:
            # No format key: a new data dir, or one written before the key existed (version 1).
            version = 1 if next(iter(self._db.keys()), None) is not None else FORMAT_VERSION
            if version == FORMAT_VERSION:
                self.write(Batch(ops=[(FORMAT_KEY, U32.pack(FORMAT_VERSION))]))
        if version not in READABLE_VERSIONS:
            self._db.close()
            readable = " and ".join(map(str, READABLE_VERSIONS))
            raise StoreFormatError(
                f"data dir {self.path} is in store format {version}; this coordinator reads formats "
                f"{readable}: use a coordinator of the version that wrote it, or a new data dir"
            )
        if version != FORMAT_VERSION:
            # Readable as it is; from now on it may hold records only this format has.
            self.write(Batch(ops=[(FORMAT_KEY, U32.pack(FORMAT_VERSION))]))

    def close(self) -> None:
        with self._lifecycle:
            self._close_wal_fds()
            self._db.close()

    def _close_wal_fds(self) -> None:
        for fd in self._wal_fds.values():
            os.close(fd)
        self._wal_fds.clear()
        self._wal_synced_from = ""

    def reopen(self) -> None:
        """Open the database again after a failed write (RocksDB refuses writes after a WAL error).

        Raises what opening raises (e.g. still no space); the caller retries later.
        """
        with self._lifecycle:
            self._close_wal_fds()
            # Closing a database in error state reports that error again: nothing to learn from it.
            with contextlib.suppress(Exception):
                self._db.close()
            self._db = self._open()

    def encode(self, changes: Changes) -> Batch:
        """The keys and bytes of ``changes``, as one batch (cheap: run it where the changes are made)."""
        return encode_changes(changes)

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
                try:
                    fd = os.open(self.path / name, os.O_RDONLY)
                except FileNotFoundError:
                    # Deleted since the listing (a flush, a backup's among them, has just ended):
                    # RocksDB removes a WAL file only once its contents are durable in a table
                    # file, so there is nothing left to sync. Not a failed write.
                    continue
                self._wal_fds[name] = fd
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
        return U64.unpack(value)[0] if value else 1

    def load_queues(self) -> list[queues_pb2.Queue]:
        """The stored queue settings."""
        return [queues_pb2.Queue.FromString(value) for _, value in self._scan(QUEUE_PREFIX)]

    def load_schedules(self) -> list[schedules_pb2.Schedule]:
        """The stored schedules."""
        return [schedules_pb2.Schedule.FromString(value) for _, value in self._scan(SCHEDULE_PREFIX)]

    def load_accepted(self) -> dict[int, bytes]:
        """The stored pages of the accepted-fence bitmap, by page number."""
        return {U64.unpack_from(key, 1)[0]: bytes(value) for key, value in self._scan(ACCEPTED_PREFIX)}

    def load(self, event_window: int) -> list[StoredJob]:
        """Every job with its node records and its newest ``event_window`` events."""
        jobs: list[StoredJob] = []
        for _, value in self._scan(b"J"):
            job = types_pb2.Job()
            job.ParseFromString(value)
            stored = StoredJob(job)
            prefix = node_prefix(job.id)
            skip = len(prefix)
            holders: dict[bytes, str] = {}
            for key, data in self._scan(prefix):
                start, inv_end = SPAN.unpack_from(key, skip)
                node, lease = decode_node(start, MAX_U64 - inv_end, data, holders)
                stored.nodes.append(node)
                if lease is not None:
                    stored.leases[node] = lease
            prefix = event_prefix(job.id)
            tail: list[Event] = []
            for key, blob in self._scan(prefix):
                events = decode_segment(job.id, blob)
                if not events:
                    continue
                stored.segments.append((int(U64.unpack_from(key, len(prefix))[0]), events[-1].seq))
                tail = (tail + events)[-event_window:]
            stored.events = tail
            stored.last_seq = tail[-1].seq if tail else 0
            jobs.append(stored)
        return jobs

    def read_events(self, job_id: str, after_seq: int, upto_seq: int, limit: int = 0) -> list[Event]:
        """Stored events with ``after_seq < seq <= upto_seq``, in order; the first ``limit`` of them
        when ``limit`` is set."""
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
                    if len(events) == limit:
                        return events
            it.next()
        return events

    def backup(self, dest: Path) -> None:
        """A consistent copy of the database in the new folder ``dest`` (a RocksDB checkpoint: hard
        links where ``dest`` is on the same filesystem, copies elsewhere). Blocking: call it in a thread.

        Raises:
            FileExistsError: ``dest`` exists (nothing is overwritten).
            OSError: Its parent folder is missing or not writable.
            Exception: RocksDB's own error when the checkpoint fails (e.g. no space for its flush).
        """
        if dest.exists():
            raise FileExistsError(f"{dest} exists")
        with self._lifecycle:
            # A checkpoint flushes the memtable first, holding the GIL throughout (rocksdict), which
            # stalls the event loop for as long as that write takes. Flushed in RocksDB's background
            # thread beforehand, the checkpoint is left with next to nothing to flush itself.
            self._db.flush(False)
            deadline = time.monotonic() + FLUSH_WAIT
            while time.monotonic() < deadline and any(
                self._db.property_int_value(name) for name in _FLUSH_PROPERTIES
            ):
                time.sleep(0.005)
            Checkpoint(self._db).create_checkpoint(str(dest))
