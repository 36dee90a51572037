"""Example handlers: real work for `make demo`, a no-op for benchmarks, a pruning callback."""

from __future__ import annotations

import math
import struct

from parcelo.context import Context, Range

_CHUNK = 20_000


def _small_primes(limit: int) -> list[int]:
    sieve = bytearray([1]) * (limit + 1)
    sieve[0:2] = b"\x00\x00"
    for i in range(2, math.isqrt(limit) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, limit + 1, i)))
    return [i for i, flag in enumerate(sieve) if flag]


def primes_in(start: int, end: int) -> int:
    """How many primes lie in ``[start, end)`` (a segmented sieve of Eratosthenes)."""
    if end <= 2:
        return 0
    start = max(start, 2)
    segment = bytearray([1]) * (end - start)
    for p in _small_primes(math.isqrt(end - 1)):
        first = max(p * p, (start + p - 1) // p * p)
        segment[first - start :: p] = bytes(len(range(first, end, p)))
    return sum(segment)


def count_primes(range_: Range, ctx: Context) -> int:
    """Count the primes of the leaf and return the count (a job with ``--reduce sum`` adds them up).

    Checkpoints every chunk with the count so far in the details, so an attempt that resumes
    from a checkpoint returns the count of the whole leaf, not only of the part it ran.
    """
    total = struct.unpack(">Q", ctx.details)[0] if ctx.details and range_.start > ctx.leaf.start else 0
    pos = range_.start
    while pos < ctx.end:
        if ctx.cancelled.is_set():
            return total
        upto = min(pos + _CHUNK, ctx.end)
        total += primes_in(pos, upto)
        pos = upto
        ctx.checkpoint(pos, struct.pack(">Q", total))
    return total


async def noop(range_: Range, ctx: Context) -> None:
    """Do nothing (benchmarks measure Parcelo, not the work)."""


def should_process(range_: Range, is_leaf: bool) -> bool:
    """Keep only ranges that contain a multiple of 10,000 (the seed's pruning example)."""
    return (range_.end - 1) // 10_000 >= (range_.start + 9_999) // 10_000
