"""Example handlers: real work for `make demo`, a no-op for benchmarks, a pruning callback."""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

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
    """Count the primes of the range, checkpointing every chunk.

    With ``params["out"]`` (a directory), write the leaf's count to
    ``OUT/<start>-<end>`` (rewritten by a retry, so summing the files is exact).
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
    out = ctx.params.get("out")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        path = Path(out) / f"{ctx.leaf.start}-{ctx.leaf.end}"
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(str(total))
        tmp.replace(path)
    return total


async def noop(range_: Range, ctx: Context) -> None:
    """Do nothing (benchmarks measure Parcelo, not the work)."""


def should_process(range_: Range, is_leaf: bool) -> bool:
    """Keep only ranges that contain a multiple of 10,000 (the seed's pruning example)."""
    return (range_.end - 1) // 10_000 >= (range_.start + 9_999) // 10_000
