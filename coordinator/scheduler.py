"""Which job the next lease comes from: queues, strict priorities, fair shares between fairness
keys, and the concurrency and rate limits of jobs and queues. Pure logic; the clock is passed in.

The order of choice, for the queues a worker names, in its order::

    queue        not paused, under its concurrency and rate limits
    priority     strict: a higher one is served while it has anything to lease
    fairness key weighted fair queuing: the key with the least service per unit of weight
    job          round robin among the jobs of that key
    leaf         the job's tree: deeper first, then by start (``tree.RangeTree``)

Only jobs that could be leased from now sit in the structures a choice looks at; the others are
parked with the reason, and the event that ends it wakes them (work appeared, one of their leases
ended, a timer came due). A choice therefore costs O(log keys) whatever the number of jobs, and
parking or waking a job O(log keys) once per cause.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable
from enum import IntEnum

QUANTUM = 64
"""Leases one turn of a fairness key takes when other keys of its priority wait: small enough that
shares hold over a window of a few dozen leases, large enough that a choice is rare per lease."""


class TokenBucket:
    """A token bucket: ``rate`` tokens a second, at most ``burst`` in hand (``rate`` > 0)."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.tokens = float(self.burst)
        self.stamp = now

    def available(self, now: float) -> int:
        """Whole tokens in hand now."""
        if now > self.stamp:
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        # The refill is a float sum: a token due at exactly ``now`` may read 0.999999...
        return int(self.tokens + 1e-9)

    def take(self, count: int) -> None:
        """Spend ``count`` tokens (at most :meth:`available` of them)."""
        self.tokens -= count

    def next_token_at(self, now: float) -> float:
        """When the next whole token is in hand (``now`` when one is)."""
        if self.available(now) >= 1:
            return now
        return now + max((1.0 - self.tokens) / self.rate, 1e-6)


def bucket(rate: float, burst: int, now: float) -> TokenBucket | None:
    """A bucket for a limit of ``rate`` a second (0: no limit); ``burst`` 0 means ``ceil(rate)``."""
    if rate <= 0:
        return None
    return TokenBucket(rate, burst or math.ceil(rate), now)


class Park(IntEnum):
    """Why a job is out of the choice (ACTIVE: it is in)."""

    ACTIVE = 0
    NO_WORK = 1  # its tree has nothing to lease now (woken by new work, or a retry coming due)
    FULL = 2  # at its concurrency limit (woken when one of its leases ends)
    TIMER = 3  # out of rate tokens, or not before its run_after (woken by the timer)


class Entry:
    """A job as the scheduler sees it: where it sits, its share and its limits."""

    __slots__ = (
        "bucket",
        "has_work",
        "job_id",
        "key",
        "leases",
        "max_concurrency",
        "next_retry",
        "priority",
        "queue",
        "run_after",
        "state",
        "wake_at",
        "weight",
    )

    def __init__(
        self,
        job_id: str,
        queue: str,
        priority: int,
        key: str,
        weight: int,
        has_work: Callable[[float], bool],
        next_retry: Callable[[], float],
        leases: Callable[[], int],
    ) -> None:
        self.job_id = job_id
        self.queue = queue
        self.priority = priority
        self.key = key
        self.weight = weight
        # What the job's tree and the lease table say, asked at the time of a choice: whether it
        # has a node to lease now, when its next retry is due (0: none), its live leaf leases.
        self.has_work = has_work
        self.next_retry = next_retry
        self.leases = leases
        self.max_concurrency = 0
        self.bucket: TokenBucket | None = None
        self.run_after = 0.0
        self.state = Park.NO_WORK
        # The time a TIMER (or NO_WORK with a retry pending) park ends; 0: none.
        self.wake_at = 0.0


class _Key:
    """One fairness key of one priority of one queue: its active jobs, in round-robin order."""

    __slots__ = ("jobs", "name", "queued", "vtime", "weight", "weights")

    def __init__(self, name: str) -> None:
        self.name = name
        self.jobs: deque[Entry] = deque()
        # The weight of every job of the key, active or not; the largest counts (``weight``).
        self.weights: dict[str, int] = {}
        self.weight = 1
        # Service so far divided by weight (virtual time of weighted fair queuing).
        self.vtime = 0.0
        self.queued = False

    def weigh(self, job_id: str, weight: int | None) -> None:
        """Set (or, with None, forget) the weight of one job of the key."""
        if weight is None:
            self.weights.pop(job_id, None)
        else:
            self.weights[job_id] = weight
        self.weight = max(self.weights.values(), default=1)


class _Level:
    """The jobs of one priority of one queue: a heap of the keys with active jobs, by vtime."""

    __slots__ = ("heap", "keys", "vclock")

    def __init__(self) -> None:
        self.keys: dict[str, _Key] = {}
        self.heap: list[tuple[float, int, _Key]] = []
        # The vtime of the key served last: a key that comes back starts no earlier (it cannot
        # claim the service it missed while it had nothing to lease).
        self.vclock = 0.0


class QueueState:
    """One queue: its priority levels, whether it is paused, and its limits."""

    __slots__ = ("bucket", "levels", "max_concurrency", "name", "paused", "priorities")

    def __init__(self, name: str) -> None:
        self.name = name
        self.levels: dict[int, _Level] = {}
        # Priorities that have active keys, highest first (as negated numbers, sorted).
        self.priorities: list[int] = []
        self.paused = False
        self.max_concurrency = 0
        self.bucket: TokenBucket | None = None


class Scheduler:
    """The choice of the job each lease comes from (see the module's docstring).

    Args:
        queue_leases: Live leaf leases of a queue (for its concurrency limit).
    """

    def __init__(self, queue_leases: Callable[[str], int]) -> None:
        self._entries: dict[str, Entry] = {}
        self._queues: dict[str, QueueState] = {}
        # Jobs in the choice (ACTIVE).
        self.active = 0
        self._timers: list[tuple[float, int, str]] = []
        # When a queue out of rate tokens has one again (0: none waits).
        self._queue_timer = 0.0
        self._seq = itertools.count()
        self._queue_leases = queue_leases

    # -- jobs -----------------------------------------------------------------------------------

    def add(self, entry: Entry, now: float) -> None:
        """A job that may be leased from (pending or running): into the choice when it can be."""
        self._entries[entry.job_id] = entry
        self._key(entry).weigh(entry.job_id, entry.weight)
        entry.state = Park.NO_WORK
        self._consider(entry, now)

    def remove(self, job_id: str) -> None:
        """A job that may not be leased from any more (paused, finished, deleted)."""
        entry = self._entries.pop(job_id, None)
        if entry is None:
            return
        if entry.state is Park.ACTIVE:
            self._deactivate(entry)
        self._key(entry).weigh(job_id, None)

    def get(self, job_id: str) -> Entry | None:
        return self._entries.get(job_id)

    def update(self, entry: Entry, now: float) -> None:
        """``entry`` replaces the job's entry (its priority, share or limits changed)."""
        self.remove(entry.job_id)
        self.add(entry, now)

    def wake(self, job_id: str, now: float) -> bool:
        """Something may have made the job leasable (new work, a retry scheduled, a lease ended).
        Returns whether it joined the choice. O(1) unless it does."""
        entry = self._entries.get(job_id)
        if entry is None or entry.state is Park.ACTIVE or entry.state is Park.TIMER:
            return False
        return self._consider(entry, now)

    def ended(self, job_id: str, queue: str, now: float) -> bool:
        """A lease of the job ended. Returns whether more may be granted now because of it (the
        job or its queue was at its concurrency limit)."""
        entry = self._entries.get(job_id)
        limited = entry is not None and entry.state is Park.FULL and self.wake(job_id, now)
        state = self._queues.get(queue)
        return limited or (state is not None and state.max_concurrency > 0)

    def tick(self, now: float) -> bool:
        """Wake the jobs whose timer came due. Returns whether any joined the choice, or a queue
        that was out of rate tokens has one again."""
        woke = False
        if self._queue_timer and self._queue_timer <= now:
            self._queue_timer = 0.0
            woke = True
        timers = self._timers
        due: list[Entry] = []
        while timers and timers[0][0] <= now:
            at, _, job_id = heapq.heappop(timers)
            entry = self._entries.get(job_id)
            if entry is not None and entry.state is not Park.ACTIVE and entry.wake_at == at:
                entry.wake_at = 0.0
                due.append(entry)
        # Considered after the pops: one parked again pushes a timer for later, not for this loop.
        for entry in due:
            woke |= self._consider(entry, now)
        return woke

    def next_timer(self) -> float:
        """When the next timer comes due (0: none)."""
        return self._timers[0][0] if self._timers else 0.0

    def _consider(self, entry: Entry, now: float) -> bool:
        """Put ``entry`` in the choice if it can be leased from now, else park it. Returns whether
        it is active."""
        room = self._room(entry, now)
        if room <= 0:
            return False
        if entry.state is not Park.ACTIVE:
            self._activate(entry)
        return True

    def _room(self, entry: Entry, now: float) -> int:
        """How many leases ``entry`` may get now (0: it is parked, with the reason)."""
        if entry.run_after > now:
            self._park(entry, Park.TIMER, entry.run_after)
            return 0
        room = 1 << 62
        if entry.max_concurrency:
            room = entry.max_concurrency - entry.leases()
            if room <= 0:
                self._park(entry, Park.FULL, 0.0)
                return 0
        if entry.bucket is not None:
            tokens = entry.bucket.available(now)
            if tokens <= 0:
                self._park(entry, Park.TIMER, entry.bucket.next_token_at(now))
                return 0
            room = min(room, tokens)
        if not entry.has_work(now):
            self._park(entry, Park.NO_WORK, entry.next_retry())
            return 0
        return room

    def _park(self, entry: Entry, why: Park, until: float) -> None:
        if entry.state is Park.ACTIVE:
            self._deactivate(entry)
        entry.state = why
        if until and until != entry.wake_at:
            entry.wake_at = until
            heapq.heappush(self._timers, (until, next(self._seq), entry.job_id))

    # -- the structures -------------------------------------------------------------------------

    def queue(self, name: str) -> QueueState:
        """The state of a queue (made on first use)."""
        state = self._queues.get(name)
        if state is None:
            state = self._queues[name] = QueueState(name)
        return state

    def queue_names(self) -> list[str]:
        return list(self._queues)

    def _key(self, entry: Entry) -> _Key:
        level = self._level(entry.queue, entry.priority)
        key = level.keys.get(entry.key)
        if key is None:
            key = level.keys[entry.key] = _Key(entry.key)
        return key

    def _level(self, queue: str, priority: int) -> _Level:
        state = self.queue(queue)
        level = state.levels.get(priority)
        if level is None:
            level = state.levels[priority] = _Level()
        return level

    def _activate(self, entry: Entry) -> None:
        entry.state = Park.ACTIVE
        self.active += 1
        level = self._level(entry.queue, entry.priority)
        key = self._key(entry)
        key.jobs.append(entry)
        if not key.queued:
            key.vtime = max(key.vtime, level.vclock)
            self._push(entry.queue, entry.priority, level, key)

    def _push(self, queue: str, priority: int, level: _Level, key: _Key) -> None:
        if not level.heap:
            state = self._queues[queue]
            position = bisect.bisect_left(state.priorities, -priority)
            if position == len(state.priorities) or state.priorities[position] != -priority:
                state.priorities.insert(position, -priority)
        key.queued = True
        heapq.heappush(level.heap, (key.vtime, next(self._seq), key))

    def _deactivate(self, entry: Entry) -> None:
        # The key stays in its level's heap; one left with no active job is dropped when it comes
        # up in a choice. O(active jobs of the key), one for the default key (the job's own id).
        key = self._key(entry)
        with contextlib.suppress(ValueError):
            key.jobs.remove(entry)
        entry.state = Park.NO_WORK
        self.active -= 1

    # -- choosing -------------------------------------------------------------------------------

    def choose(self, queue: str, now: float, want: int) -> tuple[Entry, int] | None:
        """The job of ``queue`` the next leases come from and how many it may get (at most
        ``want``), or None when the queue has nothing to lease (or is paused, or at a limit).

        The caller leases up to that many from the job and reports with :meth:`served`.
        """
        state = self._queues.get(queue)
        if state is None or state.paused or not state.priorities:
            return None
        if state.max_concurrency:
            want = min(want, state.max_concurrency - self._queue_leases(queue))
        if state.bucket is not None:
            tokens = state.bucket.available(now)
            if tokens <= 0:
                at = state.bucket.next_token_at(now)
                self._queue_timer = min(self._queue_timer, at) if self._queue_timer else at
                return None
            want = min(want, tokens)
        if want <= 0:
            return None
        while state.priorities:
            priority = -state.priorities[0]
            level = state.levels[priority]
            while level.heap:
                key = level.heap[0][2]
                if not key.jobs:
                    heapq.heappop(level.heap)
                    key.queued = False
                    continue
                entry = key.jobs[0]
                room = self._room(entry, now)
                if room <= 0:
                    continue  # parked: the key's next job, or the next key
                # Alone at this priority: no one to share with, so no quantum.
                alone = len(level.heap) == 1 and len(key.jobs) == 1
                return entry, min(want, room) if alone else min(want, room, QUANTUM)
            state.priorities.pop(0)
        return None

    def served(self, entry: Entry, count: int, now: float, drained: bool) -> None:
        """``count`` leaves came from ``entry`` (as :meth:`choose` offered; a leaf run counts its
        leaves, so fair shares and rate limits hold per leaf); ``drained``: its tree had no more
        to lease."""
        state = self._queues[entry.queue]
        if state.bucket is not None:
            state.bucket.take(count)
        if entry.bucket is not None:
            entry.bucket.take(count)
        level = state.levels[entry.priority]
        key = self._key(entry)
        if count:
            key.vtime += count / key.weight
            level.vclock = key.vtime
            if key.jobs and key.jobs[0] is entry and len(key.jobs) > 1:
                key.jobs.rotate(-1)
            if key.queued and level.heap and level.heap[0][2] is key:
                # Its new vtime puts it back in line behind the keys served less.
                heapq.heapreplace(level.heap, (key.vtime, next(self._seq), key))
        if drained:
            self._park(entry, Park.NO_WORK, entry.next_retry())
