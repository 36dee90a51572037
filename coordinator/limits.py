"""The bounds one request may reach: what a caller can make the coordinator hold, do or send.

Each configurable bound is a ``parcelo-coordinator`` flag (``--max-...``) with the default here;
the others are fixed (they keep an answer within what a default gRPC client accepts, 4 MiB).
A request past a bound is refused with ``INVALID_ARGUMENT`` or ``RESOURCE_EXHAUSTED`` naming it,
before anything changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from parcelo.coordinator.errors import ResourceExhausted

MAX_PARAMS_BYTES = 1 << 20
"""Default of ``--max-params-bytes``."""

MAX_TREE_NODES = 10_000
"""Nodes in one ``GetJobTree`` answer: deeper levels are left out (``truncated``) beyond it."""

MAX_WATCH_PAGE = 1_000
"""Events a ``WatchJob`` replay reads from disk at a time."""

MAX_LIST_BYTES = 3 << 20
"""Bytes of jobs in one ``ListJobs`` page (a page ends early, with a token, rather than pass it)."""

MAX_QUEUED_ANSWERS = 1_024
"""Answers waiting to be sent on one stream; a worker that lets more pile up (it does not read
them) loses the stream with ``RESOURCE_EXHAUSTED``."""

MAX_REASON_BYTES = 1_024
"""Bytes of a cancel reason kept (and shown)."""

MAX_LABELS_BYTES = 64 << 10
"""Bytes of a job's labels, keys and values together."""

MAX_ID_BYTES = 128
"""Bytes of an idempotency key (``request_id``); job ids are 1-128 characters of a fixed set."""

MAX_DETAILS_BYTES = 64 << 10
"""Bytes of a checkpoint's details (kept with the leaf and handed to its next attempt)."""

MAX_QUEUES_PER_WORKER = 64
"""Queues one worker stream (or unary Lease) may name."""


@dataclass(frozen=True)
class Limits:
    """The configurable bounds (the ``--max-...`` flags of ``parcelo-coordinator``).

    Attributes:
        message_bytes: Largest gRPC message received or sent.
        params_bytes: Largest ``params_json`` of a job (UTF-8 bytes).
        leases_per_request: Most leases one ``Lease`` asks for, most fences one ``Complete`` or
            ``Fail`` (or leases one ``Heartbeat``) names, and most credit one stream holds.
        streams_per_worker: Most ``Work`` streams open at once under one worker id.
    """

    message_bytes: int = 16 << 20
    params_bytes: int = MAX_PARAMS_BYTES
    leases_per_request: int = 10_000
    streams_per_worker: int = 16

    def check_count(self, field: str, count: int) -> None:
        """Refuse a request naming more than ``leases_per_request`` leases in ``field``."""
        if count > self.leases_per_request:
            raise ResourceExhausted(
                f"{field}: {count} is over the coordinator's --max-leases-per-request "
                f"({self.leases_per_request})"
            )


DEFAULT_LIMITS = Limits()
"""The limits of a coordinator started without ``--max-...`` flags."""
