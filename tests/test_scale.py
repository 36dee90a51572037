"""Performance design, checked as behaviour: frontier-sized state, batching that keeps every ack in order."""

from __future__ import annotations

from pathlib import Path

import pytest

from parcelo import JobOptions
from parcelo.coordinator.records import node_prefix
from parcelo.coordinator.store import Store
from parcelo.testing import CoordinatorProcess, Proc, start_worker, wait_for
from parcelo.v1 import jobs_pb2, types_pb2, worker_pb2
from tests.support import RawWorker

pytestmark = pytest.mark.integration


def stored_nodes(data_dir: Path, job_id: str) -> int:
    store = Store(data_dir)
    try:
        prefix = node_prefix(job_id)
        return sum(1 for _ in store._scan(prefix))
    finally:
        store.close()


def test_a_2_pow_62_wide_job_keeps_a_bounded_number_of_stored_nodes(
    make_coordinator: type[CoordinatorProcess], procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    coord = make_coordinator(data, log_dir).start()
    # 16,384 leaves, one a lease: with leaf runs this no-op job is over before a snapshot can be
    # taken mid-run (bench row 3 measures a 2^62-wide job's memory and disk with them).
    job = coord.create_job(JobOptions(0, 1 << 62, max_range_size=1 << 48, leaf_runs=False))
    for i in range(2):
        procs.append(
            start_worker(
                coord.target,
                "bench.noop:noop",
                log_dir,
                "--concurrency",
                "8",
                "--prefetch",
                "64",
                name=f"w{i}",
            )
        )
    wait_for(lambda: coord.get_job(job.id).stats.done_nodes > 4000, 60, "the job to be well under way")
    snapshot = coord.online_backup()  # a consistent snapshot of the store mid-run
    done = coord.wait_status(job.id, {types_pb2.JOB_STATUS_COMPLETED}, timeout=120)
    assert done.stats.total_nodes == 2 * 16_384 - 1 and done.stats.range_processed == 1 << 62
    assert coord.stop() == 0
    # Mid-run: the leases in flight (2 workers x 72) plus the finished leaves and inner nodes of the
    # window they span, and the frontier (2 x depth). The window can be a few times the leases in flight
    # (one worker's prefetched leaves wait while the other's finish), never the job: 32,767 nodes.
    in_flight = 2 * 72
    store = Store(snapshot)
    try:
        (stored,) = store.load(1)
    finally:
        store.close()
    assert stored.job.status == types_pb2.JOB_STATUS_RUNNING  # the snapshot really is mid-run
    mid = stored_nodes(snapshot, job.id)
    assert 0 < mid <= 6 * in_flight + 2 * 15, mid
    assert stored_nodes(data, job.id) == 1  # finished: everything collapsed into the root


def test_pipelined_batches_are_acknowledged_in_order_and_completely(coordinator: CoordinatorProcess) -> None:
    coordinator.create_job(JobOptions(0, 4096 * 10, max_range_size=10))  # exactly 4,096 leaves
    raw = RawWorker(coordinator.channel)
    leases = raw.lease(4096)
    fences = [lease.fence for lease in leases]
    batches = [fences[i : i + 97] for i in range(0, len(fences), 97)]
    for batch in batches:  # all sent before any answer is read
        raw.send(worker_pb2.WorkRequest(complete=worker_pb2.CompleteRequest(fences=batch)))
    answers = [raw.next("complete").complete for _ in batches]
    assert [list(a.accepted) for a in answers] == batches
    assert all(not a.rejected for a in answers)
    again = raw.complete(fences[:10])  # sent again (an answer lost): accepted again, nothing changes
    assert list(again.accepted) == fences[:10] and not again.rejected
    job = coordinator.jobs.ListJobs(jobs_pb2.ListJobsRequest()).jobs[0]
    assert job.status == types_pb2.JOB_STATUS_COMPLETED and job.stats.range_processed == 40_960
    raw.close()
