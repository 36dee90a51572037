"""The leases of a grant, read from either wire form into one plain record each.

A worker that says ``Hello.packed_grants`` gets its leases as columns
(``LeaseGrant.packed``, laid out in proto/parcelo/v1/worker.proto and
docs/protocol.md); a coordinator that does not know the flag sends one ``Lease``
message per lease. Both become :class:`GrantedLease` records here, so the worker
never keeps a protobuf object per lease: reading a column is one call for all
leases, where each ``Lease`` message costs a wrapper object and a field lookup
per attribute.
"""

from __future__ import annotations

from parcelo.v1 import worker_pb2

LEAF = worker_pb2.LEASE_KIND_LEAF
PROBE = worker_pb2.LEASE_KIND_PROBE


class GrantedLease:
    """One lease as granted; the attributes of a ``Lease`` message (``kind`` a ``LeaseKind`` value)."""

    __slots__ = ("attempt", "cursor", "details", "end", "fence", "is_leaf", "job_id", "kind", "start")

    def __init__(
        self,
        fence: int,
        job_id: str,
        start: int,
        end: int,
        attempt: int,
        *,
        kind: int = LEAF,
        cursor: int = 0,
        details: bytes = b"",
        is_leaf: bool = True,
    ) -> None:
        self.fence = fence
        self.job_id = job_id
        self.kind = kind
        self.start = start
        self.end = end
        self.attempt = attempt
        # Where the handler starts: the checkpoint of an earlier attempt, else the start.
        self.cursor = cursor or start
        self.details = details
        self.is_leaf = is_leaf

    def __repr__(self) -> str:
        return f"GrantedLease(fence={self.fence}, job={self.job_id!r}, [{self.start}, {self.end}))"


def leases_of(grant: worker_pb2.LeaseGrant) -> list[GrantedLease]:
    """Every lease of ``grant``, in grant order, from its ``Lease`` messages or its packed columns.

    Raises:
        ValueError: The packed columns do not fit together (lengths, runs or indexes).
    """
    out = [
        GrantedLease(
            lease.fence,
            lease.job_id,
            lease.start,
            lease.end,
            lease.attempt,
            kind=lease.kind,
            cursor=lease.cursor,
            details=lease.details,
            is_leaf=lease.is_leaf,
        )
        for lease in grant.leases
    ]
    if grant.HasField("packed"):
        out.extend(_unpack(grant.packed))
    return out


def _unpack(packed: worker_pb2.PackedLeases) -> list[GrantedLease]:
    # Each column is copied into a list once: indexing a repeated field goes through protobuf.
    fences = list(packed.fences)
    starts = list(packed.starts)
    ends = list(packed.ends)
    attempts = list(packed.attempts) or [1] * len(fences)
    lengths = list(packed.run_lengths)
    if not len(starts) == len(ends) == len(attempts) == len(fences) == sum(lengths):
        raise ValueError("packed grant: fences, starts, ends, attempts and run_lengths do not agree")
    if len(lengths) != len(packed.run_job_ids):
        raise ValueError("packed grant: run_job_ids and run_lengths differ in length")
    out: list[GrantedLease] = []
    append = out.append
    i = 0
    for job_id, length in zip(packed.run_job_ids, lengths, strict=True):
        for k in range(i, i + length):
            append(GrantedLease(fences[k], job_id, starts[k], ends[k], attempts[k]))
        i += length
    probes = list(packed.probes)
    resumed = list(packed.resumed)
    if len(probes) != len(packed.probe_is_leaf):
        raise ValueError("packed grant: probes and probe_is_leaf differ in length")
    if not len(resumed) == len(packed.cursors) == len(packed.details):
        raise ValueError("packed grant: resumed, cursors and details differ in length")
    if any(index >= len(out) for index in (*probes, *resumed)):
        raise ValueError("packed grant: a probe or resumed index is past the last lease")
    for index, is_leaf in zip(probes, packed.probe_is_leaf, strict=True):
        lease = out[index]
        lease.kind = PROBE
        lease.is_leaf = is_leaf
    for index, cursor, details in zip(resumed, packed.cursors, packed.details, strict=True):
        lease = out[index]
        lease.cursor = cursor
        lease.details = details
    return out
