"""Handlers the integration tests run in real worker processes.

Each run is appended to the file named by PARCELO_TEST_LOG as one line
``event start end attempt`` (O_APPEND writes of one short line are atomic, so
two worker processes can share the file).
"""

from __future__ import annotations

import os
import time
from typing import Any


def _log(event: str, range_: Any, ctx: Any, number: int | None = None) -> None:
    """One line ``event start end N pid``: N is the attempt, or ``number`` when given."""
    path = os.environ["PARCELO_TEST_LOG"]
    line = f"{event} {range_.start} {range_.end} {ctx.attempt if number is None else number} {os.getpid()}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def record(range_: Any, ctx: Any) -> None:
    """Record the run; sleep ``params['sleep']`` seconds (default 0) to stretch the job."""
    _log("run", range_, ctx)
    delay = float(ctx.params.get("sleep", 0))
    if delay:
        time.sleep(delay)


def record_fence(range_: Any, ctx: Any) -> None:
    """As ``record``, with the lease's fence in the attempt's place (event ``fenced``): fences grow
    with time, so a run under a fence above that of an acknowledged completion came after it."""
    _log("fenced", range_, ctx, ctx.fence)
    delay = float(ctx.params.get("sleep", 0))
    if delay:
        time.sleep(delay)


def stall_first(range_: Any, ctx: Any) -> None:
    """The first attempt of the leaf at ``params['stall_start']`` hangs (until its worker is killed)."""
    _log("run", range_, ctx)
    if range_.start == ctx.params.get("stall_start", 0) and ctx.attempt == 1:
        _log("stalled", range_, ctx)
        time.sleep(3600)


def watch_cancel(range_: Any, ctx: Any) -> None:
    """Runs until cancelled (sync handler polling the cancellation event)."""
    _log("run", range_, ctx)
    if ctx.cancelled.wait(60):
        _log("cancelled", range_, ctx)


async def async_watch_cancel(range_: Any, ctx: Any) -> None:
    """Runs until cancelled (async handler: the SDK cancels the task)."""
    import asyncio

    _log("run", range_, ctx)
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        _log("cancelled", range_, ctx)
        raise


def keep_multiples(range_: Any, is_leaf: bool) -> bool:
    """The seed's pruning rule: keep ranges that contain a multiple of 10,000."""
    return bool((range_.end - 1) // 10_000 >= (range_.start + 9_999) // 10_000)


def flaky(range_: Any, ctx: Any) -> None:
    """Fail the first attempt of every leaf; fail permanently on the leaf at params['bad_start']
    until the file params['fixed'] exists."""
    from parcelo import PermanentError

    _log("run", range_, ctx)
    if range_.start == ctx.params.get("bad_start") and not os.path.exists(ctx.params["fixed"]):
        raise PermanentError("bad record")
    if ctx.attempt == 1:
        raise RuntimeError("transient")


def checkpoint_then_stall(range_: Any, ctx: Any) -> None:
    """Attempt 1 checkpoints halfway with details, then hangs; later attempts log where they start."""
    _log("run", range_, ctx)
    path = os.environ["PARCELO_TEST_LOG"]
    if ctx.attempt == 1:
        half = range_.start + (range_.end - range_.start) // 2
        ctx.checkpoint(half, b"half-done")
        time.sleep(1.5)  # several heartbeats carry the checkpoint
        _log("checkpointed", range_, ctx)
        time.sleep(3600)
    with open(path, "a") as f:
        f.write(f"resumed {range_.start} {range_.end} {ctx.attempt} {ctx.details!r}\n")


# -- handlers that return results (jobs with a reduce) --------------------------------------------


def primes(range_: Any, ctx: Any) -> int:
    """The number of primes in the leaf. With ``params['flaky']`` the first attempt of every
    third leaf fails after running (so a result must not be counted for a failed attempt);
    ``params['sleep']`` stretches each leaf."""
    from parcelo.examples import primes_in

    _log("run", range_, ctx)
    delay = float(ctx.params.get("sleep", 0))
    if delay:
        time.sleep(delay)
    count = primes_in(range_.start, range_.end)
    if ctx.params.get("flaky") and ctx.attempt == 1 and range_.start * 7 % 3 == 0:
        raise RuntimeError("transient")
    return count


def scatter(x: int) -> int:
    """A value per id that looks random (tests/test_job_results.py plants extremes among them)."""
    return x * 2_654_435_761 % 1_000_003


def extreme(range_: Any, ctx: Any) -> int:
    """The min or max (``params['pick']``) of ``scatter`` over the leaf, with ``params['value']``
    at the id ``params['plant']``."""
    plant, value = ctx.params["plant"], ctx.params["value"]
    pick = min if ctx.params["pick"] == "min" else max
    found = pick(scatter(x) for x in range(range_.start, range_.end))
    return int(pick(found, value) if range_.start <= plant < range_.end else found)


def digit_histogram(range_: Any, ctx: Any) -> dict[str, Any]:
    """How many ids of the leaf end in each decimal digit, as a JSON object for reduce merge."""
    s, e = range_.start, range_.end
    digits = {str(d): (e - d + 9) // 10 - (s - d + 9) // 10 for d in range(10)}
    return {"count": e - s, "last_digit": {d: n for d, n in digits.items() if n}, "unit": "ids"}


def width(range_: Any, ctx: Any) -> int:
    """The width of the leaf; ``params['sleep']`` stretches each leaf, and the leaf at
    ``params['big_start']`` returns ``params['big_bytes']`` bytes of JSON instead."""
    _log("run", range_, ctx)
    delay = float(ctx.params.get("sleep", 0))
    if delay:
        time.sleep(delay)
    if range_.start == ctx.params.get("big_start"):
        return 10 ** (int(ctx.params["big_bytes"]) - 1)
    return int(range_.end - range_.start)


def key_per_leaf(range_: Any, ctx: Any) -> dict[str, int]:
    """A key of its own per leaf: a merge whose result grows with the range."""
    return {f"leaf-{range_.start:012d}": 1}


def nap(range_: Any, ctx: Any) -> int:
    """Sleep ``params['sleep']`` seconds; the first attempt of the leaf at ``params['fail_start']``
    fails (retried). Returns the leaf's width, for a job with ``reduce sum``."""
    time.sleep(float(ctx.params.get("sleep", 0)))
    if range_.start == ctx.params.get("fail_start") and ctx.attempt == 1:
        raise RuntimeError("a transient failure, for the dashboard to show")
    return int(range_.end - range_.start)


def span(range_: Any, ctx: Any) -> None:
    """Sleep ``params['sleep']`` seconds, logging ``span start end t0 t1`` (wall-clock start and end
    of the handler) in one line, so a test can tell how many ran at once."""
    began = time.time()
    time.sleep(float(ctx.params.get("sleep", 0)))
    line = f"span {range_.start} {range_.end} {began:.6f} {time.time():.6f} {ctx.job_id}\n".encode()
    fd = os.open(os.environ["PARCELO_TEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def claim_ids(range_: Any, ctx: Any) -> int:
    """A splittable handler: claims each id before doing it (line ``claim id id+1 fence pid``),
    stops at the first refused claim, and returns how many ids it did. Ids in
    ``params['slow']`` (``[start, end)``) take ``params['slow_seconds']``, the others
    ``params['fast_seconds']`` (default 1 ms)."""
    slow_start, slow_end = ctx.params.get("slow", (0, 0))
    slow = float(ctx.params.get("slow_seconds", 0.1))
    fast = float(ctx.params.get("fast_seconds", 0.001))
    done = 0
    position = range_.start
    while not ctx.cancelled.is_set() and ctx.claim(position):
        _log("claim", _Id(position), ctx, ctx.fence)
        time.sleep(slow if slow_start <= position < slow_end else fast)
        done += 1
        position += 1
    return done


class _Id:
    """One id as a range of one, for ``_log``."""

    def __init__(self, position: int) -> None:
        self.start, self.end = position, position + 1


def cost_by_region(range_: Any, ctx: Any) -> None:
    """Record the run; sleep ``params['slow_seconds']`` per id below ``params['slow_below']`` and
    ``params['fast_seconds']`` per id above (adaptive leaf size measures the difference)."""
    _log("run", range_, ctx)
    below = int(ctx.params["slow_below"])
    slow_ids = max(0, min(range_.end, below) - range_.start)
    fast_ids = (range_.end - range_.start) - slow_ids
    time.sleep(slow_ids * float(ctx.params["slow_seconds"]) + fast_ids * float(ctx.params["fast_seconds"]))


async def arecord(range_: Any, ctx: Any) -> None:
    """``record`` as an async handler (it never awaits: a leaf run runs it without a task)."""
    _log("run", range_, ctx)


def width_flaky(range_: Any, ctx: Any) -> int:
    """Log the run, sleep ``params['sleep']`` seconds (default 0) and return the leaf's width; the
    first attempt of every leaf whose start is ``params['every']`` apart (from ``params['offset']``)
    fails, and the leaf at ``params['bad_start']`` fails for good."""
    from parcelo import PermanentError

    _log("run", range_, ctx)
    delay = float(ctx.params.get("sleep", 0))
    if delay:
        time.sleep(delay)
    if range_.start == ctx.params.get("bad_start"):
        raise PermanentError("bad record")
    if range_.start % ctx.params["every"] == ctx.params["offset"] and ctx.attempt == 1:
        raise RuntimeError("transient")
    return int(range_.end - range_.start)
