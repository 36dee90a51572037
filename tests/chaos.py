"""`make chaos`: Parcelo under faults. Real processes on loopback, real kill -9, checked end to end.

Each phase is verified from what the coordinator wrote (its event log, replayed with ``WatchJob``
from sequence 0: one ``NODE_COMPLETED`` per accepted completion) and from what the workers saw:

1. **kills**: a 100,000-leaf job while random worker processes (at least 20) and the coordinator
   (at least 5, restarted on the same data dir) are killed with kill -9. Every id is covered by
   exactly one accepted completion, every leaf ran, and the stats add up.
2. **load**: 1,000 concurrent Work streams on one coordinator for a minute (raw grpc.aio streams
   in stream-holder processes, ``tests/chaos_streams.py``), holders killed with kill -9, an online
   backup taken halfway. No lease is lost (every leaf is completed) or doubled (no leaf accepted
   twice, none granted again while a live stream held it). Prints the coordinator's peak RSS and
   the grant latency.
3. **disk full** (root only: a tmpfs): the data dir fills up mid-job, twice, and the coordinator
   is killed while its writes fail. Nothing acknowledged is lost, nothing is shown or
   acknowledged while writes fail, the cause is logged once per failure, and the coordinator
   goes on by itself.

``python -m tests.chaos`` runs them all (``make chaos``; not in CI: several minutes);
``tests/test_chaos.py`` and ``tests/test_disk_full.py`` run phases 1 and 3 small in ``make test``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import grpc
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2

from parcelo import JobOptions
from parcelo.channel import open_channel
from parcelo.client import Client
from parcelo.testing import CoordinatorProcess, Proc, wait_for
from parcelo.v1 import types_pb2, worker_pb2, worker_pb2_grpc
from tests.support import (
    can_mount,
    completed_leaves,
    fill,
    health,
    reference_leaves,
    runs,
    start_recording_workers,
    tmpfs,
)

ROOT = Path(__file__).resolve().parent.parent
ENDED = {types_pb2.JOB_STATUS_COMPLETED, types_pb2.JOB_STATUS_FAILED, types_pb2.JOB_STATUS_CANCELLED}
EVENT_RETENTION = "10000000"
"""Every event of a phase's job is kept, so the whole log can be replayed from sequence 0."""

Say = Callable[[str], None]

RESTART_WINDOW = 2.0
"""Seconds after a stream holder's restart (a process and its streams starting on the same few
cores) left out of the quiet grant latency."""


def _quiet(_: str) -> None:
    pass


def processed(coord: CoordinatorProcess, job_id: str) -> int:
    """The job's ``range_processed`` as written, or -1 while the coordinator does not answer."""
    try:
        return int(coord.get_job(job_id).stats.range_processed)
    except grpc.RpcError:
        return -1


def check_exactly_once(coord: CoordinatorProcess, job: types_pb2.Job, width: int) -> types_pb2.JobStats:
    """The job completed with stats that add up, and its event log holds exactly one accepted
    completion per leaf of the split rule (every id covered once). Returns the final stats."""
    stats = job.stats
    assert job.status == types_pb2.JOB_STATUS_COMPLETED, f"job {job.id} ended {job.status}: {job.reason}"
    total = job.spec.range.end - job.spec.range.start
    leaves = reference_leaves(job.spec.range.start, job.spec.range.end, width)
    assert (stats.range_processed, stats.range_total, stats.range_skipped) == (total, total, 0), stats
    assert stats.done_nodes == stats.total_nodes == 2 * len(leaves) - 1, stats
    assert stats.pending_nodes == stats.running_nodes == stats.error_nodes == stats.active_leases == 0, stats
    completed = Counter(completed_leaves(coord.target, job.id))
    twice = sorted(leaf for leaf, n in completed.items() if n > 1)
    assert not twice, f"{len(twice)} leaves were accepted twice, e.g. {twice[:5]}"
    assert sorted(completed) == leaves, "the accepted completions do not cover the job's leaves exactly"
    return stats


class Witness:
    """A client beside the workers that leases and completes leaves itself (unary calls, through
    every coordinator restart) and records the completions that were acknowledged.

    None of those leaves may run again afterwards: a handler run under a later lease (a larger
    fence: fences grow with time, across restarts too) would mean an acknowledged completion was lost.
    """

    def __init__(self, target: str, pause: float = 0.05) -> None:
        self.acked: dict[tuple[int, int], int] = {}
        """The fence each acknowledged leaf was completed under."""
        self.leased: set[tuple[int, int]] = set()
        self._target = target
        self._pause = pause
        self._stop = threading.Event()
        self._answered = threading.Event()
        self._thread = threading.Thread(target=self._run, name="witness", daemon=True)

    def wait_for_ack(self, timeout: float) -> None:
        """Return as soon as a completion is acknowledged from now on (to kill the coordinator right
        after an acknowledgement, when one not yet on disk would be lost)."""
        self._answered.clear()
        assert self._answered.wait(timeout), "the witness had nothing acknowledged"

    def __enter__(self) -> Witness:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        channel = open_channel(
            self._target,
            None,
            options=[("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 250)],
        )
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        request = worker_pb2.LeaseRequest(worker_id="witness", count=8, wait=Duration(seconds=1))
        with channel:
            while not self._stop.wait(self._pause):
                try:
                    grant = stub.Lease(request, timeout=5)
                    leases = {lease.fence: (lease.start, lease.end) for lease in grant.leases}
                    self.leased.update(leases.values())
                    if leases:
                        answer = stub.Complete(
                            worker_pb2.CompleteRequest(fences=list(leases), worker_id="witness"), timeout=5
                        )
                        self.acked.update((leases[fence], fence) for fence in answer.accepted)
                        if answer.accepted:
                            self._answered.set()
                except grpc.RpcError:
                    pass  # the coordinator is down (being killed): what was not answered does not count


def check_runs(run_log: Path, witness: Witness, leaves: list[tuple[int, int]]) -> tuple[int, int]:
    """The handlers (``record_fence``) ran every leaf but those the witness completed, and none
    after the witness's completion of it was acknowledged. Returns the runs and the re-runs."""
    ran = runs(run_log, "fenced")
    times = Counter((s, e) for s, e, _ in ran)
    lost = sorted((s, e) for s, e, fence in ran if fence > witness.acked.get((s, e), fence))
    assert not lost, (
        f"{len(lost)} acknowledged completions were lost (their leaves ran again), e.g. {lost[:5]}"
    )
    assert set(times) | witness.leased == set(leaves), "a leaf never ran"
    return len(ran), len(ran) - len(times)


# -- 1. kills ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KillPlan:
    """The kills phase: a job of ``leaves`` one-id leaves, ``workers`` worker processes running
    ``tests.handlers:record_fence`` (``sleep`` seconds a leaf), and the kills spread over its progress."""

    leaves: int = 100_000
    workers: int = 4
    concurrency: int = 8
    sleep: float = 0.03
    worker_kills: int = 24
    coordinator_kills: int = 6
    lease_ttl: timedelta = timedelta(seconds=2)
    timeout: float = 600
    seed: int = 1


@dataclass
class KillReport:
    """What the kills phase did and saw."""

    leaves: int
    seconds: float
    worker_kills: int
    coordinator_kills: int
    runs: int
    reruns: int
    witnessed: int
    failed_attempts: int

    def lines(self) -> list[str]:
        return [
            f"kills: {self.leaves:,} leaves in {self.seconds:.0f} s through {self.worker_kills} kill -9 of "
            f"workers and {self.coordinator_kills} of the coordinator (restarted on the same data dir)",
            f"  every id covered by exactly one accepted completion; stats add up; {self.runs:,} handler "
            f"runs, {self.reruns:,} of them again after a kill ({self.failed_attempts:,} failed attempts)",
            f"  none of the {self.witnessed:,} completions acknowledged to a witness client ran again",
        ]


def kills(work: Path, plan: KillPlan, say: Say = _quiet) -> KillReport:
    """Run the kills phase in ``work``; raises AssertionError on any violation."""
    rng = random.Random(plan.seed)
    logs = work / "logs"
    logs.mkdir(parents=True)
    run_log = work / "runs.log"
    procs: list[Proc] = []
    coord = CoordinatorProcess(work / "data", logs, extra=["--event-retention", EVENT_RETENTION])
    worker_args = ("--concurrency", str(plan.concurrency), "--log-level", "WARNING")
    try:
        coord.start()
        job = coord.create_job(
            JobOptions(
                0, plan.leaves, max_range_size=1, lease_ttl=plan.lease_ttl, params={"sleep": plan.sleep}
            )
        )
        began = time.monotonic()
        start_recording_workers(coord, procs, logs, run_log, "record_fence", *worker_args, n=plan.workers)
        victims = ["worker"] * plan.worker_kills + ["coordinator"] * plan.coordinator_kills
        rng.shuffle(victims)
        with Witness(coord.target) as witness:
            for i, victim in enumerate(victims):
                # Spread over 5% to 90% of the job, so every kill lands while it runs.
                at = int(plan.leaves * (0.05 + 0.85 * i / len(victims)))
                left = plan.timeout - (time.monotonic() - began)
                wait_for(lambda: processed(coord, job.id) >= at, left, f"{at:,} ids processed", interval=0.05)  # noqa: B023
                if victim == "worker":
                    rng.choice([p for p in procs if p.alive()]).kill9()
                    start_recording_workers(coord, procs, logs, run_log, "record_fence", *worker_args)
                else:
                    witness.wait_for_ack(left)
                    coord.kill9()
                    coord.start()
                say(f"  kill -9 of the {victim} at {at:,} ids ({i + 1}/{len(victims)})")
            left = plan.timeout - (time.monotonic() - began)
            done = coord.wait_status(job.id, ENDED, timeout=left)
        seconds = time.monotonic() - began
        stats = check_exactly_once(coord, done, 1)
        ran, reruns = check_runs(run_log, witness, reference_leaves(0, plan.leaves, 1))
        assert coord.stop() == 0
        return KillReport(
            leaves=plan.leaves,
            seconds=seconds,
            worker_kills=plan.worker_kills,
            coordinator_kills=plan.coordinator_kills,
            runs=ran,
            reruns=reruns,
            witnessed=len(witness.acked),
            failed_attempts=int(stats.failed_attempts),
        )
    finally:
        for proc in procs:
            proc.kill9()
        coord.kill9()


# -- 2. load -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadPlan:
    """The load phase: ``streams`` Work streams in ``processes`` holder processes for ``seconds``,
    each stream holding one lease at a time for ``hold`` seconds; ``kills`` holders killed."""

    streams: int = 1000
    processes: int = 8
    seconds: float = 60
    kills: int = 8
    leaves: int = 100_000
    hold: tuple[float, float] = (0.5, 1.5)
    lease_ttl: timedelta = timedelta(seconds=10)
    seed: int = 1


@dataclass
class LoadReport:
    """What the load phase measured."""

    streams: int
    processes: int
    kills: int
    grants: int
    seconds: float
    latency_ms: tuple[float, float, float]
    quiet_latency_ms: tuple[float, float, float]
    first_grant_ms: tuple[float, float, float]
    peak_rss_mb: float
    cpu: float
    backup_seconds: float
    regranted: int

    def lines(self) -> list[str]:
        p50, p99, worst = self.latency_ms
        _, quiet99, quiet_worst = self.quiet_latency_ms
        first50, first99, _ = self.first_grant_ms
        return [
            f"load: {self.streams:,} concurrent streams ({self.processes} processes) for {self.seconds:.0f} s, "
            f"{self.kills} holder processes killed ({self.regranted:,} of their leases granted again)",
            f"  {self.grants:,} grants ({self.grants / self.seconds:,.0f}/s); grant latency p50 {p50:.1f} ms, "
            f"p99 {p99:.1f} ms, max {worst:.0f} ms; away from holder restarts (2 s after each) p99 "
            f"{quiet99:.1f} ms, max {quiet_worst:.0f} ms",
            f"  a stream's first grant (connecting with {self.streams // self.processes - 1} others): "
            f"p50 {first50:.0f} ms, p99 {first99:.0f} ms",
            f"  coordinator peak RSS {self.peak_rss_mb:.0f} MB, CPU {self.cpu:.0%} of a core; online backup "
            "during the load: "
            f"{self.backup_seconds:.2f} s",
            "  no lease lost (every leaf completed once) or doubled (no leaf held by two live streams)",
        ]


@dataclass(eq=False)
class Holder:
    """One stream-holder process (tests/chaos_streams.py) and the log it writes."""

    proc: Proc
    log: Path
    killed: bool = False


def _holder(
    coord: CoordinatorProcess, work: Path, name: str, streams: int, plan: LoadPlan, seed: int
) -> Holder:
    log = work / f"{name}.grants"
    proc = Proc(
        [
            sys.executable,
            "-m",
            "tests.chaos_streams",
            "--target",
            coord.target,
            "--streams",
            str(streams),
            "--name",
            name,
            "--log",
            str(log),
            "--hold",
            str(plan.hold[0]),
            str(plan.hold[1]),
            "--seed",
            str(seed),
        ],
        work / f"{name}.out",
        env={"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
    )
    return Holder(proc, log)


def _wait_ready(holder: Holder) -> None:
    def ready() -> bool:
        if not holder.proc.alive():
            raise AssertionError(f"stream holder exited:\n{holder.proc.output()}")
        return "ready" in holder.proc.output()

    wait_for(ready, 60, "a stream holder's streams to be welcomed", interval=0.05)


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int, field_name: str) -> float:
    """A memory figure of a process's /proc status in MB: VmRSS now, VmHWM its peak."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load(work: Path, plan: LoadPlan, say: Say = _quiet) -> LoadReport:
    """Run the load phase in ``work``; raises AssertionError on any violation."""
    rng = random.Random(plan.seed)
    logs = work / "logs"
    logs.mkdir(parents=True)
    coord = CoordinatorProcess(
        work / "data", logs, extra=["--event-retention", EVENT_RETENTION, "--log-level", "WARNING"]
    )
    per_process = plan.streams // plan.processes
    holders: list[Holder] = []
    restarts: list[float] = []
    incarnations = Counter[int]()
    try:
        coord.start()
        assert coord.proc is not None
        job = coord.create_job(JobOptions(0, plan.leaves, max_range_size=1, lease_ttl=plan.lease_ttl))

        def spawn(slot: int) -> Holder:
            incarnations[slot] += 1
            holder = _holder(
                coord, work, f"p{slot}.{incarnations[slot]}", per_process, plan, rng.randrange(1 << 30)
            )
            holders.append(holder)
            return holder

        slots = {slot: spawn(slot) for slot in range(plan.processes)}
        for holder in slots.values():
            _wait_ready(holder)
        say(f"  {per_process * plan.processes:,} streams up")
        began = time.time()
        cpu_before = _cpu_seconds(coord.proc.pid)
        backup_seconds = float("nan")
        kill_at = [began + plan.seconds * (i + 1) / (plan.kills + 1) for i in range(plan.kills)]
        backup_at = began + plan.seconds / 2
        while time.time() < began + plan.seconds:
            if kill_at and time.time() >= kill_at[0]:
                kill_at.pop(0)
                slot = rng.randrange(plan.processes)
                slots[slot].proc.kill9()
                slots[slot].killed = True
                restarts.append(time.time())
                slots[slot] = spawn(slot)
                _wait_ready(slots[slot])
                say(f"  kill -9 of stream holder {slot} ({per_process} streams); restarted")
            if backup_at and time.time() >= backup_at:
                backup_at = 0
                with Client(coord.target) as client:
                    answer = client.backup(work / "backup")
                backup_seconds = answer.took.ToNanoseconds() / 1e9
                say(f"  online backup written ({answer.bytes:,} bytes) in {backup_seconds:.2f} s")
            time.sleep(0.05)
        ended = time.time()
        cpu = (_cpu_seconds(coord.proc.pid) - cpu_before) / (ended - began)
        # Finish the job quickly: the holders complete at once from now on.
        for holder in slots.values():
            os.kill(holder.proc.pid, signal.SIGUSR1)
        done = coord.wait_status(job.id, ENDED, timeout=120)
        peak = _rss_mb(coord.proc.pid, "VmHWM")
        for holder in slots.values():
            assert holder.proc.terminate(timeout=30) == 0, holder.proc.output()
        check_exactly_once(coord, done, 1)
        assert coord.stop() == 0
        tally = _check_holders(holders, began, ended, restarts)
        return LoadReport(
            streams=per_process * plan.processes,
            processes=plan.processes,
            kills=plan.kills,
            grants=tally.grants,
            seconds=ended - began,
            latency_ms=_percentiles(tally.latencies),
            quiet_latency_ms=_percentiles(tally.quiet_latencies),
            first_grant_ms=_percentiles(tally.first_latencies),
            peak_rss_mb=peak,
            cpu=cpu,
            backup_seconds=backup_seconds,
            regranted=tally.regranted,
        )
    finally:
        for holder in holders:
            holder.proc.kill9()
        coord.kill9()


@dataclass
class _Grant:
    fence: int
    time: float
    holder: Holder


@dataclass
class _Seen:
    grants: list[_Grant] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)


@dataclass
class _Tally:
    grants: int = 0
    latencies: list[float] = field(default_factory=list)
    quiet_latencies: list[float] = field(default_factory=list)
    first_latencies: list[float] = field(default_factory=list)
    regranted: int = 0


def _percentiles(values: list[float]) -> tuple[float, float, float]:
    """Median, 99th percentile and maximum."""
    ordered = sorted(values)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99)], ordered[-1]


def _check_holders(holders: list[Holder], began: float, ended: float, restarts: list[float]) -> _Tally:
    """Check the holders' logs; count the grants made during the load and their latencies (a
    stream's first grant apart: it comes with connecting; and apart again, those away from the
    CPU burst of a holder's restart), and the leaves granted again after their holder was killed.

    A leaf granted twice must have been held first by a holder that was killed (its lease
    expired): a live stream never loses its lease (no expiry, the TTL is far above the hold
    time), so two grants to live holders would be a lease doubled. No leaf has two accepted fences,
    and no live holder was refused a completion.
    """
    by_leaf: defaultdict[tuple[int, int], _Seen] = defaultdict(_Seen)
    tally = _Tally()
    leaf_of: dict[int, tuple[int, int]] = {}
    streams: set[str] = set()
    for holder in holders:
        for line in holder.log.read_text().splitlines():
            kind, *values = line.split()
            if kind == "grant" and len(values) == 6:
                fence, start, end = (int(v) for v in values[:3])
                latency, at, stream = float(values[3]), float(values[4]), values[5]
                leaf_of[fence] = (start, end)
                by_leaf[(start, end)].grants.append(_Grant(fence, at, holder))
                first = stream not in streams
                streams.add(stream)
                if began <= at <= ended:
                    tally.grants += 1
                    (tally.first_latencies if first else tally.latencies).append(latency)
                    if not first and not any(r <= at <= r + RESTART_WINDOW for r in restarts):
                        tally.quiet_latencies.append(latency)
            elif kind == "ack" and len(values) == 2:
                fence, ok = int(values[0]), values[1] == "1"
                assert ok or holder.killed, f"{holder.log.name}: the completion of fence {fence} was refused"
                if ok:
                    by_leaf[leaf_of[fence]].accepted.append(fence)
    for leaf, seen in by_leaf.items():
        assert len(set(seen.accepted)) <= 1, f"leaf {leaf} was accepted under fences {seen.accepted}"
        earlier = sorted(seen.grants, key=lambda grant: grant.time)[:-1]
        doubled = [grant for grant in earlier if not grant.holder.killed]
        assert not doubled, f"leaf {leaf} was granted again while {doubled[0].holder.log.name} held it"
        tally.regranted += len(earlier)
    return tally


# -- 3. disk full --------------------------------------------------------------------------------


@dataclass
class DiskReport:
    """What the disk-full phase saw."""

    leaves: int
    seconds: float

    def lines(self) -> list[str]:
        return [
            f"disk full: {self.leaves:,} leaves through two full disks (one of them with a kill -9): "
            "nothing shown, acknowledged or granted while writes failed, the cause logged once each time, "
            "recovered by itself, every id covered by exactly one accepted completion"
        ]


def disk_full(fs: Path, work: Path, *, leaves: int = 2048, width: int = 100, say: Say = _quiet) -> DiskReport:
    """The disk-full phase: a coordinator whose data dir is on the small filesystem ``fs``
    (a tmpfs) that fills up mid-job. Raises AssertionError on any violation."""
    logs = work / "logs"
    logs.mkdir(parents=True)
    run_log = work / "runs.log"
    procs: list[Proc] = []
    # A short grace: SIGTERM waits that long for the workers' open streams.
    coord = CoordinatorProcess(
        fs / "data", logs, extra=["--grace", "2", "--event-retention", EVENT_RETENTION]
    )
    try:
        coord.start()
        total = leaves * width
        job = coord.create_job(
            JobOptions(0, total, max_range_size=width, params={"sleep": 0.005}, job_id="disk")
        )
        began = time.monotonic()
        start_recording_workers(coord, procs, logs, run_log, "record_fence", "--concurrency", "4", n=2)
        with Witness(coord.target) as witness:
            wait_for(lambda: processed(coord, job.id) > total // 20, 30, "the job to be under way")

            # 1. The disk fills: writes fail, nothing more is acknowledged or shown, health says so.
            filler = fill(fs)
            wait_for(lambda: health(coord) == health_pb2.HealthCheckResponse.NOT_SERVING, 30, "NOT_SERVING")
            frozen, acked, leased = processed(coord, job.id), len(witness.acked), len(witness.leased)
            assert 0 < frozen < total
            # The workers and the witness go on sending the results of the leaves they hold: none is
            # shown, none is acknowledged (the witness's completions wait unanswered), and no lease
            # is granted (it could not be recorded).
            watching = time.monotonic() + 1
            while time.monotonic() < watching:
                assert processed(coord, job.id) == frozen, "progress was shown while the store failed"
                assert len(witness.acked) == acked, "a completion was acknowledged while the store failed"
                assert len(witness.leased) == leased, "a lease was granted while the store failed"
                time.sleep(0.05)
            assert coord.proc is not None
            assert coord.proc.output().count("store write failed") == 1, "the cause is logged once"
            say(
                f"  disk full at {frozen:,} ids: NOT_SERVING, nothing shown, acknowledged or granted, cause logged once"
            )
            # 2. Space comes back: the coordinator reopens its store and goes on by itself.
            filler.unlink()
            wait_for(lambda: health(coord) == health_pb2.HealthCheckResponse.SERVING, 30, "SERVING again")
            wait_for(lambda: processed(coord, job.id) > frozen, 30, "progress after the disk has room again")
            assert coord.proc.output().count("store writes succeed again") == 1
            say("  space back: SERVING again, progress again, without a restart")
            # 3. It fills again, and the coordinator is killed while its writes fail.
            filler = fill(fs)
            wait_for(
                lambda: health(coord) == health_pb2.HealthCheckResponse.NOT_SERVING, 30, "NOT_SERVING again"
            )
            assert coord.proc.output().count("store write failed") == 2
            coord.kill9()
            filler.unlink()
            say("  disk full again, coordinator killed while its writes failed")
            # 4. A new coordinator on the same data dir: the workers reconnect and resend; the job completes.
            coord.start()
            done = coord.wait_status(job.id, ENDED, timeout=120)
        stats = check_exactly_once(coord, done, width)
        check_runs(run_log, witness, reference_leaves(0, total, width))
        # 5. And the disk says the same after a clean restart.
        assert coord.stop() == 0
        coord.start()
        assert coord.get_job(job.id).stats == stats
        assert coord.stop() == 0
        return DiskReport(leaves, time.monotonic() - began)
    finally:
        for proc in procs:
            proc.kill9()
        coord.kill9()


# -- make chaos ----------------------------------------------------------------------------------

PHASES = ("kills", "load", "disk")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", action="append", choices=PHASES, help="run only this phase (repeatable)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the kills (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, data dirs)")
    args = parser.parse_args()
    phases = args.phase or list(PHASES)
    work = Path(tempfile.mkdtemp(prefix="parcelo-chaos-"))
    started = time.monotonic()
    report: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        if "kills" in phases:
            say(f"kills: a {KillPlan.leaves:,}-leaf job, kill -9 of workers and of the coordinator")
            report += kills(work / "kills", KillPlan(seed=args.seed), say).lines()
        if "load" in phases:
            say(f"load: {LoadPlan.streams:,} streams for {LoadPlan.seconds:.0f} s, holders killed")
            report += load(work / "load", LoadPlan(seed=args.seed), say).lines()
        if "disk" in phases:
            if not can_mount():
                report.append("disk full: SKIPPED (mounting a tmpfs needs root: run make chaos as root)")
            else:
                say("disk full: the data dir on a 64 MB tmpfs that fills up")
                (work / "disk").mkdir()
                with tmpfs(work / "disk" / "fs", 64) as fs:
                    report += disk_full(fs, work / "disk", leaves=8192, say=say).lines()
    except AssertionError as err:
        say(f"\nchaos FAILED: {err}\n(logs in {work})")
        sys.exit(1)
    say("")
    for line in report:
        say(line)
    say(f"\nchaos passed in {time.monotonic() - started:.0f} s (seed {args.seed})")
    if args.keep:
        say(f"logs in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
