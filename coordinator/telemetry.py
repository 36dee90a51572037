"""OpenTelemetry metrics of the coordinator, exported for Prometheus when a port is given.

Instruments are updated per batch or per grant message, never per leaf, so
telemetry stays off the hot path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader

from parcelo.coordinator.core import Core

log = logging.getLogger(__name__)


class Telemetry:
    """Counters and gauges of one coordinator; a no-op reader-less provider when metrics are off."""

    def __init__(self, core: Core, metrics_port: int) -> None:
        self._core = core
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

    def _observe_leases(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(len(self._core.leases))

    def _observe_jobs(self, options: CallbackOptions) -> Iterable[Observation]:
        counts: dict[str, int] = {}
        for job in self._core.jobs.values():
            counts[job.status.name.lower()] = counts.get(job.status.name.lower(), 0) + 1
        for status, count in counts.items():
            yield Observation(count, {"status": status})

    def on_batch(self, ops: int, seconds: float) -> None:
        self._batches.add(1)
        self._ops.add(ops)
        self._commit_seconds.record(seconds)

    def on_grant(self, leases: int) -> None:
        self._granted.add(leases)

    def close(self) -> None:
        self._provider.shutdown()
