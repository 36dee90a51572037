"""The JSON API of the HTTP port: the admin RPCs over HTTP, answered by the gRPC servicers themselves.

Each route builds the RPC's request message from the path, the query and the body, calls the
servicer method (so an answer is the gRPC answer: same checks, same durability waits, same
errors) and writes the answer in the protobuf JSON mapping with the proto's field names, fields
at their default values included, 64-bit integers as strings. Errors are
``{"code": "NOT_FOUND", "message": ...}`` with the HTTP status of the code (``http.HTTP_STATUS``).

Beyond the RPCs: ``GET /api/v1/jobs/{id}/events`` without ``follow`` answers the retained events
at once (a page of at most ``MAX_WATCH_PAGE``), and ``GET /api/v1/queues`` the work of each queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from grpc import aio

from parcelo.coordinator import errors
from parcelo.coordinator.auth import READERS
from parcelo.coordinator.core import Core
from parcelo.coordinator.events import Event, EventType
from parcelo.coordinator.http import ApiError, Route
from parcelo.coordinator.jobs import JobStatus, queue_depths
from parcelo.coordinator.limits import MAX_WATCH_PAGE
from parcelo.coordinator.service import STATUS_OF, JobServicer, WorkerServicer
from parcelo.coordinator.store import Store
from parcelo.coordinator.views import JobViews
from parcelo.v1 import jobs_pb2, queues_pb2, types_pb2, worker_pb2

KEEPALIVE = 15.0
"""Seconds between comments on an idle event stream: proxies keep it open, a gone client is noticed."""

JOBS = "parcelo.v1.JobService."


class CallAborted(aio.AbortError):  # type: ignore[misc]  # grpc ships no type hints
    """Raised by :class:`HttpCall.abort`: the servicer ended the call with ``code``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class HttpCall:
    """What a servicer method sees of its call when the call came over HTTP (a ServicerContext's
    part that the servicers use)."""

    def __init__(self, request: web.Request) -> None:
        self._request = request

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise CallAborted(code, details)

    def peer(self) -> str:
        return f"http:{self._request.remote or '?'}"

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        # The trace context a caller sends rides in the header of the same name.
        parent = self._request.headers.get("traceparent")
        return (("traceparent", parent),) if parent else ()


def to_json(message: Message) -> dict[str, Any]:
    """A message in the protobuf JSON mapping, the proto's field names, defaults included."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def answer(message: Message) -> web.Response:
    return web.json_response(to_json(message), dumps=lambda data: json.dumps(data, separators=(",", ":")))


def _int(request: web.Request, name: str, default: int = 0, *, at_most: int = 2**64 - 1) -> int:
    text = request.query.get(name, "")
    if not text:
        return default
    if not text.isdigit() or int(text) > at_most:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"{name}: must be a whole number up to {at_most}")
    return int(text)


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true", "yes")


def _enum_values(request: web.Request, name: str, enum: Any, prefix: str) -> list[int]:
    """Repeated or comma-separated enum names (``running`` or ``JOB_STATUS_RUNNING``)."""
    values: list[int] = []
    for item in request.query.getall(name, []):
        for word in filter(None, (w.strip() for w in item.split(","))):
            full = word.upper() if word.upper().startswith(prefix) else prefix + word.upper()
            try:
                values.append(enum.Value(full))
            except ValueError:
                raise ApiError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"{name}: {word!r} is not a {prefix}* value"
                ) from None
    return values


M = TypeVar("M", bound=Message)


async def _body(request: web.Request, message: M) -> M:
    """``message`` filled from the JSON body (an empty body leaves it empty)."""
    text = await request.text()
    if text.strip():
        try:
            json_format.Parse(text, message)
        except json_format.ParseError as err:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"body: {err}") from None
    return message


class Api:
    """The routes of ``/api/v1``, over one coordinator's servicers and state.

    Args:
        jobs, workers: The gRPC servicers; every RPC route calls them.
        core, views, store: For the two reads that are not RPCs (events without ``follow``,
            queues).
        durable: Waits until everything changed so far is on disk (``Committer.durable``).
    """

    def __init__(
        self,
        jobs: JobServicer,
        workers: WorkerServicer,
        *,
        core: Core,
        views: JobViews,
        store: Store,
        durable: Callable[[], Awaitable[None]],
    ) -> None:
        self._jobs = jobs
        self._workers = workers
        self._core = core
        self._views = views
        self._store = store
        self._durable = durable
        self._streams: set[asyncio.Task[None]] = set()

    def routes(self) -> list[Route]:
        """Every route of the API, each with the RPC whose roles it takes."""
        base = "/api/v1/jobs"
        one = base + "/{job_id}"
        return [
            Route("GET", base, self._list_jobs, JOBS + "ListJobs"),
            Route("POST", base, self._create_job, JOBS + "CreateJob"),
            Route("GET", one, self._get_job, JOBS + "GetJob"),
            Route("DELETE", one, self._delete_job, JOBS + "DeleteJob"),
            Route("GET", one + "/tree", self._tree, JOBS + "GetJobTree"),
            Route("GET", one + "/events", self._events, JOBS + "WatchJob"),
            Route("POST", one + "/pause", self._pause, JOBS + "PauseJob"),
            Route("POST", one + "/resume", self._resume, JOBS + "ResumeJob"),
            Route("POST", one + "/cancel", self._cancel, JOBS + "CancelJob"),
            Route("POST", one + "/retry", self._retry, JOBS + "RetryFailed"),
            Route("GET", "/api/v1/workers", self._list_workers, "parcelo.v1.WorkerService.ListWorkers"),
            Route("GET", "/api/v1/queues", self._queues, allowed=READERS),
        ]

    def close(self) -> None:
        """End every open event stream (the coordinator stops)."""
        for task in self._streams:
            task.cancel()

    async def _call(self, method: Any, request: Message, http: web.Request) -> web.Response:
        try:
            return answer(await method(request, HttpCall(http)))
        except CallAborted as err:
            raise ApiError(err.code, err.message) from None

    # -- the RPCs -------------------------------------------------------------------------------

    async def _list_jobs(self, request: web.Request) -> web.Response:
        query = jobs_pb2.ListJobsRequest(
            statuses=_enum_values(request, "status", types_pb2.JobStatus, "JOB_STATUS_"),  # type: ignore[arg-type]
            queue=request.query.get("queue", ""),
            page_token=request.query.get("page_token", ""),
            page_size=_int(request, "page_size", at_most=2**32 - 1),
        )
        return await self._call(self._jobs.ListJobs, query, request)

    async def _create_job(self, request: web.Request) -> web.Response:
        spec = await _body(request, types_pb2.JobSpec())
        return await self._call(self._jobs.CreateJob, jobs_pb2.CreateJobRequest(spec=spec), request)

    async def _get_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        return await self._call(self._jobs.GetJob, jobs_pb2.GetJobRequest(job_id=job_id), request)

    async def _delete_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        return await self._call(self._jobs.DeleteJob, jobs_pb2.DeleteJobRequest(job_id=job_id), request)

    async def _tree(self, request: web.Request) -> web.Response:
        query = jobs_pb2.GetJobTreeRequest(
            job_id=request.match_info["job_id"], max_depth=_int(request, "depth", at_most=2**32 - 1)
        )
        return await self._call(self._jobs.GetJobTree, query, request)

    async def _pause(self, request: web.Request) -> web.Response:
        body = await _body(request, jobs_pb2.PauseJobRequest())
        body.job_id = request.match_info["job_id"]
        body.release = body.release or _flag(request, "release")
        return await self._call(self._jobs.PauseJob, body, request)

    async def _resume(self, request: web.Request) -> web.Response:
        query = jobs_pb2.ResumeJobRequest(job_id=request.match_info["job_id"])
        return await self._call(self._jobs.ResumeJob, query, request)

    async def _cancel(self, request: web.Request) -> web.Response:
        body = await _body(request, jobs_pb2.CancelJobRequest())
        body.job_id = request.match_info["job_id"]
        return await self._call(self._jobs.CancelJob, body, request)

    async def _retry(self, request: web.Request) -> web.Response:
        query = jobs_pb2.RetryFailedRequest(job_id=request.match_info["job_id"])
        return await self._call(self._jobs.RetryFailed, query, request)

    async def _list_workers(self, request: web.Request) -> web.Response:
        return await self._call(self._workers.ListWorkers, worker_pb2.ListWorkersRequest(), request)

    # -- events ---------------------------------------------------------------------------------

    async def _events(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["job_id"]
        types = _enum_values(request, "types", types_pb2.EventType, "EVENT_TYPE_")
        after = _int(request, "after")
        if "Last-Event-ID" in request.headers and request.headers["Last-Event-ID"].isdigit():
            after = max(after, int(request.headers["Last-Event-ID"]))  # an EventSource reconnecting
        try:
            self._views.get(job_id)
        except errors.CoordinatorError as err:
            raise ApiError(STATUS_OF[type(err)], str(err)) from None
        if _flag(request, "follow"):
            watch = jobs_pb2.WatchJobRequest(job_id=job_id, after_seq=after, follow=True, types=types)  # type: ignore[arg-type]
            return await self._stream(request, watch)
        page, scanned = await self._retained(job_id, after, {EventType(t) for t in types})
        events = [to_json(event.to_proto()) for event in page]
        return web.json_response(
            {"events": events, "next_after": str(scanned), "more": len(page) >= MAX_WATCH_PAGE}
        )

    async def _retained(self, job_id: str, after: int, types: set[EventType]) -> tuple[list[Event], int]:
        """At most MAX_WATCH_PAGE retained events after ``after`` (of ``types``; all when empty),
        as WatchJob replays them (from memory, else from disk once what precedes memory is
        written), and the seq the scan reached: where the next page starts, even when no event
        of ``types`` was found."""
        found: list[Event] = []
        backlog, covered = self._core.events.recent(job_id, after)
        last = after
        if not covered:
            await self._durable()
            first = backlog[0].seq if backlog else self._core.events.durable_seq(job_id) + 1
            loop = asyncio.get_running_loop()
            while last < first - 1:
                page = await loop.run_in_executor(
                    None, self._store.read_events, job_id, last, first - 1, MAX_WATCH_PAGE
                )
                for event in page:
                    last = event.seq
                    if not types or event.type in types:
                        found.append(event)
                        if len(found) >= MAX_WATCH_PAGE:
                            return found, last
                if len(page) < MAX_WATCH_PAGE:
                    last = first - 1
        for event in backlog:
            if event.seq <= last:
                continue
            last = event.seq
            if not types or event.type in types:
                found.append(event)
                if len(found) >= MAX_WATCH_PAGE:
                    break
        return found, last

    async def _stream(self, request: web.Request, watch: jobs_pb2.WatchJobRequest) -> web.StreamResponse:
        """Server-sent events: one JSON JobEvent per ``data:`` line, its seq as the event id."""
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        queue: asyncio.Queue[types_pb2.JobEvent | BaseException | None] = asyncio.Queue(maxsize=1024)

        async def pump() -> None:
            try:
                async for event in _watch(self._jobs, watch, request):
                    await queue.put(event)
                await queue.put(None)
            except asyncio.CancelledError:
                raise
            except BaseException as err:  # handed to the writer, which ends the stream with it
                await queue.put(err)

        task = asyncio.get_running_loop().create_task(pump())
        self._streams.add(task)
        task.add_done_callback(self._streams.discard)
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                if item is None or isinstance(item, BaseException):
                    if isinstance(item, CallAborted):
                        data = json.dumps({"code": item.code.name, "message": item.message})
                        await response.write(f"event: error\ndata: {data}\n\n".encode())
                    break
                data = json.dumps(to_json(item), separators=(",", ":"))
                await response.write(f"id: {item.seq}\ndata: {data}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the client went away, or the coordinator stops
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    # -- queues ---------------------------------------------------------------------------------

    async def _queues(self, request: web.Request) -> web.Response:
        """Per queue: leaves waiting, leaf leases held, and its jobs by status (see operations.md)."""
        jobs = self._core.jobs.values()
        settings = self._core.queues
        depths = queue_depths(jobs, self._core.leases.leaf_counts(), settings.paused())
        counts: dict[str, dict[str, int]] = {}
        for job in jobs:
            by_status = counts.setdefault(job.queue, {s.name.lower(): 0 for s in JobStatus})
            by_status[job.status.name.lower()] += 1
        queues = [
            {
                "queue": name,
                "pending_leaves": str(depth.pending),
                "running_leases": str(depth.running),
                "jobs": counts[name],
                # The queue's own settings (QueueService has the same, with its other queues).
                **_settings(settings.get(name)),
            }
            for name, depth in sorted(depths.items())
        ]
        return web.json_response({"queues": queues})


async def _watch(
    servicer: JobServicer, request: jobs_pb2.WatchJobRequest, http: web.Request
) -> AsyncIterator[types_pb2.JobEvent]:
    """The servicer's WatchJob stream, for an HTTP caller."""
    async for event in servicer.WatchJob(request, HttpCall(http)):
        yield event


def _settings(record: queues_pb2.Queue | None) -> dict[str, object]:
    if record is None:
        return {"max_concurrency": 0, "max_leases_per_second": 0.0, "paused": False}
    return {
        "max_concurrency": record.max_concurrency,
        "max_leases_per_second": record.max_leases_per_second,
        "paused": record.paused,
    }
