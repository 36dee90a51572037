"""Leaf runs: when a job's leaves are short enough to lease several of them as one unit, and how
many. Pure logic.

A lease costs the coordinator and the worker about 25 µs of CPU between them (a tree node made
and dropped, a lease record, a store put and delete, its share of the messages), whatever its
handler does. For leaves of a few microseconds that is nearly all the work, so a worker that
says ``Hello.leaf_runs`` may be granted a *run*: a node of the tree no wider than ``n`` leaves,
leased whole under one fence, which the worker splits by the rule and runs leaf after leaf in one
handler slot (docs/protocol.md, "Leaf runs"). A run is sized from the handler time per leaf the
job's completions report, to take about ``RUN_SECONDS``; until enough were measured, and for
leaves too slow to gain from it, every lease is one leaf.
"""

from __future__ import annotations

from parcelo.coordinator.results import Reduce
from parcelo.v1 import types_pb2

RUN_SECONDS = 0.002
"""Handler time a run is sized to: short enough that the slot it holds, its re-run after a crash
and the tail of a job stay small, long enough to divide the per-lease cost by tens of leaves."""

MAX_RUN_LEAVES = 64
"""Leaves in a run at most: past that the per-lease cost is well under a microsecond a leaf."""

MIN_SAMPLES = 16
"""Completions measured before a job's leaves are trusted to be short."""

SMOOTHING = 1 / 16
"""Weight of each new measure in the running mean of handler time per leaf."""

_RUNNABLE = frozenset({Reduce.NONE, Reduce.SUM, Reduce.MIN, Reduce.MAX})
"""Reduces a worker combines over a run's leaves itself (merge needs the coordinator's checks)."""


class LeafPace:
    """The running mean of a job's handler time per leaf, and the run length it allows."""

    __slots__ = ("samples", "us")

    def __init__(self) -> None:
        self.us = 0.0
        self.samples = 0

    def observe(self, handler_us: int, leaves: int) -> None:
        """A lease of ``leaves`` leaves ran its handler for ``handler_us`` µs in all."""
        per_leaf = handler_us / leaves
        if self.samples:
            self.us += (per_leaf - self.us) * SMOOTHING
        else:
            self.us = per_leaf
        self.samples += 1

    def run_leaves(self) -> int:
        """Leaves per run now: a power of two, at most ``MAX_RUN_LEAVES``; 1 (no runs) until
        ``MIN_SAMPLES`` were measured or when two leaves take longer than ``RUN_SECONDS``."""
        if self.samples < MIN_SAMPLES:
            return 1
        leaves = MAX_RUN_LEAVES
        budget = RUN_SECONDS * 1e6
        while leaves > 1 and leaves * self.us > budget:
            leaves //= 2
        return leaves


def runs_allowed(spec: types_pb2.JobSpec, reduce: Reduce) -> bool:
    """Whether leaves of a job with ``spec`` may be leased as runs.

    Not when the job turned them off (``leaf_runs``), nor with pruning (probes decide per node), a leaf timeout or a rate limit (both count
    leases, and a run is many leaves), adaptive leaf size (it splits leaves, runs join them), a
    merge reduce (the coordinator checks merges per leaf), or a ``min_range_size`` that forbids
    splitting at leaf boundaries (a run ended early or with failed leaves is split there).
    """
    return (
        (spec.leaf_runs if spec.HasField("leaf_runs") else True)
        and reduce in _RUNNABLE
        and not spec.pruning
        and not spec.HasField("leaf_timeout")
        and not spec.max_leases_per_second
        and not spec.target_leaf_seconds.ToNanoseconds()
        and 2 * spec.min_range_size <= spec.max_range_size + 1
    )
