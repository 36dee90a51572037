"""Packed grants (``Hello.packed_grants``, ``LeaseGrant.packed``): the same leases as Lease messages.

The columns are checked against the one-message-per-lease form built from the same leases (probes,
retries, checkpoints and several jobs in one grant), a lease that cannot be packed is given back
without harming other jobs, and a packed stream shares a job with a stream that asks for one
lease at a time and gets plain Lease messages.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from parcelo import Worker
from parcelo.coordinator import codec
from parcelo.coordinator import dispatcher as dispatcher_module
from parcelo.coordinator.core import Core
from parcelo.coordinator.dispatcher import Dispatcher, Session
from parcelo.coordinator.leases import Failure, Lease, LeaseKind
from parcelo.coordinator.tree import Status
from parcelo.grants import GrantedLease, leases_of
from parcelo.v1 import jobs_pb2_grpc, types_pb2, worker_pb2, worker_pb2_grpc
from tests.support import (
    Stream,
    async_test,
    eventually,
    inprocess_coordinator,
    loopback_channel,
    raw_spec,
    reference_leaves,
    running_worker,
)
from tests.test_inprocess import create_job, finished

FIELDS = ("fence", "job_id", "kind", "start", "end", "attempt", "cursor", "details", "is_leaf")


def _core() -> Core:
    core = Core(fence_limit=1, seed=3)
    core.fences.made_durable(core.fences.pending_limit() or 0)
    return core


def _fields(leases: list[GrantedLease]) -> list[tuple[object, ...]]:
    return [tuple(getattr(lease, name) for name in FIELDS) for lease in leases]


def _both_forms(leases: list[Lease], core: Core) -> tuple[worker_pb2.LeaseGrant, worker_pb2.LeaseGrant]:
    plain, packed = worker_pb2.LeaseGrant(), worker_pb2.LeaseGrant()
    for lease in leases:
        codec.lease_to_proto(lease, core.jobs[lease.job_id], plain.leases.add())
    for job_id, first, stop in codec.job_runs(leases):
        codec.pack_run(job_id, leases, first, stop, packed.packed)
    return plain, packed


def test_packed_columns_say_what_lease_messages_say() -> None:
    core = _core()
    # Probes (pruning), a retried leaf with a checkpoint, and plain leaves, in one grant.
    core.create_job(raw_spec(job_id="probed", end=400, size=100, pruning=True, priority=3), 0)
    core.create_job(raw_spec(job_id="retried", end=200, size=100, priority=2), 0)
    core.create_job(raw_spec(job_id="plain", end=100_000, size=100), 0)
    first = core.lease(["default"], 100, 1.0)
    probe = [lease.fence for lease in first if lease.job_id == "probed"]
    retried = [lease for lease in first if lease.job_id == "retried"]
    assert len(probe) == 1 and len(retried) == 2
    core.fail(
        [
            Failure(
                retried[0].fence,
                retryable=True,
                message="once",
                cursor=retried[0].node.start + 40,
                details=b"d",
            )
        ],
        1.0,
    )
    core.complete([*probe, retried[1].fence], [], 1.0)
    # After the retry's backoff: the root probe's children, the retried leaf, more plain leaves.
    leases = core.lease(["default"], 100, 10.0)
    kinds = {(lease.job_id, lease.kind) for lease in leases}
    assert kinds == {("probed", LeaseKind.PROBE), ("retried", LeaseKind.LEAF), ("plain", LeaseKind.LEAF)}
    assert any(lease.node.attempts == 2 and lease.node.cursor for lease in leases)
    plain, packed = _both_forms(leases, core)
    assert not packed.leases and packed.HasField("packed") and not plain.HasField("packed")
    assert _fields(leases_of(packed)) == _fields(leases_of(plain))
    resumed = [lease for lease in leases_of(packed) if lease.cursor != lease.start]
    assert [(lease.attempt, lease.cursor - lease.start, lease.details) for lease in resumed] == [
        (2, 40, b"d")
    ]
    # Grants of first attempts only carry no attempts column.
    fresh = _core()
    fresh.create_job(raw_spec(end=1000, size=100), 0)
    _, packed = _both_forms(fresh.lease(["default"], 10, 1.0), fresh)
    assert len(packed.packed.fences) == 10 and not packed.packed.attempts
    assert {lease.attempt for lease in leases_of(packed)} == {1}


def test_columns_that_do_not_fit_together_are_refused() -> None:
    grant = worker_pb2.LeaseGrant(
        packed=worker_pb2.PackedLeases(
            run_job_ids=["j"], run_lengths=[2], fences=[1, 2], starts=[0, 10], ends=[10]
        )
    )
    with pytest.raises(ValueError, match="do not agree"):
        leases_of(grant)
    grant.packed.ends.append(20)
    grant.packed.probes.append(5)
    grant.packed.probe_is_leaf.append(True)
    with pytest.raises(ValueError, match="index"):
        leases_of(grant)


def test_a_run_that_cannot_be_packed_is_given_back_and_harms_no_other_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    core = _core()
    bad, _ = core.create_job(raw_spec(job_id="bad", priority=5), 0)
    good, _ = core.create_job(raw_spec(job_id="good"), 0)
    real = codec.pack_run

    def failing(
        job_id: str, leases: list[Lease], first: int, stop: int, out: worker_pb2.PackedLeases
    ) -> None:
        real(job_id, leases, first, stop, out)  # partly written, then it fails: cut back out
        if job_id == "bad":
            raise ValueError("cannot encode (injected by the test)")

    monkeypatch.setattr(dispatcher_module, "pack_run", failing)

    async def one_round() -> worker_pb2.WorkResponse:
        dispatcher = Dispatcher(core)
        session = Session(worker_id="w", queues=("default",), packed=True)
        dispatcher.add(session)
        dispatcher.credit(session, 6)
        response = await asyncio.wait_for(session.out.get(), 5)
        assert response is not None
        return response

    response = asyncio.run(one_round())
    granted = leases_of(response.grant)
    assert not response.grant.leases and list(response.grant.packed.run_job_ids) == ["good"]
    assert len(core.leases) == core.leases.count("good") == len(granted) == 6
    assert {lease.job_id for lease in granted} == {"good"}
    assert [job.job_id for job in response.grant.jobs] == ["good"]
    assert core.stats(bad).active_leases == 0
    leaves = [n for n in bad.tree.walk() if n.is_leaf]
    assert leaves and all(n.status is Status.PENDING and n.attempts == 0 and n.lease is None for n in leaves)
    assert core.stats(good).active_leases == 6


@async_test
async def test_a_packed_stream_shares_a_job_with_a_worker_that_asks_for_one_lease_at_a_time(
    tmp_path: Path,
) -> None:
    total, size = 64_000, 100
    async with (
        inprocess_coordinator(tmp_path / "data") as coord,
        loopback_channel(coord.port) as channel,
    ):
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        job = await create_job(jobs, 0, total, size)
        leaves = reference_leaves(0, total, size)
        covered: list[tuple[int, int]] = []

        # An old-style worker: no packed_grants, one lease per request, answered with Lease messages.
        async def one_at_a_time() -> int:
            stream = Stream(stub)
            await stream.send(hello=worker_pb2.Hello(worker_id="single"))
            await stream.next("welcome")
            count = 0
            while True:
                await stream.send(lease=worker_pb2.LeaseRequest(count=1))
                msg = await stream.next("grant")
                assert len(msg.grant.leases) == 1 and not msg.grant.HasField("packed")
                lease = msg.grant.leases[0]
                covered.append((lease.start, lease.end))
                await stream.send(complete=worker_pb2.CompleteRequest(fences=[lease.fence]))
                answer = await stream.next("complete")
                assert list(answer.complete.accepted) == [lease.fence]
                count += 1
                if count == 20:
                    stream.call.cancel()
                    return count

        # A raw packed stream: its grants carry columns only.
        async def packed() -> int:
            stream = Stream(stub)
            await stream.send(hello=worker_pb2.Hello(worker_id="columns", packed_grants=True))
            await stream.next("welcome")
            await stream.send(lease=worker_pb2.LeaseRequest(count=64))
            msg = await stream.next("grant")
            assert not msg.grant.leases and msg.grant.HasField("packed")
            granted = leases_of(msg.grant)
            assert {lease.job_id for lease in granted} == {job.id}
            covered.extend((lease.start, lease.end) for lease in granted)
            await stream.send(complete=worker_pb2.CompleteRequest(fences=[lease.fence for lease in granted]))
            answer = await stream.next("complete")
            assert list(answer.complete.accepted) == [lease.fence for lease in granted]
            stream.call.cancel()
            return len(granted)

        async def handler(range_: object, ctx: object) -> None:
            await asyncio.sleep(0.005)  # leaves the raw streams a share of the job

        # The SDK worker (packed grants) runs all along, beside the two raw streams.
        worker = Worker(coord.target, handler, concurrency=4, prefetch=8)
        async with running_worker(worker):
            await eventually(lambda: worker.stats.completed, "the worker's first leaf")
            single, columns = await asyncio.gather(one_at_a_time(), packed())
            done = await finished(jobs, job.id)
            await eventually(
                lambda: worker.stats.completed == len(leaves) - single - columns, "the worker's tally"
            )
        assert done.status == types_pb2.JOB_STATUS_COMPLETED
        assert (single, columns) == (20, 64)
        assert done.stats.range_processed == total
        # The two raw streams' leaves and the worker's are the whole job, none twice.
        assert len(set(covered)) == len(covered) and set(covered) <= set(leaves)


def test_packed_grants_not_yet_sent_are_taken_back_when_the_stream_half_closes() -> None:
    core = _core()
    job, _ = core.create_job(raw_spec(end=1000, size=100), 0)

    async def granted_then_closed() -> None:
        dispatcher = Dispatcher(core)
        session = Session(worker_id="w", queues=("default",), packed=True)
        dispatcher.add(session)
        dispatcher.credit(session, 4)
        await asyncio.sleep(0)  # the round runs; its grant waits in the stream's queue
        assert session.out.qsize() == 1 and len(core.leases) == 4
        dispatcher.close(session)

    asyncio.run(granted_then_closed())
    assert len(core.leases) == 0 and core.stats(job).active_leases == 0
