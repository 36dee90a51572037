"""Traces: OpenTelemetry set up from the standard ``OTEL_*`` variables, and the spans of handler runs.

Tracing is off unless ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``, or any
other installed under the ``opentelemetry_traces_exporter`` entry points); unlike the
OpenTelemetry default (``otlp``), an unset variable means off, so nothing is exported by
surprise and nothing is spent. The other standard variables apply as usual:
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``,
``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_BSP_*``, ``OTEL_SDK_DISABLED``.

A job carries a trace context (``Job.traceparent``, sent to workers in ``JobInfo``); the span
of each handler run is its child, so a job's handler runs are one trace with the call that
created the job. The OpenTelemetry packages are optional for workers (``pip install
'parcelo[tracing]'``): without them there are no spans.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, SpanContext

log = logging.getLogger(__name__)

EXPORTERS_VARIABLE = "OTEL_TRACES_EXPORTER"
EXPORTER_GROUP = "opentelemetry_traces_exporter"

TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
"""A W3C ``traceparent`` of version 00 (the only one defined)."""


class TracingError(Exception):
    """Raised when ``OTEL_TRACES_EXPORTER`` names an exporter that is not installed."""


def exporter_names() -> list[str]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names; empty when tracing is off."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip() for n in os.environ.get(EXPORTERS_VARIABLE, "").split(",")]
    return [n for n in names if n and n != "none"]


def configure_from_env(service_name: str) -> TracerProvider | None:
    """A tracer provider exporting as the ``OTEL_*`` variables say, installed as the global one;
    None (and nothing installed) when tracing is off.

    Raises:
        TracingError: An exporter is unknown, or tracing is asked for without the packages.
    """
    names = exporter_names()
    if not names:
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as err:
        raise TracingError(
            f"{EXPORTERS_VARIABLE} asks for traces, but OpenTelemetry is not installed "
            f"(pip install 'parcelo[tracing]'): {err}"
        ) from None
    found = {ep.name: ep for ep in entry_points(group=EXPORTER_GROUP)}
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        # OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES, when given, win over the program's name.
        resource = resource.merge(Resource({"service.name": service_name}))
    provider = TracerProvider(resource=resource)
    for name in names:
        if name not in found:
            raise TracingError(
                f"{EXPORTERS_VARIABLE}: no span exporter {name!r} is installed "
                f"(installed: {', '.join(sorted(found)) or 'none'}; otlp comes with parcelo[tracing])"
            )
        provider.add_span_processor(BatchSpanProcessor(found[name].load()()))
    trace.set_tracer_provider(provider)
    log.info("traces exported with %s", ", ".join(names))
    return provider


def traceparent(context: SpanContext) -> str:
    """The W3C ``traceparent`` of a span context; "" for an invalid one."""
    if not context.is_valid:
        return ""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def global_provider() -> Any:
    """The global tracer provider if an application installed one (``configure_from_env`` or its
    own), else None: without one a worker makes no spans at all."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return provider


class HandlerSpans:
    """The spans of handler runs, children of their job's trace context.

    Args:
        provider: An OpenTelemetry ``TracerProvider``.
    """

    def __init__(self, provider: Any) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
        self._tracer = provider.get_tracer("parcelo.worker", version("parcelo"))

    def start(
        self, *, job_id: str, traceparent: str, fence: int, start: int, end: int, attempt: int, worker_id: str
    ) -> Span:
        """A started span for one handler run over ``[start, end)`` of a lease of ``job_id``."""
        parent = self._propagator.extract({"traceparent": traceparent}) if traceparent else None
        span: Span = self._tracer.start_span(
            "parcelo.handler",
            context=parent,
            kind=self._trace.SpanKind.CONSUMER,
            attributes={
                "parcelo.job_id": job_id,
                "parcelo.fence": fence,
                # Attributes are 64-bit signed: ids beyond 2^63 would not fit as numbers.
                "parcelo.range.start": str(start),
                "parcelo.range.end": str(end),
                "parcelo.attempt": attempt,
                "parcelo.worker_id": worker_id,
            },
        )
        return span

    @contextmanager
    def current(self, span: Span) -> Iterator[None]:
        """Make ``span`` the current span while the handler runs (its own spans nest under it)."""
        with self._trace.use_span(span, end_on_exit=False):
            yield

    def end(self, span: Span, error: BaseException | None, outcome: str) -> None:
        """End a handler span; ``outcome``: completed, skipped, failed, released or dropped."""
        span.set_attribute("parcelo.outcome", outcome)
        if error is not None:
            span.record_exception(error)
            span.set_status(
                self._trace.Status(self._trace.StatusCode.ERROR, f"{type(error).__name__}: {error}")
            )
        span.end()
