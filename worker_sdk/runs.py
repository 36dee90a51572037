"""Leaf runs on the worker's side: the leaves of a run, and its leaves' results combined.

A coordinator may grant a worker that says ``Hello.leaf_runs`` a lease wider than its job's
``max_range_size``: a *leaf run* (docs/protocol.md, "Leaf runs"). The worker splits it by the
tree's rule (``mid = start + (end - start) // 2``, until a node is at most ``max_range_size``
wide), runs the handler on each leaf in order, and completes the run once; the results of its
leaves go as one value, combined here the way the job's reduce combines them. Pure functions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from parcelo.v1 import types_pb2


def leaves(start: int, end: int, max_range_size: int) -> Iterator[tuple[int, int]]:
    """The leaves of ``[start, end)`` by the split rule, in range order (made as they are read:
    the run loop takes them one at a time)."""
    stack = [(start, end)]
    while stack:
        lo, hi = stack.pop()
        while hi - lo > max_range_size:
            mid = lo + (hi - lo) // 2
            stack.append((mid, hi))
            hi = mid
        yield lo, hi


def first_leaf(start: int, end: int, max_range_size: int) -> int:
    """The end of the first leaf of ``[start, end)`` by the split rule."""
    while end - start > max_range_size:
        end = start + (end - start) // 2
    return end


_NAMES: dict[int, str] = {
    types_pb2.REDUCE_SUM: "sum",
    types_pb2.REDUCE_MIN: "min",
    types_pb2.REDUCE_MAX: "max",
}


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class RunResult:
    """The results of a run's leaves combined by the job's reduce (sum, min or max).

    The coordinator never grants runs for a merge reduce. A leaf whose result is not a finite
    number fails for good, with the message the coordinator gives a single leaf's bad result.
    """

    __slots__ = ("_name", "_reduce", "value")

    def __init__(self, reduce: int) -> None:
        self._reduce = reduce
        self._name = _NAMES.get(reduce, "")
        self.value: Any = None

    def add(self, result: Any) -> str:
        """Take one leaf's result (None: none); returns why it cannot be taken ("" when it can)."""
        if result is None or not self._name:
            return ""
        if isinstance(result, bool) or not isinstance(result, (int, float)):
            return f"reduce {self._name} combines numbers; the result is {_kind(result)}"
        if isinstance(result, float) and not math.isfinite(result):
            # The coordinator's words for a single leaf's NaN or infinity.
            name = "NaN" if math.isnan(result) else ("Infinity" if result > 0 else "-Infinity")
            return f"the result is not JSON: {name} is not a JSON number"
        value = self.value
        if value is None:
            self.value = result
        elif self._reduce == types_pb2.REDUCE_SUM:
            self.value = value + result
        elif self._reduce == types_pb2.REDUCE_MIN:
            self.value = result if result < value else value
        else:
            self.value = result if result > value else value
        return ""
