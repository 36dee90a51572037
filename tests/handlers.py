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
