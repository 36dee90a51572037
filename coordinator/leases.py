"""Leases: fencing tokens, the one record of each live lease, expiry, and tombstones.

Pure logic with the clock passed in. ``LeaseTable`` is the only owner of a
lease: who holds it, when it was granted, when it expires or times out, and
what it is (a leaf run or a probe). The tree's node only points at its
current lease; a lease taken back (cancel, expiry, timeout, delete) leaves a
tombstone here for a while, so a late heartbeat or result learns *why* it
was refused.

A lease is named by its fence, a number unique over the coordinator's whole
life. Fences are handed out from a block whose upper bound is made durable
before any fence of it is used, so a restart never hands out a fence twice
(a worker holding an old fence is then always rejected, never mistaken for
the new holder).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from parcelo.coordinator.tree import Node

FENCE_BLOCK = 1 << 20
"""Fences reserved per durable write of the high-water mark."""

PAGE_BITS = 13
"""A page of the accepted-fence bitmap covers 2^13 fences (1 KiB)."""

ACCEPTED_WINDOW = 1 << 22
"""Fences below ``next fence - ACCEPTED_WINDOW`` are forgotten by the accepted-fence bitmap."""


class LeaseKind(IntEnum):
    """What a lease asks of its holder; values equal ``parcelo.v1.LeaseKind``."""

    LEAF = 1
    PROBE = 2


class Action(IntEnum):
    """Heartbeat directives; values equal ``parcelo.v1.DirectiveAction``."""

    CONTINUE = 1
    CANCEL = 2
    SHRINK = 3
    LOST = 4
    RELEASE = 5
    REVOKE = 6


class Reject(IntEnum):
    """Why a result was refused; values equal ``parcelo.v1.RejectReason``."""

    STALE_FENCE = 1
    JOB_GONE = 2
    INVALID_RESULT = 3
    NOT_HOLDER = 4


class Rejection(NamedTuple):
    """A result the core refused: the fence, why, and a message for the worker."""

    fence: int
    reason: Reject
    message: str


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
class LeafFailure:
    """A leaf of a leaf run that failed, as reported with the run's completion."""

    start: int
    end: int
    message: str
    permanent: bool = False


@dataclass(frozen=True, slots=True)
class Beat:
    """One lease's heartbeat: an optional checkpoint and progress message; for a splittable
    handler, its first unclaimed position (-1: it does not claim) and its answer to a SHRINK
    directive, ``(new_end, accepted)``."""

    fence: int
    cursor: int | None = None
    details: bytes = b""
    message: str = ""
    claimed: int = -1
    shrink: tuple[int, bool] | None = None


class FenceAllocator:
    """Hands out fences below a durable high-water mark and asks for the next block early."""

    def __init__(self, durable_limit: int) -> None:
        self.next = durable_limit
        self.durable_limit = durable_limit
        # The limit we asked the store to make durable (written with the next commit).
        self.wanted_limit = durable_limit + FENCE_BLOCK

    def allocate(self) -> int | None:
        """The next fence, or None when the reserved block is used up until a commit lands."""
        fence = self.next
        if fence >= self.durable_limit:
            return None
        self.next = fence + 1
        if self.durable_limit - fence < FENCE_BLOCK // 2 and self.wanted_limit <= self.durable_limit:
            self.wanted_limit = self.durable_limit + FENCE_BLOCK
        return fence

    def pending_limit(self) -> int | None:
        """A new high-water mark to persist, if one is wanted."""
        return self.wanted_limit if self.wanted_limit > self.durable_limit else None

    def made_durable(self, limit: int) -> None:
        """The store confirmed ``limit`` is durable."""
        self.durable_limit = max(self.durable_limit, limit)


class Lease:
    """One live lease: the single record of who holds which node of which job, and until when.

    A plain ``__slots__`` class: one is created per leaf run on the hot path.

    A dynamic split leaves a lease holding several nodes (the kept part of the leaf spans
    them): ``node`` is the first, ``more`` the others, in range order.
    """

    __slots__ = (
        "__dict__",
        "expires_at",
        "fence",
        "granted_at",
        "holder",
        "job_id",
        "kind",
        "node",
        "queue",
        "timeout_at",
    )

    # Rarely set (class defaults, so a grant does not pay for them): the nodes after ``node``
    # when a dynamic split left the lease several; and for a splittable handler, the first
    # position it had not claimed (-1: the handler does not claim) and when it said so; the
    # end proposed in a SHRINK directive not yet answered (0: none).
    more: tuple[Node, ...] = ()
    claimed = -1
    claimed_at = 0.0
    # The first claim report: the claim rate is measured from it.
    claim_base = 0
    claim_base_at = 0.0
    proposed = 0

    def __init__(
        self,
        fence: int,
        job_id: str,
        node: Node,
        holder: str,
        kind: LeaseKind,
        granted_at: float,
        expires_at: float,
        timeout_at: float,
        queue: str = "",
    ) -> None:
        self.fence = fence
        self.job_id = job_id
        # The job's queue: the table counts leaf leases per queue (queue concurrency limits).
        self.queue = queue
        self.node = node
        # The worker id its holder gave in Hello ("" when unknown, e.g. restored from an old record).
        self.holder = holder
        self.kind = kind
        self.granted_at = granted_at
        # Heartbeats move this; the lease expires when it passes.
        self.expires_at = expires_at
        # The leaf timeout: the attempt ends then whatever the heartbeats say (0: none).
        self.timeout_at = timeout_at

    @property
    def probe(self) -> bool:
        return self.kind is LeaseKind.PROBE

    @property
    def nodes(self) -> tuple[Node, ...]:
        """Every node the lease holds, in range order."""
        return (self.node, *self.more)

    @property
    def end(self) -> int:
        """Where the held part ends (the leaf's end unless a dynamic split shrank it)."""
        return self.more[-1].end if self.more else self.node.end

    @property
    def due(self) -> float:
        """When the table must look at this lease again."""
        if self.timeout_at:
            return min(self.expires_at, self.timeout_at)
        return self.expires_at

    def __repr__(self) -> str:
        return f"Lease({self.fence} {self.kind.name} {self.job_id} {self.node!r} by {self.holder!r})"


class Tombstone(NamedTuple):
    """What is left of a lease taken back: the directive a late heartbeat gets, and until when."""

    action: Action
    reason: Reject
    message: str
    forget_at: float


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


class LeaseTable:
    """Live leases by fence, per-job counts, tombstones, and a heap of due times.

    Heartbeats only move ``expires_at``; the heap entry is corrected lazily
    when it comes up, so a heartbeat costs O(1) and an expiry O(log n).
    """

    def __init__(self) -> None:
        self._live: dict[int, Lease] = {}
        self._per_job: dict[str, int] = {}
        # Live leaf leases (probes left out) per job and per queue: what concurrency limits count.
        self._leaves_per_job: dict[str, int] = {}
        self._leaves_per_queue: dict[str, int] = {}
        self._heap: list[tuple[float, int]] = []
        self._tombstones: dict[int, Tombstone] = {}
        # Fences whose result was accepted, as two bitmaps (successes, failures) in pages
        # (page number * 2 + kind -> bits), so that a result sent again (after a reconnect or a
        # restart) is told apart from a stale one. Pages are written with the batch that accepts
        # the result (see ``take_pages``).
        self._accepted: dict[int, bytearray] = {}
        self._dirty_pages: set[int] = set()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, fence: int) -> bool:
        return fence in self._live

    def count(self, job_id: str) -> int:
        """Live leases of one job."""
        return self._per_job.get(job_id, 0)

    def leaf_counts(self) -> dict[str, int]:
        """Live leaf leases (probes left out) per job id (a copy: for metrics)."""
        return dict(self._leaves_per_job)

    def leaf_count(self, job_id: str) -> int:
        """Live leaf leases of one job, probes left out."""
        return self._leaves_per_job.get(job_id, 0)

    def queue_leaf_count(self, queue: str) -> int:
        """Live leaf leases of the jobs of one queue, probes left out."""
        return self._leaves_per_queue.get(queue, 0)

    def holder_counts(self) -> dict[str, int]:
        """Live leases (leaves and probes) per holder, for the worker registry: O(live leases)."""
        counts: dict[str, int] = {}
        for lease in self._live.values():
            counts[lease.holder] = counts.get(lease.holder, 0) + 1
        return counts

    def grant(
        self,
        fence: int,
        job_id: str,
        node: Node,
        holder: str,
        kind: LeaseKind,
        now: float,
        ttl: float,
        timeout: float,
        queue: str = "",
    ) -> Lease:
        """Record a new lease of ``node`` under ``fence``; ``timeout`` 0 means no leaf timeout."""
        lease = Lease(
            fence, job_id, node, holder, kind, now, now + ttl, now + timeout if timeout > 0 else 0.0, queue
        )
        self._add(lease)
        heap = self._heap
        heapq.heappush(heap, (lease.due, fence))
        # Entries of finished leases wait in the heap until their due time; when they outnumber
        # the live ones, rebuild it (O(live), so O(1) amortised) to keep memory at the live leases.
        if len(heap) > 2 * len(self._live) + 4096:
            self._heap = [(live.due, f) for f, live in self._live.items()]
            heapq.heapify(self._heap)
        return lease

    def restore(self, leases: list[Lease]) -> None:
        """Add leases rebuilt at start: one heapify instead of a push each."""
        for lease in leases:
            self._add(lease)
        self._heap.extend((lease.due, lease.fence) for lease in leases)
        heapq.heapify(self._heap)

    def _add(self, lease: Lease) -> None:
        self._live[lease.fence] = lease
        job_id = lease.job_id
        self._per_job[job_id] = self._per_job.get(job_id, 0) + 1
        if lease.kind is LeaseKind.LEAF:
            self._leaves_per_job[job_id] = self._leaves_per_job.get(job_id, 0) + 1
            self._leaves_per_queue[lease.queue] = self._leaves_per_queue.get(lease.queue, 0) + 1

    def _remove(self, lease: Lease) -> None:
        del self._live[lease.fence]
        _decrement(self._per_job, lease.job_id)
        if lease.kind is LeaseKind.LEAF:
            _decrement(self._leaves_per_job, lease.job_id)
            _decrement(self._leaves_per_queue, lease.queue)

    def get(self, fence: int) -> Lease | None:
        """The live lease with this fence, or None when it ended or never existed."""
        return self._live.get(fence)

    def take(self, fence: int, success: bool) -> Lease | None:
        """Remove and return the live lease with this fence: its result (a success, or a failure
        or release) is accepted."""
        lease = self._live.get(fence)
        if lease is not None:
            self._remove(lease)
            key = (fence >> PAGE_BITS) << 1 | success
            bits = self._accepted.get(key)
            if bits is None:
                bits = self._accepted[key] = bytearray(1 << (PAGE_BITS - 3))
            offset = fence & ((1 << PAGE_BITS) - 1)
            bits[offset >> 3] |= 1 << (offset & 7)
            self._dirty_pages.add(key)
        return lease

    def discard(self, fence: int) -> Lease | None:
        """Remove and return the live lease with this fence, as if it had never been granted."""
        lease = self._live.get(fence)
        if lease is not None:
            self._remove(lease)
        return lease

    def was_accepted(self, fence: int, success: bool) -> bool:
        """Whether a result of this kind for this (no longer live) fence was accepted, within the window."""
        bits = self._accepted.get((fence >> PAGE_BITS) << 1 | success)
        if bits is None:
            return False
        offset = fence & ((1 << PAGE_BITS) - 1)
        return bool(bits[offset >> 3] & (1 << (offset & 7)))

    def take_pages(self, next_fence: int) -> tuple[dict[int, bytes], list[int]]:
        """Bitmap pages changed since the last call (to write) and pages now out of the window
        below ``next_fence`` (to delete), by page key (page number * 2 + success)."""
        lowest = (max(0, next_fence - ACCEPTED_WINDOW) >> PAGE_BITS) << 1
        # Pages come in about ascending order (fences grow), so the old ones are first: stop at
        # the first page still in the window (a rare late one goes at a later call).
        old: list[int] = []
        for page in self._accepted:
            if page >= lowest:
                break
            old.append(page)
        for page in old:
            del self._accepted[page]
            self._dirty_pages.discard(page)
        changed = {page: bytes(self._accepted[page]) for page in self._dirty_pages}
        self._dirty_pages = set()
        return changed, old

    def restore_accepted(self, pages: dict[int, bytes]) -> None:
        """The stored bitmap pages (start-up)."""
        self._accepted = {page: bytearray(bits) for page, bits in pages.items()}

    def revoke(self, lease: Lease, action: Action, reason: Reject, message: str, forget_at: float) -> None:
        """Take ``lease`` back; until ``forget_at`` its fence answers ``action`` / ``reason``."""
        if self._live.get(lease.fence) is lease:
            self._remove(lease)
        self._tombstones[lease.fence] = Tombstone(action, reason, message, forget_at)

    def tombstone(self, fence: int) -> Tombstone | None:
        """Why a fence that is no longer live was taken back, while that is remembered."""
        return self._tombstones.get(fence)

    def extend(self, lease: Lease, now: float, ttl: float) -> None:
        """A heartbeat: the lease now expires ``ttl`` after ``now``."""
        lease.expires_at = now + ttl

    def due(self, now: float) -> Iterator[tuple[Lease, bool]]:
        """Leases whose TTL or leaf timeout has passed, removed from the table.

        Yields ``(lease, timed_out)``: timed_out is True when the leaf timeout,
        rather than a missed heartbeat, ended it. The caller revokes each one.
        """
        heap = self._heap
        live = self._live
        while heap and heap[0][0] <= now:
            _, fence = heapq.heappop(heap)
            lease = live.get(fence)
            if lease is None:
                continue
            timed_out = bool(lease.timeout_at) and lease.timeout_at <= now
            if lease.expires_at > now and not timed_out:
                heapq.heappush(heap, (lease.due, fence))
                continue
            self._remove(lease)
            yield lease, timed_out

    def forget_tombstones(self, now: float) -> None:
        """Drop tombstones whose time is up."""
        if self._tombstones:
            for fence in [f for f, t in self._tombstones.items() if t.forget_at <= now]:
                del self._tombstones[fence]

    def of_job(self, job_id: str) -> list[Lease]:
        """Live leases of one job (O(leases); used by pause, cancel and delete only)."""
        if not self._per_job.get(job_id):
            return []
        return [lease for lease in self._live.values() if lease.job_id == job_id]
