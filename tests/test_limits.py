"""Bounds on what one request can make the coordinator hold, do or send, and the defects that
probing found (issue 12): each refused with a clear error naming the bound, nothing changed.

The pure rules are tested on the core; the rest against real coordinator processes.
"""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from parcelo import JobOptions
from parcelo.coordinator.codec import depth_within, tree_to_proto
from parcelo.coordinator.errors import InvalidArgument, NotFound
from parcelo.coordinator.events import EventType
from parcelo.coordinator.jobs import RetryPolicy, find
from parcelo.coordinator.leases import Action, Beat, Failure, Reject
from parcelo.coordinator.limits import MAX_REASON_BYTES, MAX_TREE_NODES
from parcelo.testing import BIN, CoordinatorProcess, wait_for
from parcelo.v1 import jobs_pb2, types_pb2, worker_pb2, worker_pb2_grpc
from tests.support import RawWorker, raw_spec, tree_nodes
from tests.test_core import commit, new_core, raw

# -- numbers and texts of a job (the core) ----------------------------------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        (
            dict(retry=types_pb2.RetryPolicy(backoff_multiplier=1e200)),
            "retry.backoff_multiplier",
            "between 1 and 1000",
        ),
        (dict(retry=types_pb2.RetryPolicy(backoff_multiplier=float("nan"))), "retry.backoff_multiplier", ""),
        (dict(retry=types_pb2.RetryPolicy(backoff_multiplier=float("inf"))), "retry.backoff_multiplier", ""),
        (dict(retry=types_pb2.RetryPolicy(jitter=float("nan"))), "retry.jitter", ""),
        (dict(retry=types_pb2.RetryPolicy(max_attempts=10**6)), "retry.max_attempts", "at most 10000"),
        (
            dict(retry=types_pb2.RetryPolicy(max_backoff=Duration(seconds=10**9))),
            "retry.max_backoff",
            "at most",
        ),
        (
            dict(retry=types_pb2.RetryPolicy(initial_backoff=Duration(nanos=2 * 10**9))),
            "retry.initial_backoff",
            "nanos",
        ),
        (dict(lease_ttl=Duration(seconds=1, nanos=10**9)), "lease_ttl", "nanos"),
        (dict(leaf_timeout=Duration(nanos=500_000)), "leaf_timeout", "at least 1 ms"),
        (dict(deadline=Timestamp(seconds=10**15)), "deadline", "9999-12-31"),
        (dict(deadline=Timestamp(seconds=-5)), "deadline", "1970-01-01"),
        (dict(params_json=nested(100_000)), "params_json", "nested too deeply"),
        (dict(params_json='{"x": NaN}'), "params_json", "NaN is not a JSON number"),
        (dict(params_json="Infinity"), "params_json", "Infinity is not a JSON number"),
        # 300,000 characters but 1.2 MB of UTF-8: sizes are bytes.
        (
            dict(params_json=json.dumps("\U0001f600" * 300_000, ensure_ascii=False)),
            "params_json",
            "1200002 bytes",
        ),
        (dict(request_id="r" * 129), "request_id", "at most 128 bytes"),
        (dict(labels={"k": "v" * (64 << 10)}), "labels", "over 65536"),
    ],
)
def test_every_number_and_text_of_a_job_is_bounded(fields: dict[str, Any], field: str, message: str) -> None:
    core = new_core()
    with pytest.raises(InvalidArgument) as err:
        core.create_job(raw(**fields), 0.0)
    assert err.value.field == field and message in str(err.value)
    assert not core.jobs  # nothing created


def test_backoff_never_overflows_whatever_the_attempt() -> None:
    policy = RetryPolicy(
        max_attempts=10_000, initial_backoff=0.5, multiplier=1000.0, max_backoff=60.0, jitter=0.0
    )
    assert [policy.delay(n, random.Random(1)) for n in (1, 2, 3, 9_999)] == [0.5, 60.0, 60.0, 60.0]


def test_failing_a_leaf_with_the_largest_multiplier_again_and_again_stays_consistent() -> None:
    core = new_core()
    retry = types_pb2.RetryPolicy(
        max_attempts=6,
        backoff_multiplier=1000,
        initial_backoff=Duration(nanos=1000),
        max_backoff=Duration(nanos=2000),
    )
    job, _ = core.create_job(raw(0, 100, 100, retry=retry), 0.0)
    now = 1.0
    for attempt in range(1, 7):
        [lease] = core.lease(["default"], 1, now)
        assert lease.node.attempts == attempt
        assert core.fail([Failure(lease.fence, True, "boom")], now) == ([lease.fence], [])
        now += 1.0
    stats = core.stats(job)
    assert (stats.error_nodes, stats.active_leases, stats.failed_attempts) == (1, 0, 6)
    assert job.status.name == "FAILED"


def test_messages_and_reasons_are_kept_bounded() -> None:
    core = new_core()
    job, _ = core.create_job(raw(0, 200, 100), 0.0)
    [lease, _other] = core.lease(["default"], 2, 1.0)
    huge = "x" * (5 << 20)
    core.fail([Failure(lease.fence, True, huge)], 1.0)
    commit(core)  # events are shown once written
    failed = [e for e in core.events.recent(job.id, 0)[0] if e.type is EventType.NODE_FAILED]
    assert len(failed) == 1 and len(failed[0].message) == 4096 and len(lease.node.last_error) == 4096
    core.cancel(job.id, 2.0, "é" * (1 << 20))
    assert len(job.reason.encode()) <= MAX_REASON_BYTES
    with pytest.raises(NotFound) as err:
        find(core.jobs, "j" * 100_000)
    assert len(str(err.value)) < 200


def test_results_and_heartbeats_count_only_from_the_lease_holder() -> None:
    core = new_core()
    core.create_job(raw(0, 300, 100), 0.0)
    first, second = core.lease(["default"], 2, 1.0, holder="honest")
    # Another worker names the honest worker's fences: refused, nothing changes.
    done, refused = core.complete([first.fence], [], 2.0, holder="intruder")
    assert done == [] and [(r.fence, r.reason) for r in refused] == [(first.fence, Reject.NOT_HOLDER)]
    done, refused = core.fail([Failure(second.fence, False, "x")], 2.0, holder="intruder")
    assert done == [] and refused[0].reason is Reject.NOT_HOLDER
    [(fence, action, _, _)] = core.heartbeat([Beat(first.fence, cursor=50)], 2.0, holder="intruder")
    assert (fence, action) == (first.fence, Action.LOST) and first.node.cursor == 0
    assert core.leases.get(first.fence) is first and core.leases.get(second.fence) is second
    # The holder's own results count.
    assert core.complete([first.fence], [], 3.0, holder="honest") == ([first.fence], [])
    assert core.fail([Failure(second.fence, False, "bad")], 3.0, holder="honest") == ([second.fence], [])


def test_a_tree_answer_holds_at_most_the_node_budget() -> None:
    core = new_core()
    job, _ = core.create_job(raw(0, 1 << 20, 16), 0.0)
    assert len(core.lease(["default"], 10_000, 1.0)) == 10_000  # a wide frontier of leased leaves
    depth = depth_within(job.tree.root, 64, MAX_TREE_NODES)
    out = types_pb2.TreeNode()
    tree_to_proto(job.tree.root, depth, out)
    shown = list(tree_nodes(out))
    assert 5_000 < len(shown) <= MAX_TREE_NODES
    assert any(node.truncated for node in shown)  # deeper levels left out, and said so
    assert depth_within(job.tree.root, 3, MAX_TREE_NODES) == 3  # a shallow ask is served as asked


# -- requests against a real coordinator ------------------------------------------------------------


def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details() or ""


def test_per_request_counts_are_bounded(
    make_coordinator: type[CoordinatorProcess], tmp_path: Path, log_dir: Path
) -> None:
    coord = make_coordinator(tmp_path / "data", log_dir, extra=["--max-leases-per-request", "100"]).start()
    job = coord.create_job(JobOptions(0, 1 << 20, max_range_size=1))
    workers = coord.workers
    # Unary Lease asking for 2^32-1: refused before any lease is made.
    code, details = code_of(lambda: workers.Lease(worker_pb2.LeaseRequest(count=2**32 - 1), timeout=10))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details == "count: 4294967295 is over the coordinator's --max-leases-per-request (100)"
    # Results naming more fences than that, on the unary forms.
    code, details = code_of(
        lambda: workers.Complete(worker_pb2.CompleteRequest(fences=range(1, 102)), timeout=10)
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "fences and skipped: 101" in details
    leaf_failures = [worker_pb2.LeafFailure(fence=1, start=i, end=i + 1) for i in range(101)]
    code, details = code_of(
        lambda: workers.Complete(
            worker_pb2.CompleteRequest(fences=[1], failed_leaves=leaf_failures), timeout=10
        )
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "failed_leaves: 101" in details
    failures = [worker_pb2.Failure(fence=f) for f in range(1, 102)]
    code, _ = code_of(lambda: workers.Fail(worker_pb2.FailRequest(failures=failures), timeout=10))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    beats = [worker_pb2.LeaseHeartbeat(fence=f) for f in range(1, 102)]
    code, _ = code_of(lambda: workers.Heartbeat(worker_pb2.HeartbeatRequest(leases=beats), timeout=10))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # A stream's credit is bounded too: credit asked for three times over, while there is no work
    # to grant, holds 100 at most.
    raw_worker = RawWorker(coord.channel, "greedy")
    coord.jobs.PauseJob(jobs_pb2.PauseJobRequest(job_id=job.id), timeout=10)
    for _ in range(3):
        raw_worker.send(worker_pb2.WorkRequest(lease=worker_pb2.LeaseRequest(count=100)))
    raw_worker.heartbeat()  # answered after the three credits were taken
    coord.jobs.ResumeJob(jobs_pb2.ResumeJobRequest(job_id=job.id), timeout=10)
    granted: list[worker_pb2.Lease] = []
    while len(granted) < 100:
        granted.extend(raw_worker.next("grant").grant.leases)
    assert len(granted) == 100
    wait_for(lambda: coord.get_job(job.id).stats.active_leases == 100, 10, "the grants to be written")
    raw_worker.heartbeat()  # one more round trip: the dispatcher ran again, and granted nothing more
    assert coord.get_job(job.id).stats.active_leases == 100
    # ...and one message asking for more than the bound ends the stream, naming it.
    raw_worker.send(worker_pb2.WorkRequest(lease=worker_pb2.LeaseRequest(count=101)))
    with pytest.raises(grpc.RpcError) as err:
        raw_worker.next("never")
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-leases-per-request" in (
        err.value.details() or ""
    )
    raw_worker.close()


def test_streams_per_worker_are_bounded(
    make_coordinator: type[CoordinatorProcess], tmp_path: Path, log_dir: Path
) -> None:
    coord = make_coordinator(tmp_path / "data", log_dir, extra=["--max-streams-per-worker", "2"]).start()
    first, second = RawWorker(coord.channel, "w"), RawWorker(coord.channel, "w")
    with pytest.raises(grpc.RpcError) as err:
        RawWorker(coord.channel, "w")
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "has 2 Work streams open, the coordinator's --max-streams-per-worker (2)" in (
        err.value.details() or ""
    )
    RawWorker(coord.channel, "another").close()  # other worker ids are not affected
    first.close()

    def third() -> bool:
        try:
            RawWorker(coord.channel, "w").close()
            return True
        except grpc.RpcError:
            return False

    wait_for(third, 10, "a stream slot to free up once one stream closed")
    second.close()


def test_a_stream_that_never_reads_its_answers_is_dropped(coordinator: CoordinatorProcess) -> None:
    channel = grpc.insecure_channel(coordinator.target)
    beats = worker_pb2.HeartbeatRequest(leases=[worker_pb2.LeaseHeartbeat(fence=f) for f in range(1, 1001)])

    def requests() -> Iterator[worker_pb2.WorkRequest]:
        yield worker_pb2.WorkRequest(hello=worker_pb2.Hello(worker_id="deaf"))
        for _ in range(5_000):
            yield worker_pb2.WorkRequest(heartbeat=beats)

    call = worker_pb2_grpc.WorkerServiceStub(channel).Work(requests())
    # The worker reads nothing: its answers (1,000 directives each) pile up until the coordinator
    # gives up on the stream, says so, and stops reading it.
    assert coordinator.proc is not None
    proc = coordinator.proc
    wait_for(lambda: "worker deaf does not read its answers" in proc.output(), 60, "the stream to be dropped")
    with pytest.raises(grpc.RpcError) as err:
        for _ in call:
            pass
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "answers wait to be read on this stream" in (err.value.details() or "")
    channel.close()
    assert coordinator.jobs.ListJobs(jobs_pb2.ListJobsRequest(), timeout=10) is not None  # still serving


def test_list_pages_fit_a_default_client_and_answers_stay_small(coordinator: CoordinatorProcess) -> None:
    big = json.dumps({"blob": "p" * ((1 << 20) - 100)})
    for i in range(5):
        coordinator.create_job(JobOptions(0, 100, max_range_size=10, job_id=f"big-{i}", params=big))
    first = coordinator.jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=50), timeout=10)
    assert 1 <= len(first.jobs) <= 3 and first.next_page_token and first.ByteSize() < 4 << 20
    # The admin CLI (a default 4 MiB client) lists them all, page by page.
    out = subprocess.run(
        [str(BIN / "parcelo"), "--target", coordinator.target, "job", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert sorted(job["id"] for job in json.loads(out.stdout)) == [f"big-{i}" for i in range(5)]


def test_small_defects_stay_fixed(coordinator: CoordinatorProcess) -> None:
    jobs = coordinator.jobs
    job = coordinator.create_job(JobOptions(0, 100, max_range_size=10))
    # A watch filtered by unknown event types only is refused, rather than sending every event.
    code, details = code_of(
        lambda: list(
            jobs.WatchJob(
                jobs_pb2.WatchJobRequest(job_id=job.id, types=[types_pb2.EventType.ValueType(99)]), timeout=10
            )
        )
    )
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "types: 99 is not an EventType")
    # A leaf timeout under a millisecond cannot be sent as a worker's timer: refused.
    code, details = code_of(
        lambda: jobs.CreateJob(
            jobs_pb2.CreateJobRequest(spec=raw_spec(leaf_timeout=Duration(nanos=1000))), timeout=10
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(
        "leaf_timeout: must be at least 1 ms"
    )
    # Checkpoint details are bounded.
    worker = RawWorker(coordinator.channel, "w")
    [lease] = worker.lease(1)
    worker.send(
        worker_pb2.WorkRequest(
            heartbeat=worker_pb2.HeartbeatRequest(
                leases=[worker_pb2.LeaseHeartbeat(fence=lease.fence, cursor=1, details=b"d" * (65 << 10))]
            )
        )
    )
    with pytest.raises(grpc.RpcError) as err:
        worker.next("heartbeat")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "details: is 66560 bytes" in (
        err.value.details() or ""
    )
    worker.close()
    # Queues a worker names are checked.
    code, details = code_of(
        lambda: coordinator.workers.Lease(worker_pb2.LeaseRequest(count=1, queues=["no spaces"]), timeout=10)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("queues: each must be")
