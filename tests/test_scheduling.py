"""Scheduling policy on the core, clock passed in: priorities, fair shares, limits, queues, run_after.

Leases are asked for as a worker's credit would be (``core.lease``) and their jobs counted; no
sleeping: time is an argument.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from parcelo.coordinator.core import Core
from parcelo.coordinator.errors import FailedPrecondition, InvalidArgument, NotFound
from parcelo.coordinator.leases import Failure, Lease
from parcelo.coordinator.scheduler import QUANTUM, TokenBucket
from parcelo.coordinator.store import Store
from parcelo.v1 import types_pb2
from tests.test_core import commit, new_core, raw

BIG = 1 << 30  # wide enough never to run out in these tests


def job(core: Core, job_id: str, end: int = BIG, size: int = 1, now: float = 0.0, **fields: Any) -> str:
    created, _ = core.create_job(raw(0, end, size, job_id=job_id, **fields), now)
    return created.id


def by_job(leases: list[Lease]) -> Counter[str]:
    return Counter(lease.job_id for lease in leases)


def complete(core: Core, leases: list[Lease], now: float) -> None:
    core.complete([lease.fence for lease in leases], [], now)


def test_priority_is_strict() -> None:
    core = new_core()
    job(core, "low", priority=1)
    job(core, "high", priority=5)
    assert by_job(core.lease(["default"], 300, 1.0)) == {"high": 300}
    # The high job with nothing left to lease: the low one is served.
    small = job(core, "higher-small", end=4, priority=9)
    assert by_job(core.lease(["default"], 10, 1.0)) == {small: 4, "high": 6}


def test_keys_share_by_weight_and_jobs_of_a_key_round_robin() -> None:
    core = new_core()
    for i in range(10):  # a tenant with ten jobs...
        job(core, f"a{i}", fairness_key="tenant-a")
    job(core, "b", fairness_key="tenant-b")  # ...gets what a tenant with one job gets
    got = by_job(core.lease(["default"], 2000, 1.0))
    a = sum(n for name, n in got.items() if name.startswith("a"))
    assert abs(a - got["b"]) <= QUANTUM * 2  # within a quantum or two of an even split
    assert all(abs(got[f"a{i}"] - a / 10) <= QUANTUM for i in range(10))  # round robin inside the key
    core = new_core()
    job(core, "heavy", weight=3, fairness_key="x")
    job(core, "light", weight=1, fairness_key="y")
    got = by_job(core.lease(["default"], 4000, 1.0))
    assert 2.8 <= got["heavy"] / got["light"] <= 3.2


def test_the_largest_weight_of_a_key_counts() -> None:
    core = new_core()
    job(core, "k1", fairness_key="k", weight=1)
    job(core, "k2", fairness_key="k", weight=3)
    job(core, "other", fairness_key="o", weight=1)
    got = by_job(core.lease(["default"], 4000, 1.0))
    assert 2.8 <= (got["k1"] + got["k2"]) / got["other"] <= 3.2


def test_a_small_job_after_a_huge_one_starts_in_the_next_round_and_finishes_first() -> None:
    core = new_core()
    job(core, "huge")
    first = core.lease(["default"], 512, 1.0)
    job(core, "small", end=40)
    second = core.lease(["default"], 512, 2.0)  # one dispatch round of a worker's credit
    assert by_job(second)["small"] == 40
    complete(core, first + second, 3.0)
    assert core.jobs["small"].status.name == "COMPLETED" and not core.jobs["huge"].finished


def test_max_concurrency_counts_leaf_leases_across_every_worker_and_can_change_while_it_runs() -> None:
    core = new_core()
    job(core, "limited", max_concurrency=3)
    held = core.lease(["default"], 40, 1.0, holder="w1") + core.lease(["default"], 40, 1.0, holder="w2")
    assert len(held) == 3
    complete(core, held[:1], 2.0)
    more = core.lease(["default"], 40, 2.0, holder="w2")
    assert len(more) == 1
    core.update_job("limited", 3.0, max_concurrency=10)
    assert len(core.lease(["default"], 40, 3.0)) == 7
    # Lowered below what runs: running leases stay, nothing new until they drop below it.
    core.update_job("limited", 4.0, max_concurrency=2)
    assert core.leases.leaf_count("limited") == 10 and core.lease(["default"], 40, 4.0) == []
    running = [lease for lease in core.leases.of_job("limited")]
    complete(core, running[:8], 5.0)
    assert len(core.lease(["default"], 40, 5.0)) == 0  # 2 still run: at the limit
    complete(core, running[8:9], 6.0)
    assert len(core.lease(["default"], 40, 6.0)) == 1


def test_the_rate_limit_is_a_token_bucket() -> None:
    core = new_core()
    job(core, "rated", max_leases_per_second=5)  # burst defaults to 5
    granted: list[tuple[float, int]] = []
    for step in range(41):  # 4 s in steps of 0.1 s, a worker always asking for more
        now = 10.0 + step * 0.1
        granted.append((now, len(core.lease(["default"], 100, now))))
    total = 0
    for now, count in granted:
        total += count
        assert total <= 5 + 5 * (now - 10.0) + 1e-9  # never more than the bucket allows
    assert total >= 5 + 5 * 4 - 1  # and about all of it


def test_the_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(2.0, 3, now=0.0)
    assert bucket.available(0.0) == 3
    bucket.take(3)
    assert bucket.available(0.4) == 0 and bucket.next_token_at(0.4) == pytest.approx(0.5)
    assert bucket.available(1.0) == 2 and bucket.available(100.0) == 3


def test_queues_pause_and_bound_the_sum_over_their_jobs() -> None:
    core = new_core()
    job(core, "q1", queue="q")
    job(core, "q2", queue="q")
    core.queues.pause("q", 1.0)
    assert core.lease(["q"], 10, 1.0) == []
    core.queues.resume("q", 2.0)
    first = core.lease(["q"], 10, 2.0)
    assert len(first) == 10
    core.queues.update("q", 3.0, max_concurrency=12)
    assert len(core.lease(["q"], 10, 3.0)) == 2  # 12 in all, over both jobs
    complete(core, first[:3], 4.0)
    assert len(core.lease(["q"], 10, 4.0)) == 3
    core.queues.update("q", 5.0, max_concurrency=0, max_leases_per_second=2, burst=2)
    assert len(core.lease(["q"], 10, 5.0)) == 2 and core.lease(["q"], 10, 5.1) == []
    assert len(core.lease(["q"], 10, 6.0)) == 2
    # Other queues are not affected.
    job(core, "other", queue="elsewhere")
    assert len(core.lease(["elsewhere"], 10, 6.0)) == 10


def test_run_after_holds_a_job_pending_until_then() -> None:
    core = new_core()
    job(core, "later", run_after=Timestamp(seconds=100))
    assert core.lease(["default"], 10, 99.0) == []
    assert core.jobs["later"].status.name == "PENDING"
    core.tick(100.0)
    assert len(core.lease(["default"], 10, 100.5)) == 10


def test_a_retry_in_backoff_comes_back_when_due() -> None:
    core = new_core()
    job(core, "flaky", end=1, retry=types_pb2.RetryPolicy(max_attempts=3))
    [lease] = core.lease(["default"], 5, 1.0)
    core.fail([Failure(lease.fence, True, "boom")], 1.0)
    assert core.lease(["default"], 5, 1.5) == []  # backing off (initial backoff 1 s)
    [again] = core.lease(["default"], 5, 2.5)
    assert again.node is lease.node and again.node.attempts == 2


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        (dict(max_leases_per_second=-1.0), "max_leases_per_second"),
        (dict(max_leases_per_second=float("nan")), "max_leases_per_second"),
        (dict(max_leases_per_second=float("inf")), "max_leases_per_second"),
        (dict(weight=0), "weight"),
        (dict(fairness_key="not a key"), "fairness_key"),
        (dict(run_after=Timestamp(seconds=-1)), "run_after"),
    ],
)
def test_bad_scheduling_fields_are_refused_naming_them(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        new_core().create_job(raw(0, 10, 1, **fields), 0.0)
    assert err.value.field == field


def test_updates_are_checked_and_refused_for_finished_jobs() -> None:
    core = new_core()
    job(core, "j", end=1)
    with pytest.raises(InvalidArgument, match="weight"):
        core.update_job("j", 1.0, weight=0)
    with pytest.raises(InvalidArgument, match="max_leases_per_second"):
        core.update_job("j", 1.0, max_leases_per_second=float("nan"))
    with pytest.raises(NotFound):
        core.update_job("nope", 1.0, priority=1)
    complete(core, core.lease(["default"], 1, 1.0), 2.0)
    with pytest.raises(FailedPrecondition, match="it is completed"):
        core.update_job("j", 3.0, priority=1)
    with pytest.raises(InvalidArgument, match="name"):
        core.queues.update("bad name", 1.0, max_concurrency=1)
    with pytest.raises(NotFound):
        core.queues.resume("never-named", 1.0)


def test_limits_and_queue_settings_survive_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    core = new_core()
    job(core, "limited", queue="q", max_concurrency=2, fairness_key="t", weight=4)
    core.queues.update("q", 1.0, max_concurrency=7, max_leases_per_second=3.5)
    core.queues.pause("q", 1.0)
    core.update_job("limited", 1.0, max_concurrency=5, priority=2)
    commit(core, store)
    store.close()
    store = Store(tmp_path / "db")
    back = Core(fence_limit=store.fence_limit())
    back.fences.made_durable(back.fences.pending_limit() or 0)
    back.restore(store.load(10), 2.0)
    back.queues.restore(store.load_queues(), 2.0)
    spec = back.jobs["limited"].spec
    assert (spec.max_concurrency, spec.priority, spec.weight, spec.fairness_key) == (5, 2, 4, "t")
    settings = back.queues.get("q")
    assert settings is not None and (
        settings.max_concurrency,
        settings.max_leases_per_second,
        settings.paused,
    ) == (
        7,
        3.5,
        True,
    )
    assert back.lease(["q"], 10, 3.0) == []  # still paused
    back.queues.resume("q", 3.0)
    # The queue's rate (3.5/s: a burst of 4) binds before the job's updated limit (5).
    assert len(back.lease(["q"], 10, 3.0)) == 4
    assert len(back.lease(["q"], 10, 4.0)) == 1  # 3.5 tokens later: the job's limit of 5
    store.close()
