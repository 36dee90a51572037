"""The Go worker (examples/go-worker/) against a real coordinator: real processes, real kill -9, SIGTERM.

A session fixture installs the Go toolchain when it is missing (scripts/install-go-toolchain.sh,
Debian's packages) and builds the worker once. A toolchain that cannot be installed fails these
tests: the Go worker is part of what `make test` proves, so it is never skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from parcelo import JobOptions, RetryPolicy
from parcelo.testing import CoordinatorProcess as Coordinator
from parcelo.testing import Proc, wait_for
from parcelo.v1 import types_pb2
from tests.support import pruned_reference, reference_leaves, runs, runs_with_pids, start_recording_workers
from tests.toolchains import GO_EXAMPLE, run_setup

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
COMPLETED: set[int] = {types_pb2.JOB_STATUS_COMPLETED}
FINISHED: set[int] = COMPLETED | {types_pb2.JOB_STATUS_FAILED}


def start_go_workers(
    binary: Path,
    coord: Coordinator,
    procs: list[Proc],
    log_dir: Path,
    run_log: Path,
    handler: str,
    *args: str,
    n: int = 1,
) -> list[Proc]:
    """Start ``n`` Go worker processes running ``handler``, logging runs to ``run_log``; added to ``procs``."""
    started = []
    for _ in range(n):
        name = f"go-worker{len(procs)}"
        proc = Proc(
            [str(binary), "-target", coord.target, "-handler", handler, "-worker-id", name, *args],
            log_dir / f"{name}.log",
            env={"PARCELO_TEST_LOG": str(run_log)},
        )
        procs.append(proc)
        started.append(proc)
    return started


def log_lines(log: Path, event: str) -> list[list[str]]:
    """The fields after the event of each ``event`` line of the run log, as text (the ``resumed``
    line of ``checkpoint_then_fail`` ends with the checkpoint's details, not a pid)."""
    if not log.exists():
        return []
    return [line.split()[1:] for line in log.read_text().splitlines() if line.split()[0] == event]


@pytest.fixture
def run_log(tmp_path: Path) -> Path:
    return tmp_path / "runs.log"


# -- the build -----------------------------------------------------------------------------------


def test_committed_go_stubs_match_the_proto_files(go_toolchain: None, tmp_path: Path) -> None:
    run_setup(["bash", str(GO_EXAMPLE / "generate.sh"), str(tmp_path)], "generate.sh", 120)
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "parcelo" / "v1").iterdir()}
    committed = {p.name: p.read_bytes() for p in (GO_EXAMPLE / "gen" / "parcelo" / "v1").iterdir()}
    assert sorted(fresh) == sorted(committed), "Go stub files differ: run examples/go-worker/generate.sh"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"Go stubs out of date with proto/: {stale}; run examples/go-worker/generate.sh"


def test_go_unit_tests_vet_and_format(go_toolchain: None) -> None:
    run_setup(
        ["bash", str(GO_EXAMPLE / "build.sh"), "--check"], "go vet / gofmt / go test (build.sh --check)", 600
    )


def test_go_worker_version_is_pyprojects(go_worker: Path) -> None:
    with open(ROOT / "pyproject.toml", "rb") as file:
        version = tomllib.load(file)["project"]["version"]
    out = subprocess.run([str(go_worker), "-version"], capture_output=True, text=True, timeout=10, check=True)
    assert out.stdout.strip() == f"parcelo-go/{version}"


# -- against a real coordinator ------------------------------------------------------------------


def test_two_go_workers_run_every_leaf_once_with_exact_stats(
    go_worker: Path, coordinator: Coordinator, procs: list[Proc], log_dir: Path, run_log: Path
) -> None:
    job = coordinator.create_job(JobOptions(0, 100_000, max_range_size=1000))
    workers = start_go_workers(go_worker, coordinator, procs, log_dir, run_log, "record", n=2)
    done = coordinator.wait_status(job.id, FINISHED, timeout=15)
    assert done.status == types_pb2.JOB_STATUS_COMPLETED
    ran = sorted((s, e) for s, e, _ in runs(run_log))
    assert ran == reference_leaves(0, 100_000, 1000)  # 128 leaves, each exactly once
    s = done.stats
    nodes = (s.total_nodes, s.done_nodes, s.pending_nodes, s.running_nodes, s.error_nodes)
    assert nodes == (255, 255, 0, 0, 0)
    assert (s.range_processed, s.range_total, s.range_skipped, s.failed_attempts) == (100_000, 100_000, 0, 0)
    wait_for(lambda: coordinator.get_job(job.id).stats.active_leases == 0, 2, "no lease held")
    assert coordinator.proc is not None
    assert coordinator.proc.output().count("(parcelo-go/") >= 2  # Hello.sdk, logged per stream
    for proc in workers:
        assert proc.terminate(timeout=10) == 0, proc.output()


def test_go_worker_killed_mid_leaf_is_rerun_by_another_after_the_ttl(
    go_worker: Path, coordinator: Coordinator, procs: list[Proc], log_dir: Path, run_log: Path
) -> None:
    job = coordinator.create_job(
        JobOptions(0, 8000, max_range_size=1000, lease_ttl=timedelta(seconds=1), params={"stall_start": 0})
    )
    (first,) = start_go_workers(go_worker, coordinator, procs, log_dir, run_log, "stall_first")
    wait_for(lambda: log_lines(run_log, "stalled"), 10, "the first leaf to stall")
    # The other seven leaves are done and acknowledged: only the stalled lease dies with the worker.
    wait_for(lambda: coordinator.get_job(job.id).stats.range_processed == 7000, 10, "the other leaves")
    first.kill9()
    (second,) = start_go_workers(go_worker, coordinator, procs, log_dir, run_log, "stall_first")
    done = coordinator.wait_status(job.id, FINISHED, timeout=15)
    assert done.status == types_pb2.JOB_STATUS_COMPLETED
    attempts = Counter((s, e) for s, e, _ in runs(run_log))
    assert attempts[(0, 1000)] == 2
    assert all(n == 1 for leaf, n in attempts.items() if leaf != (0, 1000)), attempts
    rerun = [pid for s, e, attempt, pid in runs_with_pids(run_log) if (s, e, attempt) == (0, 1000, 2)]
    assert rerun == [second.pid]  # by the other worker, attempt 2
    assert done.stats.failed_attempts == 1  # the expiry counted as an attempt
    assert done.stats.done_nodes == done.stats.total_nodes == 15
    assert second.terminate(timeout=10) == 0, second.output()


def test_sigterm_drains_the_go_worker_and_loses_nothing(
    go_worker: Path, coordinator: Coordinator, procs: list[Proc], log_dir: Path, run_log: Path
) -> None:
    # The default 30 s TTL: a lease the drain lost would hold the job far beyond the bounds below.
    job = coordinator.create_job(JobOptions(0, 64_000, max_range_size=1000, params={"sleep": 0.3}))
    (worker,) = start_go_workers(
        go_worker, coordinator, procs, log_dir, run_log, "record", "-concurrency", "2", "-prefetch", "8"
    )
    wait_for(lambda: len(runs(run_log)) >= 4, 10, "some leaves to run")
    assert worker.terminate(timeout=10) == 0, worker.output()
    out = worker.output()
    assert "stopping: giving back" in out
    stopped = re.search(r"stopped: .* (\d+) released", out)
    # It held prefetched leases and gave them back.
    assert stopped is not None and int(stopped.group(1)) > 0, out
    drained = sorted((s, e) for s, e, _ in runs(run_log))

    def settled() -> types_pb2.Job | None:
        j = coordinator.get_job(job.id)
        return j if j.stats.active_leases == 0 else None

    after = wait_for(settled, 2, "the released leases to be back")
    assert after is not None
    # Every leaf that started finished and counted; nothing expired or failed.
    assert after.stats.range_processed == sum(e - s for s, e in drained)
    assert after.stats.failed_attempts == 0

    start_go_workers(go_worker, coordinator, procs, log_dir, run_log, "record", "-concurrency", "8")
    done = coordinator.wait_status(job.id, FINISHED, timeout=15)
    assert done.status == types_pb2.JOB_STATUS_COMPLETED
    assert sorted((s, e) for s, e, _ in runs(run_log)) == reference_leaves(0, 64_000, 1000)
    assert done.stats.failed_attempts == 0


def test_retry_resumes_at_the_checkpoint_a_go_failure_carried(
    go_worker: Path, coordinator: Coordinator, procs: list[Proc], log_dir: Path, run_log: Path
) -> None:
    retry = RetryPolicy(max_attempts=3, initial_backoff=timedelta(milliseconds=100))
    job = coordinator.create_job(JobOptions(0, 1000, max_range_size=1000, retry=retry))
    start_go_workers(go_worker, coordinator, procs, log_dir, run_log, "checkpoint_then_fail")
    done = coordinator.wait_status(job.id, FINISHED, timeout=15)
    assert done.status == types_pb2.JOB_STATUS_COMPLETED
    assert runs(run_log) == [(0, 1000, 1), (500, 1000, 2)]  # the retry starts at the cursor
    assert log_lines(run_log, "resumed") == [["500", "1000", "2", "half-done"]]  # with its details
    assert (done.stats.failed_attempts, done.stats.range_processed) == (1, 1000)


def test_go_worker_answers_probes_and_runs_exactly_the_kept_leaves(
    go_worker: Path, coordinator: Coordinator, procs: list[Proc], log_dir: Path, run_log: Path
) -> None:
    # Room for one lease and no prefetch: most grants are a single probe, so only the answer to
    # a probe can prompt the worker to ask again.
    job = coordinator.create_job(JobOptions(0, 200_000, max_range_size=1000, pruning=True))
    args = ("-should-process", "keep_multiples", "-concurrency", "1", "-prefetch", "0")
    start_go_workers(go_worker, coordinator, procs, log_dir, run_log, "record", *args)
    done = coordinator.wait_status(job.id, FINISHED, timeout=15)
    assert done.status == types_pb2.JOB_STATUS_COMPLETED
    leaves, skipped, nodes = pruned_reference(0, 200_000, 1000)
    assert sorted((s, e) for s, e, _ in runs(run_log)) == leaves
    s = done.stats
    assert (s.range_skipped, s.range_processed, s.total_nodes) == (skipped, 200_000 - skipped, nodes)
    assert s.skipped_nodes + s.done_nodes == s.total_nodes


def test_go_and_python_workers_share_a_job(
    go_worker: Path, coordinator: Coordinator, procs: list[Proc], log_dir: Path, run_log: Path
) -> None:
    job = coordinator.create_job(JobOptions(0, 64_000, max_range_size=1000, params={"sleep": 0.1}))
    # Without prefetch, neither takes every lease before the other connects.
    go = start_go_workers(
        go_worker, coordinator, procs, log_dir, run_log, "record", "-concurrency", "2", "-prefetch", "0"
    )
    py = start_recording_workers(
        coordinator, procs, log_dir, run_log, "record", "--concurrency", "2", "--prefetch", "0"
    )
    done = coordinator.wait_status(job.id, FINISHED, timeout=15)
    assert done.status == types_pb2.JOB_STATUS_COMPLETED
    assert sorted((s, e) for s, e, _ in runs(run_log)) == reference_leaves(0, 64_000, 1000)
    pids = Counter(pid for _, _, _, pid in runs_with_pids(run_log))
    assert pids[go[0].pid] > 0 and pids[py[0].pid] > 0, pids
    for proc in go + py:
        assert proc.terminate(timeout=10) == 0, proc.output()


def test_go_workers_ride_through_a_coordinator_kill9(
    go_worker: Path,
    make_coordinator: type[Coordinator],
    procs: list[Proc],
    log_dir: Path,
    tmp_path: Path,
    run_log: Path,
) -> None:
    coord = make_coordinator(tmp_path / "data", log_dir).start()
    job = coord.create_job(
        JobOptions(0, 128_000, max_range_size=1000, lease_ttl=timedelta(seconds=3), params={"sleep": 0.05})
    )
    workers = start_go_workers(go_worker, coord, procs, log_dir, run_log, "record", n=2)
    wait_for(lambda: len(runs(run_log)) > 30, 10, "some leaves to run")
    coord.kill9()
    coord.start()
    done = coord.wait_status(job.id, FINISHED, timeout=20)
    assert done.status == types_pb2.JOB_STATUS_COMPLETED
    assert sorted({(s, e) for s, e, _ in runs(run_log)}) == reference_leaves(0, 128_000, 1000)
    assert done.stats.done_nodes == done.stats.total_nodes
    for proc in workers:
        assert proc.alive(), proc.output()
        assert "connected to" in proc.output().split("ended:", 1)[-1], proc.output()  # reconnected
        assert proc.terminate(timeout=10) == 0, proc.output()


def test_go_worker_refuses_an_unknown_handler(go_worker: Path) -> None:
    out = subprocess.run(
        [str(go_worker), "-handler", "nope"], capture_output=True, text=True, timeout=10, env=os.environ
    )
    assert out.returncode == 2
    assert "-handler must be one of" in out.stderr
