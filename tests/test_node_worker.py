"""The Node.js worker (examples/node-worker) against a real coordinator process: its unit tests,
a job run by Node workers alone, pruning, kill -9 of a worker mid-leaf and of the coordinator, a stale
completion refused, the SIGTERM drain, checkpoints and failures.

Node.js 20+ and npm are part of the toolchain: without them these tests fail, they do not skip.
Once per session, ``npm ci`` installs the locked packages when ``node_modules`` is missing or was
installed from another ``package-lock.json``.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from parcelo import JobOptions, RetryPolicy, result_of
from parcelo.testing import CoordinatorProcess, Proc, wait_for
from parcelo.v1 import jobs_pb2, types_pb2
from tests.support import pruned_reference, reference_leaves, runs, runs_with_pids, start_recording_workers
from tests.toolchains import NODE_DIR

pytestmark = pytest.mark.integration

DONE = {types_pb2.JOB_STATUS_COMPLETED}
FAILED = {types_pb2.JOB_STATUS_FAILED}


def node_worker(
    node: str,
    coord: CoordinatorProcess,
    procs: list[Proc],
    log_dir: Path,
    run_log: Path,
    handler: str,
    *args: str,
) -> Proc:
    """Start ``bin/parcelo-node-worker.js --handler <handler>`` logging runs to ``run_log``."""
    proc = Proc(
        [
            node,
            str(NODE_DIR / "bin" / "parcelo-node-worker.js"),
            "--target",
            coord.target,
            "--handler",
            handler,
            *args,
        ],
        log_dir / f"node-worker{len(procs)}.log",
        env={"PARCELO_TEST_LOG": str(run_log)},
    )
    procs.append(proc)
    return proc


def connected(proc: Proc) -> None:
    """Wait until the worker's stream is up (a SIGTERM before its handler is installed would kill it)."""
    wait_for(lambda: "connected to" in proc.output() or not proc.alive(), 15, "the node worker to connect")
    assert proc.alive(), proc.output()


def test_node_unit_tests_pass(node: str) -> None:
    result = subprocess.run(
        [node, "--test", "test/units.test.js", "test/worker.test.js"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_node_workers_alone_run_every_leaf_once_with_exact_stats(
    node: str, coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    workers = [
        node_worker(node, coordinator, procs, log_dir, run_log, "record", "--concurrency", "4")
        for _ in range(2)
    ]
    for proc in workers:
        connected(proc)
    job = coordinator.create_job(JobOptions(0, 100_000, max_range_size=1000, params={"sleep": 0.01}))
    done = coordinator.wait_status(job.id, DONE | FAILED, timeout=30)
    assert done.status == types_pb2.JOB_STATUS_COMPLETED
    ran = sorted((s, e) for s, e, _ in runs(run_log))
    assert ran == reference_leaves(0, 100_000, 1000)  # 128 leaves by the split rule, each run once
    s = done.stats
    assert (s.total_nodes, s.done_nodes, s.pending_nodes, s.running_nodes, s.error_nodes) == (
        255,
        255,
        0,
        0,
        0,
    )
    assert (s.range_processed, s.range_total, s.range_skipped, s.active_leases) == (100_000, 100_000, 0, 0)
    assert s.failed_attempts == 0
    assert {pid for *_, pid in runs_with_pids(run_log)} == {proc.pid for proc in workers}  # both took part
    for proc in workers:
        assert proc.terminate() == 0, proc.output()


def test_node_and_python_workers_share_a_job(
    node: str, coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    nodes = node_worker(node, coordinator, procs, log_dir, run_log, "record", "--prefetch", "4")
    (python,) = start_recording_workers(coordinator, procs, log_dir, run_log, "record", "--prefetch", "4")
    connected(nodes)
    wait_for(lambda: "connected to" in python.output(), 15, "the Python worker to connect")
    job = coordinator.create_job(JobOptions(0, 64_000, max_range_size=1000, params={"sleep": 0.02}))
    coordinator.wait_status(job.id, DONE, timeout=30)
    assert sorted((s, e) for s, e, _ in runs(run_log)) == reference_leaves(0, 64_000, 1000)
    assert {pid for *_, pid in runs_with_pids(run_log)} == {nodes.pid, python.pid}
    for proc in (nodes, python):
        assert proc.terminate() == 0, proc.output()


def test_node_workers_return_results_the_job_sums_exactly_beyond_2_to_the_64(
    node: str, coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    start, end = 1 << 60, (1 << 60) + 64_000
    # The demo handler in sum mode returns the sum of its leaf's ids as a BigInt: the job's result
    # is the sum of the whole range, about 7.4e22, past 2^64 and far past JavaScript's 2^53.
    job = coordinator.create_job(
        JobOptions(start, end, max_range_size=1000, reduce="sum", params={"mode": "sum", "chunk": 250})
    )
    workers = [
        node_worker(node, coordinator, procs, log_dir, tmp_path / "runs.log", "count") for _ in range(2)
    ]
    for proc in workers:
        connected(proc)  # a SIGTERM before its handler is installed would kill it
    done = coordinator.wait_status(job.id, DONE | FAILED, timeout=60)
    assert done.status == types_pb2.JOB_STATUS_COMPLETED, done.reason
    assert (result_of(done), done.result_partial) == (sum(range(start, end)), False)
    assert done.result_json == str(sum(range(start, end)))
    for proc in workers:
        assert proc.terminate() == 0, proc.output()


def test_node_worker_prunes_by_its_should_process(
    node: str, coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    job = coordinator.create_job(JobOptions(0, 1_000_000, max_range_size=1000, pruning=True))
    # One place and no prefetch: each grant is a single probe, so only answering it asks for more.
    proc = node_worker(
        node,
        coordinator,
        procs,
        log_dir,
        run_log,
        "record",
        "--should-process",
        "keep_multiples",
        "--concurrency",
        "1",
        "--prefetch",
        "0",
    )
    done = coordinator.wait_status(job.id, DONE, timeout=30)
    leaves, skipped, nodes = pruned_reference(0, 1_000_000, 1000)
    assert sorted((s, e) for s, e, _ in runs(run_log)) == leaves
    s = done.stats
    assert (s.range_skipped, s.range_processed, s.total_nodes) == (skipped, 1_000_000 - skipped, nodes)
    assert proc.terminate() == 0, proc.output()


def test_node_worker_killed_mid_leaf_is_rerun_after_ttl(
    node: str, coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    job = coordinator.create_job(
        JobOptions(0, 8000, max_range_size=1000, lease_ttl=timedelta(seconds=1), params={"stall_start": 0})
    )
    first = node_worker(node, coordinator, procs, log_dir, run_log, "stall_first")
    wait_for(lambda: runs(run_log, "stalled"), 15, "the first leaf to stall")
    first.kill9()
    second = node_worker(node, coordinator, procs, log_dir, run_log, "stall_first")
    done = coordinator.wait_status(job.id, DONE, timeout=20)
    attempts = Counter((s, e) for s, e, _ in runs(run_log))
    assert attempts[(0, 1000)] == 2
    assert (0, 1000, 2) in runs(run_log)  # the expiry counted as an attempt
    assert sorted(attempts) == reference_leaves(0, 8000, 1000)
    assert done.stats.done_nodes == done.stats.total_nodes
    assert done.stats.failed_attempts >= 1
    assert second.terminate() == 0, second.output()


def test_node_workers_ride_through_a_coordinator_kill9(
    node: str, make_coordinator: type[CoordinatorProcess], procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    coord = make_coordinator(tmp_path / "data", log_dir).start()
    job = coord.create_job(
        JobOptions(0, 128_000, max_range_size=1000, lease_ttl=timedelta(seconds=5), params={"sleep": 0.05})
    )
    run_log = tmp_path / "runs.log"
    workers = [node_worker(node, coord, procs, log_dir, run_log, "record") for _ in range(2)]
    wait_for(lambda: len(runs(run_log)) > 20, 15, "some leaves to run")
    coord.kill9()
    coord.start()
    done = coord.wait_status(job.id, DONE, timeout=30)
    # Leases outlive the restart and the workers come back within their TTL, sending again every
    # result that was not answered: nothing expires, and no leaf runs twice.
    assert sorted((s, e) for s, e, _ in runs(run_log)) == reference_leaves(0, 128_000, 1000)
    assert done.stats.failed_attempts == 0 and done.stats.done_nodes == done.stats.total_nodes
    # A worker whose peer finished the job while it was in reconnect backoff connects a moment
    # later: wait for it (bounded), do not race it.
    wait_for(
        lambda: all(p.output().count("connected to") >= 2 for p in workers), 20, "the workers to reconnect"
    )
    for proc in workers:
        assert proc.terminate() == 0, proc.output()


def test_node_client_gets_a_stale_completion_rejected(
    node: str, coordinator: CoordinatorProcess, tmp_path: Path
) -> None:
    job = coordinator.create_job(
        JobOptions(0, 1000, max_range_size=1000, lease_ttl=timedelta(milliseconds=800), queue="stale")
    )
    result = subprocess.run(
        [node, str(NODE_DIR / "bin" / "stale-check.js"), "--target", coordinator.target, "--queue", "stale"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.fullmatch(r"rejected \d+ STALE_FENCE\n", result.stdout), result.stdout + result.stderr
    got = coordinator.get_job(job.id)
    # The work did not count: the leaf is pending again and its expiry was an attempt.
    assert got.stats.done_nodes == 0 and got.stats.failed_attempts == 1, got.stats


def test_node_worker_sigterm_drains_and_loses_no_leaf(
    node: str, coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    job = coordinator.create_job(JobOptions(0, 16_000, max_range_size=1000, params={"sleep": 0.5}))
    first = node_worker(
        node, coordinator, procs, log_dir, run_log, "record", "--concurrency", "2", "--prefetch", "4"
    )
    wait_for(lambda: len(runs(run_log)) >= 2, 15, "two leaves to start")
    assert first.terminate(timeout=10) == 0, first.output()
    out = first.output()
    # Both handlers were mid-sleep: they finished; the leases held for later were given back (and
    # any granted after the signal, for credit asked before it).
    drained = re.search(r"giving back (\d+) waiting leases, draining (\d+) running", out)
    assert drained is not None and drained[2] == "2", out
    stopped = re.search(r"stopped: (\d+) completed, .* (\d+) released", out)
    assert stopped is not None and int(stopped[1]) >= 2 and int(stopped[2]) >= int(drained[1]), out
    second = node_worker(node, coordinator, procs, log_dir, run_log, "record", "--concurrency", "8")
    done = coordinator.wait_status(job.id, DONE, timeout=20)
    ran = runs(run_log)
    assert sorted((s, e) for s, e, _ in ran) == reference_leaves(0, 16_000, 1000)  # each exactly once
    assert {a for _, _, a in ran} == {1}  # a release is not an attempt
    assert done.stats.failed_attempts == 0
    assert second.terminate() == 0, second.output()


def test_node_worker_drain_timeout_gives_a_running_leaf_back_at_once(
    node: str, coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    # The default 30 s TTL: the lease must come back through the release, not an expiry.
    job = coordinator.create_job(JobOptions(0, 1000, max_range_size=1000, params={"sleep": 60}))
    proc = node_worker(node, coordinator, procs, log_dir, run_log, "record", "--drain-timeout", "0.3")
    wait_for(lambda: runs(run_log), 15, "the leaf to start")
    assert proc.terminate(timeout=10) == 0, proc.output()
    assert "drain timeout" in proc.output()
    wait_for(lambda: coordinator.get_job(job.id).stats.pending_nodes == 1, 5, "the leaf to be pending again")
    got = coordinator.get_job(job.id)
    assert got.stats.active_leases == 0 and got.stats.failed_attempts == 0, got.stats
    coordinator.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id))


def test_node_worker_checkpoint_failure_and_permanent_error(
    node: str, coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    retry = RetryPolicy(max_attempts=3, initial_backoff=timedelta(milliseconds=100))
    job = coordinator.create_job(
        JobOptions(0, 2000, max_range_size=1000, retry=retry, params={"permanent_start": 1000})
    )
    proc = node_worker(node, coordinator, procs, log_dir, run_log, "checkpoint_then_fail")
    failed = coordinator.wait_status(job.id, FAILED, timeout=20)
    # [0, 1000): attempt 1 checkpointed at 500 and threw; attempt 2 resumed at the cursor.
    # [1000, 2000): a PermanentError, never retried.
    assert sorted(runs(run_log)) == [(0, 1000, 1), (500, 1000, 2), (1000, 2000, 1)]
    resumed = [line for line in run_log.read_text().splitlines() if line.startswith("resumed")]
    assert resumed == ["resumed 500 1000 2 half-done"]
    s = failed.stats
    assert (s.done_nodes, s.failed_attempts, s.range_processed) == (1, 2, 1000), s
    assert "PermanentError: bad record" in failed.reason
    events = list(coordinator.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job.id), timeout=10))
    failures = [
        (e.range.start, e.attempt, e.message) for e in events if e.type == types_pb2.EVENT_TYPE_NODE_FAILED
    ]
    assert (0, 1, "Error: transient after a checkpoint") in failures, failures
    assert (1000, 1, "PermanentError: bad record") in failures, failures
    assert proc.terminate() == 0, proc.output()


def test_node_workers_split_a_slow_leaf_and_claim_every_id_once(
    node: str, coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    """Dynamic splits with Node workers only (tests/test_rebalance_e2e.py has the Python twin): 16
    leaves of 64 ids, those of [320, 384) 100 times slower; the claiming handler returns how many
    ids it did, so the job's sum is 1024 only if every id counted once."""
    run_log = tmp_path / "runs.log"
    slow = (320, 384)
    workers = [
        node_worker(node, coordinator, procs, log_dir, run_log, "claim_ids", "--concurrency", "4")
        for _ in range(2)
    ]
    for proc in workers:
        connected(proc)
    job = coordinator.create_job(
        JobOptions(
            0,
            1024,
            max_range_size=64,
            reduce="sum",
            lease_ttl=timedelta(seconds=1.5),  # heartbeats every 0.5 s
            params={"slow": slow, "slow_seconds": 0.1, "fast_seconds": 0.001},
        )
    )
    done = coordinator.wait_status(job.id, DONE | FAILED, timeout=60)
    assert done.status == types_pb2.JOB_STATUS_COMPLETED, done.reason
    assert result_of(done) == 1024  # what the accepted completions did adds up to the range
    # ``claim id id+1 fence pid`` per claim (tests/support.py's runs_with_pids reads the fence as attempt)
    seen = [(i, fence) for i, _, fence, _ in runs_with_pids(run_log, "claim")]
    assert Counter(i for i, _ in seen) == dict.fromkeys(range(1024), 1)
    assert done.stats.dynamic_splits >= 1
    slow_fences = {fence for i, fence in seen if slow[0] <= i < slow[1]}
    assert len(slow_fences) >= 2, slow_fences  # the slow leaf went to several leases
    for proc in workers:
        assert proc.terminate() == 0, proc.output()


# -- leaf runs (docs/protocol.md, "Leaf runs"): the Node worker says packed_grants and leaf_runs --

RUN_SIZE = 10


def _started(coord: CoordinatorProcess, job_id: str) -> list[tuple[int, int]]:
    """The ranges of the leases the NODE_STARTED events of the (finished) job show."""
    request = jobs_pb2.WatchJobRequest(job_id=job_id, types=[types_pb2.EVENT_TYPE_NODE_STARTED])
    return [(e.range.start, e.range.end) for e in coord.jobs.WatchJob(request, timeout=20)]


def _started_widths(coord: CoordinatorProcess, job_id: str) -> Counter[int]:
    """How many leases of each width (in leaves of RUN_SIZE) were started (tests/test_runs_e2e.py's helper)."""
    return Counter((end - start) // RUN_SIZE for start, end in _started(coord, job_id))


def test_node_workers_run_short_leaves_as_leaf_runs_and_every_leaf_once(
    node: str, coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    leaves = reference_leaves(0, 40_960, RUN_SIZE)  # 4,096 leaves of 10 ids
    workers = [node_worker(node, coordinator, procs, log_dir, run_log, "record") for _ in range(2)]
    for proc in workers:
        connected(proc)
    job = coordinator.create_job(JobOptions(0, 40_960, max_range_size=RUN_SIZE))
    done = coordinator.wait_status(job.id, DONE | FAILED, timeout=90)
    assert done.status == types_pb2.JOB_STATUS_COMPLETED, done.reason
    assert sorted((s, e) for s, e, _ in runs(run_log)) == leaves  # each leaf once, by the rule
    assert all(attempt == 1 for _, _, attempt in runs(run_log))
    widths = _started_widths(coordinator, job.id)
    # Single leaves first (runs only once 16 completions reported handler_us), then runs.
    assert widths[1] >= 16 and max(widths) > 1, widths
    assert sum(n * count for n, count in widths.items()) == len(leaves)
    assert sum(n * count for n, count in widths.items() if n > 1) > len(leaves) // 2, widths
    assert done.stats.total_nodes < len(leaves)  # runs are not split: one leaf a lease makes 8,191
    assert done.stats.range_processed == 40_960
    for proc in workers:
        assert proc.terminate() == 0, proc.output()


def test_node_worker_retries_a_failing_leaf_of_a_run_alone_and_sums_exactly(
    node: str, coordinator: CoordinatorProcess, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    # width_flaky returns its leaf's width; the first attempt of leaves starting at 370 mod 970 throws.
    job = coordinator.create_job(
        JobOptions(
            0,
            40_960,
            max_range_size=RUN_SIZE,
            reduce="sum",
            params={"every": 970, "offset": 370},
            retry=RetryPolicy(initial_backoff=timedelta(milliseconds=10), max_attempts=3),
        )
    )
    workers = [node_worker(node, coordinator, procs, log_dir, run_log, "width_flaky") for _ in range(2)]
    done = coordinator.wait_status(job.id, DONE | FAILED, timeout=90)
    assert done.status == types_pb2.JOB_STATUS_COMPLETED, done.reason
    assert (result_of(done), done.result_partial) == (40_960, False)  # every id counted exactly once
    flaky = {s for s, _ in reference_leaves(0, 40_960, RUN_SIZE) if s % 970 == 370}
    count = Counter(s for s, _, _ in runs(run_log))
    assert {s for s, n in count.items() if n == 2} == flaky and set(count.values()) == {1, 2}
    assert {(s, a) for s, _, a in runs(run_log) if s in flaky} == {(s, a) for s in flaky for a in (1, 2)}
    assert done.stats.failed_attempts == len(flaky)
    started = _started(coordinator, job.id)
    # Some flaky leaves failed inside a leaf run (their first attempt was a lease wider than the
    # leaf) and every flaky leaf was leased again on its own.
    in_runs = {s for s in flaky for a, b in started if b - a > RUN_SIZE and a <= s < b}
    assert len(in_runs) >= len(flaky) // 2, (sorted(in_runs), sorted(flaky))
    assert all((s, s + RUN_SIZE) in started for s in flaky)
    for proc in workers:
        assert proc.terminate() == 0, proc.output()
