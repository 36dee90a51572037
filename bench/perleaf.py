"""Microseconds per leaf of each in-process part of the tuned path, packed grants against Lease messages.

``python bench/perleaf.py``: no sockets and no disk sync, so it measures the Python work alone (what
docs/benchmarks.md, "Where each microsecond per leaf goes", subtracts from the processes' CPU time
to find what gRPC, the event loop and RocksDB cost):

* coordinator: ``Core.lease`` and ``Core.complete`` 512 at a time, the grant built (packed columns
  or one ``Lease`` message per lease) and serialised, the completion parsed, ``take_changes``,
  ``Store.encode`` and the answer serialised;
* worker SDK: a real :class:`parcelo.Worker` with a no-op async handler fed parsed grants of 512
  leases (concurrency 32), its completions acknowledged, without a stream, on uvloop as
  ``parcelo-worker`` runs.

Each figure is the median of 5 rounds, packed and plain interleaved.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from parcelo import Worker
from parcelo.coordinator import codec
from parcelo.coordinator.core import Core
from parcelo.coordinator.store import Store
from parcelo.v1 import types_pb2, worker_pb2

BATCH = 512
LEAVES = 1 << 16
ROUNDS = 5


def _grant(core: Core, leases: list[Any], packed: bool) -> bytes:
    response = worker_pb2.WorkResponse()
    grant = response.grant
    if packed:
        for job_id, first, stop in codec.job_runs(leases):
            codec.pack_run(job_id, leases, first, stop, grant.packed)
    else:
        for lease in leases:
            codec.lease_to_proto(lease, core.jobs[lease.job_id], grant.leases.add())
    return response.SerializeToString()


def coordinator_us(packed: bool, store: Store) -> dict[str, float]:
    """Per leaf, in µs: (lease, grant built and serialised, completion, commit encoding, total)."""
    core = Core(fence_limit=1)
    core.fences.made_durable(core.fences.pending_limit() or 0)
    spec = types_pb2.JobSpec(range=types_pb2.Range(start=0, end=LEAVES * 1000), max_range_size=1000)
    core.create_job(spec, 0.0)
    core.written(core.take_changes())
    parts = dict.fromkeys(("lease", "grant", "complete", "commit"), 0.0)
    clock = time.perf_counter
    done = 0
    while done < LEAVES:
        t0 = clock()
        leases = core.lease(["default"], BATCH, 1.0, "w")
        t1 = clock()
        _grant(core, leases, packed)
        t2 = clock()
        request = worker_pb2.WorkRequest(
            complete=worker_pb2.CompleteRequest(fences=[lease.fence for lease in leases])
        ).SerializeToString()
        t3 = clock()
        parsed = worker_pb2.WorkRequest.FromString(request).complete
        accepted, _ = core.complete(parsed.fences, parsed.skipped, 1.0, parsed.results_json, "w")
        worker_pb2.WorkResponse(complete=worker_pb2.CompleteResponse(accepted=accepted)).SerializeToString()
        t4 = clock()
        changes = core.take_changes()
        store.encode(changes)
        core.written(changes)
        t5 = clock()
        for name, took in zip(parts, (t1 - t0, t2 - t1, t4 - t3, t5 - t4), strict=True):
            parts[name] += took
        done += len(leases)
    out = {name: total / done * 1e6 for name, total in parts.items()}
    out["total"] = sum(out.values())
    return out


async def _noop(range_: Any, ctx: Any) -> None:
    """The benchmark's handler: nothing."""


async def _sdk(packed: bool) -> float:
    core = Core(fence_limit=1)
    core.fences.made_durable(core.fences.pending_limit() or 0)
    spec = types_pb2.JobSpec(range=types_pb2.Range(start=0, end=LEAVES * 1000), max_range_size=1000)
    job, _ = core.create_job(spec, 0.0)
    grants: list[bytes] = []
    info = codec.job_info(job)
    while len(grants) * BATCH < LEAVES:
        raw = _grant(core, core.lease(["default"], BATCH, 1.0, "w"), packed)
        grants.append(raw)
    worker = Worker("localhost:1", _noop, concurrency=32, prefetch=BATCH)
    # The worker's stream plumbing without a stream: what it would send goes to this queue.
    out: asyncio.Queue[worker_pb2.WorkRequest | None] = asyncio.Queue()
    worker._out = out
    worker._changed = asyncio.Event()
    began = time.perf_counter()
    for i, raw in enumerate(grants):
        msg = worker_pb2.WorkResponse.FromString(raw)
        if i == 0:
            msg.grant.jobs.append(info)
        worker._on_message(msg)
        assert await worker._wait_until(lambda: not worker._running and not worker._waiting, 10)
        worker._flush()
        while not out.empty():
            request = out.get_nowait()
            if request is not None and request.HasField("complete"):
                answer = worker_pb2.CompleteResponse(accepted=request.complete.fences)
                worker._on_message(
                    worker_pb2.WorkResponse.FromString(
                        worker_pb2.WorkResponse(complete=answer).SerializeToString()
                    )
                )
    took = time.perf_counter() - began
    assert worker.stats.completed == len(grants) * BATCH and not worker._outbox.unanswered()
    return took / (len(grants) * BATCH) * 1e6


def sdk_us(packed: bool) -> float:
    """Per leaf, in µs, of the SDK's own work: grant parsed and read, handler task, result queued,
    completion built and serialised, answer parsed and applied."""
    return asyncio.run(_sdk(packed))


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {name: statistics.median(run[name] for run in runs) for name in runs[0]}


def main() -> None:
    try:
        import uvloop

        uvloop.install()  # as parcelo-worker does (Worker.run_sync)
    except ImportError:
        pass
    with tempfile.TemporaryDirectory(prefix="parcelo-perleaf-") as tmp:
        store = Store(Path(tmp) / "data")
        coord: dict[bool, list[dict[str, float]]] = {True: [], False: []}
        sdk: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(ROUNDS):
            for packed in (True, False):
                coord[packed].append(coordinator_us(packed, store))
                sdk[packed].append(sdk_us(packed))
        store.close()
    for packed in (True, False):
        label = "packed grants " if packed else "Lease messages"
        parts = ", ".join(f"{name} {us:.2f}" for name, us in _median(coord[packed]).items())
        print(f"{label}: coordinator µs/leaf: {parts}")
        print(f"{label}: worker SDK µs/leaf: {statistics.median(sdk[packed]):.2f}")


if __name__ == "__main__":
    main()
