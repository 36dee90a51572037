"""OpenTelemetry metrics of the coordinator, exported as Prometheus text on the HTTP port's /metrics.

Counters and histograms are updated per message, batch or grant, never per lease, so telemetry
stays off the hot path; the one exception is the handler durations workers report (one per
leaf), which are counted into fixed buckets here at a fraction of a microsecond each rather than
recorded as an OpenTelemetry histogram (about 5 us a record, as much as the rest of a leaf's
work). Gauges are computed when scraped, from the core's state, on the event loop.

Every metric is in ``docs/operations.md`` ("Metrics"); the names are the Prometheus ones there.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader

from parcelo.coordinator.core import Core
from parcelo.coordinator.jobs import JobStatus, QueueDepth, queue_depths
from parcelo.coordinator.registry import Results
from parcelo.v1 import worker_pb2

log = logging.getLogger(__name__)

T = TypeVar("T")

READ_TIMEOUT = 5.0
"""Seconds a scrape waits for the event loop to read the state; past that the gauges are left out."""

DEPTH_REUSE = 1.0
"""Seconds one reading of the queue depths serves: a scrape reads both depth gauges at once."""

SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Histogram bounds of the coordinator's own latencies (grants, commits)."""

HANDLER_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
"""Histogram bounds of handler durations, in seconds: leaves last from milliseconds to hours."""

OPS_BUCKETS = (1, 10, 100, 1_000, 10_000, 100_000)
"""Histogram bounds of the puts and deletes of one store batch."""


def _reason_name(value: int) -> str:
    try:
        return worker_pb2.RejectReason.Name(value).removeprefix("REJECT_REASON_").lower()  # type: ignore[arg-type]
    except ValueError:
        return str(value)


def directory_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 if it is gone): the data dir's size on disk."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue  # a file RocksDB removed meanwhile
    return total


class HandlerDurations:
    """Handler run times reported by workers, counted into :data:`HANDLER_BUCKETS`.

    A Prometheus collector (``parcelo_handler_duration_seconds``): counted on the event loop,
    read by the scrape; a scrape may see one message's counts half added, never a torn number.
    """

    def __init__(self) -> None:
        self._bounds = [round(b * 1e6) for b in HANDLER_BUCKETS]
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum_us = 0

    def observe(self, durations_us: Iterable[int]) -> None:
        bounds, counts = self._bounds, self._counts
        for us in durations_us:
            if us:  # 0: not measured (probes, results sent again)
                counts[bisect.bisect_left(bounds, us)] += 1
                self._sum_us += us

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import HistogramMetricFamily

        counts = list(self._counts)
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(HANDLER_BUCKETS, counts, strict=False):
            running += count
            buckets.append((repr(bound), running))
        buckets.append(("+Inf", running + counts[-1]))
        yield HistogramMetricFamily(
            "parcelo_handler_duration_seconds",
            "How long handlers ran, as workers report it with their completions",
            buckets=buckets,
            sum_value=self._sum_us / 1e6,
        )


class Depths(NamedTuple):
    """One reading of the work waiting and running, by queue and by running job."""

    queues: dict[str, QueueDepth]
    jobs: dict[str, QueueDepth]


class Telemetry:
    """Counters and gauges of one coordinator.

    Made on the coordinator's event loop, which is the only thread that changes the core: the
    gauges are read there too (see :meth:`_read`).

    Args:
        core: The state the gauges read.
        data_dir: The data dir whose size is exported.
        workers: The number of connected workers.
        export: Export Prometheus text (:meth:`render`); without it the instruments record into
            nothing.
    """

    def __init__(self, core: Core, data_dir: Path, workers: Callable[[], int], *, export: bool) -> None:
        self._core = core
        self._data_dir = data_dir
        self._workers = workers
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._depths: tuple[float, Depths] | None = None
        self.handler_durations = HandlerDurations()
        readers: list[MetricReader] = []
        self._registry: Any = None
        if export:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import CollectorRegistry

            # A registry of its own (not prometheus_client's global one): what this coordinator
            # exports and nothing else, however many coordinators a process runs (tests do).
            self._registry = CollectorRegistry(auto_describe=False)
            readers.append(
                PrometheusMetricReader(
                    disable_target_info=True, scope_info_enabled=False, registry=self._registry
                )
            )
            self._registry.register(self.handler_durations)
        self._provider = MeterProvider(metric_readers=readers)
        meter = self._provider.get_meter("parcelo.coordinator")
        lease = "{lease}"
        self._granted = meter.create_counter(
            "parcelo_leases_granted", unit=lease, description="Leases handed out"
        )
        self._completed = meter.create_counter(
            "parcelo_leases_completed",
            unit=lease,
            description="Leases completed or skipped (results accepted)",
        )
        self._failed = meter.create_counter(
            "parcelo_leases_failed", unit=lease, description="Failed attempts reported by workers (accepted)"
        )
        self._released = meter.create_counter(
            "parcelo_leases_released", unit=lease, description="Leases given back unfinished (accepted)"
        )
        self._expired = meter.create_counter(
            "parcelo_leases_expired",
            unit=lease,
            description="Leases taken back by the coordinator: no heartbeat in time, or the leaf timeout",
        )
        self._rejected = meter.create_counter(
            "parcelo_leases_rejected", unit=lease, description="Results refused, by reason"
        )
        self._grant_latency = meter.create_histogram(
            "parcelo_lease_grant_latency",
            unit="s",
            description="From a worker's lease credit to the grant that answers it (waits for work included)",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        self._batches = meter.create_counter(
            "parcelo_commit_batches", unit="{batch}", description="Store batches"
        )
        self._ops = meter.create_counter(
            "parcelo_commit_ops", unit="{op}", description="Puts and deletes written"
        )
        self._batch_ops = meter.create_histogram(
            "parcelo_commit_batch_ops",
            unit="{op}",
            description="Puts and deletes of one store batch",
            explicit_bucket_boundaries_advisory=OPS_BUCKETS,
        )
        self._commit_seconds = meter.create_histogram(
            "parcelo_commit_duration",
            unit="s",
            description="Time to write (and sync) one batch",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        gauges: list[tuple[str, Callable[[CallbackOptions], Iterable[Observation]], str]] = [
            ("parcelo_active_leases", self._observe_leases, "Live leases"),
            ("parcelo_jobs", self._observe_jobs, "Jobs by status"),
            (
                "parcelo_pending_leaves",
                self._observe_pending,
                "Leaves waiting to be leased in runnable jobs, unsplit nodes counted as their leaves",
            ),
            ("parcelo_running_leases", self._observe_running, "Leaf leases held by workers"),
            ("parcelo_job_pending_leaves", self._observe_job_pending, "Leaves waiting, per running job"),
            ("parcelo_job_running_leases", self._observe_job_running, "Leaf leases held, per running job"),
            ("parcelo_workers_connected", self._observe_workers, "Workers with a Work stream open"),
            ("parcelo_data_dir_bytes", self._observe_data_dir, "Bytes of the files in the data dir"),
        ]
        for name, callback, description in gauges:
            meter.create_observable_gauge(name, callbacks=[callback], description=description)

    def render(self) -> bytes:
        """The Prometheus text of every metric. Blocks: call it off the event loop (the gauges
        hop onto the loop to read the state)."""
        from prometheus_client import generate_latest

        if self._registry is None:
            raise RuntimeError("metrics are not exported (made with export=False)")
        return bytes(generate_latest(self._registry))

    def _read(self, read: Callable[[], T]) -> T | None:
        """``read()`` run on the event loop; None if the loop is gone or does not answer in time.

        The scrape calls the gauges from its thread, while the loop changes jobs, trees and
        leases: reading them from that thread could see a dict change size mid-iteration.
        """
        if threading.get_ident() == self._loop_thread:
            return read()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(read())
            except BaseException as err:  # handed to the scraping thread, which logs it
                future.set_exception(err)

        try:
            self._loop.call_soon_threadsafe(run)
            return future.result(READ_TIMEOUT)
        except RuntimeError:  # the loop is closed: the coordinator stopped
            return None
        except concurrent.futures.TimeoutError:
            log.warning("metrics scrape: the event loop did not answer within %.0f s", READ_TIMEOUT)
            return None

    def _observe_leases(self, options: CallbackOptions) -> Iterable[Observation]:
        count = self._read(lambda: len(self._core.leases))
        if count is not None:
            yield Observation(count)

    def _observe_jobs(self, options: CallbackOptions) -> Iterable[Observation]:
        def count() -> dict[str, int]:
            counts: dict[str, int] = {}
            for job in self._core.jobs.values():
                counts[job.status.name.lower()] = counts.get(job.status.name.lower(), 0) + 1
            return counts

        for status, n in (self._read(count) or {}).items():
            yield Observation(n, {"status": status})

    def _observe_workers(self, options: CallbackOptions) -> Iterable[Observation]:
        count = self._read(self._workers)
        if count is not None:
            yield Observation(count)

    def _observe_data_dir(self, options: CallbackOptions) -> Iterable[Observation]:
        # Files only (no core state): read from the scraping thread, off the loop.
        yield Observation(directory_bytes(self._data_dir))

    def _read_depths(self) -> Depths:
        """The depths by queue and by running job, read at most once per :data:`DEPTH_REUSE` s."""
        now = time.monotonic()
        cached = self._depths
        if cached is not None and now - cached[0] < DEPTH_REUSE:
            return cached[1]
        core = self._core

        def read() -> Depths:
            leaves = core.leases.leaf_counts()
            jobs = {
                job.id: QueueDepth(job.tree.pending_leaves(), leaves.get(job.id, 0))
                for job in core.jobs.values()
                if job.status is JobStatus.RUNNING
            }
            return Depths(queue_depths(core.jobs.values(), leaves, core.queues.paused()), jobs)

        depths = self._read(read) or Depths({}, {})
        self._depths = (now, depths)
        return depths

    def _observe_pending(self, options: CallbackOptions) -> Iterable[Observation]:
        for queue, depth in self._read_depths().queues.items():
            yield Observation(depth.pending, {"queue": queue})

    def _observe_running(self, options: CallbackOptions) -> Iterable[Observation]:
        for queue, depth in self._read_depths().queues.items():
            yield Observation(depth.running, {"queue": queue})

    def _observe_job_pending(self, options: CallbackOptions) -> Iterable[Observation]:
        for job_id, depth in self._read_depths().jobs.items():
            yield Observation(depth.pending, {"job_id": job_id})

    def _observe_job_running(self, options: CallbackOptions) -> Iterable[Observation]:
        for job_id, depth in self._read_depths().jobs.items():
            yield Observation(depth.running, {"job_id": job_id})

    # -- what the coordinator reports: once per message, batch, grant or tick ------------------

    def on_batch(self, ops: int, seconds: float) -> None:
        self._batches.add(1)
        self._ops.add(ops)
        self._batch_ops.record(ops)
        self._commit_seconds.record(seconds)

    def on_grant(self, leases: int, waited: float) -> None:
        self._granted.add(leases)
        self._grant_latency.record(waited)

    def on_results(self, results: Results) -> None:
        if results.completed:
            self._completed.add(results.completed)
        if results.failed:
            self._failed.add(results.failed)
        if results.released:
            self._released.add(results.released)
        for reason, count in results.rejected.items():
            self._rejected.add(count, {"reason": _reason_name(reason)})
        if results.handler_us:
            self.handler_durations.observe(results.handler_us)

    def on_tick(self, expired: int, timed_out: int) -> None:
        if expired:
            self._expired.add(expired, {"cause": "heartbeat"})
        if timed_out:
            self._expired.add(timed_out, {"cause": "timeout"})

    def close(self) -> None:
        self._provider.shutdown()
