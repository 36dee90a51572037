"""Sync handlers run short leaves in batches per thread submission; each leaf still counts alone.

In-process: a coordinator in the test's loop and a real SDK worker over loopback.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration

from parcelo import Context, PermanentError, Range
from parcelo.v1 import jobs_pb2, jobs_pb2_grpc, types_pb2
from tests.support import async_test, inprocess_coordinator, loopback_channel, running_worker, tree_nodes
from tests.test_inprocess import create_job, finished, sdk_worker


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@async_test
async def test_a_leaf_that_fails_inside_a_batch_fails_alone_and_the_rest_complete(data_dir: Path) -> None:
    threads: set[int] = set()
    lock = threading.Lock()

    def handler(range_: Range, ctx: Context) -> int:
        with lock:
            threads.add(threading.get_ident())
        if range_.start == 100:
            raise PermanentError("corrupt")  # no retry
        if range_.start % 10 == 3 and ctx.attempt == 1:
            raise ValueError("flaky")  # retried
        if range_.start % 50 == 7:
            ctx.checkpoint(range_.start)  # a checkpoint in a batch is the leaf's own
        return 1

    async with inprocess_coordinator(data_dir) as coord, loopback_channel(coord.port) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        job = await create_job(
            jobs,
            0,
            512,
            1,
            reduce=types_pb2.REDUCE_SUM,
            retry=types_pb2.RetryPolicy(initial_backoff=Duration(nanos=10_000_000)),
        )
        worker = sdk_worker(coord.port, handler)  # default flags: 4 slots, adaptive prefetch
        async with running_worker(worker):
            end = await finished(jobs, job.id)
        tree = await jobs.GetJobTree(jobs_pb2.GetJobTreeRequest(job_id=job.id, max_depth=10))
    # The permanent failure is the job's only error leaf; every other leaf counted once.
    assert end.status == types_pb2.JOB_STATUS_FAILED and end.result_json == "511"
    errors = [n for n in tree_nodes(tree.root) if n.is_leaf and n.status == types_pb2.NODE_STATUS_ERROR]
    assert [(n.range.start, n.attempts, n.last_error) for n in errors] == [
        (100, 1, "PermanentError: corrupt")
    ]
    flaky = len([s for s in range(512) if s % 10 == 3])
    assert end.stats.failed_attempts == flaky + 1
    s = worker.stats
    assert (s.completed, s.failed, s.released, s.rejected, s.dropped) == (511, flaky + 1, 0, 0, 0)
    assert len(threads) <= 4
