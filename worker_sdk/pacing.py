"""How much work a worker keeps in hand, and how it spreads sync leases over its threads.

Pure and clock-free: the worker measures how long each handler ran and tells a :class:`Pacer`;
the pacer answers how many leases to keep in hand and how many thread submissions to start.
Both follow the leaves' observed durations, so the defaults suit microsecond leaves and minute
leaves alike without flags:

* **Credit.** Short leaves need many leases in flight to cover the round trip to the
  coordinator (results out, credit out, grants back); long ones need few, or one worker hoards
  what another could run. The pacer keeps about :data:`~parcelo.defaults.PREFETCH_TIME` of work
  in hand beyond the running handlers, at most :data:`~parcelo.defaults.WORKER_PREFETCH_MAX`
  leases. What it holds grows by at most one lease per lease finished (a slow start, as TCP's
  window): a mean learned from one job's instant leaves cannot make it grab another job's slow
  ones by the hundred, and short leaves still reach the cap within a few round trips.
* **Thread hops.** Sending each sync lease to the thread pool on its own costs the loop a future,
  a wake-up and a context switch per leaf, more than a no-op handler itself. A submission
  instead runs waiting leases one after another for up to
  :data:`~parcelo.defaults.SYNC_BATCH_TIME`; more submissions start only while the waiting work
  is longer than the running ones will get through in that time, so slow leaves still get a
  thread each and short ones share one.
"""

from __future__ import annotations

import math

from parcelo import defaults

ALPHA = 0.2
"""Weight of one new observation in the mean leaf duration: the mean follows a change of the
leaves within a few dozen of them, and one odd leaf moves it little."""


class Pacer:
    """Observed leaf durations, and what follows from them for credit and thread submissions.

    Args:
        concurrency: Handler slots of the worker.
        prefetch: Leases kept in hand beyond the running ones: a fixed count, or ``None`` to
            follow the observed durations.
        prefetch_time: Seconds of work to keep in hand beyond the running handlers (adaptive
            prefetch only).
        prefetch_max: Most leases kept in hand beyond the running ones (adaptive prefetch only).
        batch_time: Seconds one sync submission runs leases in sequence before it hands back.
    """

    def __init__(
        self,
        concurrency: int,
        prefetch: int | None = None,
        *,
        prefetch_time: float = defaults.PREFETCH_TIME.total_seconds(),
        prefetch_max: int = defaults.WORKER_PREFETCH_MAX,
        batch_time: float = defaults.SYNC_BATCH_TIME.total_seconds(),
    ) -> None:
        self.concurrency = concurrency
        self.fixed = prefetch
        self.prefetch_time = prefetch_time
        self.prefetch_max = prefetch_max
        self.batch_time = batch_time
        self.mean: float | None = None
        """Mean seconds per leaf (handler run time), or None before the first leaf finished."""
        # Leases to hold beyond the running ones right now: starts at one per slot, grows by the
        # leases finished, never past what the mean says.
        self._window = min(concurrency, prefetch_max)

    def observe(self, seconds: float, leaves: int = 1) -> None:
        """``leaves`` leaves ran for ``seconds`` in all (a sync submission reports its leaves at once)."""
        if leaves <= 0:
            return
        each = max(seconds, 0.0) / leaves
        if self.mean is None:
            self.mean = each
        else:
            self.mean += min(1.0, ALPHA * leaves) * (each - self.mean)
        self._window = min(self._window + leaves, self._target(self.mean))

    def _target(self, mean: float) -> int:
        """Leases worth about ``prefetch_time`` of work at ``mean`` seconds a leaf (at least 1)."""
        if mean <= 0:
            return self.prefetch_max
        # The slots get through concurrency / mean leaves a second while all are busy.
        wanted = math.ceil(self.concurrency * self.prefetch_time / mean)
        return max(1, min(wanted, self.prefetch_max))

    def prefetch(self) -> int:
        """Leases to keep in hand beyond the running ones."""
        if self.fixed is not None:
            return self.fixed
        # Before any leaf finished: one lease per slot, so a first grant of long leaves is no
        # hoard; short leaves finish at once and the window grows from them.
        return self._window

    def in_hand(self) -> int:
        """Leases to hold (running and waiting) plus credit asked for and not yet granted."""
        return self.concurrency + self.prefetch()

    def ask_batch(self) -> int:
        """Least credit worth one lease request: a quarter of the prefetch, so asks stay few."""
        return max(1, self.prefetch() // 4)

    def submissions(self, waiting: int, running: int) -> int:
        """How many more sync submissions to start, with ``waiting`` leases not started and
        ``running`` submissions at work (each takes waiting leases as it finishes one)."""
        free = min(self.concurrency - running, waiting)
        if free <= 0:
            return 0
        if self.mean is None:
            return free  # nothing known: a submission per lease, as for long leaves
        # Submissions that would get through the waiting work within batch_time each.
        needed = math.ceil(waiting * self.mean / self.batch_time) if self.batch_time > 0 else waiting
        return max(0, min(free, max(needed, 1 if running == 0 else 0) - running))
