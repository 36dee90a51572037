"""The example handler: count the ids of the range whose digit sum is a multiple of ``divisor``.

Replace it with your own. ``parcelo-worker --handler myjobs.handlers:handle`` runs it; create a
job for it with, e.g., ``parcelo job create --start 0 --end 100000000 --max-range-size 1000000
--params '{"divisor": 7}' --reduce sum``, and ``parcelo job result ID`` adds up the leaves' counts.
"""

from __future__ import annotations

import logging

from parcelo import Context, Range

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 100_000
"""Ids between checkpoints: a retry after a crash resumes at the last one."""


def digit_sum(n: int) -> int:
    total = 0
    while n:
        n, digit = divmod(n, 10)
        total += digit
    return total


def handle(rng: Range, ctx: Context) -> int:
    """Count the matching ids of the leaf, checkpointing as it goes; the count is the leaf's result."""
    divisor = int(ctx.params.get("divisor", 7))
    # A retry starts after the last checkpoint, with the count so far in its details.
    count = int(ctx.details.decode()) if ctx.details and rng.start > ctx.leaf.start else 0
    # ctx.end, not rng.end: the coordinator may shrink a running leaf.
    for start in range(rng.start, ctx.end, CHECKPOINT_EVERY):
        if ctx.cancelled.is_set():  # cancelled, paused with release, or the worker is stopping
            return count
        end = min(start + CHECKPOINT_EVERY, ctx.end)
        count += sum(1 for i in range(start, end) if digit_sum(i) % divisor == 0)
        ctx.checkpoint(end, str(count).encode())
        ctx.progress(f"{end - ctx.leaf.start} of {len(ctx.leaf)} ids, {count} found")
    log.info(
        "leaf [%d, %d): %d ids with a digit sum divisible by %d", ctx.leaf.start, ctx.end, count, divisor
    )
    return count
