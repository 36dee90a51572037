"""What is reported is what is on disk: failed writes are retried, never dropped; reads never run ahead.

In-process: a real coordinator (``Coordinator.start`` on port 0) over a real RocksDB store whose
writes the test can make fail, as a full disk would, driven through real gRPC channels.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Iterable
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parcelo.coordinator.records import Batch, Op
from parcelo.coordinator.server import SERVICES, Config, Coordinator
from parcelo.coordinator.store import Store
from parcelo.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    types_pb2,
    worker_pb2,
    worker_pb2_grpc,
)
from tests.support import (
    Stream,
    async_test,
    eventually,
    inprocess_coordinator,
    loopback_channel,
    raw_spec,
    tree_nodes,
)

WAIT = 10.0
"""Seconds any single wait may take before the test fails."""


class FaultyStore(Store):
    """A real store whose writes fail on demand, as they do when the disk is full."""

    def __init__(self, path: Path) -> None:
        self.full = threading.Event()
        self.refused = 0
        super().__init__(path)

    def write(self, batch: Batch | Iterable[Op], *, sync: bool = True) -> int:
        if self.full.is_set():
            self.refused += 1
            raise OSError(28, "No space left on device (injected by the test)")
        return super().write(batch, sync=sync)

    def reopen(self) -> None:
        if self.full.is_set():
            raise OSError(28, "No space left on device (injected by the test)")
        super().reopen()


async def health_status(channel: aio.Channel, service: str = "") -> int:
    answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    return int(answer.status)


@async_test
async def test_a_failed_write_is_retried_until_written_and_nothing_runs_ahead(tmp_path: Path) -> None:
    store = FaultyStore(tmp_path / "data")
    async with (
        inprocess_coordinator(tmp_path / "data", store=store) as coord,
        loopback_channel(coord.port) as channel,
    ):
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        workers = worker_pb2_grpc.WorkerServiceStub(channel)
        job = await jobs.CreateJob(jobs_pb2.CreateJobRequest(spec=raw_spec(2000, 100, job_id="full")))
        grant = await workers.Lease(
            worker_pb2.LeaseRequest(worker_id="w1", count=32, wait=Duration(seconds=2))
        )
        fences = [lease.fence for lease in grant.leases]
        assert len(fences) == 32  # 2000 ids split in halves down to 62/63 wide: 32 leaves
        first = await workers.Complete(worker_pb2.CompleteRequest(worker_id="w1", fences=fences[:16]))
        assert list(first.accepted) == fences[:16]
        watch = jobs.WatchJob(
            jobs_pb2.WatchJobRequest(job_id=job.id, types=[types_pb2.EVENT_TYPE_JOB_COMPLETED])
        )

        store.full.set()
        # The completion that finishes the job is applied in memory, but not acknowledged...
        finishing = asyncio.ensure_future(
            workers.Complete(worker_pb2.CompleteRequest(worker_id="w1", fences=fences[16:]))
        )
        await eventually(lambda: store.refused > 1, "the committer to retry the failed batch")
        assert not finishing.done()
        # ...nor shown: readers see what is on disk, and health says not serving.
        now = await jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
        assert now.status == types_pb2.JOB_STATUS_RUNNING and now.stats.range_processed == 1000
        listed = await jobs.ListJobs(jobs_pb2.ListJobsRequest())
        assert [j.status for j in listed.jobs] == [types_pb2.JOB_STATUS_RUNNING]
        for service in SERVICES:
            assert await health_status(channel, service) == health_pb2.HealthCheckResponse.NOT_SERVING
        # A backup would not hold what is in memory, and its flush would fail: refused, saying why.
        with pytest.raises(aio.AioRpcError) as refused:
            await admin_pb2_grpc.AdminServiceStub(channel).Backup(
                admin_pb2.BackupRequest(to_dir=str(tmp_path / "backup"))
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "the store cannot write now" in str(refused.value.details())

        store.full.clear()  # space is back: the coordinator goes on by itself
        answer = await asyncio.wait_for(finishing, WAIT)
        assert list(answer.accepted) == fences[16:] and not answer.rejected
        event = await asyncio.wait_for(watch.read(), WAIT)
        assert event.type == types_pb2.EVENT_TYPE_JOB_COMPLETED
        done = await jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
        assert done.status == types_pb2.JOB_STATUS_COMPLETED
        assert (done.stats.range_processed, done.stats.active_leases, done.stats.failed_attempts) == (
            2000,
            0,
            0,
        )
        await eventually(
            lambda: _equals(health_status(channel), health_pb2.HealthCheckResponse.SERVING),
            "health again",
        )
        watch.cancel()
    # And the disk agrees after a restart.
    async with inprocess_coordinator(tmp_path / "data") as coord, loopback_channel(coord.port) as channel:
        back = await jobs_pb2_grpc.JobServiceStub(channel).GetJob(jobs_pb2.GetJobRequest(job_id="full"))
        assert back.status == types_pb2.JOB_STATUS_COMPLETED and back.stats == done.stats


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


@async_test
async def test_watch_with_follow_ends_after_the_job_is_deleted(tmp_path: Path) -> None:
    async with inprocess_coordinator(tmp_path / "data") as coord, loopback_channel(coord.port) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        job = await jobs.CreateJob(jobs_pb2.CreateJobRequest(spec=raw_spec(100, 100, job_id="gone")))
        await jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id))
        watch = jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job.id, follow=True))
        first = await asyncio.wait_for(watch.read(), WAIT)  # the watch is open
        await jobs.DeleteJob(jobs_pb2.DeleteJobRequest(job_id=job.id))

        async def the_rest() -> list[int]:
            types = []
            while (event := await watch.read()) is not aio.EOF:
                types.append(event.type)
            return types

        seen = [first.type, *await asyncio.wait_for(the_rest(), WAIT)]
        assert seen == [
            types_pb2.EVENT_TYPE_JOB_CREATED,
            types_pb2.EVENT_TYPE_JOB_CANCELLED,
            types_pb2.EVENT_TYPE_JOB_DELETED,
        ]
        with pytest.raises(aio.AioRpcError) as err:
            await jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


@async_test
async def test_the_holder_of_a_lease_is_shown_in_the_tree(tmp_path: Path) -> None:
    async with inprocess_coordinator(tmp_path / "data") as coord, loopback_channel(coord.port) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        workers = worker_pb2_grpc.WorkerServiceStub(channel)
        await jobs.CreateJob(jobs_pb2.CreateJobRequest(spec=raw_spec(400, 100, job_id="who")))
        stream = Stream(workers)
        await stream.send(hello=worker_pb2.Hello(worker_id="stream-worker"))
        await stream.send(lease=worker_pb2.LeaseRequest(count=1))
        msg = await stream.next("grant")
        streamed = msg.grant.leases[0]
        unary = (await workers.Lease(worker_pb2.LeaseRequest(worker_id="unary-worker", count=1))).leases[0]
        tree = await jobs.GetJobTree(jobs_pb2.GetJobTreeRequest(job_id="who", max_depth=8))
        holders = {(n.range.start, n.range.end): n.worker_id for n in tree_nodes(tree.root) if n.worker_id}
        assert holders == {
            (streamed.start, streamed.end): "stream-worker",
            (unary.start, unary.end): "unary-worker",
        }
        stream.call.cancel()


@async_test
async def test_shutdown_answers_then_ends_work_streams_and_stops_once(tmp_path: Path) -> None:
    # A grace far longer than the wait below: the stream must end because of the shutdown.
    async with (
        inprocess_coordinator(tmp_path / "data", grace=60) as coord,
        loopback_channel(coord.port) as channel,
    ):
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        await jobs.CreateJob(jobs_pb2.CreateJobRequest(spec=raw_spec(200, 100, job_id="bye")))
        stream = worker_pb2_grpc.WorkerServiceStub(channel).Work()
        await stream.write(worker_pb2.WorkRequest(hello=worker_pb2.Hello(worker_id="w")))
        await stream.write(worker_pb2.WorkRequest(lease=worker_pb2.LeaseRequest(count=1)))
        kinds = [(await stream.read()).WhichOneof("msg") for _ in range(2)]
        assert kinds == ["welcome", "grant"]
        stopping = asyncio.ensure_future(coord.coordinator.stop())
        assert await asyncio.wait_for(stream.read(), WAIT) is aio.EOF
        await asyncio.wait_for(stopping, WAIT)
        await asyncio.wait_for(coord.coordinator.stop(), WAIT)  # a second stop does nothing


@async_test
async def test_a_start_that_fails_closes_the_store(tmp_path: Path) -> None:
    async with inprocess_coordinator(tmp_path / "a") as first:
        taken = f"127.0.0.1:{first.port}"
        second = Coordinator(Config(data_dir=tmp_path / "b", listen=taken, http_listen=None))
        with pytest.raises(OSError, match="cannot listen"):
            await second.start()
        Store(tmp_path / "b").close()  # the data dir is not locked any more


def test_a_wal_file_a_flush_removed_while_the_write_synced_is_no_failed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # RocksDB deletes a WAL file once a flush (a backup's, or a full memtable's) made its contents
    # durable; the sync after a write may have listed it a moment before.
    store = Store(tmp_path / "data")
    listed = os.listdir
    monkeypatch.setattr(os, "listdir", lambda path: [*listed(path), "999999.log"])
    try:
        assert store.write(Batch(ops=[(b"Mtest", b"1")]), sync=True) == 1
    finally:
        monkeypatch.undo()
        store.close()
