"""The store's key layout and record encoding: pure bytes in and out, no RocksDB.

Compiled with the hot path (every completion's node records pass through here, a few per leaf);
:class:`~parcelo.coordinator.store.Store` does the I/O around it. Key layout (all keys bytes;
integers big-endian so keys sort numerically)::

    M format                     -> u32: the layout and record version (FORMAT_VERSION)
    M fence                      -> u64: fences below this may have been handed out
    A <page * 2 + success>       -> 1 KiB bitmap: which fences of page * 2^13 + [0, 2^13) had
                                   a success (1) or a failure (0) accepted (``LeaseTable.take_pages``)
    J <job_id>                   -> parcelo.v1.Job (spec, status, stats, timestamps)
    Q <queue>                    -> parcelo.v1.Queue: the queue's limits and paused flag
    S <schedule_id>              -> parcelo.v1.Schedule: template, timing, last tick fired
    N <job_id> 0x00 <start><~end> -> node record (see ``encode_node``); ~end = 2^64-1-end, so
                                   key order is pre-order (parents before children)
    E <job_id> 0x00 <first seq>  -> event segment (``events.encode_segment``)
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

from parcelo.coordinator.changes import Changes
from parcelo.coordinator.codec import StoredLease
from parcelo.coordinator.events import encode_segment
from parcelo.coordinator.leases import LeaseKind
from parcelo.coordinator.tree import Node, Status

FORMAT_VERSION = 3
"""Version of the key layout and records. 1: before the format key existed (node records had no holder);
2: before node records could hold a result."""
READABLE_VERSIONS = (2, FORMAT_VERSION)
"""Formats this coordinator opens: a version 2 record reads as a version 3 record without a result."""

FORMAT_KEY = b"Mformat"
FENCE_KEY = b"Mfence"
ACCEPTED_PREFIX = b"A"
QUEUE_PREFIX = b"Q"
SCHEDULE_PREFIX = b"S"
_NODE = struct.Struct(">BBHIQQdIHH")
# Shared with the store, which reads keys back: u32 and u64 values, a node key's span.
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
SPAN = struct.Struct(">QQ")
MAX_U64 = (1 << 64) - 1
_STATUSES = (None, *Status)


Op = tuple[bytes, bytes | None]
"""One write: (key, value) puts, (key, None) deletes."""


@dataclass
class Batch:
    """What one group commit writes, atomically."""

    ops: list[Op] = field(default_factory=list)
    # [begin, end) key ranges to delete (a deleted job's nodes and events).
    ranges: list[tuple[bytes, bytes]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.ops or self.ranges)


def job_key(job_id: str) -> bytes:
    return b"J" + job_id.encode()


def node_prefix(job_id: str) -> bytes:
    return b"N" + job_id.encode() + b"\x00"


def node_suffix(start: int, end: int) -> bytes:
    """The part of a node key after ``node_prefix`` (callers writing many nodes reuse the prefix)."""
    return SPAN.pack(start, MAX_U64 - end)


def event_prefix(job_id: str) -> bytes:
    return b"E" + job_id.encode() + b"\x00"


def event_key(job_id: str, seq: int) -> bytes:
    return event_prefix(job_id) + U64.pack(seq)


def prefix_range(prefix: bytes) -> tuple[bytes, bytes]:
    """The key range holding exactly the keys that start with ``prefix`` (which ends in 0x00)."""
    return prefix, prefix[:-1] + b"\x01"


def encode_node(node: Node) -> bytes:
    """A node record: fixed fields (with its lease's fence and kind), then checkpoint details,
    last error, the lease holder, the result (u32 length and JSON, when flag 8 says there is one)
    and the progress message."""
    lease = node.lease
    fence, probe, holder = (lease.fence, lease.kind is LeaseKind.PROBE, lease.holder) if lease else (0, 0, "")
    has_result = node.result is not None
    flags = node.is_leaf | (node.probed << 1) | (probe << 2) | (has_result << 3)
    error = node.last_error.encode()[:65535]
    who = holder.encode()[:65535]
    result = b""
    if has_result:
        text = json.dumps(node.result, separators=(",", ":")).encode()
        result = U32.pack(len(text)) + text
    return (
        _NODE.pack(
            node.status,
            flags,
            node.depth,
            node.attempts,
            fence,
            node.cursor,
            node.not_before,
            len(node.details),
            len(error),
            len(who),
        )
        + node.details
        + error
        + who
        + result
        + node.message.encode()
    )


def decode_node(
    start: int, end: int, data: bytes, holders: dict[bytes, str] | None = None
) -> tuple[Node, StoredLease | None]:
    """A node and, when it was leased, its lease.

    ``holders``: worker ids decoded so far (a restart reads the same few for thousands of leases).
    """
    status, flags, depth, attempts, fence, cursor, not_before, n_details, n_error, n_holder = (
        _NODE.unpack_from(data)
    )
    node = Node(start, end, depth, None, bool(flags & 1), bool(flags & 2))
    node.status = _STATUSES[status]
    node.attempts = attempts
    node.cursor = cursor
    node.not_before = not_before
    holder = ""
    pos = _NODE.size
    # Most records carry a holder at most: no details, error or message to decode.
    if n_details:
        node.details = data[pos : pos + n_details]
        pos += n_details
    if n_error:
        node.last_error = data[pos : pos + n_error].decode(errors="replace")
        pos += n_error
    if n_holder:
        raw = data[pos : pos + n_holder]
        pos += n_holder
        known = holders.get(raw) if holders is not None else None
        if known is None:
            known = raw.decode(errors="replace")
            if holders is not None:
                holders[raw] = known
        holder = known
    if flags & 8:
        (n_result,) = U32.unpack_from(data, pos)
        pos += 4
        node.result = json.loads(data[pos : pos + n_result])
        pos += n_result
    if len(data) > pos:
        node.message = data[pos:].decode(errors="replace")
    if not fence:
        return node, None
    return node, StoredLease(fence, LeaseKind.PROBE if flags & 4 else LeaseKind.LEAF, holder)


def encode_changes(changes: Changes) -> Batch:
    """The keys and bytes of ``changes``, as one batch (cheap: run it where the changes are made)."""
    batch = Batch()
    ops = batch.ops
    for job_id in changes.deleted_jobs:
        batch.ranges.append(prefix_range(node_prefix(job_id)))
        batch.ranges.append(prefix_range(event_prefix(job_id)))
        batch.ranges.append((job_key(job_id), job_key(job_id) + b"\x00"))
    for job_id, spans in changes.deleted_spans.items():
        prefix = node_prefix(job_id)
        ops.extend([(prefix + node_suffix(start, end), None) for start, end in spans])
    for job_id, nodes in changes.nodes.items():
        prefix = node_prefix(job_id)
        ops.extend([(prefix + node_suffix(node.start, node.end), encode_node(node)) for node in nodes])
    for job_id, record in changes.jobs.items():
        ops.append((job_key(job_id), record.SerializeToString()))
    events = changes.events
    for job_id, first, entries in events.written:
        ops.append((event_key(job_id, first), encode_segment(entries)))
    for job_id, first in events.expired:
        ops.append((event_key(job_id, first), None))
    if changes.fence_limit is not None:
        ops.append((FENCE_KEY, U64.pack(changes.fence_limit)))
    for name, settings in changes.queues.items():
        ops.append((QUEUE_PREFIX + name.encode(), settings.SerializeToString()))
    for schedule_id, schedule in changes.schedules.items():
        value = None if schedule is None else schedule.SerializeToString()
        ops.append((SCHEDULE_PREFIX + schedule_id.encode(), value))
    for page, bits in changes.accepted_pages.items():
        ops.append((ACCEPTED_PREFIX + U64.pack(page), bits))
    for page in changes.dropped_pages:
        ops.append((ACCEPTED_PREFIX + U64.pack(page), None))
    return batch
