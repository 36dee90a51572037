"""The range tree alone: split rule, lazy split, collapse, statuses, pruning, restore."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from parcelo.coordinator.codec import StoredLease
from parcelo.coordinator.events import STAT_FIELDS
from parcelo.coordinator.leases import Lease
from parcelo.coordinator.records import decode_node, encode_node
from parcelo.coordinator.tree import Node, RangeTree, Status, leaf_count, split_point
from tests.support import reference_leaves


def lease(tree: RangeTree, node: Node, fence: int, now: float = 0.0) -> Lease:
    """Lease ``node`` as the core does (the lease record is the LeaseTable's; here it stands alone)."""
    record = Lease(fence, "job", node, "worker-1", tree.lease_kind(node), now, now + 30, 0.0)
    tree.lease(node, record)
    return record


def lease_all(tree: RangeTree, now: float = 0.0, limit: int = 10**9) -> list[Node]:
    out: list[Node] = []
    fence = 1
    while len(out) < limit:
        node = tree.next_work(now)
        if node is None:
            break
        lease(tree, node, fence, now)
        fence += 1
        out.append(node)
    return out


def restore(tree: RangeTree, records: list[tuple[int, int, bytes]]) -> RangeTree:
    """The tree rebuilt from stored records (``(start, end, record)``), as the core rebuilds it."""
    decoded = [decode_node(s, e, d) for s, e, d in records]
    leased: dict[Node, StoredLease] = {node: stored for node, stored in decoded if stored is not None}
    return RangeTree.restore(
        0,
        tree.range_total,
        tree.max_range_size,
        pruning=tree.pruning,
        nodes=[node for node, _ in decoded],
        counters=stored_counters(tree),
        leased={node: stored.kind for node, stored in leased.items()},
        adopt=lambda node: Lease(
            leased[node].fence, "job", node, leased[node].holder, leased[node].kind, 0, 30, 0
        ),
    )


def stored_counters(tree: RangeTree) -> dict[str, int]:
    """The counters the job record stores (what ``restore`` gets back)."""
    return {name: getattr(tree, name) for name in STAT_FIELDS if name not in ("range_total", "active_leases")}


def check_counters(tree: RangeTree) -> None:
    assert tree.total_nodes == (
        tree.pending_nodes + tree.running_nodes + tree.done_nodes + tree.skipped_nodes + tree.error_nodes
    )
    assert tree.range_processed + tree.range_skipped <= tree.range_total


def test_split_rule_gives_128_leaves_covering_every_id_once() -> None:
    tree = RangeTree(0, 100_000, 1000)
    leaves = lease_all(tree)
    spans = [(n.start, n.end) for n in leaves]
    assert len(spans) == 128
    assert sorted(spans) == reference_leaves(0, 100_000, 1000)
    assert all(n.end - n.start <= 1000 and n.is_leaf for n in leaves)
    assert split_point(0, 100_000) == 50_000
    for node in leaves:
        assert not tree.complete(node) or node is leaves[-1]
    assert tree.finished and tree.root.status is Status.DONE
    assert (tree.total_nodes, tree.done_nodes, tree.range_processed) == (255, 255, 100_000)
    check_counters(tree)


def test_leaves_are_handed_out_deeper_first_then_by_start() -> None:
    tree = RangeTree(0, 1000, 100)
    starts = [n.start for n in lease_all(tree)]
    assert starts == sorted(starts)


def test_split_is_lazy() -> None:
    tree = RangeTree(0, 1 << 62, 1 << 42)
    lease_all(tree, limit=4)
    # Leasing four leaves of a million materialises one path and its siblings, not the tree.
    assert tree.total_nodes < 2 * 21 + 8


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=1, max_value=5000),
    st.integers(min_value=1, max_value=300),
    st.randoms(use_true_random=False),
)
def test_collapse_keeps_answers_right_in_any_completion_order(
    width: int, max_size: int, rnd: random.Random
) -> None:
    start = rnd.randrange(0, 1 << 40)
    tree = RangeTree(start, start + width, max_size)
    seen: list[tuple[int, int]] = []
    held: list[Node] = []
    while True:
        held += lease_all(tree, limit=rnd.randint(1, 8))
        if not held:
            break
        rnd.shuffle(held)
        for node in held[: rnd.randint(1, len(held))]:
            seen.append((node.start, node.end))
            tree.complete(node)
            check_counters(tree)
        held = [n for n in held if n.status is Status.RUNNING]
    assert sorted(seen) == reference_leaves(start, start + width, max_size)
    assert tree.finished and tree.root.status is Status.DONE
    assert tree.range_processed == width
    assert tree.done_nodes == tree.total_nodes == 2 * len(seen) - 1
    # Everything collapsed into the root.
    assert list(tree.walk()) == [tree.root]


def test_error_propagates_and_retry_failed_recovers() -> None:
    tree = RangeTree(0, 400, 100)
    a, b, c, d = lease_all(tree)
    tree.complete(a)
    assert not tree.fail(b, "boom", retry_at=None)
    assert b.status is Status.ERROR and b.parent is not None
    assert b.parent.status is Status.ERROR  # both children finished, one in error
    assert tree.root.status is Status.RUNNING
    tree.complete(c)
    assert tree.fail(d, "bang", retry_at=None)  # the root is terminal now
    assert tree.root.status is Status.ERROR
    assert tree.error_nodes == 2 + 3  # two leaves, their two parents and the root
    check_counters(tree)
    assert tree.retry_failed(now=0) == 2
    assert tree.root.status is Status.RUNNING and tree.error_nodes == 0
    again = lease_all(tree)
    assert sorted((n.start, n.end) for n in again) == [(100, 200), (300, 400)]
    for node in again:
        tree.complete(node)
    assert tree.root.status is Status.DONE
    check_counters(tree)


def test_retry_waits_for_backoff() -> None:
    tree = RangeTree(0, 10, 10)
    (leaf,) = lease_all(tree)
    tree.fail(leaf, "flaky", retry_at=5.0)
    assert tree.next_work(4.9) is None and not tree.has_work(4.9)
    assert tree.next_work(5.0) is leaf
    assert leaf.last_error == "flaky"


def test_pruned_subtree_is_skipped_without_splitting() -> None:
    tree = RangeTree(0, 1000, 10, pruning=True)
    probe = tree.next_work(0)
    assert probe is tree.root and not probe.probed
    assert lease(tree, probe, 1).probe
    assert tree.skip(probe)
    assert tree.root.status is Status.SKIPPED and tree.range_skipped == 1000
    assert tree.total_nodes == 1 and tree.next_work(0) is None


def test_checkpoint_moves_progress_inside_a_leaf() -> None:
    tree = RangeTree(100, 200, 100)
    (leaf,) = lease_all(tree)
    tree.checkpoint(leaf, 140, b"state")
    assert tree.range_processed == 40
    tree.fail(leaf, "killed", retry_at=0.0)
    again = tree.next_work(0.0)
    assert again is leaf and leaf.done_upto == 140 and leaf.details == b"state"
    lease(tree, leaf, 2)
    tree.complete(leaf)
    assert tree.range_processed == 100


def test_restore_from_records_continues_the_job() -> None:
    tree = RangeTree(0, 10_000, 100)
    leased = lease_all(tree, limit=10)
    for node in leased[:5]:
        tree.complete(node)
    # What the store holds: the nodes written so far (fresh pending children never are).
    dirty, _ = tree.take_changes()
    records = [(n.start, n.end, encode_node(n)) for n in dirty]
    assert len(records) < len(list(tree.walk()))
    back = restore(tree, records)
    running = [n for n in back.walk() if n.lease is not None]
    assert sorted(n.start for n in running) == sorted(n.start for n in leased[5:])
    assert {n.lease.fence for n in running if n.lease} == {n.lease.fence for n in leased[5:] if n.lease}
    assert all(n.lease.holder == "worker-1" for n in running if n.lease)
    for node in running + lease_all(back):
        back.complete(node)
    assert back.root.status is Status.DONE and back.range_processed == 10_000
    check_counters(back)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(min_value=2, max_value=3000),
    st.integers(min_value=1, max_value=200),
    st.randoms(use_true_random=False),
)
def test_restore_at_any_point_rebuilds_implied_nodes(width: int, max_size: int, rnd: random.Random) -> None:
    tree = RangeTree(0, width, max_size)
    stored: dict[tuple[int, int], bytes] = {}

    def commit() -> None:
        # What the committer does: write dirty nodes, delete dropped ones.
        dirty, deleted = tree.take_changes()
        for key in deleted:
            stored.pop(key, None)
        for node in dirty:
            stored[(node.start, node.end)] = encode_node(node)

    held = lease_all(tree, limit=rnd.randint(1, 30))
    rnd.shuffle(held)
    for node in held[: rnd.randint(0, len(held))]:
        tree.complete(node)
        if rnd.random() < 0.3:
            commit()
    commit()
    back = restore(tree, [(s, e, d) for (s, e), d in stored.items()])
    assert sorted(n.key for n in back.walk()) == sorted(n.key for n in tree.walk())
    for node in [n for n in back.walk() if n.lease is not None] + lease_all(back):
        back.complete(node)
    assert back.root.status is Status.DONE and back.range_processed == width
    check_counters(back)


def walked_pending_leaves(tree: RangeTree) -> int:
    """Pending leaves counted the slow, obvious way: every materialised pending node."""
    return sum(leaf_count(n.width, tree.max_range_size) for n in tree.walk() if n.status is Status.PENDING)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=100_000), st.integers(min_value=1, max_value=5_000))
def test_leaf_count_is_the_number_of_leaves_of_the_split_rule(width: int, max_size: int) -> None:
    assert leaf_count(width, max_size) == len(reference_leaves(0, width, max_size))


def test_leaf_count_of_huge_ranges_without_enumerating_them() -> None:
    assert leaf_count(1 << 62, 1 << 42) == 1 << 20
    assert leaf_count((1 << 64) - 1, 1) == (1 << 64) - 1
    assert leaf_count(10**15, 10**15) == 1


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=1, max_value=3000),
    st.integers(min_value=1, max_value=200),
    st.integers(min_value=0, max_value=2**32),
)
def test_pending_leaves_follows_leases_completions_failures_and_releases(
    width: int, max_size: int, seed: int
) -> None:
    # A seeded generator rather than st.randoms(): a run takes hundreds of draws.
    rnd = random.Random(seed)
    tree = RangeTree(0, width, max_size)
    total = len(reference_leaves(0, width, max_size))
    assert tree.pending_leaves() == total
    held: list[Node] = []
    done = 0
    now = 0.0
    while not tree.finished:
        held += lease_all(tree, now, limit=rnd.randint(0, 5))
        rnd.shuffle(held)
        for node in held[: rnd.randint(0, len(held))]:
            roll = rnd.random()
            if roll < 0.6:
                tree.complete(node)
                done += 1
            elif roll < 0.8:
                tree.release(node)
            else:
                tree.fail(node, "flaky", retry_at=now + rnd.choice([0.0, 1.0]))
        held = [n for n in held if n.status is Status.RUNNING]
        # Backoff (retry_at in the future) still counts as waiting: it is leased again later.
        assert tree.pending_leaves() == walked_pending_leaves(tree) == total - done - len(held)
        now += 0.5
    assert tree.pending_leaves() == 0 and tree.finished


def test_pending_leaves_after_restore() -> None:
    tree = RangeTree(0, 10_000, 100)
    leased = lease_all(tree, limit=10)
    for node in leased[:5]:
        tree.complete(node)
    dirty, _ = tree.take_changes()
    back = restore(tree, [(n.start, n.end, encode_node(n)) for n in dirty])
    # 128 leaves: 5 done, 5 still leased, the rest waiting (most of them inside unsplit nodes).
    assert back.pending_leaves() == walked_pending_leaves(back) == 128 - 10


def test_pending_leaves_of_a_pruned_job_count_an_unprobed_node_as_all_its_leaves() -> None:
    tree = RangeTree(0, 1000, 10, pruning=True)
    assert tree.pending_leaves() == len(reference_leaves(0, 1000, 10)) == 128
    probe = tree.next_work(0)
    assert probe is not None
    lease(tree, probe, 1)
    assert tree.pending_leaves() == 0  # held by a probe, not waiting
    tree.complete(probe)  # "process it": split on the next lease, its halves probed in turn
    assert tree.pending_leaves() == 128
