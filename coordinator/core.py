"""The coordinator's state and every operation on it, with no I/O and the clock passed in.

``Core`` holds the jobs, their range trees, the live leases and the event
log. gRPC servicers call it; the committer drains what changed with
:meth:`Core.collect_writes` into one synced RocksDB batch.
"""

from __future__ import annotations

import bisect
import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from itertools import chain, repeat

from parcelo import defaults
from parcelo.coordinator import store
from parcelo.coordinator.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from parcelo.coordinator.events import EventLog, EventType, Stats
from parcelo.coordinator.jobs import FINISHED, LEASABLE, JobState, JobStatus, normalized, validate_spec
from parcelo.coordinator.leases import FenceAllocator, LeaseTable
from parcelo.coordinator.tree import Node, RangeTree, Status
from parcelo.v1 import types_pb2

STATS_INTERVAL = defaults.STATS_EVENT_INTERVAL.total_seconds()


class Action(IntEnum):
    """Heartbeat directives; values equal ``parcelo.v1.DirectiveAction``."""

    CONTINUE = 1
    CANCEL = 2
    SHRINK = 3
    LOST = 4
    RELEASE = 5


class Reject(IntEnum):
    """Why a result was refused; values equal ``parcelo.v1.RejectReason``."""

    STALE_FENCE = 1
    JOB_GONE = 2


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed (or released) attempt as reported by a worker."""

    fence: int
    retryable: bool
    message: str
    released: bool = False
    cursor: int | None = None
    details: bytes = b""


@dataclass(frozen=True, slots=True)
class Beat:
    """One lease's heartbeat: an optional checkpoint and progress message."""

    fence: int
    cursor: int | None = None
    details: bytes = b""
    message: str = ""


Rejection = tuple[int, Reject, str]


class Core:
    """Jobs, trees, leases and events of one coordinator."""

    def __init__(
        self, *, fence_limit: int, event_retention: int = defaults.EVENT_RETENTION, seed: int | None = None
    ):
        self.jobs: dict[str, JobState] = {}
        self.leases = LeaseTable()
        self.fences = FenceAllocator(fence_limit)
        self.events = EventLog(event_retention)
        self._requests: dict[str, str] = {}
        self._queues: dict[str, list[JobState]] = {}
        self._order = 0
        self._rng = random.Random(seed)
        # Fences taken back by cancel, timeout or expiry: heartbeats learn why (fence -> action, forget-at).
        self._revoked: dict[int, tuple[Action, float]] = {}
        self._dirty_jobs: set[str] = set()
        # Whole jobs to remove with the next batch (key ranges).
        self._deleted_ranges: list[tuple[bytes, bytes]] = []
        self._stats_changed: set[str] = set()
        self._stats_sent: dict[str, float] = {}
        # Raised when leases may have become available; the dispatcher clears it.
        self.new_work = False

    # -- jobs -----------------------------------------------------------------------------------

    def create_job(self, spec: types_pb2.JobSpec, now: float) -> tuple[JobState, bool]:
        """Create a job (or return the one an earlier identical request created). Returns (job, created)."""
        validate_spec(spec)
        if spec.request_id and spec.request_id in self._requests:
            existing = self.jobs.get(self._requests[spec.request_id])
            if existing is not None:
                return existing, False
        full = normalized(spec)
        if spec.job_id and spec.job_id in self.jobs:
            existing = self.jobs[spec.job_id]
            mine = types_pb2.JobSpec()
            mine.CopyFrom(full)
            mine.request_id = existing.spec.request_id
            if mine != existing.spec:
                raise AlreadyExists(f"job '{spec.job_id}' already exists with a different spec")
            return existing, False
        job_id = spec.job_id or f"job-{uuid.uuid4().hex[:16]}"
        full.job_id = job_id
        tree = RangeTree(spec.range.start, spec.range.end, spec.max_range_size, pruning=spec.pruning)
        self._order += 1
        job = JobState(job_id, full, tree, now=now, order=self._order)
        self._add(job)
        self._event(job, EventType.JOB_CREATED, now)
        return job, True

    def _add(self, job: JobState) -> None:
        self.jobs[job.id] = job
        if job.spec.request_id:
            self._requests[job.spec.request_id] = job.id
        self._order = max(self._order, job.order)
        if job.status in LEASABLE:
            self._enqueue(job)
        self._dirty_jobs.add(job.id)

    def _enqueue(self, job: JobState) -> None:
        jobs = self._queues.setdefault(job.queue, [])
        if job not in jobs:
            keys = [(-j.spec.priority, j.order) for j in jobs]
            jobs.insert(bisect.bisect(keys, (-job.spec.priority, job.order)), job)
        self.new_work = True

    def _dequeue(self, job: JobState) -> None:
        jobs = self._queues.get(job.queue)
        if jobs and job in jobs:
            jobs.remove(job)

    def get(self, job_id: str) -> JobState:
        """The job with this id; :class:`NotFound` otherwise."""
        if not job_id:
            raise InvalidArgument("job_id", "is required")
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"job '{job_id}' not found")
        return job

    def list_jobs(
        self, *, statuses: Sequence[int], queue: str, page_size: int, page_token: str
    ) -> tuple[list[JobState], str]:
        """A page of jobs, newest first, and the token of the next page ("" on the last)."""
        if page_size > defaults.MAX_LIST_PAGE_SIZE:
            raise InvalidArgument("page_size", f"must be at most {defaults.MAX_LIST_PAGE_SIZE}")
        size = page_size or defaults.LIST_PAGE_SIZE
        try:
            before = int(page_token) if page_token else None
        except ValueError:
            raise InvalidArgument("page_token", "is not a token returned by ListJobs") from None
        wanted = set(statuses)
        jobs = sorted(self.jobs.values(), key=lambda j: j.order, reverse=True)
        page = [
            j
            for j in jobs
            if (before is None or j.order < before)
            and (not wanted or int(j.status) in wanted)
            and (not queue or j.queue == queue)
        ]
        more = len(page) > size
        page = page[:size]
        return page, str(page[-1].order) if more else ""

    def pause(self, job_id: str, now: float, *, release: bool = False) -> JobState:
        job = self.get(job_id)
        if job.status is JobStatus.PAUSED:
            job.release_requested = job.release_requested or release
            return job
        job.require(LEASABLE, "pause")
        job.status = JobStatus.PAUSED
        job.release_requested = release
        self._dequeue(job)
        self._event(job, EventType.JOB_PAUSED, now)
        return job

    def resume(self, job_id: str, now: float) -> JobState:
        job = self.get(job_id)
        if job.status in LEASABLE:
            return job
        job.require(frozenset({JobStatus.PAUSED}), "resume")
        job.status = JobStatus.RUNNING if job.started_at else JobStatus.PENDING
        job.release_requested = False
        self._enqueue(job)
        self._event(job, EventType.JOB_RESUMED, now)
        return job

    def cancel(self, job_id: str, now: float, reason: str = "") -> JobState:
        job = self.get(job_id)
        job.require(frozenset({JobStatus.PENDING, JobStatus.RUNNING, JobStatus.PAUSED}), "cancel")
        self._revoke_all(job, Action.CANCEL, now)
        job.reason = reason or "cancelled"
        self._set_finished(job, JobStatus.CANCELLED, EventType.JOB_CANCELLED, now, message=job.reason)
        return job

    def delete(self, job_id: str, now: float) -> None:
        job = self.get(job_id)
        job.require(FINISHED, "delete")
        self._revoke_all(job, Action.LOST, now)
        self._deleted_ranges.append(store.prefix_range(store.node_prefix(job.id)))
        self._deleted_ranges.append(store.prefix_range(store.event_prefix(job.id)))
        self._deleted_ranges.append((store.job_key(job.id), store.job_key(job.id) + b"\x00"))
        self._event(job, EventType.JOB_DELETED, now)
        del self.jobs[job.id]
        self._requests.pop(job.spec.request_id, None)
        self._dirty_jobs.discard(job.id)
        self._stats_changed.discard(job.id)
        self.events.forget(job.id)

    def retry_failed(self, job_id: str, now: float) -> JobState:
        job = self.get(job_id)
        job.require(
            frozenset({JobStatus.FAILED, JobStatus.RUNNING, JobStatus.PAUSED, JobStatus.PENDING}), "retry"
        )
        count = job.tree.retry_failed(now)
        if not count:
            raise FailedPrecondition(f"job '{job.id}' has no failed leaves to retry")
        self._touch(job)
        if job.status is JobStatus.FAILED:
            job.status = JobStatus.RUNNING
            job.finished_at = 0.0
            job.reason = ""
            self._enqueue(job)
        self.new_work = True
        self._event(job, EventType.JOB_RESUMED, now, message=f"retrying {count} failed leaves")
        return job

    def _revoke_all(self, job: JobState, action: Action, now: float) -> None:
        for lease in self.leases.of_job(job.id):
            fence = lease.node.fence
            self.leases.pop(fence)
            job.tree.release(lease.node)
            self._revoked[fence] = (action, now + job.lease_ttl * 2)
        self._touch(job)

    def _set_finished(
        self, job: JobState, status: JobStatus, event: EventType, now: float, message: str = ""
    ) -> None:
        job.status = status
        job.finished_at = now
        job.release_requested = False
        self._dequeue(job)
        self._touch(job)
        self._event(job, event, now, message=message)

    def _finish(self, job: JobState, now: float) -> None:
        """The tree's root became terminal: complete or fail the job."""
        root = job.tree.root
        if root.status is Status.ERROR:
            failed = [n for n in job.tree.walk() if n.status is Status.ERROR and n.left is None]
            last = failed[-1].last_error if failed else ""
            job.reason = f"{len(failed)} leaves failed; last error: {last}"
            self._set_finished(job, JobStatus.FAILED, EventType.JOB_FAILED, now, message=job.reason)
        elif job.status is not JobStatus.CANCELLED:
            self._set_finished(job, JobStatus.COMPLETED, EventType.JOB_COMPLETED, now)

    # -- leases ---------------------------------------------------------------------------------

    def lease(self, queues: Iterable[str], count: int, now: float) -> list[tuple[JobState, Node]]:
        """Up to ``count`` leases from the given queues, best job first, deeper-first within a job."""
        self._now = now
        out: list[tuple[JobState, Node]] = []
        for queue in queues:
            for job in tuple(self._queues.get(queue, ())):
                if len(out) >= count:
                    return out
                tree = job.tree
                before = len(out)
                if job.status is JobStatus.PENDING and tree.has_work(now):
                    job.status = JobStatus.RUNNING
                    job.started_at = now
                    self._event(job, EventType.JOB_STARTED, now)
                started: list[tuple[int, int, int]] = []
                allocate = self.fences.allocate
                add = self.leases.add
                ttl, timeout = job.lease_ttl, job.leaf_timeout
                while len(out) < count:
                    node = tree.next_work(now)
                    if node is None:
                        break
                    fence = allocate()
                    if fence is None:
                        break
                    tree.lease(node, fence, now, ttl, timeout)
                    add(job.id, node)
                    out.append((job, node))
                    if not node.probe:
                        started.append((node.start, node.end, node.attempts))
                if tree.splits:
                    self.events.append_nodes(job.id, EventType.NODE_SPLIT, now, tree.splits)
                    tree.splits = []
                if len(out) > before:
                    self.events.append_nodes(job.id, EventType.NODE_STARTED, now, started)
                    self._touch(job)
        return out

    def _touch(self, job: JobState) -> None:
        self._dirty_jobs.add(job.id)
        self._stats_changed.add(job.id)

    def _take(self, fence: int) -> tuple[JobState, Node] | Rejection:
        lease = self.leases.pop(fence)
        if lease is None:
            action = self._revoked.pop(fence, None)
            if action is not None and action[0] is Action.CANCEL:
                return (fence, Reject.JOB_GONE, "the job was cancelled")
            return (fence, Reject.STALE_FENCE, "no live lease with this fence (expired or re-leased)")
        job = self.jobs.get(lease.job_id)
        if job is None:
            return (fence, Reject.JOB_GONE, "the job was deleted")
        return job, lease.node

    def complete(
        self, fences: Iterable[int], skipped: Iterable[int], now: float
    ) -> tuple[list[int], list[Rejection]]:
        """Apply completions (and skips); returns (accepted fences, rejections)."""
        self._now = now
        accepted: list[int] = []
        rejected: list[Rejection] = []
        # NODE_COMPLETED events are batched per run of fences of the same job.
        batch_job: JobState | None = None
        done: list[tuple[int, int, int]] = []
        for fence, skip in chain(zip(fences, repeat(False)), zip(skipped, repeat(True))):
            taken = self._take(fence)
            if len(taken) == 3:
                rejected.append(taken)
                continue
            job, node = taken
            if job is not batch_job:
                if batch_job is not None:
                    self.events.append_nodes(batch_job.id, EventType.NODE_COMPLETED, now, done)
                    done = []
                batch_job = job
                self._touch(job)
            was_probe = node.probe
            tree = job.tree
            if skip:
                finished = tree.skip(node)
                self.events.append(job.id, EventType.NODE_SKIPPED, now, node.start, node.end)
            else:
                finished = tree.complete(node)
                if was_probe:
                    self.new_work = True
                else:
                    done.append((node.start, node.end, 0))
            if finished:
                self.events.append_nodes(job.id, EventType.NODE_COMPLETED, now, done)
                done = []
                self._finish(job, now)
            accepted.append(fence)
        if batch_job is not None:
            self.events.append_nodes(batch_job.id, EventType.NODE_COMPLETED, now, done)
        return accepted, rejected

    def fail(self, failures: Iterable[Failure], now: float) -> tuple[list[int], list[Rejection]]:
        """Apply failed or released attempts; returns (accepted fences, rejections)."""
        self._now = now
        accepted: list[int] = []
        rejected: list[Rejection] = []
        for failure in failures:
            taken = self._take(failure.fence)
            if len(taken) == 3:
                rejected.append(taken)
                continue
            job, node = taken
            if failure.cursor is not None and not node.probe:
                job.tree.checkpoint(node, failure.cursor, failure.details)
            if failure.released:
                job.tree.release(node)
                self.new_work = True
            else:
                self._fail_node(job, node, failure.message, failure.retryable, now)
            self._touch(job)
            accepted.append(failure.fence)
        return accepted, rejected

    def _fail_node(
        self, job: JobState, node: Node, message: str, retryable: bool, now: float, *, backoff: bool = True
    ) -> None:
        attempt = node.attempts
        retry_at = None
        if retryable and attempt < job.retry.max_attempts:
            retry_at = now + job.retry.delay(attempt, self._rng) if backoff else now
            self.new_work = True
        self.events.append(
            job.id,
            EventType.NODE_FAILED,
            now,
            start=node.start,
            end=node.end,
            attempt=attempt,
            message=message,
        )
        if job.tree.fail(node, message[:4096], retry_at=retry_at):
            self._finish(job, now)

    def heartbeat(self, beats: Iterable[Beat], now: float) -> list[tuple[int, Action, str]]:
        """Extend leases and record checkpoints; one directive per heartbeat."""
        out: list[tuple[int, Action, str]] = []
        for beat in beats:
            lease = self.leases.get(beat.fence)
            if lease is None:
                revoked = self._revoked.get(beat.fence)
                if revoked is not None and revoked[0] is Action.CANCEL:
                    out.append((beat.fence, Action.CANCEL, "job cancelled"))
                else:
                    out.append((beat.fence, Action.LOST, "lease expired, timed out or unknown"))
                continue
            job = self.jobs[lease.job_id]
            node = lease.node
            node.expires_at = now + job.lease_ttl
            if beat.cursor is not None and not node.probe:
                job.tree.checkpoint(node, beat.cursor, beat.details)
                self._touch(job)
            if beat.message and beat.message != node.message:
                node.message = beat.message[:1024]
                job.tree.dirty.add(node)
                self._dirty_jobs.add(job.id)
            if job.release_requested and job.status is JobStatus.PAUSED:
                out.append((beat.fence, Action.RELEASE, "job paused with release"))
            else:
                out.append((beat.fence, Action.CONTINUE, ""))
        return out

    # -- time -----------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Expire leases, fail jobs past their deadline, emit coalesced stats events."""
        self._now = now
        for lease, timed_out in self.leases.due(now):
            job = self.jobs.get(lease.job_id)
            node = lease.node
            if job is None:
                continue
            self._revoked[node.fence] = (Action.LOST, now + job.lease_ttl * 2)
            if timed_out:
                message = f"leaf timed out after {job.leaf_timeout:g} s"
                self._fail_node(job, node, message, True, now)
            else:
                # A dead worker says nothing about the leaf: run it again at once, no backoff.
                message = f"lease expired: no heartbeat within {job.lease_ttl:g} s"
                self._fail_node(job, node, message, True, now, backoff=False)
            self._touch(job)
            self.new_work = True
        for job in self.jobs.values():
            if job.deadline and not job.finished and job.deadline <= now:
                self._revoke_all(job, Action.CANCEL, now)
                job.reason = "deadline exceeded"
                self._set_finished(job, JobStatus.FAILED, EventType.JOB_FAILED, now, message=job.reason)
            elif job.status in LEASABLE and job.tree.has_work(now):
                self.new_work = True
        if self._revoked:
            for fence in [f for f, (_, until) in self._revoked.items() if until <= now]:
                del self._revoked[fence]
        for job_id in tuple(self._stats_changed):
            if now - self._stats_sent.get(job_id, 0.0) >= STATS_INTERVAL:
                self._stats_changed.discard(job_id)
                self._stats_sent[job_id] = now
                job = self.jobs.get(job_id)
                # A finished job's last event is the one that finished it, with its final stats.
                if job is not None and not job.finished:
                    self.events.append(job.id, EventType.STATS_UPDATED, now, stats=self.stats(job))

    def stats(self, job: JobState) -> Stats:
        """The job's stats (``events.STAT_FIELDS`` order) followed by its status."""
        t = job.tree
        return (
            t.total_nodes,
            t.pending_nodes,
            t.running_nodes,
            t.done_nodes,
            t.skipped_nodes,
            t.error_nodes,
            t.range_processed,
            t.range_skipped,
            t.range_total,
            t.active_leases,
            t.failed_attempts,
            int(job.status),
        )

    def _event(self, job: JobState, type_: EventType, now: float, message: str = "") -> None:
        self._touch(job)
        self.events.append(job.id, type_, now, message=message, stats=self.stats(job))
        # A job event carries the stats, so a coalesced STATS_UPDATED now would say nothing new.
        self._stats_changed.discard(job.id)
        self._stats_sent[job.id] = now

    # -- persistence ----------------------------------------------------------------------------

    def collect_writes(self) -> store.Batch:
        """Everything changed since the last call, as one store batch."""
        from parcelo.coordinator.codec import job_to_proto

        batch = store.Batch(ranges=self._deleted_ranges)
        self._deleted_ranges = []
        ops = batch.ops
        suffix = store.node_suffix
        encode = store.encode_node
        for job_id in self._dirty_jobs:
            job = self.jobs.get(job_id)
            if job is None:
                continue
            tree = job.tree
            prefix = store.node_prefix(job_id)
            for start, end in tree.deleted:
                ops.append((prefix + suffix(start, end), None))
            tree.deleted.clear()
            for node in tree.dirty:
                ops.append((prefix + suffix(node.start, node.end), encode(node)))
                node.persisted = True
            tree.dirty.clear()
            ops.append((store.job_key(job_id), job_to_proto(job, self.stats(job)).SerializeToString()))
        self._dirty_jobs.clear()
        written, expired = self.events.drain()
        for job_id, first, blob in written:
            ops.append((store.event_key(job_id, first), blob))
        for job_id, first in expired:
            ops.append((store.event_key(job_id, first), None))
        batch.fence_limit = self.fences.pending_limit()
        if batch.fence_limit is not None:
            ops.append((store.FENCE_KEY, batch.fence_limit.to_bytes(8, "big")))
        return batch

    def restore(self, stored: Iterable[store.StoredJob], now: float) -> None:
        """Rebuild state loaded from the store; live leases get a fresh TTL from ``now``."""
        from parcelo.coordinator.codec import job_from_stored

        self._now = now
        for item in stored:
            job = job_from_stored(item)
            self._add(job)
            self.events.restore(job.id, item.last_seq, item.events, item.segments)
            expires = now + job.lease_ttl
            timeout_at = now + job.leaf_timeout if job.leaf_timeout else 0.0
            for node in job.tree.restored_leases:
                node.expires_at = expires
                node.timeout_at = timeout_at
            self.leases.add_many(job.id, job.tree.restored_leases)
            job.tree.restored_leases = []
            if job.status in FINISHED:
                self._dequeue(job)
        self._dirty_jobs.clear()
        self.new_work = True

    _now: float = 0.0
