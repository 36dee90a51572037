"""What a handler receives: the range to work on and its context."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Range:
    """A half-open range ``[start, end)`` of ids."""

    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


_FIRST_USE = threading.Lock()
"""Taken only while a context makes its ``cancelled`` event, the first time it is asked for."""


class Context:
    """The context of one attempt at a leaf.

    Attributes:
        job_id: The job the leaf belongs to.
        params: The job's JSON params, parsed.
        attempt: 1 for the first attempt, 2 for the first retry, ...
        fence: The lease's fencing token (for logs and idempotency keys).
        leaf: The whole leaf; the handler's range starts at ``cursor``.
        cursor: Where this attempt starts (``leaf.start`` unless an earlier attempt checkpointed).
        details: Bytes saved with that checkpoint, or None.
        cancelled: Set when the handler should stop: the job was cancelled or
            paused with release, the lease was lost, or the worker is shutting
            down past its drain timeout. Sync handlers poll it; async handlers
            are also cancelled.

    A handler that walks its range through :meth:`claim` (claiming each id, or each
    block, before doing it, and stopping when a claim is refused) is *splittable*: the
    coordinator may hand the part it has not claimed to other workers while it runs.
    """

    __slots__ = (
        "_cancelled",
        "_checkpoint",
        "_claimed",
        "_end",
        "_lock",
        "_message",
        "attempt",
        "cursor",
        "details",
        "fence",
        "job_id",
        "leaf",
        "params",
    )

    def __init__(
        self,
        *,
        job_id: str,
        params: dict[str, Any],
        attempt: int,
        fence: int,
        leaf: Range,
        cursor: int,
        details: bytes | None,
    ) -> None:
        self.job_id = job_id
        self.params = params
        self.attempt = attempt
        self.fence = fence
        self.leaf = leaf
        self.cursor = cursor
        self.details = details
        # Made on first use: a threading.Event (a lock and a condition) per leaf was a good part of
        # the worker's own time per leaf, and most handlers never look at it.
        self._cancelled: threading.Event | None = None
        self._end = leaf.end
        # One past the highest position claimed (-1: claim never called), and what keeps a claim
        # and a shrink (the worker's thread) from crossing: made on first use, like ``cancelled``.
        self._claimed = -1
        self._lock: threading.Lock | None = None
        # Newest checkpoint not yet sent, and the newest ever (sent with a failure or release).
        self._checkpoint: tuple[int, bytes] | None = None
        self._message = ""

    @property
    def cancelled(self) -> threading.Event:
        """Set when the handler should stop (see the class docstring)."""
        event = self._cancelled
        if event is None:
            # The handler's thread and the worker's loop may both come first: one Event, or a set()
            # on the loser would be lost.
            with _FIRST_USE:
                event = self._cancelled
                if event is None:
                    event = self._cancelled = threading.Event()
        return event

    @property
    def end(self) -> int:
        """Where the handler should stop; smaller than ``leaf.end`` if the coordinator shrank the leaf."""
        return self._end

    def claim(self, position: int) -> bool:
        """Claim ``position`` before doing it: True while ``position < end``.

        ``end`` may shrink while the handler runs (the coordinator gave the rest of the leaf to
        another worker), so a handler must stop once a claim returns False: a position at or
        past ``end`` is someone else's. A claimed position is never given away, and neither is
        anything below it: a handler working in blocks claims each block's last id. Handlers
        that never call it are never split. Thread-safe; cheap (a lock and a comparison).
        """
        with self._lock or self._first_lock():
            if position >= self._end:
                return False
            if position >= self._claimed:
                self._claimed = position + 1
            return True

    def _first_lock(self) -> threading.Lock:
        with _FIRST_USE:
            if self._lock is None:
                self._lock = threading.Lock()
            return self._lock

    @property
    def splittable(self) -> bool:
        """Whether the handler claims its positions (it called :meth:`claim`)."""
        return self._claimed >= 0

    @property
    def claimed(self) -> int:
        """The first position not yet claimed (where this attempt starts, before any claim)."""
        return max(self._claimed, self.cursor)

    def checkpoint(self, cursor: int, details: bytes | None = None) -> None:
        """Record that every id below ``cursor`` is done.

        The next heartbeat carries it (only the newest is sent). If this
        attempt dies, the next one starts at ``cursor`` and gets ``details``.

        Raises:
            ValueError: ``cursor`` is outside ``[leaf.start, end]``.
        """
        if not self.leaf.start <= cursor <= self._end:
            raise ValueError(f"cursor {cursor} is outside the leaf [{self.leaf.start}, {self._end}]")
        self._checkpoint = (cursor, details or b"")

    def progress(self, message: str) -> None:
        """A free-form progress message, sent with the next heartbeat."""
        self._message = message

    # -- used by the worker ---------------------------------------------------------------------

    def take_message(self) -> str:
        message, self._message = self._message, ""
        return message

    @property
    def last_checkpoint(self) -> tuple[int, bytes] | None:
        return self._checkpoint

    def shrink(self, new_end: int) -> bool:
        """The coordinator proposes to end the leaf at ``new_end``: accept (and from now on
        refuse claims at or past it) unless a position at or past it was claimed already.
        Asked again about the end already accepted, says yes again."""
        with self._lock or self._first_lock():
            if new_end == self._end:
                return True
            if not self.leaf.start < new_end < self._end or self.claimed > new_end:
                return False
            self._end = new_end
            return True


class Handler(Protocol):
    """A handler: ``(range, ctx)``; plain or ``async``. Returning completes the leaf.

    What it returns is the leaf's result when the job has a ``reduce``: a JSON value (None: no
    result). Jobs without a reduce ignore it.
    """

    def __call__(self, range_: Range, ctx: Context, /) -> Any: ...


ShouldProcess = Callable[[Range, bool], "bool | Awaitable[bool]"]
"""Pruning callback: ``(range, is_leaf) -> keep?``; plain or ``async``."""
