"""The coordinator's state and every operation on it, with no I/O and the clock passed in.

``Core`` holds the jobs, their range trees, the live leases and the event
log. gRPC servicers call it; the committer takes what changed with
:meth:`Core.take_changes` (domain values: nodes, spans, job records,
events) and hands it to the store, the only code that knows the storage
format.
"""

from __future__ import annotations

import logging
import math
import random
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from itertools import chain, repeat

from parcelo import defaults
from parcelo.coordinator.changes import Changes
from parcelo.coordinator.codec import StoredJob, job_from_stored, job_to_proto
from parcelo.coordinator.errors import AlreadyExists, CoordinatorError, FailedPrecondition
from parcelo.coordinator.events import EventLog, EventType, Stats
from parcelo.coordinator.jobs import (
    FINISHED,
    LEASABLE,
    JobState,
    JobStatus,
    check_rate,
    check_weight,
    find,
    normalized,
    validate_spec,
)
from parcelo.coordinator.leases import (
    Action,
    Beat,
    Failure,
    FenceAllocator,
    LeafFailure,
    Lease,
    LeaseKind,
    LeaseTable,
    Reject,
    Rejection,
)
from parcelo.coordinator.limits import DEFAULT_LIMITS, MAX_REASON_BYTES, Limits
from parcelo.coordinator.queues import QueueTable
from parcelo.coordinator.results import Reduce, ResultError, conflict, parse, reduce_of
from parcelo.coordinator.runs import runs_allowed
from parcelo.coordinator.scheduler import Entry, Scheduler, bucket
from parcelo.coordinator.schedules import LABEL, ScheduleTable, due_ticks, job_spec
from parcelo.coordinator.tree import Node, RangeTree, Status, leaf_at, leaf_count
from parcelo.v1 import schedules_pb2, types_pb2

log = logging.getLogger(__name__)

STATS_INTERVAL = defaults.STATS_EVENT_INTERVAL.total_seconds()
MAX_ERROR_BYTES = 4096
"""Bytes of a failure's message kept with its leaf."""
MAX_MESSAGE_BYTES = 1024
"""Bytes of a heartbeat's progress message kept with its leaf."""
HEARTBEAT_FRACTION = 3
"""Workers heartbeat at least every third of a job's lease TTL (the protocol's rule)."""
SPLIT_HEARTBEATS = 2
"""A dynamic split gives away only a part worth at least this many heartbeat intervals."""


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, never inside a character."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:limit].decode(errors="ignore")


def _nothing() -> None:
    pass


class Core:
    """Jobs, trees, leases and events of one coordinator.

    Args:
        fence_limit: The durable fence high-water mark (from the store).
        event_retention: Events kept per job.
        seed: Seed of the retry jitter (tests).
        work_available: Called when leases may have become available (new job, resume, release,
            retry due, probe answered, expiry). Must be cheap: it is called on the hot path.
        max_result_bytes: Largest leaf result accepted, and largest job result a merge may grow to.
        limits: The bounds of one request (the params of a job).
    """

    def __init__(
        self,
        *,
        fence_limit: int,
        event_retention: int = defaults.EVENT_RETENTION,
        seed: int | None = None,
        work_available: Callable[[], None] = _nothing,
        max_result_bytes: int = defaults.MAX_RESULT_BYTES,
        limits: Limits = DEFAULT_LIMITS,
    ):
        self.max_result_bytes = max_result_bytes
        self.limits = limits
        self.jobs: dict[str, JobState] = {}
        self.leases = LeaseTable()
        self.fences = FenceAllocator(fence_limit)
        self.events = EventLog(event_retention)
        self._requests: dict[str, str] = {}
        self.scheduler = Scheduler(self.leases.queue_leaf_count)
        self.queues = QueueTable(self.scheduler)
        self.schedules = ScheduleTable(self._check_template)
        self._order = 0
        self._rng = random.Random(seed)
        self._dirty_jobs: set[str] = set()
        self._deleted_jobs: list[str] = []
        self._status_changed = False
        self._stats_changed: set[str] = set()
        self._stats_sent: dict[str, float] = {}
        self._work_available = work_available
        # Leases heartbeated as splittable, by fence (entries of ended leases go lazily).
        self._splittable: dict[int, Lease] = {}
        self._swept_at = 0.0

    # -- jobs -----------------------------------------------------------------------------------

    def create_job(self, spec: types_pb2.JobSpec, now: float, traceparent: str = "") -> tuple[JobState, bool]:
        """Create a job, or return the one an earlier request with the same ``job_id`` or
        ``request_id`` and the same spec created. Returns (job, created).

        Specs are compared after defaults are filled in, labels included and ``request_id``
        excluded; the same key with a different spec is :class:`AlreadyExists`. ``traceparent``:
        the new job's trace context (kept with it; an existing job keeps its own).
        """
        validate_spec(spec, max_params_bytes=self.limits.params_bytes)
        full = normalized(spec)
        for key, job_id in (("request_id", self._requests.get(spec.request_id)), ("job_id", spec.job_id)):
            existing = self.jobs.get(job_id) if job_id else None
            if existing is None:
                continue
            mine = types_pb2.JobSpec()
            mine.CopyFrom(full)
            mine.job_id = spec.job_id or existing.id
            mine.request_id = existing.spec.request_id
            if mine != existing.spec:
                value = spec.request_id if key == "request_id" else spec.job_id
                raise AlreadyExists(f"{key} '{value}' was used for job '{existing.id}' with a different spec")
            return existing, False
        job_id = spec.job_id or f"job-{uuid.uuid4().hex[:16]}"
        full.job_id = job_id
        tree = RangeTree(
            spec.range.start,
            spec.range.end,
            spec.max_range_size,
            pruning=spec.pruning,
            reduce=reduce_of(spec.reduce),
            min_range_size=spec.min_range_size,
            target_leaf_seconds=spec.target_leaf_seconds.ToNanoseconds() / 1e9,
        )
        self._order += 1
        job = JobState(job_id, full, tree, now=now, order=self._order)
        job.traceparent = traceparent
        self._add(job, now)
        self._event(job, EventType.JOB_CREATED, now)
        return job, True

    def _check_template(self, spec: types_pb2.JobSpec) -> None:
        validate_spec(spec, max_params_bytes=self.limits.params_bytes)

    def _add(self, job: JobState, now: float) -> None:
        self.jobs[job.id] = job
        if job.spec.request_id:
            self._requests[job.spec.request_id] = job.id
        self._order = max(self._order, job.order)
        if job.status in LEASABLE:
            self._enqueue(job, now)
        self._dirty_jobs.add(job.id)

    def _entry(self, job: JobState, now: float) -> Entry:
        """How the scheduler sees ``job``: its place, its share and its limits."""
        spec = job.spec
        leases = self.leases
        job_id = job.id
        entry = Entry(
            job_id,
            job.queue,
            spec.priority,
            spec.fairness_key or job_id,
            spec.weight if spec.HasField("weight") else 1,
            job.tree.has_work,
            job.tree.next_retry_at,
            lambda: leases.leaf_count(job_id),
        )
        entry.max_concurrency = spec.max_concurrency
        entry.bucket = bucket(spec.max_leases_per_second, spec.burst, now)
        if spec.HasField("run_after"):
            entry.run_after = spec.run_after.seconds + spec.run_after.nanos / 1e9
        return entry

    def _enqueue(self, job: JobState, now: float) -> None:
        self.scheduler.add(self._entry(job, now), now)
        self._work_available()

    def _dequeue(self, job: JobState) -> None:
        self.scheduler.remove(job.id)

    def _wake(self, job: JobState, now: float) -> None:
        """The job may have something to lease again (a node back to pending, a retry scheduled)."""
        self.scheduler.wake(job.id, now)
        self._work_available()

    def _lease_ended(self, job: JobState, now: float) -> None:
        """A leaf lease of ``job`` ended: under a concurrency limit, room for another."""
        if self.scheduler.ended(job.id, job.queue, now):
            self._work_available()

    def get(self, job_id: str) -> JobState:
        """The job with this id; :class:`NotFound` otherwise."""
        return find(self.jobs, job_id)

    def pause(self, job_id: str, now: float, *, release: bool = False) -> JobState:
        job = self.get(job_id)
        if job.pause(now, release=release):
            self._dequeue(job)
            self._event(job, EventType.JOB_PAUSED, now)
        else:
            self._touch(job)
        return job

    def resume(self, job_id: str, now: float) -> JobState:
        job = self.get(job_id)
        if job.resume(now):
            self._enqueue(job, now)
            self._event(job, EventType.JOB_RESUMED, now)
        return job

    def cancel(self, job_id: str, now: float, reason: str = "") -> JobState:
        job = self.get(job_id)
        job.cancel(now, clip(reason, MAX_REASON_BYTES))
        self._revoke_all(job, Action.CANCEL, "the job was cancelled", now)
        self._ended(job, EventType.JOB_CANCELLED, now)
        return job

    def delete(self, job_id: str, now: float) -> None:
        job = self.get(job_id)
        job.require(FINISHED, "delete")
        self._revoke_all(job, Action.LOST, "the job was deleted", now)
        self._event(job, EventType.JOB_DELETED, now)
        del self.jobs[job.id]
        self._requests.pop(job.spec.request_id, None)
        self._dirty_jobs.discard(job.id)
        self._stats_changed.discard(job.id)
        self._deleted_jobs.append(job.id)
        self._status_changed = True
        self.events.forget(job.id)

    def retry_failed(self, job_id: str, now: float) -> JobState:
        job = self.get(job_id)
        job.allow_retry()
        count = job.tree.retry_failed(now)
        if not count:
            raise FailedPrecondition(f"job '{job.id}' has no failed leaves to retry")
        if job.retried(now):
            self._enqueue(job, now)
        self._wake(job, now)
        self._event(job, EventType.JOB_RESUMED, now, message=f"retrying {count} failed leaves")
        return job

    def update_job(
        self,
        job_id: str,
        now: float,
        *,
        priority: int | None = None,
        weight: int | None = None,
        max_concurrency: int | None = None,
        max_leases_per_second: float | None = None,
        burst: int | None = None,
    ) -> JobState:
        """Change the job's priority, weight and limits (None: unchanged). Lowering a limit below
        what runs lets the running leases finish."""
        job = self.get(job_id)
        if job.finished:
            raise FailedPrecondition(f"cannot update job '{job.id}': it is {job.status.name.lower()}")
        if weight is not None:
            check_weight(weight)
        if max_leases_per_second is not None:
            check_rate("max_leases_per_second", max_leases_per_second)
        spec = job.spec
        if priority is not None:
            spec.priority = priority
        if weight is not None:
            spec.weight = weight
        if max_concurrency is not None:
            spec.max_concurrency = max_concurrency
        if max_leases_per_second is not None:
            spec.max_leases_per_second = max_leases_per_second
        if burst is not None:
            spec.burst = burst
        job.updated_at = now
        self._touch(job)
        if self.scheduler.get(job.id) is not None:
            self.scheduler.update(self._entry(job, now), now)
            self._work_available()
        return job

    def _revoke_all(self, job: JobState, action: Action, message: str, now: float) -> None:
        """Take back every lease of ``job``; their holders learn ``action`` from their heartbeats."""
        forget_at = now + job.lease_ttl * 2
        for lease in self.leases.of_job(job.id):
            self.leases.revoke(lease, action, Reject.JOB_GONE, message, forget_at)
            for node in lease.nodes:
                job.tree.release(node)
        self._touch(job)

    def _ended(self, job: JobState, event: EventType, now: float) -> None:
        """``job`` just reached a terminal status."""
        self._dequeue(job)
        self._event(job, event, now, message=job.reason)

    def _finish(self, job: JobState, now: float) -> None:
        """The tree's root became terminal: complete or fail the job."""
        root = job.tree.root
        if root.status is Status.ERROR:
            failed = [n for n in job.tree.walk() if n.status is Status.ERROR and n.left is None]
            last = failed[-1].last_error if failed else ""
            job.finish(JobStatus.FAILED, now, f"{len(failed)} leaves failed; last error: {last}")
            self._ended(job, EventType.JOB_FAILED, now)
        elif job.status is not JobStatus.CANCELLED:
            job.finish(JobStatus.COMPLETED, now)
            self._ended(job, EventType.JOB_COMPLETED, now)

    # -- leases ---------------------------------------------------------------------------------

    def lease(
        self,
        queues: Iterable[str],
        count: int,
        now: float,
        holder: str = "",
        exclude: Collection[str] = (),
        *,
        runs: bool = False,
    ) -> list[Lease]:
        """Up to ``count`` leases for ``holder`` from the given queues, in the scheduler's order.

        Jobs named in ``exclude`` are passed over. ``runs``: the holder runs leaf runs (a lease
        of several leaves, see ``runs``); fair shares and rate limits count their leaves.
        """
        out: list[Lease] = []
        scheduler = self.scheduler
        scheduler.tick(now)  # timers due by now (a retry, a rate token), ticker or not
        passed: list[str] = []
        # No fence left until the next commit: nothing more in this call.
        short = False
        for queue in queues:
            while len(out) < count and not short:
                choice = scheduler.choose(queue, now, count - len(out))
                if choice is None:
                    break
                entry, quota = choice
                job = self.jobs[entry.job_id]
                if exclude and job.id in exclude:
                    # Out of the choice for this call (woken again below).
                    scheduler.served(entry, 0, now, drained=True)
                    passed.append(job.id)
                    continue
                leaves, drained, short = self._lease_from(job, quota, now, holder, out, runs)
                scheduler.served(entry, leaves, now, drained=drained)
        for job_id in passed:
            scheduler.wake(job_id, now)
        return out

    def _lease_from(
        self, job: JobState, quota: int, now: float, holder: str, out: list[Lease], runs: bool
    ) -> tuple[int, bool, bool]:
        """Lease nodes of ``job`` into ``out`` until ``quota`` leaves; returns how many leaves,
        whether the tree had no more, and whether the fences ran out."""
        tree = job.tree
        run_width = 0
        if runs and runs_allowed(job.spec, tree.reduce):
            run_leaves = job.pace.run_leaves()
            if run_leaves > 1:
                run_width = run_leaves * tree.max_range_size
        size = tree.max_range_size
        if job.status is JobStatus.PENDING and tree.has_work(now):
            job.start(now)
            self._event(job, EventType.JOB_STARTED, now)
        started: list[tuple[int, int, int]] = []
        allocate = self.fences.allocate
        grant = self.leases.grant
        job_id, queue = job.id, job.queue
        ttl, timeout = job.lease_ttl, job.leaf_timeout
        granted = leaves = 0
        short = drained = False
        while leaves < quota:
            node = tree.next_work(now, run_width)
            if node is None:
                drained = True
                break
            fence = allocate()
            if fence is None:
                short = True
                break
            kind = tree.lease_kind(node)
            lease = grant(fence, job_id, node, holder, kind, now, ttl, timeout, queue)
            tree.lease(node, lease)
            out.append(lease)
            granted += 1
            width = node.end - node.start
            leaves += 1 if width <= size or kind is LeaseKind.PROBE else leaf_count(width, size)
            if kind is LeaseKind.LEAF:
                started.append((node.start, node.end, node.attempts))
        splits = tree.take_splits()
        if splits:
            self.events.append_nodes(job_id, EventType.NODE_SPLIT, now, splits)
        if granted:
            self.events.append_nodes(job_id, EventType.NODE_STARTED, now, started)
            self._touch(job)
        return leaves, drained, short

    def unsent(self, fences: Iterable[int], now: float) -> None:
        """Leases :meth:`lease` made that were never sent: as if never granted (attempts not counted)."""
        for fence in fences:
            lease = self.leases.discard(fence)
            job = self.jobs.get(lease.job_id) if lease is not None else None
            if lease is None or job is None:
                continue
            for node in lease.nodes:
                job.tree.release(node)
            self.scheduler.wake(job.id, now)
            self._touch(job)
        # No work_available(): leasing again at once could fail the same way in a tight loop; the
        # ticker offers the work again within one tick.

    def _touch(self, job: JobState) -> None:
        self._dirty_jobs.add(job.id)
        self._stats_changed.add(job.id)

    def _not_held(self, fence: int, holder: str | None) -> Rejection | None:
        """The rejection of a result for a live lease that ``holder`` does not hold (None: any)."""
        lease = self.leases.get(fence)
        if lease is None or holder is None or lease.holder == holder:
            return None
        return Rejection(fence, Reject.NOT_HOLDER, "the lease is held by another worker")

    def _take(self, fence: int, success: bool) -> tuple[JobState, Lease] | Rejection | None:
        """The live lease of a result, a rejection, or None: the same result was accepted before."""
        lease = self.leases.take(fence, success)
        if lease is None:
            if self.leases.was_accepted(fence, success):
                return None
            if self.leases.was_accepted(fence, not success):
                other = "a failure" if success else "a completion"
                return Rejection(fence, Reject.STALE_FENCE, f"{other} of this lease was accepted before")
            tomb = self.leases.tombstone(fence)
            if tomb is not None:
                return Rejection(fence, tomb.reason, tomb.message)
            return Rejection(
                fence, Reject.STALE_FENCE, "no live lease with this fence (expired or never granted)"
            )
        job = self.jobs.get(lease.job_id)
        if job is None:
            return Rejection(fence, Reject.JOB_GONE, "the job was deleted")
        return job, lease

    def complete(
        self,
        fences: Sequence[int],
        skipped: Iterable[int],
        now: float,
        results: Sequence[str] = (),
        holder: str | None = None,
        ends: Sequence[int] = (),
        handler_us: Sequence[int] = (),
        failed_leaves: Mapping[int, Sequence[LeafFailure]] | None = None,
    ) -> tuple[list[int], list[Rejection]]:
        """Apply completions (and skips); returns (accepted fences, rejections).

        ``results``: empty, or the JSON result of each of ``fences`` ("" for none). A result the
        job cannot take fails its leaf for good, and its fence is rejected as INVALID_RESULT.
        ``holder``: the worker reporting; a live lease another worker holds is NOT_HOLDER.
        ``ends``: empty, or where each of ``fences`` was run to (0: its end; a shrunk lease's
        new end, applied here if a restart lost the split). ``handler_us``: empty, or how long
        each handler ran (adaptive leaf size and leaf runs measure leaves with it).
        ``failed_leaves``: by fence, the leaves of a leaf run that failed (the rest of the run is
        done); a leaf that is not one of the run's is INVALID_RESULT and fails the run's attempt.
        """
        accepted: list[int] = []
        rejected: list[Rejection] = []
        # NODE_COMPLETED events are batched per run of fences of the same job.
        batch_job: JobState | None = None
        done: list[tuple[int, int, int]] = []
        seen: set[int] = set()
        for i, (fence, skip) in enumerate(chain(zip(fences, repeat(False)), zip(skipped, repeat(True)))):
            if fence in seen:
                continue  # answered once per request
            seen.add(fence)
            foreign = self._not_held(fence, holder)
            if foreign is not None:
                rejected.append(foreign)
                continue
            value: object = None
            size = 0
            text = results[i] if results and not skip else ""
            if text:
                refused = self._check_result(fence, text, now)
                if isinstance(refused, Rejection):
                    rejected.append(refused)
                    continue
                value = refused
                size = len(text) if text.isascii() else 4 * len(text)
            taken = self._take(fence, True)
            if taken is None:
                accepted.append(fence)  # sent again: it counted the first time
                continue
            if isinstance(taken, Rejection):
                rejected.append(taken)
                continue
            job, lease = taken
            end = ends[i] if ends and not skip else 0
            if end and end != lease.end and not self._shrunk_to(job, lease, end, now):
                self._fail_lease(
                    job, lease, f"the completion ran to {end}, not a split point of it", False, now
                )
                self._touch(job)
                rejected.append(
                    Rejection(fence, Reject.INVALID_RESULT, f"end {end} is not a split point of the lease")
                )
                continue
            failures = failed_leaves.get(fence) if failed_leaves and not skip else None
            if failures:
                why = self._misfit(job, lease, failures)
                if why:
                    self._fail_lease(job, lease, why, False, now)
                    self._touch(job)
                    rejected.append(Rejection(fence, Reject.INVALID_RESULT, why))
                    continue
            node = lease.node
            if job is not batch_job:
                if batch_job is not None:
                    self.events.append_nodes(batch_job.id, EventType.NODE_COMPLETED, now, done)
                    done = []
                batch_job = job
                self._touch(job)
            tree = job.tree
            if skip:
                for held in lease.nodes:
                    finished = tree.skip(held)
                    self.events.append(job.id, EventType.NODE_SKIPPED, now, held.start, held.end)
            else:
                if lease.kind is LeaseKind.PROBE:
                    finished = tree.complete(node)
                    self._wake(job, now)
                else:
                    us = handler_us[i] if handler_us else 0
                    width = lease.end - node.start
                    max_size = tree.max_range_size
                    if us:
                        # Leaf runs are sized from the handler time per leaf.
                        job.pace.observe(us, 1 if width <= max_size else leaf_count(width, max_size))
                    if tree.target_leaf_seconds:
                        tree.observe(node, us / 1e6 if us else now - lease.granted_at, width)
                    if failures:
                        finished = self._run_failed(job, lease, value, size, failures, now, done)
                    else:
                        finished = tree.complete(node, value, size)
                        done.append((node.start, node.end, 0))
                        for more in lease.more:
                            finished = tree.complete(more)
                            done.append((more.start, more.end, 0))
                    self._lease_ended(job, now)
                if value is not None and tree.result_size(self.max_result_bytes):
                    self.events.append_nodes(job.id, EventType.NODE_COMPLETED, now, done)
                    done = []
                    self._result_too_large(job, now)
                    finished = False
            if finished:
                self.events.append_nodes(job.id, EventType.NODE_COMPLETED, now, done)
                done = []
                self._finish(job, now)
            accepted.append(fence)
        if batch_job is not None:
            self.events.append_nodes(batch_job.id, EventType.NODE_COMPLETED, now, done)
        return accepted, rejected

    def _misfit(self, job: JobState, lease: Lease, failures: Sequence[LeafFailure]) -> str:
        """Why the failed leaves reported with a completion of ``lease`` cannot be taken ("" when
        they can): each must be a leaf by the rule of one of the nodes a leaf run holds."""
        if lease.kind is not LeaseKind.LEAF:
            return "failed leaves were reported for a probe"
        size = job.tree.max_range_size
        for failure in failures:
            held = next((n for n in lease.nodes if n.start <= failure.start < n.end), None)
            if held is None or leaf_at(held.start, held.end, failure.start, size) != (
                failure.start,
                failure.end,
            ):
                return f"[{failure.start}, {failure.end}) is not a leaf of the run's range"
        return ""

    def _run_failed(
        self,
        job: JobState,
        lease: Lease,
        value: object,
        size: int,
        failures: Sequence[LeafFailure],
        now: float,
        done: list[tuple[int, int, int]],
    ) -> bool:
        """A leaf run finished with some of its leaves failed: each failed leaf becomes a node of
        its own and fails (retried on its own), the rest completes. Returns whether the tree
        finished with a completion (a failure that finishes it finishes the job itself)."""
        tree = job.tree
        tree.isolate(lease, [(f.start, f.end) for f in failures])
        failed = {(f.start, f.end): f for f in failures}
        finished = False
        for held in list(lease.nodes):
            failure = failed.get((held.start, held.end))
            if failure is not None:
                self._fail_node(job, held, failure.message, not failure.permanent, now)
                finished = False
            else:
                finished = tree.complete(held, value, size)
                value, size = None, 0  # the run's result goes with its first done node
                done.append((held.start, held.end, 0))
        return finished

    def _check_result(self, fence: int, text: str, now: float) -> object:
        """The value of the result ``text`` of a live leaf lease (None when its job keeps no
        results), or the rejection of the result, its leaf failed for good."""
        lease = self.leases.get(fence)
        job = self.jobs.get(lease.job_id) if lease is not None else None
        if job is None or lease is None or lease.kind is not LeaseKind.LEAF:
            return None  # answered as any completion of it is
        tree = job.tree
        if tree.reduce is Reduce.NONE:
            return None
        try:
            value = parse(text, tree.reduce, self.max_result_bytes)
            why = conflict(tree.reduce, tree.result, value)
            if why:
                raise ResultError(why)
        except ResultError as err:
            message = str(err)
            self.leases.take(fence, False)
            self._fail_lease(job, lease, message, False, now)
            self._touch(job)
            return Rejection(fence, Reject.INVALID_RESULT, message)
        return value

    def _result_too_large(self, job: JobState, now: float) -> None:
        """The job's merged result outgrew the limit: fail the job rather than keep growing it."""
        size = job.tree.result_size(self.max_result_bytes)
        reason = (
            f"the job's result grew to {size} bytes, over the coordinator's --max-result-bytes "
            f"({self.max_result_bytes})"
        )
        job.finish(JobStatus.FAILED, now, reason)
        self._revoke_all(job, Action.CANCEL, f"the job failed: {reason}", now)
        self._ended(job, EventType.JOB_FAILED, now)

    def fail(
        self, failures: Iterable[Failure], now: float, holder: str | None = None
    ) -> tuple[list[int], list[Rejection]]:
        """Apply failed or released attempts; returns (accepted fences, rejections).

        ``holder``: the worker reporting; a live lease another worker holds is NOT_HOLDER.
        """
        accepted: list[int] = []
        rejected: list[Rejection] = []
        seen: set[int] = set()
        for failure in failures:
            if failure.fence in seen:
                continue
            seen.add(failure.fence)
            foreign = self._not_held(failure.fence, holder)
            if foreign is not None:
                rejected.append(foreign)
                continue
            taken = self._take(failure.fence, False)
            if taken is None:
                accepted.append(failure.fence)
                continue
            if isinstance(taken, Rejection):
                rejected.append(taken)
                continue
            job, lease = taken
            if failure.cursor is not None and lease.kind is LeaseKind.LEAF and lease.node.is_leaf:
                job.tree.checkpoint_lease(lease, failure.cursor, failure.details)
            if failure.released:
                for node in lease.nodes:
                    job.tree.release(node)
                self._wake(job, now)
            else:
                self._fail_lease(job, lease, failure.message, failure.retryable, now)
            self._touch(job)
            accepted.append(failure.fence)
        return accepted, rejected

    def _fail_lease(
        self, job: JobState, lease: Lease, message: str, retryable: bool, now: float, *, backoff: bool = True
    ) -> None:
        """An attempt at ``lease`` failed: each node it holds fails (and is retried) on its own,
        and the attempt counts once."""
        for i, node in enumerate(lease.nodes):
            self._fail_node(job, node, message, retryable, now, backoff=backoff, counted=not i)

    def _fail_node(
        self,
        job: JobState,
        node: Node,
        message: str,
        retryable: bool,
        now: float,
        *,
        backoff: bool = True,
        counted: bool = True,
    ) -> None:
        # Kept with the leaf and in the event log: bounded, so one huge message cannot break replays.
        message = clip(message, MAX_ERROR_BYTES)
        attempt = node.attempts
        retry_at = None
        if retryable and attempt < job.retry.max_attempts:
            retry_at = now + job.retry.delay(attempt, self._rng) if backoff else now
        self.events.append(
            job.id,
            EventType.NODE_FAILED,
            now,
            start=node.start,
            end=node.end,
            attempt=attempt,
            message=message,
        )
        if job.tree.fail(node, message, retry_at=retry_at, counted=counted):
            self._finish(job, now)
        elif retry_at is not None:
            self._wake(job, now)  # the retry comes due now (an expiry) or at retry_at (a timer)
        else:
            self._lease_ended(job, now)

    def heartbeat(
        self, beats: Iterable[Beat], now: float, holder: str | None = None
    ) -> list[tuple[int, Action, str, int]]:
        """Extend leases, record checkpoints, claims and answers to SHRINK; one directive per
        heartbeat: ``(fence, action, reason, new_end)`` (new_end: SHRINK only).

        ``holder``: the worker heartbeating; a lease another worker holds is neither extended
        nor checkpointed (LOST: it is not this worker's).
        """
        out: list[tuple[int, Action, str, int]] = []
        for beat in beats:
            lease = self.leases.get(beat.fence)
            if lease is not None and holder is not None and lease.holder != holder:
                out.append((beat.fence, Action.LOST, "the lease is held by another worker", 0))
                continue
            if lease is None:
                tomb = self.leases.tombstone(beat.fence)
                if tomb is not None:
                    out.append((beat.fence, tomb.action, tomb.message, 0))
                else:
                    out.append((beat.fence, Action.LOST, "no live lease with this fence", 0))
                continue
            job = self.jobs[lease.job_id]
            node = lease.node
            self.leases.extend(lease, now, job.lease_ttl)
            leaf = lease.kind is LeaseKind.LEAF
            if beat.shrink is not None and leaf:
                self._answered(job, lease, *beat.shrink, now)
            if beat.claimed >= 0 and leaf:
                self._claimed(job, lease, beat.claimed, now)  # before the checkpoint moves done_upto
            if beat.cursor is not None and leaf and node.is_leaf:
                # (A leaf run has no checkpoints: it is retried leaf by leaf, from their starts.)
                job.tree.checkpoint_lease(lease, beat.cursor, beat.details)
                self._touch(job)
            if beat.message and beat.message != node.message:
                job.tree.note_message(node, clip(beat.message, MAX_MESSAGE_BYTES))
                self._dirty_jobs.add(job.id)
            if job.release_requested and job.status is JobStatus.PAUSED:
                out.append((beat.fence, Action.RELEASE, "job paused with release", 0))
            elif lease.proposed:
                # Asked again until answered: the first SHRINK may have been lost with a stream.
                out.append((beat.fence, Action.SHRINK, "", lease.proposed))
            else:
                out.append((beat.fence, Action.CONTINUE, "", 0))
        return out

    # -- dynamic splits -------------------------------------------------------------------------

    def _claimed(self, job: JobState, lease: Lease, claimed: int, now: float) -> None:
        """A splittable handler's first unclaimed position. The claim rate is measured from the
        grant when the first report shows progress (the time since may include a wait in the
        worker's prefetch: the rate comes out low, so proposals keep more for the holder), else
        from the first report."""
        start = lease.node.done_upto  # where this attempt began
        claimed = min(max(claimed, lease.node.start), lease.end)
        if lease.claimed < 0:
            if claimed > start:
                lease.claim_base, lease.claim_base_at = start, lease.granted_at
            else:
                lease.claim_base, lease.claim_base_at = claimed, now
        lease.claimed, lease.claimed_at = claimed, now
        if job.rebalance:
            self._splittable[lease.fence] = lease

    def _answered(self, job: JobState, lease: Lease, new_end: int, accepted: bool, now: float) -> None:
        """The holder's answer to a SHRINK: an accepted one is applied (once: it comes with every
        later heartbeat, and may come after a restart lost the split), a refused one forgotten."""
        if new_end == lease.proposed:
            lease.proposed = 0
        if accepted and new_end < lease.end and not self._shrunk_to(job, lease, new_end, now):
            log.warning(
                "worker %s accepted to shrink lease %d to %d, which is no split point of it: ignored",
                lease.holder,
                lease.fence,
                new_end,
                extra={"job_id": job.id, "fence": lease.fence, "worker_id": lease.holder},
            )

    def _shrunk_to(self, job: JobState, lease: Lease, new_end: int, now: float) -> bool:
        """Shrink ``lease`` to ``new_end`` if that is a split point of it; returns whether it was."""
        tree = job.tree
        if not tree.may_shrink(lease, new_end):
            return False
        start, end = lease.node.start, lease.end
        tree.shrink(lease, new_end)
        self.events.append_nodes(job.id, EventType.NODE_SPLIT, now, [(start, end, new_end)])
        log.info(
            "lease %d of job %s split at %d: [%d, %d) kept, [%d, %d) pending",
            lease.fence,
            job.id,
            new_end,
            start,
            new_end,
            new_end,
            end,
            extra={"job_id": job.id, "fence": lease.fence, "worker_id": lease.holder},
        )
        self._touch(job)
        self._wake(job, now)
        return True

    @property
    def splittable(self) -> bool:
        """Whether any lease was heartbeated as splittable (it may since have ended)."""
        return bool(self._splittable)

    def propose_splits(self, queues: Collection[str], now: float) -> list[tuple[str, int, int]]:
        """Workers of ``queues`` wait for work: when a queue has nothing pending, propose to split
        the running splittable leaf of it with the most work left. Returns ``(holder, fence,
        new_end)`` of each proposal (the lease remembers it until answered).

        Work left is the unclaimed width over the holder's claim rate. The holder keeps at least
        a heartbeat interval of work beyond its estimated position (so that it has not claimed
        past the proposal when it arrives), and the part given away must be worth at least
        ``SPLIT_HEARTBEATS`` intervals; no node narrower than the job's min_range_size is made.
        """
        best: tuple[Lease, int] | None = None
        best_left = 0.0
        busy: dict[str, bool] = {}
        for fence, lease in list(self._splittable.items()):
            job = self.jobs.get(lease.job_id)
            if self.leases.get(fence) is not lease or job is None:
                del self._splittable[fence]
                continue
            queue = job.queue
            if lease.proposed or queue not in queues or job.status is not JobStatus.RUNNING:
                continue
            if queue not in busy:
                busy[queue] = any(
                    other.queue == queue and other.status in LEASABLE and other.tree.has_work(now)
                    for other in self.jobs.values()
                )
            if busy[queue]:
                continue
            elapsed = lease.claimed_at - lease.claim_base_at
            if elapsed <= 0 or lease.claimed <= lease.claim_base:
                continue  # no rate measured yet
            rate = (lease.claimed - lease.claim_base) / elapsed
            interval = job.lease_ttl / HEARTBEAT_FRACTION
            position = lease.claimed + rate * (now - lease.claimed_at)
            end = lease.end
            new_end = job.tree.split_end(lease, math.ceil(position + rate * interval))
            if not new_end or (end - new_end) / rate < SPLIT_HEARTBEATS * interval:
                continue
            left = (end - position) / rate
            if left > best_left:
                best, best_left = (lease, new_end), left
        if best is None:
            return []
        lease, new_end = best
        lease.proposed = new_end
        return [(lease.holder, lease.fence, new_end)]

    # -- schedules ------------------------------------------------------------------------------

    def fire_schedules(self, now: float) -> None:
        """Fire the schedules' ticks due by ``now``, as their overlap policies say.

        A tick's job and the schedule record saying it fired go out in the same
        :meth:`take_changes`, so a restart never fires a tick again.
        """
        for record in self.schedules.due(now):
            ticks, newest = due_ticks(record, now)
            if newest is None:
                continue
            job_id: str | None = None
            for tick in ticks:
                job_id = self._fire(record, tick, now) or job_id
            self.schedules.fired(record, newest, job_id)

    def trigger_schedule(self, schedule_id: str, now: float) -> JobState:
        """Fire a tick of the schedule now, whatever its overlap policy and paused flag say."""
        record = self.schedules.get(schedule_id)
        job, _ = self.create_job(job_spec(record, int(now)), now)
        self.schedules.triggered(record, job.id)
        return job

    def _fire(self, record: schedules_pb2.Schedule, tick: int, now: float) -> str | None:
        """Create the job of ``record``'s tick at ``tick``; its id, or None when the tick is skipped."""
        running = [
            job for job in self.jobs.values() if not job.finished and job.spec.labels.get(LABEL) == record.id
        ]
        if running and record.overlap == schedules_pb2.OVERLAP_CANCEL_PREVIOUS:
            for job in running:
                self.cancel(job.id, now, f"schedule '{record.id}' fired its next tick")
        elif running and record.overlap != schedules_pb2.OVERLAP_ALLOW:
            log.info("schedule %s: tick skipped, job %s still runs", record.id, running[0].id)
            return None
        try:
            job, _ = self.create_job(job_spec(record, tick), now)
        except CoordinatorError as err:
            # A template the coordinator no longer takes (a lower limit since): skip, do not retry.
            log.warning("schedule %s: tick not fired: %s", record.id, err)
            return None
        return job.id

    # -- time -----------------------------------------------------------------------------------

    def tick(self, now: float) -> tuple[int, int]:
        """Fire due schedules, expire leases, fail jobs past their deadline, emit coalesced stats events.

        Returns the number of leases taken back: (expired without a heartbeat, timed out).
        """
        self.fire_schedules(now)
        expired: dict[tuple[str, str], int] = {}
        timeouts = 0
        for lease, timed_out in self.leases.due(now):
            job = self.jobs.get(lease.job_id)
            if job is None:
                continue
            if timed_out:
                timeouts += 1
                message = f"leaf timed out after {job.leaf_timeout:g} s"
                self._fail_lease(job, lease, message, True, now)
            else:
                # A dead worker says nothing about the leaf: run it again at once, no backoff.
                message = f"lease expired: no heartbeat within {job.lease_ttl:g} s"
                self._fail_lease(job, lease, message, True, now, backoff=False)
            self.leases.revoke(lease, Action.LOST, Reject.STALE_FENCE, message, now + job.lease_ttl * 2)
            key = (lease.holder, job.id)
            expired[key] = expired.get(key, 0) + 1
            self._touch(job)
        for (holder, job_id), count in expired.items():
            # One line per worker and job: a dead worker with hundreds of prefetched leases is one event.
            log.info(
                "%d lease(s) of job %s held by %s expired or timed out",
                count,
                job_id,
                holder or "?",
                extra={"job_id": job_id, "worker_id": holder},
            )
        for job in self.jobs.values():
            if job.deadline and not job.finished and job.deadline <= now:
                job.finish(JobStatus.FAILED, now, "deadline exceeded")
                self._revoke_all(job, Action.CANCEL, "the job failed: deadline exceeded", now)
                self._ended(job, EventType.JOB_FAILED, now)
        # Timers that came due (retries, rate limits, run_after); and while jobs have work, a round
        # per tick offers it again (grants given back unsent are not offered at once, see unsent).
        if self.scheduler.tick(now) or self.scheduler.active:
            self._work_available()
        self.leases.forget_tombstones(now)
        if self._splittable and now >= self._swept_at:
            # Ended leases leave their entry; sweep them out now and then (not per completion).
            self._swept_at = now + 1.0
            live = self.leases.get
            self._splittable = {f: lease for f, lease in self._splittable.items() if live(f) is lease}
        for job_id in tuple(self._stats_changed):
            if now - self._stats_sent.get(job_id, 0.0) >= STATS_INTERVAL:
                self._stats_changed.discard(job_id)
                self._stats_sent[job_id] = now
                job = self.jobs.get(job_id)
                # A finished job's last event is the one that finished it, with its final stats.
                if job is not None and not job.finished:
                    self.events.append(job.id, EventType.STATS_UPDATED, now, stats=self.stats(job))
        taken = sum(expired.values())
        return taken - timeouts, timeouts

    def stats(self, job: JobState) -> Stats:
        """The job's stats and status."""
        t = job.tree
        return Stats(
            t.total_nodes,
            t.pending_nodes,
            t.running_nodes,
            t.done_nodes,
            t.skipped_nodes,
            t.error_nodes,
            t.range_processed,
            t.range_skipped,
            t.range_total,
            self.leases.count(job.id),
            t.failed_attempts,
            t.dynamic_splits,
            int(job.status),
        )

    def _event(self, job: JobState, type_: EventType, now: float, message: str = "") -> None:
        """A job event (a status change): it carries the stats, and its batch is synced."""
        self._touch(job)
        self._status_changed = True
        self.events.append(job.id, type_, now, message=message, stats=self.stats(job))
        # A job event carries the stats, so a coalesced STATS_UPDATED now would say nothing new.
        self._stats_changed.discard(job.id)
        self._stats_sent[job.id] = now

    # -- persistence ----------------------------------------------------------------------------

    def take_changes(self) -> Changes:
        """Everything changed since the last call, for the store to write as one batch.

        The caller must write every batch it takes, in order, before showing any of it.
        """
        changes = Changes(deleted_jobs=self._deleted_jobs, status_changed=self._status_changed)
        self._deleted_jobs = []
        self._status_changed = False
        for job_id in self._dirty_jobs:
            job = self.jobs.get(job_id)
            if job is None:
                continue
            dirty, deleted = job.tree.take_changes()
            if dirty:
                changes.nodes[job_id] = dirty
            if deleted:
                changes.deleted_spans[job_id] = deleted
            changes.jobs[job_id] = job_to_proto(job, self.stats(job))
        self._dirty_jobs.clear()
        changes.events = self.events.drain()
        changes.fence_limit = self.fences.pending_limit()
        changes.accepted_pages, changes.dropped_pages = self.leases.take_pages(self.fences.next)
        changes.queues = self.queues.take_changes()
        changes.schedules = self.schedules.take_changes()
        return changes

    def written(self, changes: Changes) -> None:
        """The store wrote ``changes`` (from :meth:`take_changes`): use their fences, show their events."""
        if changes.fence_limit is not None:
            self.fences.made_durable(changes.fence_limit)
        self.events.published(changes.events.published)

    def restore(
        self, stored: Iterable[StoredJob], now: float, accepted: dict[int, bytes] | None = None
    ) -> None:
        """Rebuild state loaded from the store; live leases get a fresh TTL from ``now``.

        ``accepted``: the stored pages of the accepted-fence bitmap.
        """
        if accepted:
            self.leases.restore_accepted(accepted)
        for item in stored:
            job, leases = job_from_stored(item, now)
            self._add(job, now)
            self.events.restore(job.id, item.last_seq, item.events, item.segments)
            self.leases.restore(leases)
            if job.status in FINISHED:
                self._dequeue(job)
        self._dirty_jobs.clear()
