"""Handlers the integration tests run in real worker processes.

Each run is appended to the file named by PARCELO_TEST_LOG as one line
``event start end attempt`` (O_APPEND writes of one short line are atomic, so
two worker processes can share the file).
"""

from __future__ import annotations

import os
import time
from typing import Any


def _log(event: str, range_: Any, ctx: Any) -> None:
    path = os.environ["PARCELO_TEST_LOG"]
    line = f"{event} {range_.start} {range_.end} {ctx.attempt} {os.getpid()}\n".encode()
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
