"""Lease bookkeeping: fencing tokens and expiry, as pure logic with the clock passed in.

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

from parcelo.coordinator.tree import Node, Status

FENCE_BLOCK = 1 << 20
"""Fences reserved per durable write of the high-water mark."""


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


@dataclass(slots=True)
class Lease:
    """A live lease: the node and the job it belongs to."""

    job_id: str
    node: Node


class LeaseTable:
    """Live leases by fence, and a heap of the times they must be looked at again.

    Heartbeats only move ``node.expires_at``; the heap entry is corrected
    lazily when it comes up, so a heartbeat costs O(1) and an expiry O(log n).
    """

    def __init__(self) -> None:
        self._by_fence: dict[int, Lease] = {}
        self._heap: list[tuple[float, int]] = []

    def __len__(self) -> int:
        return len(self._by_fence)

    def __contains__(self, fence: int) -> bool:
        return fence in self._by_fence

    def add(self, job_id: str, node: Node) -> None:
        self._by_fence[node.fence] = Lease(job_id, node)
        heap = self._heap
        heapq.heappush(heap, (_due(node), node.fence))
        # Entries of finished leases wait in the heap until their due time; when they outnumber
        # the live ones, rebuild it (O(live), so O(1) amortised) to keep memory at the live leases.
        if len(heap) > 2 * len(self._by_fence) + 4096:
            self._heap = [(_due(lease.node), fence) for fence, lease in self._by_fence.items()]
            heapq.heapify(self._heap)

    def add_many(self, job_id: str, nodes: list[Node]) -> None:
        """Add many leases at once (restart): one heapify instead of a push each."""
        by_fence = self._by_fence
        for node in nodes:
            by_fence[node.fence] = Lease(job_id, node)
        self._heap.extend((_due(node), node.fence) for node in nodes)
        heapq.heapify(self._heap)

    def get(self, fence: int) -> Lease | None:
        """The live lease with this fence, or None when it is stale or unknown."""
        lease = self._by_fence.get(fence)
        if lease is None or lease.node.fence != fence or lease.node.status is not Status.RUNNING:
            return None
        return lease

    def pop(self, fence: int) -> Lease | None:
        """Remove and return the live lease with this fence."""
        lease = self.get(fence)
        if lease is not None:
            del self._by_fence[fence]
        else:
            self._by_fence.pop(fence, None)
        return lease

    def due(self, now: float) -> Iterator[tuple[Lease, bool]]:
        """Leases whose TTL or leaf timeout has passed, removed from the table.

        Yields ``(lease, timed_out)``: timed_out is True when the leaf timeout,
        rather than a missed heartbeat, ended it.
        """
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, fence = heapq.heappop(heap)
            lease = self.get(fence)
            if lease is None:
                self._by_fence.pop(fence, None)
                continue
            node = lease.node
            timed_out = bool(node.timeout_at) and node.timeout_at <= now
            if node.expires_at > now and not timed_out:
                heapq.heappush(heap, (_due(node), fence))
                continue
            del self._by_fence[fence]
            yield lease, timed_out

    def of_job(self, job_id: str) -> list[Lease]:
        """Live leases of one job (O(leases); used by pause, cancel and delete only)."""
        return [
            lease
            for lease in self._by_fence.values()
            if lease.job_id == job_id and self.get(lease.node.fence)
        ]


def _due(node: Node) -> float:
    if node.timeout_at:
        return min(node.expires_at, node.timeout_at)
    return node.expires_at
