"""SIGTERM with many live Work streams: no lease is granted once it arrives, every result in hand is
written and answered, the coordinator exits 0, and the disk says the same after a restart.

A real coordinator process; 50 raw streams (grpc.aio, in this process) that hold leases and
pipeline their completions, so results are in flight when the signal lands.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from grpc import aio

from parcelo import JobOptions
from parcelo.testing import CoordinatorProcess
from parcelo.v1 import types_pb2, worker_pb2, worker_pb2_grpc
from tests.support import RawWorker, completed_leaves, reference_leaves

pytestmark = pytest.mark.integration

STREAMS = 50
CREDIT = 16
WIDTH = 100
LEAVES = 2048
"""Leaves of the job: more than the streams' credit, so they complete some to be granted the rest."""


@dataclass
class Sent:
    """A result message a stream wrote: its kind, its fences, and whether SIGTERM had been sent."""

    kind: str
    fences: list[int]
    after_sigterm: bool


@dataclass(eq=False)
class Pipelined:
    """One Work stream that completes half its leases whenever it holds its full credit."""

    call: aio.StreamStreamCall[worker_pb2.WorkRequest, worker_pb2.WorkResponse]
    name: str
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)
    held: list[int] = field(default_factory=list)
    sent: dict[int, Sent] = field(default_factory=dict)
    answers: dict[int, worker_pb2.CompleteResponse | worker_pb2.FailResponse] = field(default_factory=dict)
    late_grants: int = 0
    welcomed: bool = False
    pipelining: bool = True
    sigterm_sent: bool = False
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def write(self, **msg: object) -> bool:
        """Write one request; False once the stream has ended (the coordinator closed it)."""
        async with self._lock:
            if self.call.done():
                return False
            try:
                await self.call.write(worker_pb2.WorkRequest(**msg))  # type: ignore[arg-type]
            except (asyncio.InvalidStateError, aio.AioRpcError):
                return False
            return True

    async def complete(self, fences: list[int]) -> None:
        request_id = len(self.sent) + 1
        if fences and await self.write(
            complete=worker_pb2.CompleteRequest(fences=fences, request_id=request_id)
        ):
            self.sent[request_id] = Sent("complete", fences, self.sigterm_sent)

    async def release(self, fences: list[int]) -> None:
        request_id = len(self.sent) + 1
        failures = [worker_pb2.Failure(fence=fence, released=True) for fence in fences]
        if fences and await self.write(fail=worker_pb2.FailRequest(failures=failures, request_id=request_id)):
            self.sent[request_id] = Sent("fail", fences, self.sigterm_sent)

    async def run(self) -> None:
        """Read until the coordinator ends the stream, pipelining completions as grants come."""
        try:
            await self._run()
        except aio.AioRpcError:
            # A server that ends a call while its client still writes may end it CANCELLED (or
            # INTERNAL) rather than OK, after every message it sent: fine once it is stopping.
            if not self.sigterm_sent:
                raise

    async def _run(self) -> None:
        await self.write(hello=worker_pb2.Hello(worker_id=self.name))
        await self.write(lease=worker_pb2.LeaseRequest(count=CREDIT))
        while (msg := await self.call.read()) is not aio.EOF:
            assert isinstance(msg, worker_pb2.WorkResponse)
            kind = msg.WhichOneof("msg")
            if kind == "welcome":
                self.welcomed = True
            elif kind == "grant":
                if not self.pipelining:
                    self.late_grants += len(msg.grant.leases)
                for lease in msg.grant.leases:
                    self.ranges[lease.fence] = (lease.start, lease.end)
                    self.held.append(lease.fence)
                if self.pipelining and len(self.held) >= CREDIT:
                    done, self.held = self.held[: CREDIT // 2], self.held[CREDIT // 2 :]
                    await self.complete(done)
                    await self.write(lease=worker_pb2.LeaseRequest(count=CREDIT // 2))
            elif kind in ("complete", "fail"):
                answer = getattr(msg, kind)
                self.answers[answer.request_id] = answer


async def drive(target: str, sigterm: Callable[[], None]) -> list[Pipelined]:
    async with aio.insecure_channel(target) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        streams = [Pipelined(stub.Work(), f"stream-{i}") for i in range(STREAMS)]
        readers = [asyncio.create_task(stream.run()) for stream in streams]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        # Pipelining until every leaf is granted: from then on no grant can be legitimate.
        while sum(len(s.ranges) for s in streams) < LEAVES or not all(s.welcomed for s in streams):
            assert loop.time() < deadline, "timed out waiting for every leaf to be granted"
            await asyncio.sleep(0.01)
        for stream in streams:
            stream.pipelining = False
        # Completions in flight when the signal lands...
        for stream in streams:
            half = len(stream.held) // 2
            await stream.complete(stream.held[:half])
            del stream.held[:half]
        sigterm()
        for stream in streams:
            stream.sigterm_sent = True
        # ...and after it: a lease given back (work for a coordinator still granting), credit for
        # it, and the rest completed.
        for stream in streams:
            await stream.release(stream.held[:1])
            await stream.write(lease=worker_pb2.LeaseRequest(count=CREDIT))
            await stream.complete(stream.held[1:])
        await asyncio.wait_for(asyncio.gather(*readers), 30)
        return streams


def test_sigterm_grants_nothing_more_answers_results_in_flight_and_exits_0(
    make_coordinator: type[CoordinatorProcess], log_dir: Path, tmp_path: Path
) -> None:
    coord = make_coordinator(
        tmp_path / "data", log_dir, extra=["--grace", "10", "--event-retention", "100000"]
    ).start()
    job = coord.create_job(
        JobOptions(0, LEAVES * WIDTH, max_range_size=WIDTH, lease_ttl=timedelta(seconds=120), job_id="term")
    )
    proc = coord.proc
    assert proc is not None
    streams = asyncio.run(drive(coord.target, lambda: os.kill(proc.pid, signal.SIGTERM)))
    assert proc.popen.wait(timeout=30) == 0, proc.output()
    coord.stop()

    assert sum(s.late_grants for s in streams) == 0, "leases were granted after SIGTERM"
    sent = {(s.name, rid): msg for s in streams for rid, msg in s.sent.items()}
    answers = {(s.name, rid): answer for s in streams for rid, answer in s.answers.items()}
    assert set(answers) <= set(sent)
    unanswered = [key for key, msg in sent.items() if key not in answers and not msg.after_sigterm]
    assert not unanswered, f"results sent before SIGTERM were never answered: {unanswered[:5]}"
    for key, answer in answers.items():
        assert list(answer.accepted) == sent[key].fences and not answer.rejected, (key, answer)
    assert any(msg.after_sigterm for key, msg in sent.items() if key in answers)  # the grace served some
    ranges = {fence: r for s in streams for fence, r in s.ranges.items()}
    acknowledged = [
        ranges[fence]
        for key, answer in answers.items()
        if sent[key].kind == "complete"
        for fence in answer.accepted
    ]
    released = {fence for msg in sent.values() if msg.kind == "fail" for fence in msg.fences}

    # After a restart: every acknowledged completion is on disk; the rest of the job is finishable.
    coord.start()
    on_disk = coord.get_job(job.id).stats.range_processed
    assert len(acknowledged) * WIDTH <= on_disk
    # Each stream's completions sent again under its worker id (results count only from a lease's
    # holder): on disk, accepted again; lost with an unanswered message, the lease came back live.
    for stream in streams:
        kept = [fence for fence in stream.ranges if fence not in released]
        again = RawWorker(coord.channel, stream.name)
        answer = again.complete(kept) if kept else worker_pb2.CompleteResponse()
        again.close()
        assert sorted(answer.accepted) == sorted(kept) and not answer.rejected, (stream.name, answer)
    # Then the given-back leaves, leased anew.
    raw = RawWorker(coord.channel, "finisher")
    leased = raw.lease(len(released))
    assert sorted((lease.start, lease.end) for lease in leased) == sorted(ranges[f] for f in released)
    raw.complete([lease.fence for lease in leased])
    done = coord.wait_status(job.id, {types_pb2.JOB_STATUS_COMPLETED}, timeout=30)
    raw.close()
    assert done.stats.range_processed == LEAVES * WIDTH and done.stats.done_nodes == done.stats.total_nodes

    completed = completed_leaves(coord.target, job.id)
    assert sorted(completed) == reference_leaves(0, LEAVES * WIDTH, WIDTH)  # each leaf once
    assert max(Counter(completed).values()) == 1
    # The completions the first coordinator wrote come first in the log, and hold every one it answered.
    assert set(acknowledged) <= set(completed[: on_disk // WIDTH])
