"""Conversions between the core's objects and protobuf messages."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from parcelo.coordinator.events import STAT_FIELDS, Stats, stats_to_proto
from parcelo.coordinator.jobs import JobState, JobStatus
from parcelo.coordinator.store import StoredJob
from parcelo.coordinator.tree import TERMINAL, Node, RangeTree
from parcelo.v1 import types_pb2, worker_pb2


def _ts(seconds: float, out: Timestamp) -> None:
    out.FromNanoseconds(int(seconds * 1e9))


def _seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def job_to_proto(job: JobState, stats: Stats) -> types_pb2.Job:
    """The ``Job`` message of a job (also its stored record)."""
    msg = types_pb2.Job(id=job.id, status=job.status.value, reason=job.reason)  # type: ignore[arg-type]
    msg.spec.CopyFrom(job.spec)
    stats_to_proto(stats, msg.stats)
    _ts(job.created_at, msg.created_at)
    _ts(job.updated_at, msg.updated_at)
    if job.started_at:
        _ts(job.started_at, msg.started_at)
    if job.finished_at:
        _ts(job.finished_at, msg.finished_at)
    return msg


def job_from_stored(stored: StoredJob) -> JobState:
    """Rebuild a job and its tree from its stored record and node records."""
    msg = stored.job
    spec = msg.spec
    counters = {name: getattr(msg.stats, name) for name in STAT_FIELDS if name not in ("range_total",)}
    tree = RangeTree.restore(
        spec.range.start,
        spec.range.end,
        spec.max_range_size,
        pruning=spec.pruning,
        nodes=stored.nodes,
        counters=counters,
    )
    created = _seconds(msg.created_at)
    # Creation time orders jobs across restarts; microseconds keep it an int.
    job = JobState(msg.id, spec, tree, now=created, order=int(created * 1e6))
    job.status = JobStatus(msg.status)
    job.updated_at = _seconds(msg.updated_at)
    job.started_at = _seconds(msg.started_at) if msg.HasField("started_at") else 0.0
    job.finished_at = _seconds(msg.finished_at) if msg.HasField("finished_at") else 0.0
    job.reason = msg.reason
    return job


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
    out.collapsed = not node.is_leaf and node.left is None and node.status in TERMINAL and node.probed
    if node.left is not None and node.right is not None:
        if node.depth >= max_depth:
            out.truncated = True
        else:
            tree_to_proto(node.left, max_depth, out.children.add())
            tree_to_proto(node.right, max_depth, out.children.add())


def lease_to_proto(node: Node, job: JobState, out: worker_pb2.Lease) -> None:
    """Fill a ``Lease`` message for a node just leased."""
    out.fence = node.fence
    out.job_id = job.id
    out.kind = worker_pb2.LEASE_KIND_PROBE if node.probe else worker_pb2.LEASE_KIND_LEAF
    out.start = node.start
    out.end = node.end
    out.attempt = node.attempts
    out.cursor = node.done_upto
    if node.details:
        out.details = node.details
    out.ttl_ms = int(job.lease_ttl * 1000)
    out.is_leaf = node.is_leaf
    if job.leaf_timeout:
        out.timeout_ms = int(job.leaf_timeout * 1000)
