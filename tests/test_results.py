"""Leaf results reduced up the tree: the reducers, the tree's bookkeeping, the core's checks, the store."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rocksdict import Options, Rdict

from parcelo.coordinator.core import Core
from parcelo.coordinator.jobs import JobStatus
from parcelo.coordinator.leases import Lease, LeaseKind, Reject
from parcelo.coordinator.records import FORMAT_KEY, FORMAT_VERSION
from parcelo.coordinator.results import Reduce, ResultError, combine, conflict, encode, parse
from parcelo.coordinator.store import Store
from parcelo.coordinator.tree import Node, RangeTree, Status
from parcelo.v1 import types_pb2
from tests.test_core import commit, new_core, raw

LIMIT = 64 << 10

# -- reducers -----------------------------------------------------------------------------------

numbers = st.one_of(st.integers(min_value=-(10**30), max_value=10**30), st.floats(-1e9, 1e9))
json_leaf = st.one_of(st.integers(-1000, 1000), st.booleans(), st.text(max_size=3), st.none())
# Histograms of a fixed key set with numbers, nested one level: mergeable in any order.
histograms = st.dictionaries(
    st.sampled_from("abcde"),
    st.one_of(
        st.integers(0, 10**20), st.dictionaries(st.sampled_from("xyz"), st.integers(0, 100), max_size=3)
    ),
    max_size=5,
)


def fold(reduce: Reduce, values: list[object]) -> object:
    acc: object = None
    for value in values:
        acc = combine(reduce, acc, value)
    return acc


def tree_fold(reduce: Reduce, values: list[object]) -> object:
    """Combined pairwise, as the tree collapses siblings."""
    layer = [combine(reduce, None, v) for v in values]
    while len(layer) > 1:
        nxt = [combine(reduce, layer[i], layer[i + 1]) for i in range(0, len(layer) - 1, 2)]
        if len(layer) % 2:
            nxt.append(layer[-1])
        layer = nxt
    return layer[0] if layer else None


@given(st.lists(st.integers(-(10**40), 10**40), max_size=40), st.randoms())
def test_integer_sums_are_exact_in_any_order_and_any_grouping(values: list[int], rnd: random.Random) -> None:
    shuffled = values[:]
    rnd.shuffle(shuffled)
    expected = sum(values) if values else None
    assert fold(Reduce.SUM, list(values)) == expected
    assert tree_fold(Reduce.SUM, list(shuffled)) == expected


@given(st.lists(numbers, min_size=1, max_size=40), st.randoms())
def test_min_and_max_find_the_extremes(values: list[float], rnd: random.Random) -> None:
    shuffled = values[:]
    rnd.shuffle(shuffled)
    assert tree_fold(Reduce.MIN, list(shuffled)) == min(values)
    assert fold(Reduce.MAX, list(shuffled)) == max(values)


def direct_merge(values: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for value in values:
        for key, item in value.items():
            if isinstance(item, dict):
                inner = out.setdefault(key, {})
                for k, v in item.items():
                    inner[k] = inner.get(k, 0) + v
            else:
                out[key] = out.get(key, 0) + item
    return out


@given(st.lists(histograms, max_size=20), st.randoms())
def test_merge_of_histograms_is_the_direct_histogram_in_any_order(
    values: list[dict[str, Any]], rnd: random.Random
) -> None:
    # One key is always a number or always an object: a mix is a conflict (tested below).
    kinds: dict[str, type] = {}
    for value in values:
        for key, item in list(value.items()):
            if kinds.setdefault(key, type(item)) is not type(item):
                del value[key]
    snapshot = json.dumps(values, sort_keys=True)
    shuffled = values[:]
    rnd.shuffle(shuffled)
    expected = direct_merge(values) if values else None
    assert fold(Reduce.MERGE, list(values)) == expected
    assert tree_fold(Reduce.MERGE, list(shuffled)) == expected
    # The values combined are neither changed nor shared by the result.
    assert json.dumps(values, sort_keys=True) == snapshot


def test_merge_rules_for_values_that_are_not_numbers_or_objects() -> None:
    acc = combine(Reduce.MERGE, None, {"name": "x", "tags": [1, 2], "ok": True, "gone": None})
    acc = combine(Reduce.MERGE, acc, {"name": "x", "tags": [1, 2], "ok": True, "gone": 3, "n": None})
    assert acc == {"name": "x", "tags": [1, 2], "ok": True, "gone": 3}
    for clash, key in (({"name": "y"}, "name"), ({"ok": 1}, "ok"), ({"tags": {"a": 1}}, "tags")):
        why = conflict(Reduce.MERGE, acc, clash)
        assert why.startswith(f'reduce merge: key "{key}" is')
        before = json.dumps(acc, sort_keys=True)
        with pytest.raises(ResultError, match="reduce merge"):
            combine(Reduce.MERGE, acc, clash)
        assert json.dumps(acc, sort_keys=True) == before  # nothing changed
    assert 'key "a.b"' in conflict(Reduce.MERGE, {"a": {"b": "s"}}, {"a": {"b": 2}})


@pytest.mark.parametrize(
    ("text", "reduce", "message"),
    [
        ("[1]", Reduce.SUM, "reduce sum combines numbers; the result is an array"),
        ("true", Reduce.MAX, "reduce max combines numbers; the result is a boolean"),
        ('"3"', Reduce.MIN, "reduce min combines numbers; the result is a string"),
        ("3", Reduce.MERGE, "reduce merge combines JSON objects; the result is a number"),
        ("007", Reduce.SUM, "the result is not JSON"),
        ("1_000", Reduce.SUM, "the result is not JSON"),
        ("\uff13", Reduce.SUM, "the result is not JSON"),
        ("-", Reduce.SUM, "the result is not JSON"),
        ("5", Reduce.MERGE, "reduce merge combines JSON objects; the result is a number"),
        ("NaN", Reduce.SUM, "NaN is not a JSON number"),
        ("Infinity", Reduce.SUM, "Infinity is not a JSON number"),
        ("{", Reduce.MERGE, "the result is not JSON"),
        ("[" * 60_000, Reduce.MERGE, "the result is not JSON"),
        ("7" * (LIMIT + 1), Reduce.SUM, f"{LIMIT + 1} bytes, over the coordinator's --max-result-bytes"),
        ('"' + "é" * (LIMIT // 2) + '"', Reduce.MERGE, "bytes, over the coordinator's --max-result-bytes"),
    ],
)
def test_bad_results_are_refused_with_the_reason(text: str, reduce: Reduce, message: str) -> None:
    with pytest.raises(ResultError, match=message.replace("[", r"\[")):
        parse(text, reduce, LIMIT)


def test_results_parse_and_encode() -> None:
    assert parse("", Reduce.SUM, LIMIT) is None
    assert parse("null", Reduce.SUM, LIMIT) is None
    assert [parse(t, Reduce.SUM, LIMIT) for t in ("0", "-0", "-12", "7" * 18, "7" * 19, "1e3")] == [
        0,
        0,
        -12,
        int("7" * 18),
        int("7" * 19),
        1000.0,
    ]
    big = 10**200 + 1
    assert parse(str(big), Reduce.SUM, LIMIT) == big
    assert encode(combine(Reduce.SUM, big, big)) == str(2 * big)
    assert encode(None) == ""
    assert encode({"a": [1, 2]}) == '{"a":[1,2]}'


# -- the tree -----------------------------------------------------------------------------------


def run_tree(tree: RangeTree, result_of: Any, order: random.Random) -> None:
    """Lease every leaf of ``tree`` and complete them in a random order with ``result_of(node)``."""
    held = []
    fence = 0
    while True:
        while (node := tree.next_work(0.0)) is not None:
            fence += 1
            tree.lease(node, Lease(fence, "j", node, "w", LeaseKind.LEAF, 0.0, 1.0, 0.0))
            held.append(node)
        if not held:
            return
        order.shuffle(held)
        node = held.pop()
        tree.complete(node, result_of(node), 8)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 300), st.randoms())
def test_the_tree_reduces_leaf_results_to_the_direct_answer(
    width: int, size: int, order: random.Random
) -> None:
    tree = RangeTree(10, 10 + width, size, reduce=Reduce.SUM)
    # Each leaf returns the sum of its ids: the job's answer is the sum over the range.
    run_tree(tree, lambda n: sum(range(n.start, n.end)), order)
    expected = sum(range(10, 10 + width))
    assert tree.finished and tree.root.status is Status.DONE
    assert tree.root.result == tree.result == expected
    assert tree.result_json() == str(expected)
    # Collapsed: the finished job holds one node with its one value.
    assert list(tree.walk()) == [tree.root]


def test_a_partial_result_is_what_the_done_nodes_hold() -> None:
    tree = RangeTree(0, 1000, 10, reduce=Reduce.MAX)
    seen: list[int] = []
    rnd = random.Random(3)
    nodes: list[Node] = []
    while (node := tree.next_work(0.0)) is not None:
        tree.lease(node, Lease(len(nodes) + 1, "j", node, "w", LeaseKind.LEAF, 0.0, 1.0, 0.0))
        nodes.append(node)
    rnd.shuffle(nodes)
    for node in nodes[:50]:
        tree.complete(node, node.start * 7 % 1000, 3)
        done = [int(str(n.result)) for n in tree.walk() if n.status is Status.DONE and n.result is not None]
        assert tree.result == max(done)
        seen.append(max(done))
    assert seen == sorted(seen)  # max only grows


def test_skipped_nodes_contribute_nothing() -> None:
    tree = RangeTree(0, 100, 10, reduce=Reduce.SUM, pruning=True)
    fence = 0
    while not tree.finished:
        node = tree.next_work(0.0)
        assert node is not None
        fence += 1
        kind = tree.lease_kind(node)
        tree.lease(node, Lease(fence, "j", node, "w", kind, 0.0, 1.0, 0.0))
        if kind is LeaseKind.PROBE:
            if node.start >= 50 and node.is_leaf:
                tree.skip(node)  # pruned: [50, 100) ends up skipped leaf by leaf
            else:
                tree.complete(node, 999)  # a probe's result is never counted
        else:
            tree.complete(node, node.width)
    assert tree.result == 50 and tree.root.result == 50


# -- the core -----------------------------------------------------------------------------------


def core_job(reduce: int, **fields: Any) -> tuple[Core, str]:
    core = new_core()
    # Eight leaves of 10.
    job, _ = core.create_job(raw(0, 80, 10, reduce=reduce, **fields), 0.0)
    return core, job.id


def test_results_are_counted_once_whatever_is_sent_again() -> None:
    core, job_id = core_job(types_pb2.REDUCE_SUM)
    leases = core.lease(["default"], 8, 1.0)
    fences = [lease.fence for lease in leases]
    accepted, rejected = core.complete(fences[:5], [], 2.0, ["1"] * 5)
    assert accepted == fences[:5] and not rejected
    # Sent again (a reconnect), with other results: accepted, not counted again.
    accepted, rejected = core.complete(fences[:5], [], 2.0, ["100"] * 5)
    assert accepted == fences[:5] and not rejected
    assert core.take_changes().jobs[job_id].result_json == "5"
    core.complete(fences[5:], [], 3.0, ["2", "", "2"])
    job = core.take_changes().jobs[job_id]
    assert job.status == types_pb2.JOB_STATUS_COMPLETED
    assert (job.result_json, job.result_partial) == ("9", False)


def test_a_refused_result_fails_its_leaf_for_good_and_the_job_keeps_running() -> None:
    core, job_id = core_job(types_pb2.REDUCE_SUM)
    first, second = core.lease(["default"], 2, 1.0)
    accepted, rejected = core.complete([first.fence, second.fence], [], 2.0, ['"three"', "4"])
    assert accepted == [second.fence]
    [refused] = rejected
    assert refused.reason is Reject.INVALID_RESULT
    assert refused.message == "reduce sum combines numbers; the result is a string"
    assert first.node.status is Status.ERROR and first.node.last_error == refused.message
    # Sent again: that lease's failure was accepted, not a completion.
    again = core.complete([first.fence], [], 2.0, ["3"])[1]
    assert again[0].reason is Reject.STALE_FENCE
    record = core.take_changes().jobs[job_id]
    assert (record.result_json, record.result_partial) == ("4", True)
    assert record.status == types_pb2.JOB_STATUS_RUNNING


def test_a_merge_that_outgrows_the_limit_fails_the_job() -> None:
    core = new_core()
    core.max_result_bytes = 1000
    job, _ = core.create_job(raw(0, 1000, 10, reduce=types_pb2.REDUCE_MERGE), 0.0)
    leases = core.lease(["default"], 100, 1.0)
    for i, lease in enumerate(leases):
        core.complete([lease.fence], [], 2.0, [json.dumps({f"key-{i:04}": i})])
        if job.status is JobStatus.FAILED:
            break
    assert job.status is JobStatus.FAILED
    assert job.reason.startswith("the job's result grew to ") and "--max-result-bytes (1000)" in job.reason
    assert core.leases.count(job.id) == 0  # every other lease taken back
    assert 1000 < len(core.take_changes().jobs[job.id].result_json) < 1100


def test_a_job_without_reduce_ignores_results() -> None:
    core, job_id = core_job(0)
    leases = core.lease(["default"], 8, 1.0)
    accepted, rejected = core.complete([lease.fence for lease in leases], [], 2.0, ["not json"] * 8)
    assert len(accepted) == 8 and not rejected
    record = core.take_changes().jobs[job_id]
    assert record.spec.reduce == types_pb2.REDUCE_NONE and record.result_json == ""


# -- the store ----------------------------------------------------------------------------------


def test_results_survive_a_restart_from_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    core = new_core()
    job, _ = core.create_job(raw(0, 1000, 10, reduce=types_pb2.REDUCE_MERGE), 0.0)
    leases = core.lease(["default"], 100, 1.0)
    random.Random(5).shuffle(leases)
    half = leases[:60]
    core.complete(
        [x.fence for x in half],
        [],
        2.0,
        [json.dumps({"n": 1, "by": {str(x.node.start % 3): 1}}) for x in half],
    )
    commit(core, store)
    expected = store_record(store, job.id)
    store.close()
    store = Store(tmp_path / "db")
    back = Core(fence_limit=store.fence_limit())
    back.restore(store.load(10), 5.0)
    restored = back.jobs[job.id].tree
    assert restored.result == {"n": 60, "by": json.loads(expected.result_json)["by"]}
    assert json.loads(restored.result_json()) == json.loads(expected.result_json)
    store.close()


def store_record(store: Store, job_id: str) -> types_pb2.Job:
    [item] = [j for j in store.load(10) if j.job.id == job_id]
    return item.job


def test_a_format_2_data_dir_opens_and_is_marked_format_3(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.write([(FORMAT_KEY, (2).to_bytes(4, "big"))])
    store.close()
    store = Store(tmp_path / "db")
    store.close()
    db = Rdict(str(tmp_path / "db"), Options(raw_mode=True))
    assert db[FORMAT_KEY] == FORMAT_VERSION.to_bytes(4, "big") and FORMAT_VERSION == 3
    db.close()
