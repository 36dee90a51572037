"""Conversions between the core's objects and protobuf messages (no storage format here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from google.protobuf.timestamp_pb2 import Timestamp

from parcelo.coordinator.events import STAT_FIELDS, Event, Segment, Stats, stats_to_proto
from parcelo.coordinator.jobs import JobState, JobStatus
from parcelo.coordinator.leases import Lease, LeaseKind
from parcelo.coordinator.results import Reduce, encode, reduce_of
from parcelo.coordinator.tree import TERMINAL, Node, RangeTree
from parcelo.v1 import types_pb2, worker_pb2

# Counters the tree restores from the job record; the others are derived (range_total from the
# spec, active_leases from the restored leases).
_TREE_COUNTERS = tuple(name for name in STAT_FIELDS if name not in ("range_total", "active_leases"))


class StoredLease(NamedTuple):
    """The lease a stored node held."""

    fence: int
    kind: LeaseKind
    holder: str


@dataclass
class StoredJob:
    """A job as the store loaded it: its record, node records, leases and retained events."""

    job: types_pb2.Job
    nodes: list[Node] = field(default_factory=list)
    leases: dict[Node, StoredLease] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    last_seq: int = 0


def _ts(seconds: float, out: Timestamp) -> None:
    out.FromNanoseconds(int(seconds * 1e9))


def _seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def job_to_proto(job: JobState, stats: Stats) -> types_pb2.Job:
    """The ``Job`` message of a job (also its stored record)."""
    msg = types_pb2.Job(id=job.id, status=job.status.value, reason=job.reason)  # type: ignore[arg-type]
    if job.traceparent:
        msg.traceparent = job.traceparent
    msg.spec.CopyFrom(job.spec)
    tree = job.tree
    if tree.reduce is not Reduce.NONE:
        msg.result_json = tree.result_json()
        msg.result_partial = job.status is not JobStatus.COMPLETED
    stats_to_proto(stats, msg.stats)
    _ts(job.created_at, msg.created_at)
    _ts(job.updated_at, msg.updated_at)
    if job.started_at:
        _ts(job.started_at, msg.started_at)
    if job.finished_at:
        _ts(job.finished_at, msg.finished_at)
    return msg


def job_from_stored(stored: StoredJob, now: float) -> tuple[JobState, list[Lease]]:
    """Rebuild a job, its tree and its live leases from its stored records.

    Leases of leaves come back live with a fresh TTL from ``now`` (their holders may still
    complete them); probes go back to pending (see ``RangeTree.restore``).
    """
    msg = stored.job
    spec = msg.spec
    if not spec.reduce:
        # Written before jobs had a reduce: what normalising the spec now gives.
        spec.reduce = types_pb2.REDUCE_NONE
    leases: list[Lease] = []
    # Per job, not per lease: a restart may bring back hundreds of thousands of leases.
    expires_at = now + spec.lease_ttl.ToMilliseconds() / 1000
    timeout_at = now + spec.leaf_timeout.ToMilliseconds() / 1000 if spec.HasField("leaf_timeout") else 0.0

    by_fence: dict[int, Lease] = {}

    def adopt(node: Node) -> Lease:
        held = stored.leases[node]
        lease = by_fence.get(held.fence)
        if lease is not None:
            # A lease a dynamic split left holding several nodes: one lease, its nodes in order.
            nodes = sorted((*lease.nodes, node), key=lambda n: n.start)
            lease.node, lease.more = nodes[0], tuple(nodes[1:])
            return lease
        lease = by_fence[held.fence] = Lease(
            held.fence, msg.id, node, held.holder, LeaseKind.LEAF, now, expires_at, timeout_at, spec.queue
        )
        leases.append(lease)
        return lease

    tree = RangeTree.restore(
        spec.range.start,
        spec.range.end,
        spec.max_range_size,
        pruning=spec.pruning,
        reduce=reduce_of(spec.reduce),
        min_range_size=spec.min_range_size,
        target_leaf_seconds=spec.target_leaf_seconds.ToNanoseconds() / 1e9,
        nodes=stored.nodes,
        counters={name: getattr(msg.stats, name) for name in _TREE_COUNTERS},
        leased={node: lease.kind for node, lease in stored.leases.items()},
        adopt=adopt,
    )
    created = _seconds(msg.created_at)
    # Creation time orders jobs across restarts; microseconds keep it an int.
    job = JobState(msg.id, spec, tree, now=created, order=int(created * 1e6))
    job.status = JobStatus(msg.status)
    job.updated_at = _seconds(msg.updated_at)
    job.started_at = _seconds(msg.started_at) if msg.HasField("started_at") else 0.0
    job.finished_at = _seconds(msg.finished_at) if msg.HasField("finished_at") else 0.0
    job.reason = msg.reason
    job.traceparent = msg.traceparent
    return job, leases


def depth_within(root: Node, max_depth: int, budget: int) -> int:
    """The largest depth up to ``max_depth`` whose materialised nodes, the root's level down to
    it, number at most ``budget`` (at least the root's own depth)."""
    level = [root]
    depth = root.depth
    count = 1
    while depth < max_depth:
        below = [child for node in level for child in (node.left, node.right) if child is not None]
        count += len(below)
        if not below or count > budget:
            break
        level = below
        depth += 1
    return depth


def tree_to_proto(node: Node, max_depth: int, out: types_pb2.TreeNode) -> None:
    """Fill ``out`` with ``node`` and its materialised descendants down to ``max_depth``."""
    out.range.start = node.start
    out.range.end = node.end
    out.status = node.status.value  # type: ignore[assignment]
    out.depth = node.depth
    out.is_leaf = node.is_leaf
    out.attempts = node.attempts
    out.last_error = node.last_error
    out.cursor = node.cursor
    if node.lease is not None:
        out.worker_id = node.lease.holder
    out.message = node.message
    if node.result is not None:
        out.result_json = encode(node.result)
    out.collapsed = not node.is_leaf and node.left is None and node.status in TERMINAL and node.probed
    if node.left is not None and node.right is not None:
        if node.depth >= max_depth:
            out.truncated = True
        else:
            tree_to_proto(node.left, max_depth, out.children.add())
            tree_to_proto(node.right, max_depth, out.children.add())


def job_info(job: JobState) -> worker_pb2.JobInfo:
    """What a worker needs of a job, sent once per stream."""
    spec = job.spec
    out = worker_pb2.JobInfo(
        job_id=job.id, queue=spec.queue, params_json=spec.params_json, max_range_size=spec.max_range_size
    )
    out.reduce = spec.reduce
    if job.traceparent:
        out.traceparent = job.traceparent
    out.lease_ttl.CopyFrom(spec.lease_ttl)
    if spec.HasField("leaf_timeout"):
        out.leaf_timeout.CopyFrom(spec.leaf_timeout)
    return out


def lease_to_proto(lease: Lease, job: JobState, out: worker_pb2.Lease) -> None:
    """Fill a ``Lease`` message for a lease just granted."""
    node = lease.node
    out.fence = lease.fence
    out.job_id = job.id
    out.kind = lease.kind.value  # type: ignore[assignment]
    out.start = node.start
    out.end = node.end
    out.attempt = node.attempts
    out.cursor = node.done_upto
    if node.details:
        out.details = node.details
    out.is_leaf = node.is_leaf


def job_runs(leases: Sequence[Lease]) -> list[tuple[str, int, int]]:
    """``leases`` cut into runs of one job: ``(job_id, first index, index past the last)``, in order.

    Leases come from the scheduler a job's quantum at a time, so a grant has few runs.
    """
    runs: list[tuple[str, int, int]] = []
    first = 0
    for i in range(1, len(leases) + 1):
        if i == len(leases) or leases[i].job_id != leases[first].job_id:
            runs.append((leases[first].job_id, first, i))
            first = i
    return runs


PACKED_COLUMNS = tuple(worker_pb2.PackedLeases.DESCRIPTOR.fields_by_name)
"""The columns of ``PackedLeases``, for taking back a run that could not be packed."""


def packed_marks(out: worker_pb2.PackedLeases) -> list[int]:
    """The length of each column of ``out``, to truncate back to (see :func:`packed_truncate`)."""
    return [len(getattr(out, name)) for name in PACKED_COLUMNS]


def packed_truncate(out: worker_pb2.PackedLeases, marks: list[int]) -> None:
    """Cut every column of ``out`` back to the lengths ``packed_marks`` gave."""
    for name, mark in zip(PACKED_COLUMNS, marks, strict=True):
        del getattr(out, name)[mark:]


def pack_run(
    job_id: str, leases: Sequence[Lease], first: int, stop: int, out: worker_pb2.PackedLeases
) -> None:
    """Append ``leases[first:stop]``, all of job ``job_id``, to the columns of ``out``.

    The layout is ``PackedLeases``' (proto/parcelo/v1/worker.proto): plain lists are gathered here
    and each column is extended once, so no message object is made per lease. On an exception the
    columns may be partly extended: the caller cuts them back (``packed_truncate``).
    """
    base = len(out.fences)
    fences: list[int] = []
    starts: list[int] = []
    ends: list[int] = []
    attempts: list[int] = []
    retried = False
    for i in range(first, stop):
        lease = leases[i]
        node = lease.node
        fences.append(lease.fence)
        starts.append(node.start)
        ends.append(node.end)
        attempts.append(node.attempts)
        if node.attempts != 1:
            retried = True
        if lease.kind is not LeaseKind.LEAF:
            out.probes.append(base + i - first)
            out.probe_is_leaf.append(node.is_leaf)
        if node.cursor > node.start:
            out.resumed.append(base + i - first)
            out.cursors.append(node.cursor)
            out.details.append(node.details)
    out.run_job_ids.append(job_id)
    out.run_lengths.append(stop - first)
    out.fences.extend(fences)
    out.starts.extend(starts)
    out.ends.extend(ends)
    # The attempts column exists only once a lease of the grant is not a first attempt; the
    # leases before it were first attempts.
    if retried or len(out.attempts):
        if len(out.attempts) < base:
            out.attempts.extend([1] * (base - len(out.attempts)))
        out.attempts.extend(attempts)
