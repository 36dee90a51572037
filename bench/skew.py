"""The claiming handler of the skewed-job benchmark (row 10): every id sleeps, slow ones longer."""

from __future__ import annotations

import time
from typing import Any


def claim_sleep(range_: Any, ctx: Any) -> int:
    """Claim each id before doing it (so the coordinator may split the leaf), sleep
    ``params['slow_seconds']`` for ids in ``params['slow']`` and ``params['fast_seconds']`` for the
    others; return how many ids this run did (the job sums them: the range's width, exactly)."""
    slow_start, slow_end = ctx.params["slow"]
    slow, fast = float(ctx.params["slow_seconds"]), float(ctx.params["fast_seconds"])
    done = 0
    position = range_.start
    while not ctx.cancelled.is_set() and ctx.claim(position):
        time.sleep(slow if slow_start <= position < slow_end else fast)
        done += 1
        position += 1
    return done
