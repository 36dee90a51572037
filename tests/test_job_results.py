"""Job results end to end: real coordinator and worker processes, handlers that return values.

Every expected answer is computed here directly (a sieve, a loop, arithmetic), never taken from
the coordinator.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from parcelo import JobNotCompleted, JobOptions, RetryPolicy, result_of
from parcelo.client import Client
from parcelo.examples import primes_in
from parcelo.testing import BIN, CoordinatorProcess, Proc, wait_for
from parcelo.v1 import jobs_pb2, types_pb2, worker_pb2
from tests.handlers import scatter
from tests.support import RawWorker, pruned_reference, runs, start_recording_workers, tree_nodes

pytestmark = pytest.mark.integration

DONE = {types_pb2.JOB_STATUS_COMPLETED}
ENDED = {types_pb2.JOB_STATUS_COMPLETED, types_pb2.JOB_STATUS_FAILED}
MILLION = 10**6
PRIMES_BELOW_A_MILLION = primes_in(0, MILLION)


def cli(coord: CoordinatorProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "parcelo"), "--target", coord.target, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_sum_min_max_and_merge_give_the_direct_answers(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    jobs = {
        "primes": JobOptions(0, MILLION, max_range_size=20_000, reduce="sum", queue="primes"),
        "min": JobOptions(
            0,
            MILLION,
            max_range_size=50_000,
            reduce="min",
            queue="extreme",
            params={"pick": "min", "plant": 123_457, "value": -5},
        ),
        # A maximum beyond 2^64: integers stay exact.
        "max": JobOptions(
            0,
            MILLION,
            max_range_size=50_000,
            reduce="max",
            queue="extreme",
            params={"pick": "max", "plant": 876_543, "value": 10**30},
        ),
        "histogram": JobOptions(3, 10**9 + 7, max_range_size=10**7, reduce="merge", queue="digit_histogram"),
    }
    created = {name: coordinator.create_job(options) for name, options in jobs.items()}
    for job in created.values():
        assert job.spec.reduce != types_pb2.REDUCE_NONE and job.result_json == "" and job.result_partial
    for handler in ("primes", "extreme", "digit_histogram"):
        start_recording_workers(coordinator, procs, log_dir, run_log, handler, "--queue", handler)
    final = {name: coordinator.wait_status(job.id, DONE, timeout=90) for name, job in created.items()}
    assert all(not job.result_partial for job in final.values())

    assert result_of(final["primes"]) == PRIMES_BELOW_A_MILLION == 78_498
    values = [scatter(x) for x in range(MILLION)]
    assert min(values) > -5 and max(values) < 10**30  # the planted values are the extremes
    assert result_of(final["min"]) == -5
    assert result_of(final["max"]) == 10**30 and final["max"].result_json == str(10**30)
    histogram = result_of(final["histogram"])
    width = 10**9 + 4
    assert histogram["count"] == width and histogram["unit"] == "ids"
    assert histogram["last_digit"] == {str(d): len(range(3 + (d - 3) % 10, 10**9 + 7, 10)) for d in range(10)}
    assert sum(histogram["last_digit"].values()) == width

    # The finished job holds one value: its root, with the result on it.
    tree = coordinator.jobs.GetJobTree(jobs_pb2.GetJobTreeRequest(job_id=created["primes"].id), timeout=10)
    assert [node.result_json for node in tree_nodes(tree.root)] == [str(PRIMES_BELOW_A_MILLION)]

    # The CLI: `job result` prints the JSON alone, `job get` shows it, `job wait --result` too.
    out = cli(coordinator, "job", "result", created["max"].id)
    assert (out.returncode, out.stdout) == (0, f"{10**30}\n")
    out = cli(coordinator, "job", "get", created["primes"].id)
    rows = [line.split() for line in out.stdout.splitlines()]
    assert (
        out.returncode == 0 and ["reduce", "sum"] in rows and ["result", str(PRIMES_BELOW_A_MILLION)] in rows
    )
    out = cli(coordinator, "job", "wait", created["histogram"].id, "--result")
    assert out.returncode == 0 and json.loads(out.stdout) == histogram and "completed" in out.stderr
    with Client(coordinator.target) as client:
        assert client.wait_result(created["min"].id, timeout=10) == -5
        assert client.get_result(created["primes"].id) == PRIMES_BELOW_A_MILLION


def test_results_stay_exact_through_kill9_of_workers_and_coordinator_and_failed_attempts(
    make_coordinator: type[CoordinatorProcess], procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    coord = make_coordinator(tmp_path / "data", log_dir).start()
    job = coord.create_job(
        JobOptions(
            0,
            MILLION,
            max_range_size=2_000,
            reduce="sum",
            lease_ttl=timedelta(seconds=2),
            retry=RetryPolicy(max_attempts=5, initial_backoff=timedelta(milliseconds=50)),
            params={"flaky": True, "sleep": 0.002},
        )
    )
    run_log = tmp_path / "runs.log"
    first, _ = start_recording_workers(coord, procs, log_dir, run_log, "primes", "--concurrency", "4", n=2)
    wait_for(lambda: len(runs(run_log)) > 60, 60, "some leaves to run")
    first.kill9()
    start_recording_workers(coord, procs, log_dir, run_log, "primes", "--concurrency", "4")
    wait_for(lambda: len(runs(run_log)) > 200, 60, "more leaves to run")
    partial = coord.get_job(job.id)
    assert partial.result_partial and 0 < result_of(partial) < PRIMES_BELOW_A_MILLION
    coord.kill9()
    coord.start()
    done = coord.wait_status(job.id, DONE, timeout=120)
    assert (result_of(done), done.result_partial) == (PRIMES_BELOW_A_MILLION, False)
    # Leaves did run more than once (failed first attempts, the killed worker's leases), and
    # each still counted once.
    attempts = Counter((s, e) for s, e, _ in runs(run_log))
    assert max(attempts.values()) >= 2
    assert done.stats.failed_attempts > 0


def test_pruned_subtrees_contribute_nothing(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    job = coordinator.create_job(JobOptions(0, 200_000, max_range_size=1000, pruning=True, reduce="sum"))
    start_recording_workers(
        coordinator,
        procs,
        log_dir,
        tmp_path / "runs.log",
        "width",
        "--should-process",
        "tests.handlers:keep_multiples",
    )
    done = coordinator.wait_status(job.id, DONE, timeout=60)
    leaves, skipped, _ = pruned_reference(0, 200_000, 1000)
    # Each kept leaf returns its width: the result is the width of the leaves that ran, only.
    assert result_of(done) == sum(e - s for s, e in leaves) == 200_000 - skipped < 200_000


def test_a_partial_sum_only_grows_while_the_job_runs(
    coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    job = coordinator.create_job(
        JobOptions(0, 64_000, max_range_size=500, reduce="sum", params={"sleep": 0.01})
    )
    start_recording_workers(coordinator, procs, log_dir, tmp_path / "runs.log", "width", "--concurrency", "2")
    seen: list[tuple[int, bool]] = []

    def finished() -> bool:
        current = coordinator.get_job(job.id)
        seen.append((result_of(current) or 0, current.result_partial))
        return current.status == types_pb2.JOB_STATUS_COMPLETED

    wait_for(finished, 90, "the job to complete", interval=0.02)
    values = [value for value, _ in seen]
    assert values == sorted(values)
    assert len(set(values)) >= 5  # it was watched growing, not only at the end
    assert seen[-1] == (64_000, False)
    assert all(partial for _, partial in seen[:-1])


def test_results_over_the_limit_fail_the_leaf_or_the_job_and_the_daemon_keeps_serving(
    make_coordinator: type[CoordinatorProcess], procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    coord = make_coordinator(tmp_path / "data", log_dir, extra=["--max-result-bytes", "2048"]).start()
    run_log = tmp_path / "runs.log"
    # One leaf returns 3,000 bytes of JSON: that leaf fails for good, naming the limit.
    too_big = coord.create_job(
        JobOptions(0, 8000, max_range_size=1000, reduce="sum", params={"big_start": 3000, "big_bytes": 3000})
    )
    start_recording_workers(coord, procs, log_dir, run_log, "width")
    failed = coord.wait_status(too_big.id, ENDED, timeout=60)
    assert failed.status == types_pb2.JOB_STATUS_FAILED
    assert "over the coordinator's --max-result-bytes (2048)" in failed.reason
    tree = coord.jobs.GetJobTree(jobs_pb2.GetJobTreeRequest(job_id=too_big.id, max_depth=10), timeout=10)
    [bad] = [n for n in tree_nodes(tree.root) if n.status == types_pb2.NODE_STATUS_ERROR and n.is_leaf]
    assert (bad.range.start, bad.attempts) == (3000, 1)  # refused once, not retried
    assert bad.last_error == "the result is 3000 bytes, over the coordinator's --max-result-bytes (2048)"
    # The other leaves counted: the partial result is their widths.
    assert (result_of(failed), failed.result_partial) == (7000, True)
    with Client(coord.target) as client, pytest.raises(JobNotCompleted, match="did not complete"):
        client.wait_result(too_big.id, timeout=10)
    out = cli(coord, "job", "result", too_big.id)
    assert (out.returncode, out.stdout) == (1, "7000\n")

    # A merge whose result outgrows the limit fails the job, with the reason.
    growing = coord.create_job(JobOptions(0, 200_000, max_range_size=1000, reduce="merge", queue="keys"))
    start_recording_workers(coord, procs, log_dir, run_log, "key_per_leaf", "--queue", "keys")
    grown = coord.wait_status(growing.id, ENDED, timeout=60)
    assert grown.status == types_pb2.JOB_STATUS_FAILED
    assert grown.reason.startswith("the job's result grew to ")
    assert grown.reason.endswith("bytes, over the coordinator's --max-result-bytes (2048)")
    assert 2048 < len(grown.result_json.encode()) < 2048 + 100

    # The daemon still runs a normal job.
    fine = coord.create_job(JobOptions(0, 4000, max_range_size=1000, reduce="sum"))
    assert result_of(coord.wait_status(fine.id, DONE, timeout=60)) == 4000


def test_malformed_results_are_refused_per_fence_and_counted_for_none(
    coordinator: CoordinatorProcess,
) -> None:
    job = coordinator.create_job(JobOptions(0, 4000, max_range_size=1000, reduce="sum"))
    worker = RawWorker(coordinator.channel, "raw")
    leases = worker.lease(4)
    fences = [lease.fence for lease in leases]
    # One result per fence, or none: a mismatch is INVALID_ARGUMENT and ends the stream.
    worker.send(
        worker_pb2.WorkRequest(complete=worker_pb2.CompleteRequest(fences=fences, results_json=["1"]))
    )
    with pytest.raises(grpc.RpcError) as err:
        worker.next("complete")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "results_json: has 1 entries for 4 fences" in (err.value.details() or "")
    worker.close()
    # Nothing of that request counted; the leases are still live for a new stream.
    worker = RawWorker(coordinator.channel, "raw")
    request = worker_pb2.CompleteRequest(fences=fences, results_json=["1000", '"x"', "NaN", ""])
    worker.send(worker_pb2.WorkRequest(complete=request))
    reply = worker.next("complete").complete
    assert list(reply.accepted) == [fences[0], fences[3]]
    assert [(r.fence, r.reason) for r in reply.rejected] == [
        (fences[1], worker_pb2.REJECT_REASON_INVALID_RESULT),
        (fences[2], worker_pb2.REJECT_REASON_INVALID_RESULT),
    ]
    assert reply.rejected[0].message == "reduce sum combines numbers; the result is a string"
    assert "NaN is not a JSON number" in reply.rejected[1].message
    worker.close()
    failed = coordinator.wait_status(job.id, ENDED, timeout=30)
    assert (failed.status, result_of(failed)) == (types_pb2.JOB_STATUS_FAILED, 1000)
