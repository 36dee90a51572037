"""In-process tests: a real coordinator (real RocksDB in a temp dir, port 0) in the test's own event loop.

The protocol is driven with grpc.aio and the generated stubs, or by the SDK's :class:`parcelo.Worker`
running in the same loop (its sync handlers in its thread pool), with no subprocess. Handlers block
on events the test controls, so every step is awaited rather than slept through; what the tests
observe of the coordinator goes through its gRPC API (GetJob, GetJobTree, WatchJob).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc import aio

from parcelo import Context, Range, Worker
from parcelo.v1 import jobs_pb2, jobs_pb2_grpc, types_pb2, worker_pb2, worker_pb2_grpc
from tests.support import (
    async_test,
    eventually,
    inprocess_coordinator,
    loopback_channel,
    reference_leaves,
    running_worker,
    tree_nodes,
)

END_EVENTS = [
    types_pb2.EVENT_TYPE_JOB_COMPLETED,
    types_pb2.EVENT_TYPE_JOB_FAILED,
    types_pb2.EVENT_TYPE_JOB_CANCELLED,
]


async def create_job(
    jobs: jobs_pb2_grpc.JobServiceStub, start: int, end: int, max_range_size: int, **fields: Any
) -> types_pb2.Job:
    spec = types_pb2.JobSpec(
        range=types_pb2.Range(start=start, end=end), max_range_size=max_range_size, **fields
    )
    job: types_pb2.Job = await jobs.CreateJob(jobs_pb2.CreateJobRequest(spec=spec))
    return job


async def get_job(jobs: jobs_pb2_grpc.JobServiceStub, job_id: str) -> types_pb2.Job:
    job: types_pb2.Job = await jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))
    return job


async def finished(jobs: jobs_pb2_grpc.JobServiceStub, job_id: str) -> types_pb2.Job:
    """The job once it has ended: awaits its end event on WatchJob, then reads it."""
    call = jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id, types=END_EVENTS))
    async for _ in call:
        break
    call.cancel()
    return await get_job(jobs, job_id)


def counts(stats: types_pb2.JobStats) -> dict[str, int]:
    """The node counters and range widths of a job's stats, for one exact comparison."""
    names = ("total", "pending", "running", "done", "skipped", "error")
    out = {name: getattr(stats, f"{name}_nodes") for name in names}
    out.update(
        processed=stats.range_processed,
        active_leases=stats.active_leases,
        failed_attempts=stats.failed_attempts,
    )
    return out


class Events:
    """Every event of one job, collected by a WatchJob stream running in the background."""

    def __init__(self, jobs: jobs_pb2_grpc.JobServiceStub, job_id: str) -> None:
        self._call = jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id, follow=True))
        self.seen: list[types_pb2.JobEvent] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        async for event in self._call:
            async with self._changed:
                self.seen.append(event)
                self._changed.notify_all()

    def count(self, type_: int) -> int:
        return sum(1 for event in self.seen if event.type == type_)

    async def until(self, type_: int, count: int) -> None:
        """Wait until ``count`` events of ``type_`` were seen."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.count(type_) >= count)

    async def close(self) -> None:
        self._call.cancel()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aio.AioRpcError):
            await self._task


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


# -- the Work stream by hand ---------------------------------------------------------------------


def not_hello(kind: str, fence: int) -> worker_pb2.WorkRequest:
    """A Work request of ``kind`` (``empty``: none set) naming the lease ``fence``."""
    return {
        "lease": worker_pb2.WorkRequest(lease=worker_pb2.LeaseRequest(count=1)),
        "heartbeat": worker_pb2.WorkRequest(
            heartbeat=worker_pb2.HeartbeatRequest(leases=[worker_pb2.LeaseHeartbeat(fence=fence)])
        ),
        "complete": worker_pb2.WorkRequest(complete=worker_pb2.CompleteRequest(fences=[fence])),
        "fail": worker_pb2.WorkRequest(
            fail=worker_pb2.FailRequest(failures=[worker_pb2.Failure(fence=fence, permanent=True)])
        ),
        "empty": worker_pb2.WorkRequest(),
    }[kind]


@pytest.mark.parametrize("first", ["lease", "heartbeat", "complete", "fail", "empty"])
@async_test
async def test_a_work_stream_must_start_with_hello(data_dir: Path, first: str) -> None:
    async with inprocess_coordinator(data_dir) as coord, loopback_channel(coord.port) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        workers = worker_pb2_grpc.WorkerServiceStub(channel)
        job = await create_job(jobs, 0, 200, 100)
        grant = await workers.Lease(
            worker_pb2.LeaseRequest(count=1, worker_id="unary", wait=Duration(seconds=2))
        )
        (lease,) = grant.leases
        call = workers.Work()
        await call.write(not_hello(first, lease.fence))
        with pytest.raises(aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == "hello: the first message of a Work stream must be hello"
        # The refused message changed nothing: the lease is still live, nothing done or failed
        # (GetJob shows what is on disk, and a grant is written by the next commit: poll for it).
        expected = dict(
            total=3, pending=1, running=2, done=0, skipped=0, error=0, processed=0, active_leases=1,
            failed_attempts=0,
        )  # fmt: skip

        async def unchanged() -> bool:
            return counts((await get_job(jobs, job.id)).stats) == expected

        await eventually(unchanged, f"the job's stats to read {expected}")
        # A stream that starts with hello is welcomed, and its credit is served.
        call = workers.Work()
        await call.write(worker_pb2.WorkRequest(hello=worker_pb2.Hello(worker_id="polite")))
        assert (await call.read()).WhichOneof("msg") == "welcome"
        await call.write(worker_pb2.WorkRequest(lease=worker_pb2.LeaseRequest(count=1)))
        second = await call.read()
        assert [(x.start, x.end) for x in second.grant.leases] == [(100, 200)]
        call.cancel()


# -- unary Lease, Complete and Fail --------------------------------------------------------------


@async_test
async def test_unary_complete_and_fail(data_dir: Path) -> None:
    async with inprocess_coordinator(data_dir) as coord, loopback_channel(coord.port) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        workers = worker_pb2_grpc.WorkerServiceStub(channel)
        retry = types_pb2.RetryPolicy(max_attempts=3)
        retry.initial_backoff.FromMilliseconds(50)
        job = await create_job(jobs, 0, 400, 100, retry=retry, params_json='{"k": 1}')

        grant = await workers.Lease(
            worker_pb2.LeaseRequest(count=4, worker_id="unary", wait=Duration(seconds=2))
        )
        a, b, c, d = grant.leases
        assert [(x.start, x.end) for x in grant.leases] == reference_leaves(0, 400, 100)
        assert {x.attempt for x in grant.leases} == {1}
        assert {x.kind for x in grant.leases} == {worker_pb2.LEASE_KIND_LEAF}
        assert len({x.fence for x in grant.leases}) == 4
        assert [(i.job_id, i.params_json) for i in grant.jobs] == [(job.id, '{"k": 1}')]

        never = max(x.fence for x in grant.leases) + 1000
        done = await workers.Complete(worker_pb2.CompleteRequest(fences=[a.fence, never], worker_id="unary"))
        assert list(done.accepted) == [a.fence]
        assert [(r.fence, r.reason) for r in done.rejected] == [(never, worker_pb2.REJECT_REASON_STALE_FENCE)]
        # Sent again (as after a lost answer), twice in one request: accepted once, nothing counted twice.
        again = await workers.Complete(
            worker_pb2.CompleteRequest(worker_id="unary", fences=[a.fence, a.fence], request_id=7)
        )
        assert list(again.accepted) == [a.fence] and not again.rejected and again.request_id == 7

        failed = await workers.Fail(
            worker_pb2.FailRequest(
                worker_id="unary",
                failures=[
                    worker_pb2.Failure(fence=b.fence, message="flaky"),
                    worker_pb2.Failure(fence=c.fence, permanent=True, message="corrupt"),
                ],
            )
        )
        assert list(failed.accepted) == [b.fence, c.fence] and not failed.rejected
        running = await get_job(jobs, job.id)
        assert running.status == types_pb2.JOB_STATUS_RUNNING
        # Nodes: root, two halves, four leaves. a done, b pending (retry), c error, d running.
        assert counts(running.stats) == dict(
            total=7, pending=1, running=4, done=1, skipped=0, error=1, processed=100, active_leases=1,
            failed_attempts=2,
        )  # fmt: skip
        tree = await jobs.GetJobTree(jobs_pb2.GetJobTreeRequest(job_id=job.id, max_depth=2))
        leaves = [leaf for half in tree.root.children for leaf in half.children]
        assert [(n.status, n.attempts, n.last_error) for n in leaves] == [
            (types_pb2.NODE_STATUS_DONE, 1, ""),
            (types_pb2.NODE_STATUS_PENDING, 1, "flaky"),  # retryable: back to pending
            (types_pb2.NODE_STATUS_ERROR, 1, "corrupt"),  # not retryable: error at once
            (types_pb2.NODE_STATUS_RUNNING, 1, ""),
        ]

        # The retry comes after its backoff under a new fence; the old fence is stale for good.
        retried = await workers.Lease(
            worker_pb2.LeaseRequest(count=1, worker_id="unary", wait=Duration(seconds=5))
        )
        (b2,) = retried.leases
        assert (b2.start, b2.end, b2.attempt) == (b.start, b.end, 2) and b2.fence != b.fence
        # A completion under the failed attempt's fence did not count: stale.
        stale = await workers.Complete(worker_pb2.CompleteRequest(worker_id="unary", fences=[b.fence]))
        assert [(r.fence, r.reason) for r in stale.rejected] == [
            (b.fence, worker_pb2.REJECT_REASON_STALE_FENCE)
        ]
        # The same failure sent again is accepted again and counts no second attempt (see below).
        resent = await workers.Fail(
            worker_pb2.FailRequest(worker_id="unary", failures=[worker_pb2.Failure(fence=b.fence)])
        )
        assert list(resent.accepted) == [b.fence] and not resent.rejected

        last = await workers.Complete(
            worker_pb2.CompleteRequest(worker_id="unary", fences=[b2.fence, d.fence])
        )
        assert list(last.accepted) == [b2.fence, d.fence] and not last.rejected
        end = await get_job(jobs, job.id)
        assert end.status == types_pb2.JOB_STATUS_FAILED and "corrupt" in end.reason
        # The right half and the root finish in error with c; b's earlier failure stays counted.
        assert counts(end.stats) == dict(
            total=7, pending=0, running=0, done=4, skipped=0, error=3, processed=300, active_leases=0,
            failed_attempts=2,
        )  # fmt: skip


@async_test
async def test_results_for_a_cancelled_job_are_rejected_as_job_gone(data_dir: Path) -> None:
    async with inprocess_coordinator(data_dir) as coord, loopback_channel(coord.port) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        workers = worker_pb2_grpc.WorkerServiceStub(channel)
        job = await create_job(jobs, 0, 200, 100)
        a, b = (await workers.Lease(worker_pb2.LeaseRequest(count=2, wait=Duration(seconds=2)))).leases
        await jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id, reason="enough"))
        done = await workers.Complete(worker_pb2.CompleteRequest(fences=[a.fence]))
        failed = await workers.Fail(worker_pb2.FailRequest(failures=[worker_pb2.Failure(fence=b.fence)]))
        assert not done.accepted and not failed.accepted
        assert [(r.fence, r.reason) for r in [*done.rejected, *failed.rejected]] == [
            (a.fence, worker_pb2.REJECT_REASON_JOB_GONE),
            (b.fence, worker_pb2.REJECT_REASON_JOB_GONE),
        ]
        end = await get_job(jobs, job.id)
        assert end.status == types_pb2.JOB_STATUS_CANCELLED and end.reason == "enough"
        assert (end.stats.done_nodes, end.stats.active_leases, end.stats.failed_attempts) == (0, 0, 0)


# -- the SDK worker, in process ------------------------------------------------------------------


class Gated:
    """A sync handler whose calls each block until the test opens their gate.

    The event loop learns of every start through :meth:`next_start`; ``calls`` records
    ``(start, end, attempt)`` of every call. Leaving ``with gated:`` opens every gate, so no
    handler thread outlives the test.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._started: asyncio.Queue[Context] = asyncio.Queue()
        self.calls: list[tuple[int, int, int]] = []
        self._lock = threading.Lock()
        self._gates: dict[int, threading.Event] = {}
        self._all_open = False

    def __call__(self, range_: Range, ctx: Context) -> None:
        with self._lock:
            self.calls.append((range_.start, range_.end, ctx.attempt))
            gate = self._gates[ctx.fence] = threading.Event()
            if self._all_open:
                gate.set()
        self._loop.call_soon_threadsafe(self._started.put_nowait, ctx)
        if not gate.wait(30):
            raise AssertionError("the test never opened this handler's gate")

    async def next_start(self) -> Context:
        """The context of the next handler call to start."""
        return await self._started.get()

    def waiting_starts(self) -> int:
        """Starts :meth:`next_start` has not returned yet."""
        return self._started.qsize()

    def open(self, ctx: Context) -> None:
        with self._lock:
            self._gates[ctx.fence].set()

    def open_all(self) -> None:
        with self._lock:
            self._all_open = True
            for gate in self._gates.values():
                gate.set()

    def __enter__(self) -> Gated:
        return self

    def __exit__(self, *exc: object) -> None:
        self.open_all()


def sdk_worker(port: int, handler: Any, **options: Any) -> Worker:
    return Worker(f"127.0.0.1:{port}", handler, drain_timeout=timedelta(seconds=2), **options)


async def heartbeat_rounds(
    jobs: jobs_pb2_grpc.JobServiceStub, job_id: str, ctx: Context, rounds: int = 3
) -> None:
    """Wait until ``rounds`` heartbeats, each with a newer checkpoint of ``ctx``, reached the coordinator.

    The worker asks for credit after every heartbeat answer, so asking wrongly would show within
    these rounds. The caller makes sure nothing else moves the job's progress meanwhile.
    """
    processed = (await get_job(jobs, job_id)).stats.range_processed
    cursor = ctx.last_checkpoint[0] if ctx.last_checkpoint else ctx.leaf.start
    for _ in range(rounds):
        cursor += 1
        processed += 1
        ctx.checkpoint(cursor)

        async def arrived(want: int = processed) -> bool:
            return (await get_job(jobs, job_id)).stats.range_processed == want

        await eventually(arrived, f"a heartbeat with checkpoint {cursor}")


@pytest.mark.parametrize(("concurrency", "prefetch"), [(2, 3), (1, 0), (3, 8)])
@async_test
async def test_the_worker_holds_concurrency_plus_prefetch_leases(
    data_dir: Path, concurrency: int, prefetch: int
) -> None:
    in_hand = concurrency + prefetch
    async with inprocess_coordinator(data_dir) as coord, loopback_channel(coord.port) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        job = await create_job(jobs, 0, 3200, 100)  # 32 leaves
        events = Events(jobs, job.id)
        worker = sdk_worker(coord.port, handler := Gated(), concurrency=concurrency, prefetch=prefetch)
        async with running_worker(worker):
            with handler:
                running = [await handler.next_start() for _ in range(concurrency)]
                await events.until(types_pb2.EVENT_TYPE_NODE_STARTED, in_hand)
                await heartbeat_rounds(jobs, job.id, running[-1])
                assert (await get_job(jobs, job.id)).stats.active_leases == in_hand
                assert events.count(types_pb2.EVENT_TYPE_NODE_STARTED) == in_hand
                assert len(handler.calls) == concurrency and not handler.waiting_starts()

                # Handlers return: their slots take leases in hand, and once a batch of room is free
                # (a quarter of the prefetch, at least one lease) exactly that many more are asked for.
                batch = max(1, prefetch // 4)
                for ctx in running[:batch]:
                    handler.open(ctx)
                started = [await handler.next_start() for _ in range(batch)]
                await events.until(types_pb2.EVENT_TYPE_NODE_COMPLETED, batch)
                await events.until(types_pb2.EVENT_TYPE_NODE_STARTED, in_hand + batch)
                await heartbeat_rounds(jobs, job.id, started[-1])
                assert (await get_job(jobs, job.id)).stats.active_leases == in_hand
                assert events.count(types_pb2.EVENT_TYPE_NODE_STARTED) == in_hand + batch
                assert len(handler.calls) == concurrency + batch and not handler.waiting_starts()

                handler.open_all()
                end = await finished(jobs, job.id)
        await events.close()
    assert end.status == types_pb2.JOB_STATUS_COMPLETED
    assert counts(end.stats) == dict(
        total=63, pending=0, running=0, done=63, skipped=0, error=0, processed=3200, active_leases=0,
        failed_attempts=0,
    )  # fmt: skip
    assert sorted(handler.calls) == [(s, e, 1) for s, e in reference_leaves(0, 3200, 100)]
    assert (worker.stats.completed, worker.stats.rejected, worker.stats.released) == (32, 0, 0)


@pytest.mark.parametrize("kind", ["sync", "async"])
@async_test
async def test_cancel_reaches_a_running_handler(data_dir: Path, kind: str) -> None:
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    saw_cancel: asyncio.Queue[bool] = asyncio.Queue()

    def sync_handler(range_: Range, ctx: Context) -> None:
        loop.call_soon_threadsafe(started.set)
        # Set by the CANCEL directive (or, if the test fails first, by the worker's drain timeout).
        loop.call_soon_threadsafe(saw_cancel.put_nowait, ctx.cancelled.wait(10))

    async def async_handler(range_: Range, ctx: Context) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            saw_cancel.put_nowait(ctx.cancelled.is_set())
            raise

    handler = sync_handler if kind == "sync" else async_handler
    async with inprocess_coordinator(data_dir) as coord, loopback_channel(coord.port) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        job = await create_job(jobs, 0, 100, 100)
        worker = sdk_worker(coord.port, handler, concurrency=1, prefetch=0)
        async with running_worker(worker):
            await started.wait()
            await jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id, reason="stop it"))
            assert await saw_cancel.get() is True  # ctx.cancelled was set (and the task cancelled)
        end = await get_job(jobs, job.id)
    assert end.status == types_pb2.JOB_STATUS_CANCELLED and end.reason == "stop it"
    assert (end.stats.active_leases, end.stats.failed_attempts, end.stats.done_nodes) == (0, 0, 0)
    # A cancelled lease is dropped: the worker reported nothing for it (and nothing was rejected).
    s = worker.stats
    assert (s.dropped, s.completed, s.failed, s.released, s.rejected) == (1, 0, 0, 0, 0)


@async_test
async def test_pause_with_release_gives_the_leases_back_and_resume_runs_from_the_checkpoint(
    data_dir: Path,
) -> None:
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    calls: list[tuple[int, int, int, bytes | None]] = []

    def handler(range_: Range, ctx: Context) -> None:
        calls.append((range_.start, range_.end, ctx.attempt, ctx.details))
        if len(calls) == 1:  # the first leaf runs until it is asked to stop, then checkpoints
            loop.call_soon_threadsafe(started.set)
            ctx.cancelled.wait(10)  # (or the worker's drain timeout, if the test fails first)
            ctx.checkpoint(range_.start + 10, b"ten")  # travels with the lease given back

    async with inprocess_coordinator(data_dir) as coord, loopback_channel(coord.port) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        job = await create_job(jobs, 0, 200, 100)
        events = Events(jobs, job.id)
        worker = sdk_worker(coord.port, handler, concurrency=1, prefetch=1)
        async with running_worker(worker):
            await started.wait()
            await events.until(types_pb2.EVENT_TYPE_NODE_STARTED, 2)  # one running, one in hand
            await jobs.PauseJob(jobs_pb2.PauseJobRequest(job_id=job.id, release=True))

            async def given_back() -> bool:
                return (await get_job(jobs, job.id)).stats.active_leases == 0

            await eventually(given_back, "both leases to come back")
            paused = await get_job(jobs, job.id)
            assert paused.status == types_pb2.JOB_STATUS_PAUSED
            # The running leaf came back with its checkpoint; neither release is an attempt.
            assert counts(paused.stats) == dict(
                total=3, pending=2, running=1, done=0, skipped=0, error=0, processed=10,
                active_leases=0, failed_attempts=0,
            )  # fmt: skip
            tree = await jobs.GetJobTree(jobs_pb2.GetJobTreeRequest(job_id=job.id, max_depth=1))
            assert [(n.status, n.attempts, n.cursor) for n in tree.root.children] == [
                (types_pb2.NODE_STATUS_PENDING, 0, 10),
                (types_pb2.NODE_STATUS_PENDING, 0, 0),
            ]
            assert worker.stats.released == 2 and len(calls) == 1

            await jobs.ResumeJob(jobs_pb2.ResumeJobRequest(job_id=job.id))
            end = await finished(jobs, job.id)
        await events.close()
    assert end.status == types_pb2.JOB_STATUS_COMPLETED
    assert (end.stats.done_nodes, end.stats.range_processed, end.stats.failed_attempts) == (3, 200, 0)
    assert calls[0] == (0, 100, 1, None)
    assert sorted(calls[1:]) == [(10, 100, 1, b"ten"), (100, 200, 1, None)]  # resumed at the checkpoint


@async_test
async def test_results_finished_while_the_coordinator_is_away_are_sent_when_it_is_back(
    data_dir: Path,
) -> None:
    async with inprocess_coordinator(data_dir) as first:
        port = first.port
        async with loopback_channel(port) as channel:
            job = await create_job(jobs_pb2_grpc.JobServiceStub(channel), 0, 400, 100)  # 4 leaves
        worker = sdk_worker(port, handler := Gated(), concurrency=4, prefetch=0)
        async with running_worker(worker):
            with handler:
                for _ in range(4):
                    await handler.next_start()
                await first.stop()
                handler.open_all()  # the four results are made while nobody listens
                await eventually(lambda: worker.stats.completed == 4, "the handlers to return")
                assert worker.stats.connects == 1

                async with (
                    inprocess_coordinator(data_dir, port=port) as second,
                    loopback_channel(second.port) as channel,
                ):
                    jobs = jobs_pb2_grpc.JobServiceStub(channel)
                    end = await finished(jobs, job.id)
    assert end.status == types_pb2.JOB_STATUS_COMPLETED
    # Nothing ran twice and nothing expired: the job was finished by the results sent again.
    assert sorted(handler.calls) == [(s, e, 1) for s, e in reference_leaves(0, 400, 100)]
    assert counts(end.stats) == dict(
        total=7, pending=0, running=0, done=7, skipped=0, error=0, processed=400, active_leases=0,
        failed_attempts=0,
    )  # fmt: skip
    assert (worker.stats.connects, worker.stats.completed, worker.stats.rejected) == (2, 4, 0)


def shape_of_leaf(range_: Range, ctx: Context) -> Any:
    """A result per leaf for a merge job; the leaf at 300 returns what JSON cannot hold."""
    if range_.start == 300:
        return {"ids": {range_.start, range_.end}}
    if range_.start == 500:
        return None  # no result: nothing to combine
    return {"leaves": 1, "ids": range_.end - range_.start}


@async_test
async def test_the_sdk_sends_handler_results_and_fails_a_leaf_whose_result_is_not_json(
    data_dir: Path,
) -> None:
    async with inprocess_coordinator(data_dir) as coord, loopback_channel(coord.port) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        job = await create_job(jobs, 0, 800, 100, reduce=types_pb2.REDUCE_MERGE)  # 8 leaves
        async with running_worker(sdk_worker(coord.port, shape_of_leaf)):
            done = await finished(jobs, job.id)
        assert done.status == types_pb2.JOB_STATUS_FAILED
        # Six leaves gave a result, one none, and one's was refused by the SDK (not retried).
        assert (done.result_json, done.result_partial) == ('{"leaves":6,"ids":600}', True)
        tree = await jobs.GetJobTree(jobs_pb2.GetJobTreeRequest(job_id=job.id, max_depth=8))
        [bad] = [n for n in tree_nodes(tree.root) if n.status == types_pb2.NODE_STATUS_ERROR and n.is_leaf]
        assert (bad.range.start, bad.attempts) == (300, 1)
        assert bad.last_error.startswith("PermanentError: the handler's result is not JSON: ")
        assert "set is not JSON serializable" in bad.last_error
