"""The range tree of one job: splitting, lease-able frontier, status propagation and collapse.

Pure logic over plain objects; the clock is passed in. The tree is split
lazily (a node is split only when a worker needs work from it) and collapsed
eagerly (when both children of a node are done or skipped, their records go
and the parent keeps the summary), so memory and storage follow the frontier
of the job, not the width of its range.

Leaves are handed out deeper-first, then by start, as in the seed scheduler:
with lazy splitting this sweeps the range from left to right.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from enum import IntEnum

from parcelo.coordinator.leases import Lease, LeaseKind
from parcelo.coordinator.results import Reduce, combine, encode


class Status(IntEnum):
    """Node status; values equal ``parcelo.v1.NodeStatus``."""

    PENDING = 1
    RUNNING = 2
    DONE = 3
    SKIPPED = 4
    ERROR = 5


TERMINAL = frozenset({Status.DONE, Status.SKIPPED, Status.ERROR})
FINISHED_OK = frozenset({Status.DONE, Status.SKIPPED})


def split_point(start: int, end: int) -> int:
    """Where a node splits: ``mid = start + (end - start) // 2`` (part of the wire contract)."""
    return start + (end - start) // 2


def grid_point(start: int, end: int, at_least: int, min_size: int) -> int:
    """The smallest split point of ``[start, end)`` by the rule that is at least ``at_least``
    (0: none), splitting no node narrower than ``2 * min_size``.

    The split points of a node are its ``mid``, then those of its halves, recursively: a binary
    search down the implied tree, one step per level.
    """
    best = 0
    lo, hi = start, end
    while hi - lo >= 2 * min_size:
        mid = split_point(lo, hi)
        if mid >= at_least:
            best = mid
            hi = mid
        else:
            lo = mid
    return best


def leaf_at(start: int, end: int, position: int, max_range_size: int) -> tuple[int, int]:
    """The leaf by the rule of the node ``[start, end)`` that holds ``position`` (inside it)."""
    while end - start > max_range_size:
        mid = split_point(start, end)
        if position < mid:
            end = mid
        else:
            start = mid
    return start, end


def leaf_count(width: int, max_range_size: int) -> int:
    """How many leaves a node ``width`` ids wide becomes under the split rule (1 if it is a leaf).

    The halves of a width ``w`` are ``w // 2`` and ``w - w // 2``, so the nodes of one level have
    at most two widths, ``low`` and ``low + 1``: the count is exact in one step per level (at
    most 64), not one per leaf, so a scrape can count a job of 2^40 leaves.
    """
    low, n_low, n_high = width, 1, 0
    leaves = 0
    while n_low or n_high:
        if low + 1 <= max_range_size:
            return leaves + n_low + n_high
        if low <= max_range_size:
            # Only the wider nodes of this level split further.
            leaves += n_low
            n_low = 0
        half = low // 2
        if low % 2 == 0:
            # low = 2h splits into h and h; low + 1 = 2h + 1 into h and h + 1.
            n_low, n_high = 2 * n_low + n_high, n_high
        else:
            # low = 2h + 1 splits into h and h + 1; low + 1 = 2h + 2 into h + 1 and h + 1.
            n_low, n_high = n_low, n_low + 2 * n_high
        low = half
    return leaves


class Node:
    """One node of the range tree; a leaf when ``end - start <= max_range_size``.

    A plain ``__slots__`` class rather than a dataclass: millions are created
    and touched on the lease hot path.
    """

    __slots__ = (
        "__dict__",
        "attempts",
        "depth",
        "end",
        "is_leaf",
        "lease",
        "left",
        "parent",
        "persisted",
        "probed",
        "queued",
        "right",
        "start",
        "status",
    )

    # Rarely set: class defaults, so creating a node (twice per leaf) does not pay for them;
    # the instance __dict__ only appears for the few nodes that set one.
    # Checkpoint: first id not yet done (0 when none was reported), and its details.
    cursor = 0
    details = b""
    last_error = ""
    message = ""
    # Done nodes of a job with a reduce: the combined result of the leaves below (None: none).
    result: object = None
    # Retry backoff: not leased again before this time.
    not_before = 0.0
    # Adaptive leaf size: handler seconds and ids of the leaves finished below this node.
    cost = 0.0
    ids = 0

    def __init__(
        self, start: int, end: int, depth: int, parent: Node | None, is_leaf: bool, probed: bool
    ) -> None:
        self.start = start
        self.end = end
        self.depth = depth
        self.parent = parent
        self.is_leaf = is_leaf
        self.status = Status.PENDING
        self.left: Node | None = None
        self.right: Node | None = None
        # Pruning: whether should_process already said yes for this node.
        self.probed = probed
        self.attempts = 0
        # The current lease (owned by the LeaseTable), while the node is leased.
        self.lease: Lease | None = None
        # Whether a record of this node may exist in the store (a delete is needed when it goes).
        self.persisted = False
        # Whether an entry for this node sits in the pending heap.
        self.queued = False

    @property
    def key(self) -> tuple[int, int]:
        return (self.start, self.end)

    @property
    def width(self) -> int:
        return self.end - self.start

    @property
    def done_upto(self) -> int:
        """First id not yet done, from the last checkpoint (``start`` when none)."""
        return self.cursor if self.cursor > self.start else self.start

    def __repr__(self) -> str:
        return f"Node([{self.start}, {self.end}) {self.status.name} d={self.depth})"


def _node(start: int, end: int, depth: int, parent: Node | None, max_range_size: int, probed: bool) -> Node:
    """A new pending node; a leaf when it is at most ``max_range_size`` wide."""
    return Node(start, end, depth, parent, end - start <= max_range_size, probed)


class RangeTree:
    """The range tree of one job with its counters.

    Mutating methods remember what changed (nodes to write, node spans to
    delete, nodes split), which the caller takes with :meth:`take_changes`
    and :meth:`take_splits`. A leased node points at its lease (owned by the
    ``LeaseTable``); the tree sets and clears that pointer and nothing else of it.
    """

    def __init__(
        self,
        start: int,
        end: int,
        max_range_size: int,
        *,
        pruning: bool = False,
        reduce: Reduce = Reduce.NONE,
        min_range_size: int = 1,
        target_leaf_seconds: float = 0.0,
    ) -> None:
        if end <= start or max_range_size <= 0:
            raise ValueError("need start < end and max_range_size > 0")
        self.max_range_size = max_range_size
        # No split (dynamic or adaptive) makes a node narrower than this.
        self.min_range_size = max(1, min_range_size)
        # Adaptive leaf size (0: off): leaves estimated to take longer are split before a lease.
        self.target_leaf_seconds = target_leaf_seconds
        self.pruning = pruning
        self.reduce = reduce
        # The reduce of every finished leaf's result so far: what the done nodes hold, combined.
        self.result: object = None
        # Its JSON text, and an upper bound of that text's bytes (see ``result_size``).
        self._result_text: str | None = ""
        self._result_bound = 0
        self.range_total = end - start
        self.running_nodes = 0
        self.done_nodes = 0
        self.skipped_nodes = 0
        self.error_nodes = 0
        self.range_processed = 0
        self.range_skipped = 0
        self.failed_attempts = 0
        self.dynamic_splits = 0
        self._dirty: set[Node] = set()
        self._deleted: list[tuple[int, int]] = []
        self._heap: list[tuple[int, int, int, Node]] = []
        self._delayed: list[tuple[float, int, Node]] = []
        self._seq = itertools.count()
        # Nodes split since the last ``take_splits`` (the core turns them into NODE_SPLIT events).
        self._splits: list[tuple[int, int, int]] = []
        # The node the last ``next_work`` returned without queueing it (see there).
        self._held: Node | None = None
        self.root = _node(start, end, 0, None, max_range_size, not pruning)
        self.total_nodes = self.pending_nodes = 1
        self._push(self.root)
        self._dirty.add(self.root)

    # -- construction ---------------------------------------------------------------------------

    def _push(self, node: Node) -> None:
        if not node.queued:
            node.queued = True
            heapq.heappush(self._heap, (-node.depth, node.start, next(self._seq), node))

    def _mark(self, node: Node) -> None:
        self._dirty.add(node)

    def take_changes(self) -> tuple[list[Node], list[tuple[int, int]]]:
        """Nodes to write and node spans to delete since the last call; the nodes count as stored now.

        The caller must hand both to the store (in this order of calls: a span deleted here may
        be written again by a later call).
        """
        dirty = list(self._dirty)
        for node in dirty:
            node.persisted = True
        deleted = self._deleted
        self._dirty = set()
        self._deleted = []
        return dirty, deleted

    def take_splits(self) -> list[tuple[int, int, int]]:
        """``(start, end, 0)`` of every node split since the last call."""
        splits = self._splits
        if splits:
            self._splits = []
        return splits

    def note_message(self, node: Node, message: str) -> None:
        """A leased leaf's progress message changed."""
        node.message = message
        self._mark(node)

    # -- handing out work -----------------------------------------------------------------------

    def pending_leaves(self) -> int:
        """Leaves waiting to be leased, a pending node counted as the leaves it will split into.

        Every pending node sits in exactly one of the pending heap, the retry heap (backoff) or
        ``_held``; entries of nodes no longer pending are skipped. O(pending nodes), the
        frontier: for metrics read every few seconds, never for the hot path.
        """
        size = self.max_range_size
        total = 0
        held = self._held
        if held is not None and held.status is Status.PENDING:
            total += leaf_count(held.width, size)
        for entry in self._heap:
            node = entry[3]
            if node.status is Status.PENDING:
                total += leaf_count(node.end - node.start, size)
        for delayed in self._delayed:
            node = delayed[2]
            if node.status is Status.PENDING:
                total += leaf_count(node.end - node.start, size)
        return total

    def next_retry_at(self) -> float:
        """When the earliest leaf in retry backoff comes due (0: none; possibly one leased since)."""
        return self._delayed[0][0] if self._delayed else 0.0

    def has_work(self, now: float) -> bool:
        """Whether :meth:`next_work` would return a node now."""
        return (
            self._held is not None or bool(self._heap) or bool(self._delayed and self._delayed[0][0] <= now)
        )

    def next_work(self, now: float, run_width: int = 0) -> Node | None:
        """The next node to lease: a leaf to run, (with pruning) a node to probe, or a leaf run.

        Inner nodes that need no probe are split on the way, lazily. ``run_width`` > 0: a node
        no wider than that which never ran is returned whole, as a *leaf run* (its leaves by the
        rule, run one after another under one lease). The returned node is still pending;
        :meth:`lease` takes it.
        """
        held = self._held
        if held is not None:
            # Handed out by the last call but not leased: back in line with the others.
            self._held = None
            if held.status is Status.PENDING:
                self._push(held)
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            node = heapq.heappop(delayed)[2]
            if node.status is Status.PENDING:
                self._push(node)
        heap = self._heap
        while heap:
            node = heap[0][3]
            if node.status is not Status.PENDING:
                heapq.heappop(heap)
                node.queued = False
                continue
            if self._ready(node, run_width):
                return node
            heapq.heappop(heap)
            node.queued = False
            # The children of the deepest pending node are deeper than anything queued, and the
            # left one comes first: descend through it without a round trip through the heap.
            while True:
                node = self._split(node)
                if self._ready(node, run_width):
                    self._held = node
                    return node
        return None

    def _ready(self, node: Node, run_width: int) -> bool:
        """Whether ``next_work`` hands out the pending ``node`` as it is (else it is split): a
        leaf to run, a node to probe, or a fresh node at most ``run_width`` wide as a leaf run."""
        if not node.probed:
            return True
        if node.is_leaf:
            return not self._too_slow(node)
        # A run only from a node that never ran: a retried one is split, each leaf on its own.
        return node.end - node.start <= run_width and not node.attempts and not node.cursor

    def _too_slow(self, node: Node) -> bool:
        """Adaptive leaf size: whether the leaf ``node`` is estimated to run longer than the
        target, and may be split (it is at least twice ``min_range_size`` wide, and never ran)."""
        target = self.target_leaf_seconds
        if not target or node.end - node.start < 2 * self.min_range_size:
            return False
        # A leaf that ran before keeps its shape: its checkpoint and attempts belong to it.
        return not node.attempts and not node.cursor and self.estimate(node) > target

    def estimate(self, node: Node) -> float:
        """Seconds a run of ``node`` is expected to take: its width times the seconds per id of
        the finished leaves under its nearest ancestor that has any (0: nothing measured).

        The nearest ancestor, not the whole job: cost is skewed by region, and the leaves
        finished near a node say most about it.
        """
        parent = node.parent
        while parent is not None:
            if parent.ids:
                return parent.cost / parent.ids * (node.end - node.start)
            parent = parent.parent
        return 0.0

    def observe(self, node: Node, seconds: float, ids: int) -> None:
        """A leaf lease starting at ``node`` ran ``ids`` ids in ``seconds`` (adaptive leaf size):
        every ancestor's measure takes it. A no-op when the tree has no target."""
        if not self.target_leaf_seconds or ids <= 0:
            return
        parent = node.parent
        while parent is not None:
            parent.cost += seconds
            parent.ids += ids
            parent = parent.parent

    def _split(self, node: Node) -> Node:
        """Split ``node``: queue its right child and return its left child, not queued."""
        start, end = node.start, node.end
        mid = split_point(start, end)
        node.status = Status.RUNNING
        # A leaf split by adaptive leaf size is an inner node from now on.
        node.is_leaf = False
        # -1 for the split node, +2 for its children.
        self.pending_nodes += 1
        self.running_nodes += 1
        self.total_nodes += 2
        # A split node is implied by its written descendants (``restore`` recreates it), so it is
        # written only to overwrite a record it already has.
        if node.persisted:
            self._mark(node)
        # Fresh pending children are not written either: implied by their split parent, and
        # ``restore`` recreates them. Most are created and finished between two commits.
        depth = node.depth + 1
        probed = not self.pruning
        left = node.left = _node(start, mid, depth, node, self.max_range_size, probed)
        right = node.right = _node(mid, end, depth, node, self.max_range_size, probed)
        if node.attempts:
            # A leaf run that was retried: each of its leaves had that many attempts inside it.
            left.attempts = right.attempts = node.attempts
        self._push(right)
        self._splits.append((start, end, 0))
        return left

    @staticmethod
    def lease_kind(node: Node) -> LeaseKind:
        """What a lease of ``node`` (as returned by :meth:`next_work`) asks: run it, or probe it first."""
        return LeaseKind.LEAF if node.probed else LeaseKind.PROBE

    def lease(self, node: Node, lease: Lease) -> None:
        """``node`` (as returned by :meth:`next_work`) is now held under ``lease``."""
        if node is self._held:
            self._held = None
        else:
            heapq.heappop(self._heap)
            node.queued = False
        node.status = Status.RUNNING
        node.lease = lease
        node.attempts += 1
        self.pending_nodes -= 1
        self.running_nodes += 1
        self._mark(node)

    # -- results --------------------------------------------------------------------------------

    def _end_lease(self, node: Node) -> bool:
        """The node's lease ended; returns whether it was a probe."""
        lease = node.lease
        node.lease = None
        self.running_nodes -= 1
        return lease is not None and lease.kind is LeaseKind.PROBE

    def complete(self, node: Node, result: object = None, size: int = 0) -> bool:
        """A leaf lease finished, or a probe said "process". Returns whether the tree is finished.

        ``result``: the leaf's result (checked for the tree's reduce; None: none), ``size`` the
        bytes of its JSON text. The tree keeps it. Raises ``ResultError`` (a merge conflict) before
        changing anything.
        """
        lease = node.lease
        if result is not None and self.reduce is not Reduce.NONE and lease and lease.kind is LeaseKind.LEAF:
            self.result = combine(self.reduce, self.result, result)
            self._result_text = None
            self._result_bound += size
            node.result = result
        if self._end_lease(node):
            node.probed = True
            node.attempts = 0
            node.status = Status.PENDING
            self.pending_nodes += 1
            self._mark(node)
            self._push(node)
            return False
        self.range_processed += node.end - node.done_upto
        node.status = Status.DONE
        self.done_nodes += 1
        self._mark(node)
        return self._settle(node)

    def skip(self, node: Node) -> bool:
        """A probe said "do not process", or a leaf completed as skipped. Returns whether finished."""
        self._end_lease(node)
        self.range_processed -= node.done_upto - node.start
        self.range_skipped += node.width
        node.status = Status.SKIPPED
        self.skipped_nodes += 1
        self._mark(node)
        return self._settle(node)

    def release(self, node: Node) -> None:
        """The worker gave the lease back unfinished: pending again, the attempt not counted."""
        self._end_lease(node)
        node.attempts -= 1
        node.status = Status.PENDING
        self.pending_nodes += 1
        self._mark(node)
        self._push(node)

    def fail(self, node: Node, message: str, *, retry_at: float | None, counted: bool = True) -> bool:
        """An attempt failed. ``retry_at`` None puts the leaf in error; else it is retried then.
        ``counted``: whether it counts as a failed attempt (one attempt at a lease holding
        several nodes counts once).

        Returns whether the tree is finished (its root is terminal).
        """
        self._end_lease(node)
        node.last_error = message
        if counted:
            self.failed_attempts += 1
        self._mark(node)
        if retry_at is not None:
            node.status = Status.PENDING
            self.pending_nodes += 1
            node.not_before = retry_at
            heapq.heappush(self._delayed, (retry_at, next(self._seq), node))
            return False
        node.status = Status.ERROR
        self.error_nodes += 1
        return self._settle(node)

    def checkpoint(self, node: Node, cursor: int, details: bytes) -> None:
        """Record progress inside a running leaf: ``cursor`` is the first id not yet done.

        A cursor outside the leaf is clamped into it; one below the current checkpoint is
        ignored, details included, so progress (``range_processed``) never goes back.
        """
        cursor = min(max(cursor, node.start), node.end)
        if cursor < node.done_upto:
            return
        self.range_processed += cursor - node.done_upto
        node.cursor = cursor
        node.details = details
        self._mark(node)

    # -- dynamic splits -------------------------------------------------------------------------

    def split_end(self, lease: Lease, at_least: int) -> int:
        """Where the held part of ``lease`` could be shrunk to keep ``[start, at_least)`` at
        least: the first split point by the rule at or above ``at_least`` (0: none, or only at
        its end)."""
        at_least = max(at_least, lease.node.start + 1)
        for node in lease.nodes:
            if node.end > at_least:
                if node.start >= at_least:
                    return node.start  # the boundary between two held nodes
                end = grid_point(node.start, node.end, at_least, self.min_range_size) or node.end
                return end if end < lease.end else 0
        return 0

    def may_shrink(self, lease: Lease, new_end: int) -> bool:
        """Whether ``new_end`` is a point the held part of ``lease`` may be shrunk to: strictly
        inside it, and a boundary between its nodes or a split point by the rule of one."""
        return 0 < new_end < lease.end and self.split_end(lease, new_end) == new_end

    def shrink(self, lease: Lease, new_end: int) -> None:
        """The holder of ``lease`` accepted to stop at ``new_end`` (one :meth:`may_shrink`
        allows): the part from there on is pending again, as nodes by the rule, and the lease
        holds the nodes before it."""
        if not self.may_shrink(lease, new_end):
            raise ValueError(f"cannot shrink {lease!r} to {new_end}: not a split point inside it")
        kept: list[Node] = []
        for node in lease.nodes:
            if node.end <= new_end:
                kept.append(node)
            elif node.start >= new_end:
                self._forget_checkpoint(node)
                self.release(node)
            else:
                kept.extend(self._cut(node, new_end, lease))
        lease.node = kept[0]
        lease.more = tuple(kept[1:])
        self.dynamic_splits += 1

    def _forget_checkpoint(self, node: Node) -> None:
        if node.cursor:
            self.range_processed -= node.done_upto - node.start
            node.cursor = 0
            node.details = b""

    def _cut(self, node: Node, new_end: int, lease: Lease) -> list[Node]:
        """Split the held ``node`` by the rule down to ``new_end``; the nodes before it stay held
        by ``lease`` (returned in order), those after go back to pending."""
        cursor, details = node.cursor, node.details
        self._forget_checkpoint(node)
        held: list[Node] = []
        for piece in self._carve(node, new_end, lease):
            if piece.start >= new_end:
                # Given away: it waits as if never leased (its attempts so far still count).
                self.release(piece)
                continue
            held.append(piece)
            if cursor > piece.start:
                self.checkpoint(piece, cursor, details if cursor < piece.end else b"")
        return held

    def _carve(self, node: Node, point: int, lease: Lease) -> list[Node]:
        """Split the held ``node`` by the rule down to ``point`` (a split point strictly inside
        it): the pieces, in range order, cover it with a boundary at ``point`` and are all held
        by ``lease`` with the node's attempts."""
        attempts = node.attempts
        node.lease = None
        node.is_leaf = False
        self._mark(node)
        before: list[Node] = []
        after: list[Node] = []
        size = self.max_range_size
        x = node
        while True:
            mid = split_point(x.start, x.end)
            depth = x.depth + 1
            left = x.left = _node(x.start, mid, depth, x, size, True)
            right = x.right = _node(mid, x.end, depth, x, size, True)
            self.total_nodes += 2
            # Every node of a carve is written: ``restore`` cannot imply them from a leased node.
            self._mark(left)
            self._mark(right)
            if point == mid:
                before.append(left)
                after.append(right)
                break
            if point < mid:
                after.append(right)
                inner = left
            else:
                before.append(left)
                inner = right
            # The node that holds ``point`` inside it is split again.
            inner.status = Status.RUNNING
            inner.is_leaf = False
            self.running_nodes += 1
            x = inner
        after.reverse()
        pieces = before + after
        for piece in pieces:
            piece.status = Status.RUNNING
            piece.lease = lease
            piece.attempts = attempts
            self.running_nodes += 1
        return pieces

    def isolate(self, lease: Lease, leaves: Iterable[tuple[int, int]]) -> None:
        """Carve the nodes ``lease`` holds so that each of ``leaves`` (leaves by the rule inside
        them, see :func:`leaf_at`) is one node of it: a leaf run some of whose leaves failed."""
        nodes = list(lease.nodes)
        for point in sorted({p for leaf in leaves for p in leaf}):
            for i, node in enumerate(nodes):
                if node.start < point < node.end:
                    nodes[i : i + 1] = self._carve(node, point, lease)
                    break
        lease.node = nodes[0]
        lease.more = tuple(nodes[1:])

    def checkpoint_lease(self, lease: Lease, cursor: int, details: bytes) -> None:
        """:meth:`checkpoint` for a lease, which may hold several nodes: each node the cursor
        reached takes it (clamped), the details go to the one it is inside of."""
        if not lease.more:
            self.checkpoint(lease.node, cursor, details)
            return
        for node in lease.nodes:
            if cursor > node.start:
                self.checkpoint(node, cursor, details if cursor < node.end else b"")

    def _settle(self, node: Node) -> bool:
        """Propagate a node that just became terminal up the tree, collapsing finished pairs."""
        parent = node.parent
        while parent is not None:
            left, right = parent.left, parent.right
            assert left is not None and right is not None
            if left.status not in TERMINAL or right.status not in TERMINAL:
                return False
            if left.status is Status.ERROR or right.status is Status.ERROR:
                if parent.status is Status.ERROR:
                    return False
                parent.status = Status.ERROR
                self.running_nodes -= 1
                self.error_nodes += 1
                self._mark(parent)
            else:
                parent.status = Status.DONE
                self.running_nodes -= 1
                self.done_nodes += 1
                if self.reduce is not Reduce.NONE:
                    # Cannot fail: every result below was combined into ``self.result`` already.
                    parent.result = combine(self.reduce, left.result, right.result)
                self._drop(left)
                self._drop(right)
                parent.left = parent.right = None
                self._mark(parent)
            parent = parent.parent
        return True

    def _drop(self, node: Node) -> None:
        self._dirty.discard(node)
        if node.persisted:
            self._deleted.append((node.start, node.end))
        node.parent = None

    # -- recovery -------------------------------------------------------------------------------

    def retry_failed(self, now: float) -> int:
        """Put every error leaf back to pending (attempts reset); return how many."""
        count = 0
        stack = [self.root]
        while stack:
            node = stack.pop()
            if node.status is not Status.ERROR:
                continue
            self.error_nodes -= 1
            self._mark(node)
            if node.left is not None and node.right is not None:
                node.status = Status.RUNNING
                self.running_nodes += 1
                stack.append(node.left)
                stack.append(node.right)
            else:
                node.status = Status.PENDING
                node.attempts = 0
                node.not_before = 0.0
                self.pending_nodes += 1
                self._push(node)
                count += 1
        return count

    def walk(self) -> Iterator[Node]:
        """Every materialised node, pre-order."""
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            if node.right is not None:
                stack.append(node.right)
            if node.left is not None:
                stack.append(node.left)

    @property
    def finished(self) -> bool:
        return self.root.status in TERMINAL

    def result_json(self) -> str:
        """The JSON text of :attr:`result` ("" for none), encoded once per change."""
        text = self._result_text
        if text is None:
            text = self._result_text = encode(self.result)
            self._result_bound = len(text.encode())
        return text

    def result_size(self, limit: int) -> int:
        """The bytes of :meth:`result_json` when they may exceed ``limit``, else 0.

        Cheap: the text is encoded again only when the bound (its last size plus the sizes of
        the results combined since) passes ``limit``.
        """
        if self._result_bound <= limit:
            return 0
        size = len(self.result_json().encode())
        return size if size > limit else 0

    @staticmethod
    def _implied(start: int, end: int, depth: int, parent: Node | None, max_range_size: int) -> Node:
        """A split node that was never written: running, already past its probe."""
        node = _node(start, end, depth, parent, max_range_size, True)
        node.status = Status.RUNNING
        return node

    @classmethod
    def restore(
        cls,
        start: int,
        end: int,
        max_range_size: int,
        *,
        pruning: bool,
        reduce: Reduce = Reduce.NONE,
        min_range_size: int = 1,
        target_leaf_seconds: float = 0.0,
        nodes: list[Node],
        counters: Mapping[str, int],
        leased: Mapping[Node, LeaseKind],
        adopt: Callable[[Node], Lease],
    ) -> RangeTree:
        """Rebuild a tree from stored node records (any order) and its stored counters.

        ``leased`` names the stored nodes that held a lease, and of which kind.
        Leaves among them stay running under the lease ``adopt`` makes for
        them; nodes that were being probed go back to pending: a probe is
        cheap to ask again.
        """
        # Constructed as new, then every field is replaced from the store.
        tree = cls(
            start,
            end,
            max_range_size,
            pruning=pruning,
            reduce=reduce,
            min_range_size=min_range_size,
            target_leaf_seconds=target_leaf_seconds,
        )
        for name, value in counters.items():
            setattr(tree, name, value)
        tree._dirty = set()
        tree._heap = []
        # Pre-order (start ascending, wider first) lets a stack find each node's parent;
        # the store's key order already is pre-order, so this sort is a cheap check.
        nodes.sort(key=lambda n: (n.start, -n.end))
        for node in nodes:
            node.persisted = True
            if node.result is not None:
                # Done nodes are never below another done node (their records collapse into it),
                # so the job's result is the reduce of what they hold.
                tree.result = combine(reduce, tree.result, node.result)
                tree._result_text = None
        tree.result_json()  # measures it, for ``result_size``
        implied: list[Node] = []
        if nodes and (nodes[0].start, nodes[0].end) == (start, end):
            root = nodes[0]
        elif nodes:
            root = cls._implied(start, end, 0, None, max_range_size)
            implied.append(root)
        else:
            raise ValueError(f"stored tree has no node of [{start}, {end})")
        # Pre-order lets a stack find each node's parent. Split nodes on the way that were never
        # written (see ``_split``) are recreated, and so are the fresh pending children of split
        # nodes (see ``_split``).
        stack = [root]
        for node in nodes:
            if node is root:
                continue
            while not (stack[-1].start <= node.start and node.end <= stack[-1].end):
                stack.pop()
            parent = stack[-1]
            while True:
                mid = split_point(parent.start, parent.end)
                left = node.end <= mid
                span = (parent.start, mid) if left else (mid, parent.end)
                child = parent.left if left else parent.right
                if span == (node.start, node.end):
                    child = node
                elif child is None:
                    child = cls._implied(span[0], span[1], parent.depth + 1, parent, max_range_size)
                    implied.append(child)
                child.parent = parent
                # A node with children is inner whatever its width (a dynamic split's, say).
                parent.is_leaf = False
                if left:
                    parent.left = child
                else:
                    parent.right = child
                stack.append(child)
                if child is node:
                    break
                parent = child
        tree.root = root
        nodes.extend(implied)
        fresh = []
        for node in nodes:
            if not node.is_leaf and node.status is Status.RUNNING and node not in leased:
                mid = split_point(node.start, node.end)
                if node.left is None:
                    node.left = _node(node.start, mid, node.depth + 1, node, max_range_size, not pruning)
                    fresh.append(node.left)
                if node.right is None:
                    node.right = _node(mid, node.end, node.depth + 1, node, max_range_size, not pruning)
                    fresh.append(node.right)
        nodes.extend(fresh)
        for node in nodes:
            if node.status is Status.PENDING:
                if node.not_before > 0:
                    tree._delayed.append((node.not_before, next(tree._seq), node))
                else:
                    node.queued = True
                    tree._heap.append((-node.depth, node.start, next(tree._seq), node))
            elif node.status is Status.RUNNING and node in leased:
                if leased[node] is LeaseKind.PROBE:
                    tree.release(node)
                else:
                    node.lease = adopt(node)
        heapq.heapify(tree._heap)
        heapq.heapify(tree._delayed)
        return tree
