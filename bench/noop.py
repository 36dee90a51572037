"""The no-op handler of the throughput benchmarks (async: no thread hop per leaf)."""

from __future__ import annotations

from typing import Any


async def noop(range_: Any, ctx: Any) -> None:
    """Do nothing: the benchmark measures Parcelo, not the work."""


async def one(range_: Any, ctx: Any) -> int:
    """Do nothing and return 1: a job with reduce sum counts its leaves (benchmark 8)."""
    return 1


def noop_sync(range_: Any, ctx: Any) -> None:
    """A plain ``def`` no-op, as a new user writes a handler: the default path (benchmark 10)."""
