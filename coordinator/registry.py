"""The worker registry: the workers connected now, what they said in hello, and what they did.

The Work streams feed it (hello, heartbeats, each answered completion or failure, the stream's
end); ``ListWorkers``, the HTTP API and the dashboard read it. It is also where the results of
each answered message are counted once: per worker here, and for the coordinator's metrics
through ``on_results``. Everything is O(1) per message (O(fences) for the counts of one
message), nothing per lease; the leases a worker holds are counted from the lease table when
someone asks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from parcelo.coordinator.dispatcher import Session
from parcelo.v1 import worker_pb2


class Results(NamedTuple):
    """What one answered ``complete`` or ``fail`` message counted."""

    completed: int
    failed: int
    released: int
    # Rejections by RejectReason value.
    rejected: Mapping[int, int]
    # Handler run times the worker reported, in microseconds (completions only; may be empty).
    handler_us: Sequence[int]


@dataclass(eq=False)
class WorkerRecord:
    """One connected worker (all the Work streams open under its worker id)."""

    worker_id: str
    address: str
    queues: tuple[str, ...]
    concurrency: int
    sdk: str
    connected_at: float
    last_heartbeat_at: float = 0.0
    completed: int = 0
    failed: int = 0
    sessions: list[Session] = field(default_factory=list)


def _ignore(_: Results) -> None:
    pass


def _rejected(rejections: Sequence[worker_pb2.Rejection]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for item in rejections:
        counts[item.reason] = counts.get(item.reason, 0) + 1
    return counts


class WorkerRegistry:
    """The connected workers, by worker id.

    Args:
        on_results: Called with what each answered completion or failure message counted
            (the metrics' lease counters); unary calls included.
    """

    def __init__(self, on_results: Callable[[Results], None] = _ignore) -> None:
        self._workers: dict[str, WorkerRecord] = {}
        self._on_results = on_results

    def __len__(self) -> int:
        return len(self._workers)

    def connected(self, session: Session, hello: worker_pb2.Hello, now: float) -> None:
        """A Work stream said hello (``session.worker_id`` and ``session.queues`` are its)."""
        record = self._workers.get(session.worker_id)
        if record is None:
            record = WorkerRecord(
                worker_id=session.worker_id,
                address=session.address,
                queues=session.queues,
                concurrency=hello.concurrency,
                sdk=hello.sdk[:256],
                connected_at=now,
            )
            self._workers[session.worker_id] = record
        else:
            # Another stream of the same worker (a reconnect racing the old stream's end): the
            # newest one says where it is and what it serves.
            record.address = session.address
            record.queues = session.queues
            record.concurrency = hello.concurrency
            record.sdk = hello.sdk[:256]
        record.sessions.append(session)

    def disconnected(self, session: Session) -> None:
        """A Work stream that said hello ended; its worker goes when its last stream does."""
        record = self._workers.get(session.worker_id)
        if record is None:
            return
        if session in record.sessions:
            record.sessions.remove(session)
        if not record.sessions:
            del self._workers[session.worker_id]

    def heartbeat(self, worker_id: str, now: float) -> None:
        """``worker_id`` heartbeated its leases."""
        record = self._workers.get(worker_id)
        if record is not None:
            record.last_heartbeat_at = now

    def completed(
        self, worker_id: str, request: worker_pb2.CompleteRequest, answer: worker_pb2.CompleteResponse
    ) -> None:
        """A completion message of ``worker_id`` was answered with ``answer``."""
        durations = request.handler_us if len(request.handler_us) == len(request.fences) else ()
        results = Results(len(answer.accepted), 0, 0, _rejected(answer.rejected), durations)
        record = self._workers.get(worker_id)
        if record is not None:
            record.completed += results.completed
        self._on_results(results)

    def failed(
        self, worker_id: str, request: worker_pb2.FailRequest, answer: worker_pb2.FailResponse
    ) -> None:
        """A failure message of ``worker_id`` was answered with ``answer``."""
        released = {f.fence for f in request.failures if f.released}
        gave_back = sum(1 for fence in answer.accepted if fence in released) if released else 0
        failed = len(answer.accepted) - gave_back
        results = Results(0, failed, gave_back, _rejected(answer.rejected), ())
        record = self._workers.get(worker_id)
        if record is not None:
            record.failed += failed
        self._on_results(results)

    def workers(self, held: Mapping[str, int]) -> list[worker_pb2.WorkerInfo]:
        """Every connected worker, by worker id; ``held``: live leases per holder."""
        out: list[worker_pb2.WorkerInfo] = []
        for worker_id in sorted(self._workers):
            record = self._workers[worker_id]
            info = worker_pb2.WorkerInfo(
                worker_id=record.worker_id,
                address=record.address,
                queues=record.queues,
                concurrency=record.concurrency,
                credit=sum(max(0, s.credits) for s in record.sessions),
                sdk=record.sdk,
                leases_held=held.get(worker_id, 0),
                leaves_completed=record.completed,
                leaves_failed=record.failed,
                streams=len(record.sessions),
            )
            info.connected_at.FromNanoseconds(int(record.connected_at * 1e9))
            if record.last_heartbeat_at:
                info.last_heartbeat_at.FromNanoseconds(int(record.last_heartbeat_at * 1e9))
            out.append(info)
        return out
