"""The worker's pacing (parcelo.pacing): credit and sync submissions from observed leaf durations.

Pure unit tests: durations are passed in, nothing sleeps.
"""

from __future__ import annotations

import pytest

from parcelo import defaults
from parcelo.pacing import Pacer


def test_before_any_leaf_finished_a_worker_holds_one_lease_per_slot_beyond_the_running() -> None:
    pacer = Pacer(2)
    # A first grant of long leaves is no hoard: 2 running, 2 waiting.
    assert (pacer.prefetch(), pacer.in_hand()) == (2, 4)
    # Each lease gets its own thread while nothing is known.
    assert pacer.submissions(waiting=4, running=0) == 2


def test_short_leaves_raise_the_credit_to_its_cap_and_long_ones_keep_a_quarter_second() -> None:
    fast = Pacer(4)
    fast.observe(0.000_010)
    # The window grows by the leases finished (a slow start), up to what the mean allows.
    assert fast.prefetch() == 5
    fast.observe(0.000_100, leaves=10)
    assert fast.prefetch() == 15
    for _ in range(100):
        fast.observe(0.000_500, leaves=50)
    assert fast.prefetch() == defaults.WORKER_PREFETCH_MAX

    slow = Pacer(2)
    for _ in range(10):
        slow.observe(0.1)
    # Two slots get through 20 leaves a second: a quarter second of work is 5 leases.
    assert (slow.prefetch(), slow.in_hand()) == (5, 7)

    very_slow = Pacer(2)
    very_slow.observe(60.0)
    assert very_slow.prefetch() == 1  # the next leaf is ready when a slot frees, no more


def test_instant_leaves_of_one_job_do_not_open_the_window_for_another_jobs_slow_ones() -> None:
    pacer = Pacer(2)
    pacer.observe(0.0, leaves=3)  # three leaves that took no time
    # The mean says "as many as the cap", but only 3 leases finished: 2 + 3 beyond the running.
    assert pacer.in_hand() == 2 + 2 + 3
    # Then the leaves take a second: the window closes to the one lease beyond the running.
    for _ in range(20):
        pacer.observe(1.0)
    assert pacer.in_hand() == 2 + 1


def test_the_mean_follows_a_change_of_the_leaves_and_a_batch_weighs_by_its_leaves() -> None:
    pacer = Pacer(4)
    pacer.observe(0.5)
    assert pacer.mean == pytest.approx(0.5)
    pacer.observe(0.1)  # one short leaf moves the mean a fifth of the way
    assert pacer.mean == pytest.approx(0.42)
    pacer.observe(0.01, leaves=100)  # a batch of a hundred 0.1 ms leaves replaces it
    assert pacer.mean == pytest.approx(0.0001)
    pacer.observe(1.0, leaves=0)  # nothing ran: nothing learned
    assert pacer.mean == pytest.approx(0.0001)


def test_a_fixed_prefetch_is_kept_whatever_the_leaves_do() -> None:
    pacer = Pacer(3, 8)
    assert pacer.in_hand() == 11
    pacer.observe(100.0)
    assert pacer.in_hand() == 11
    assert Pacer(1, 0).in_hand() == 1
    assert Pacer(1, 0).ask_batch() == 1
    assert Pacer(3, 8).ask_batch() == 2


def test_short_sync_leaves_share_one_submission_and_long_ones_get_a_thread_each() -> None:
    short = Pacer(4)
    short.observe(0.000_005)
    # 64 leaves of 5 us are 0.3 ms of work: one submission runs them all.
    assert short.submissions(waiting=64, running=0) == 1
    assert short.submissions(waiting=64, running=1) == 0
    # 1,000 of them are 5 ms of work: three submissions of a batch time (2 ms) each.
    assert short.submissions(waiting=1000, running=1) == 2

    long = Pacer(4)
    long.observe(0.5)
    # Each running submission is busy with its own leaf: the waiting ones get free slots.
    assert long.submissions(waiting=2, running=2) == 2
    assert long.submissions(waiting=10, running=4) == 0  # every slot busy
    assert long.submissions(waiting=0, running=0) == 0


def test_the_batch_time_bounds_how_much_work_one_submission_takes() -> None:
    pacer = Pacer(8, batch_time=0.010)
    pacer.observe(0.001)
    # 25 leaves of 1 ms are 25 ms of work: three 10 ms submissions.
    assert pacer.submissions(waiting=25, running=0) == 3
