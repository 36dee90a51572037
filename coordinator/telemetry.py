"""OpenTelemetry metrics of the coordinator, exported for Prometheus when a port is given.

Counters and histograms are updated per batch or per grant message, never per leaf, so
telemetry stays off the hot path. Gauges are computed when scraped, from the core's state.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader

from parcelo.coordinator.core import Core
from parcelo.coordinator.jobs import QueueDepth, queue_depths

log = logging.getLogger(__name__)

T = TypeVar("T")

READ_TIMEOUT = 5.0
"""Seconds a scrape waits for the event loop to read the state; past that the gauges are left out."""

DEPTH_REUSE = 1.0
"""Seconds one reading of the queue depths serves: a scrape reads both depth gauges at once."""


class Telemetry:
    """Counters and gauges of one coordinator; a no-op reader-less provider when metrics are off.

    Made on the coordinator's event loop, which is the only thread that changes the core: the
    gauges are read there too (see :meth:`_read`).
    """

    def __init__(self, core: Core, metrics_port: int) -> None:
        self._core = core
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._depths: tuple[float, dict[str, QueueDepth]] | None = None
        readers: list[MetricReader] = []
        if metrics_port:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import start_http_server

            start_http_server(metrics_port)
            readers.append(PrometheusMetricReader())
            log.info("Prometheus metrics on port %d", metrics_port)
        self._provider = MeterProvider(metric_readers=readers)
        meter = self._provider.get_meter("parcelo.coordinator")
        self._granted = meter.create_counter(
            "parcelo_leases_granted", unit="{lease}", description="Leases handed out"
        )
        self._batches = meter.create_counter(
            "parcelo_commit_batches", unit="{batch}", description="Store batches"
        )
        self._ops = meter.create_counter(
            "parcelo_commit_ops", unit="{op}", description="Puts and deletes written"
        )
        self._commit_seconds = meter.create_histogram(
            "parcelo_commit_duration", unit="s", description="Time to write (and sync) one batch"
        )
        meter.create_observable_gauge(
            "parcelo_active_leases", callbacks=[self._observe_leases], description="Live leases"
        )
        meter.create_observable_gauge(
            "parcelo_jobs", callbacks=[self._observe_jobs], description="Jobs by status"
        )
        meter.create_observable_gauge(
            "parcelo_pending_leaves",
            callbacks=[self._observe_pending],
            description="Leaves waiting to be leased in runnable jobs, unsplit nodes counted as their leaves",
        )
        meter.create_observable_gauge(
            "parcelo_running_leases",
            callbacks=[self._observe_running],
            description="Leaf leases held by workers",
        )

    def _read(self, read: Callable[[], T]) -> T | None:
        """``read()`` run on the event loop; None if the loop is gone or does not answer in time.

        The exporter calls the gauges from its HTTP thread, while the loop changes jobs, trees and
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

    def _queue_depths(self) -> dict[str, QueueDepth]:
        """The depths of every queue, read at most once per :data:`DEPTH_REUSE` seconds."""
        now = time.monotonic()
        cached = self._depths
        if cached is not None and now - cached[0] < DEPTH_REUSE:
            return cached[1]
        core = self._core
        depths = self._read(lambda: queue_depths(core.jobs.values(), core.leases.leaf_counts())) or {}
        self._depths = (now, depths)
        return depths

    def _observe_pending(self, options: CallbackOptions) -> Iterable[Observation]:
        for queue, depth in self._queue_depths().items():
            yield Observation(depth.pending, {"queue": queue})

    def _observe_running(self, options: CallbackOptions) -> Iterable[Observation]:
        for queue, depth in self._queue_depths().items():
            yield Observation(depth.running, {"queue": queue})

    def on_batch(self, ops: int, seconds: float) -> None:
        self._batches.add(1)
        self._ops.add(ops)
        self._commit_seconds.record(seconds)

    def on_grant(self, leases: int) -> None:
        self._granted.add(leases)

    def close(self) -> None:
        self._provider.shutdown()
