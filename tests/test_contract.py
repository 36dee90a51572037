"""The wire contract of docs/protocol.md, point by point, against a real in-process coordinator."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc import aio

import parcelo
from parcelo.v1 import jobs_pb2, jobs_pb2_grpc, types_pb2, worker_pb2, worker_pb2_grpc
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
STALE = worker_pb2.REJECT_REASON_STALE_FENCE
GONE = worker_pb2.REJECT_REASON_JOB_GONE


async def tree_leaves(
    jobs: jobs_pb2_grpc.JobServiceStub, job_id: str
) -> dict[tuple[int, int], types_pb2.TreeNode]:
    tree = await jobs.GetJobTree(jobs_pb2.GetJobTreeRequest(job_id=job_id, max_depth=64))
    return {(n.range.start, n.range.end): n for n in tree_nodes(tree.root) if n.is_leaf}


@async_test
async def test_a_result_sent_again_is_accepted_again_even_after_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with inprocess_coordinator(data) as coord, loopback_channel(coord.port) as channel:
        port = coord.port
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        workers = worker_pb2_grpc.WorkerServiceStub(channel)
        await jobs.CreateJob(jobs_pb2.CreateJobRequest(spec=raw_spec(400, 100, job_id="again")))
        grant = await workers.Lease(worker_pb2.LeaseRequest(count=3, worker_id="w", wait=Duration(seconds=2)))
        a, b, c = (lease.fence for lease in grant.leases)
        assert list(
            (await workers.Complete(worker_pb2.CompleteRequest(worker_id="w", fences=[a]))).accepted
        ) == [a]
        failure = worker_pb2.Failure(fence=b, message="flaky")
        assert list(
            (await workers.Fail(worker_pb2.FailRequest(worker_id="w", failures=[failure]))).accepted
        ) == [b]
        before = (await jobs.GetJob(jobs_pb2.GetJobRequest(job_id="again"))).stats
    # A new coordinator on the same data dir: what was accepted is still known.
    async with inprocess_coordinator(data, port=port) as coord, loopback_channel(coord.port) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        workers = worker_pb2_grpc.WorkerServiceStub(channel)
        again = await workers.Complete(worker_pb2.CompleteRequest(worker_id="w", fences=[a], request_id=11))
        assert list(again.accepted) == [a] and not again.rejected and again.request_id == 11
        resent = await workers.Fail(worker_pb2.FailRequest(worker_id="w", failures=[failure], request_id=12))
        assert list(resent.accepted) == [b] and resent.request_id == 12
        # A different result for a lease whose failure counted did not count.
        other = await workers.Complete(worker_pb2.CompleteRequest(worker_id="w", fences=[b]))
        assert [(r.fence, r.reason) for r in other.rejected] == [(b, STALE)]
        assert "a failure of this lease was accepted before" in other.rejected[0].message
        # Nothing was counted twice; the lease still live from before the restart completes as usual.
        assert (await jobs.GetJob(jobs_pb2.GetJobRequest(job_id="again"))).stats.failed_attempts == 1
        # The worker named by the lease completes it, after the restart too (its peer address
        # changed): results are accepted from the lease's holder only.
        foreign = await workers.Complete(worker_pb2.CompleteRequest(worker_id="other", fences=[c]))
        assert [(r.fence, r.reason) for r in foreign.rejected] == [(c, worker_pb2.REJECT_REASON_NOT_HOLDER)]
        assert list(
            (await workers.Complete(worker_pb2.CompleteRequest(worker_id="w", fences=[c]))).accepted
        ) == [c]
        after = (await jobs.GetJob(jobs_pb2.GetJobRequest(job_id="again"))).stats
        assert after.range_processed == before.range_processed + 100
        # A fence never granted is stale.
        never = await workers.Complete(worker_pb2.CompleteRequest(worker_id="w", fences=[10**12]))
        assert [(r.fence, r.reason) for r in never.rejected] == [(10**12, STALE)]


@async_test
async def test_the_stream_rules(tmp_path: Path) -> None:
    async with inprocess_coordinator(tmp_path / "data") as coord, loopback_channel(coord.port) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        timeout = Duration(seconds=90)
        await jobs.CreateJob(
            jobs_pb2.CreateJobRequest(
                spec=raw_spec(400, 100, job_id="rules", leaf_timeout=timeout, params_json="[1]")
            )
        )
        stream = Stream(stub)
        await stream.send(hello=worker_pb2.Hello(worker_id="w", sdk="test/1"))
        welcome = (await stream.next("welcome")).welcome
        assert welcome.coordinator_version == parcelo.__version__
        assert welcome.heartbeat_interval.ToMilliseconds() == 50  # as the harness configures it
        await stream.send(lease=worker_pb2.LeaseRequest(count=2))
        grant = (await stream.next("grant")).grant
        while len(grant.leases) < 2:
            grant.MergeFrom((await stream.next("grant")).grant)
        # Per-job data once, with the job's durations; no durations on the lease.
        [info] = grant.jobs
        assert (info.job_id, info.params_json) == ("rules", "[1]")
        assert info.lease_ttl.ToSeconds() == 30 and info.leaf_timeout == timeout
        first, second = grant.leases
        # Answers echo the request id; a fence twice in one request is answered once.
        await stream.send(
            complete=worker_pb2.CompleteRequest(fences=[first.fence, first.fence], request_id=5)
        )
        answer = (await stream.next("complete")).complete
        assert (list(answer.accepted), answer.request_id) == ([first.fence], 5)
        await stream.send(
            fail=worker_pb2.FailRequest(failures=[worker_pb2.Failure(fence=second.fence)], request_id=6)
        )
        assert (await stream.next("fail")).fail.request_id == 6
        # A second hello ends the stream.
        await stream.send(hello=worker_pb2.Hello(worker_id="w"))
        with pytest.raises(aio.AioRpcError) as err:
            await stream.next("never")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == "hello: a Work stream sends hello once, first"
        # So does a request for no leases.
        stream = Stream(stub)
        await stream.send(hello=worker_pb2.Hello(worker_id="w"))
        await stream.next("welcome")
        await stream.send(lease=worker_pb2.LeaseRequest(count=0))
        with pytest.raises(aio.AioRpcError) as err:
            await stream.next("never")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "lease.count" in (
            err.value.details() or ""
        )


@async_test
async def test_checkpoints_are_optional_clamped_and_never_go_back(tmp_path: Path) -> None:
    async with inprocess_coordinator(tmp_path / "data") as coord, loopback_channel(coord.port) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        workers = worker_pb2_grpc.WorkerServiceStub(channel)
        await jobs.CreateJob(jobs_pb2.CreateJobRequest(spec=raw_spec(200, 100, job_id="cp")))
        [lease] = (await workers.Lease(worker_pb2.LeaseRequest(count=1, wait=Duration(seconds=2)))).leases
        key = (lease.start, lease.end)

        async def beat(**fields: object) -> int:
            beat = worker_pb2.LeaseHeartbeat(fence=lease.fence, **fields)  # type: ignore[arg-type]
            answer = await workers.Heartbeat(worker_pb2.HeartbeatRequest(leases=[beat]))
            assert [d.action for d in answer.directives] == [worker_pb2.DIRECTIVE_ACTION_CONTINUE]
            return (await tree_leaves(jobs, "cp"))[key].cursor

        assert await beat(message="no cursor: no checkpoint") == 0
        assert await beat(cursor=lease.start) == lease.start  # 0 is a cursor too when the leaf starts there
        assert await beat(cursor=lease.start + 60, details=b"x") == lease.start + 60
        assert await beat(cursor=lease.start + 20) == lease.start + 60  # never backwards
        assert await beat(cursor=10**9) == lease.end  # clamped into the leaf


@async_test
async def test_ended_jobs_answer_every_time_the_same(tmp_path: Path) -> None:
    async with inprocess_coordinator(tmp_path / "data") as coord, loopback_channel(coord.port) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        workers = worker_pb2_grpc.WorkerServiceStub(channel)
        await jobs.CreateJob(
            jobs_pb2.CreateJobRequest(spec=raw_spec(100, 100, job_id="cancelled", queue="c"))
        )
        deadline = raw_spec(100, 100, job_id="late", queue="d")
        deadline.deadline.FromNanoseconds(int((time.time() + 0.3) * 1e9))
        await jobs.CreateJob(jobs_pb2.CreateJobRequest(spec=deadline))
        lease_c = (
            await workers.Lease(worker_pb2.LeaseRequest(count=1, queues=["c"], wait=Duration(seconds=2)))
        ).leases[0]
        lease_d = (
            await workers.Lease(worker_pb2.LeaseRequest(count=1, queues=["d"], wait=Duration(seconds=2)))
        ).leases[0]
        await jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id="cancelled"))

        async def late_failed() -> bool:
            job = await jobs.GetJob(jobs_pb2.GetJobRequest(job_id="late"))
            return bool(job.status == types_pb2.JOB_STATUS_FAILED)

        await eventually(late_failed, "the deadline to fail the job")
        for _ in range(2):  # the same answers the second time
            beats = [worker_pb2.LeaseHeartbeat(fence=f) for f in (lease_c.fence, lease_d.fence)]
            directives = (await workers.Heartbeat(worker_pb2.HeartbeatRequest(leases=beats))).directives
            assert [d.action for d in directives] == [worker_pb2.DIRECTIVE_ACTION_CANCEL] * 2
            assert "cancelled" in directives[0].reason and "deadline" in directives[1].reason
            done = await workers.Complete(worker_pb2.CompleteRequest(fences=[lease_c.fence, lease_d.fence]))
            assert [r.reason for r in done.rejected] == [GONE, GONE] and not done.accepted
        # Resuming is idempotent for a live job and refused for a finished one.
        await jobs.CreateJob(jobs_pb2.CreateJobRequest(spec=raw_spec(100, 100, job_id="live")))
        resumed = await jobs.ResumeJob(jobs_pb2.ResumeJobRequest(job_id="live"))
        assert resumed.status == types_pb2.JOB_STATUS_PENDING
        with pytest.raises(aio.AioRpcError) as err:
            await jobs.ResumeJob(jobs_pb2.ResumeJobRequest(job_id="cancelled"))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@async_test
async def test_a_half_closed_stream_gets_its_answers_and_nothing_more(tmp_path: Path) -> None:
    async with inprocess_coordinator(tmp_path / "data") as coord, loopback_channel(coord.port) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        await jobs.CreateJob(jobs_pb2.CreateJobRequest(spec=raw_spec(800, 100, job_id="close")))
        call = stub.Work()
        await call.write(worker_pb2.WorkRequest(hello=worker_pb2.Hello(worker_id="w")))
        await call.write(worker_pb2.WorkRequest(lease=worker_pb2.LeaseRequest(count=1)))
        assert (await call.read()).WhichOneof("msg") == "welcome"
        fence = (await call.read()).grant.leases[0].fence
        # A completion, then the half-close at once: the answer still comes, then the end.
        await call.write(
            worker_pb2.WorkRequest(complete=worker_pb2.CompleteRequest(fences=[fence], request_id=3))
        )
        await call.done_writing()
        rest = []
        while (msg := await asyncio.wait_for(call.read(), WAIT)) is not aio.EOF:
            rest.append(msg)
        assert [m.WhichOneof("msg") for m in rest] == ["complete"]
        assert list(rest[0].complete.accepted) == [fence] and rest[0].complete.request_id == 3
        assert await call.code() == grpc.StatusCode.OK
        job = await jobs.GetJob(jobs_pb2.GetJobRequest(job_id="close"))
        assert job.stats.active_leases == 0 and job.stats.range_processed == 100


@async_test
async def test_withdrawn_credit_grants_nothing_more(tmp_path: Path) -> None:
    async with inprocess_coordinator(tmp_path / "data") as coord, loopback_channel(coord.port) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        stream = Stream(worker_pb2_grpc.WorkerServiceStub(channel))
        await stream.send(hello=worker_pb2.Hello(worker_id="w"))
        await stream.next("welcome")
        await stream.send(lease=worker_pb2.LeaseRequest(withdraw=True, count=1))
        with pytest.raises(aio.AioRpcError) as err:
            await stream.next("never")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "withdraw" in (
            err.value.details() or ""
        )
        stream = Stream(worker_pb2_grpc.WorkerServiceStub(channel))
        await stream.send(hello=worker_pb2.Hello(worker_id="w"))
        await stream.next("welcome")
        await stream.send(lease=worker_pb2.LeaseRequest(count=5))  # no job yet: the credit waits
        await stream.send(lease=worker_pb2.LeaseRequest(withdraw=True))
        await stream.send(heartbeat=worker_pb2.HeartbeatRequest())  # answered after the withdraw
        await stream.next("heartbeat")
        await jobs.CreateJob(jobs_pb2.CreateJobRequest(spec=raw_spec(800, 100, job_id="late")))
        await stream.send(lease=worker_pb2.LeaseRequest(count=1))
        grant = (await stream.next("grant")).grant
        assert len(grant.leases) == 1  # the new credit only, not the five withdrawn


@async_test
async def test_progress_messages_are_shown_in_the_tree_and_cut_to_bytes(tmp_path: Path) -> None:
    async with inprocess_coordinator(tmp_path / "data") as coord, loopback_channel(coord.port) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        workers = worker_pb2_grpc.WorkerServiceStub(channel)
        await jobs.CreateJob(jobs_pb2.CreateJobRequest(spec=raw_spec(100, 100, job_id="msg")))
        [lease] = (await workers.Lease(worker_pb2.LeaseRequest(count=1, wait=Duration(seconds=2)))).leases
        long = "é" * 1000  # 2,000 bytes of UTF-8
        beat = worker_pb2.LeaseHeartbeat(fence=lease.fence, message=long)
        await workers.Heartbeat(worker_pb2.HeartbeatRequest(leases=[beat]))
        [leaf] = (await tree_leaves(jobs, "msg")).values()
        assert leaf.message == "é" * 512 and len(leaf.message.encode()) == 1024
