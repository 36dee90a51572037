"""Spans of the coordinator's RPCs, and the trace context a new job is given.

With tracing on (``OTEL_TRACES_EXPORTER``, see :mod:`parcelo.tracing`) every call gets one server
span, a stream included (a worker's ``Work`` stream is one span for its whole life, never one per
lease), child of the caller's ``traceparent`` metadata when it sends one. With tracing off the
server has no interceptor for it at all: nothing is spent per call.

A job created by ``CreateJob`` keeps a trace context (``Job.traceparent``): the span of that call
when tracing is on, else the ``traceparent`` the caller sent, else none. Workers make the spans of
its handler runs children of it.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc import aio
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from parcelo.tracing import TRACEPARENT_RE, traceparent

_PROPAGATOR = TraceContextTextMapPropagator()

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


def _metadata(metadata: Sequence[tuple[str, Any]] | None) -> dict[str, str]:
    return {key: value for key, value in metadata or () if isinstance(value, str)}


def job_traceparent(context: Any) -> str:
    """The trace context of a job created by the call ``context`` serves.

    The call's own span when it records, else the caller's valid ``traceparent``, else "".
    """
    own = traceparent(trace.get_current_span().get_span_context())
    if own:
        return own
    sent = _metadata(context.invocation_metadata()).get("traceparent", "")
    return sent if TRACEPARENT_RE.match(sent) else ""


class RpcSpans(aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no type hints
    """A server span around each call, named by its method (``parcelo.v1.JobService/GetJob``)."""

    def __init__(self, provider: Any) -> None:
        self._tracer = provider.get_tracer("parcelo.coordinator")

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        service, _, method = details.method.lstrip("/").partition("/")
        name = f"{service}/{method}"
        parent = _PROPAGATOR.extract(_metadata(details.invocation_metadata))
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        tracer = self._tracer

        def span(context: aio.ServicerContext[Any, Any]) -> Any:
            return tracer.start_as_current_span(
                name,
                context=parent,
                kind=trace.SpanKind.SERVER,
                attributes={**attributes, "net.peer.name": str(context.peer())},
                record_exception=False,
                set_status_on_exception=False,
            )

        if handler.request_streaming or handler.response_streaming:
            return _wrap_stream(handler, span)
        behavior = handler.unary_unary

        async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            with span(context) as current:
                try:
                    answer = behavior(request, context)
                    # Every servicer here is async; a plain one (a library's) answers directly.
                    return await answer if inspect.isawaitable(answer) else answer
                finally:
                    _finish(current, context)

        return grpc.unary_unary_rpc_method_handler(
            unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _finish(span: trace.Span, context: aio.ServicerContext[Any, Any]) -> None:
    """Record the call's status code; anything but OK marks the span as an error."""
    code = context.code()
    value = code.value[0] if isinstance(code, grpc.StatusCode) else int(code or 0)
    span.set_attribute("rpc.grpc.status_code", value)
    if value:
        span.set_status(trace.Status(trace.StatusCode.ERROR, str(context.details() or "")))


def _wrap_stream(handler: grpc.RpcMethodHandler, span: Callable[[Any], Any]) -> grpc.RpcMethodHandler:
    """The streaming handler ``handler`` inside one span for the whole call."""
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        inner = handler.stream_stream

        async def stream_stream(requests: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            with span(context) as current:
                try:
                    async for item in inner(requests, context):
                        yield item
                finally:
                    _finish(current, context)

        return grpc.stream_stream_rpc_method_handler(stream_stream, **serializers)
    if handler.response_streaming:
        produce = handler.unary_stream

        async def unary_stream(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            with span(context) as current:
                try:
                    async for item in produce(request, context):
                        yield item
                finally:
                    _finish(current, context)

        return grpc.unary_stream_rpc_method_handler(unary_stream, **serializers)
    consume = handler.stream_unary

    async def stream_unary(requests: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        with span(context) as current:
            try:
                return await consume(requests, context)
            finally:
                _finish(current, context)

    return grpc.stream_unary_rpc_method_handler(stream_unary, **serializers)
