"""gRPC servicers: translate protobuf to core calls and core errors to status codes.

Every state change is made durable (group commit) before it is acknowledged,
and reads answer from what is on disk (``views.JobViews`` and the published
events), never from state a crash could take back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import wraps
from typing import Any, TypeVar

import grpc
from grpc import aio

from parcelo import __version__
from parcelo.coordinator import errors
from parcelo.coordinator.codec import depth_within, tree_to_proto
from parcelo.coordinator.committer import Committer
from parcelo.coordinator.core import Core
from parcelo.coordinator.dispatcher import Dispatcher, Session
from parcelo.coordinator.events import Event, EventType
from parcelo.coordinator.jobs import FINISHED, QUEUE_RE, JobState, JobStatus
from parcelo.coordinator.leases import Action, Beat, Failure, LeafFailure, Rejection
from parcelo.coordinator.limits import (
    DEFAULT_LIMITS,
    MAX_DETAILS_BYTES,
    MAX_QUEUED_ANSWERS,
    MAX_QUEUES_PER_WORKER,
    MAX_TREE_NODES,
    MAX_WATCH_PAGE,
    Limits,
)
from parcelo.coordinator.registry import WorkerRegistry
from parcelo.coordinator.store import Store
from parcelo.coordinator.tracing import job_traceparent
from parcelo.coordinator.views import JobViews
from parcelo.v1 import jobs_pb2, jobs_pb2_grpc, types_pb2, worker_pb2, worker_pb2_grpc

log = logging.getLogger(__name__)

STATUS_OF: dict[type[errors.CoordinatorError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
"""The one table from core errors to gRPC status codes."""

WATCH_BUFFER = 50_000
"""Events buffered for one watcher; a watcher further behind is dropped and must reconnect with after_seq."""

MAX_WORKER_ID = 256
"""Characters of a worker id kept (it is stored with every lease its worker holds)."""

MAX_LEASE_WAIT_MS = 60_000
"""Longest a unary Lease call waits for work (LeaseRequest.wait)."""

TERMINAL_EVENTS = frozenset(
    {EventType.JOB_COMPLETED, EventType.JOB_FAILED, EventType.JOB_CANCELLED, EventType.JOB_DELETED}
)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def rpc(method: F) -> F:
    """Map core errors to gRPC status codes; never let a request crash the daemon."""

    @wraps(method)
    async def wrapper(self: Any, request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await method(self, request, context)
        except errors.CoordinatorError as err:
            await context.abort(STATUS_OF[type(err)], str(err))
        except (aio.AbortError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("internal error in %s", method.__name__)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}; see coordinator log"
            )

    return wrapper  # type: ignore[return-value]


def _holder(worker_id: str, context: Any) -> str:
    """Who sends a unary worker call: its ``worker_id``, else its peer address (as the unary Lease)."""
    return worker_id[:MAX_WORKER_ID] or str(context.peer())


def _queues(names: Sequence[str], field: str) -> tuple[str, ...]:
    """The queues a worker names (``default`` when none), checked."""
    if len(names) > MAX_QUEUES_PER_WORKER:
        raise errors.InvalidArgument(field, f"names {len(names)} queues, at most {MAX_QUEUES_PER_WORKER}")
    for name in names:
        if not QUEUE_RE.match(name):
            raise errors.InvalidArgument(
                field, "each must be 1-128 characters of letters, digits, '.', '_', ':' or '-'"
            )
    return tuple(names) or ("default",)


def _details(details: bytes) -> bytes:
    """Checkpoint details, refused past MAX_DETAILS_BYTES (cut, they would mean nothing)."""
    if len(details) > MAX_DETAILS_BYTES:
        raise errors.InvalidArgument("details", f"is {len(details)} bytes, at most {MAX_DETAILS_BYTES}")
    return details


def _rejections(items: list[Rejection], out: Any) -> None:
    for item in items:
        out.add(fence=item.fence, reason=int(item.reason), message=item.message)


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    """The admin API."""

    def __init__(
        self, core: Core, views: JobViews, store: Store, committer: Committer, dispatcher: Dispatcher
    ) -> None:
        self._core = core
        self._views = views
        self._store = store
        self._committer = committer
        self._dispatcher = dispatcher

    async def _changed(self, job: JobState) -> types_pb2.Job:
        """Make the change durable, let waiting workers see new work, answer with the job as written."""
        self._dispatcher.poke()
        await self._committer.durable()
        return self._views.get(job.id)

    @rpc
    async def CreateJob(self, request: jobs_pb2.CreateJobRequest, context: Any) -> types_pb2.Job:
        job, _ = self._core.create_job(request.spec, time.time(), job_traceparent(context))
        return await self._changed(job)

    @rpc
    async def GetJob(self, request: jobs_pb2.GetJobRequest, context: Any) -> types_pb2.Job:
        return self._views.get(request.job_id)

    @rpc
    async def ListJobs(self, request: jobs_pb2.ListJobsRequest, context: Any) -> jobs_pb2.ListJobsResponse:
        jobs, token = self._views.list(
            statuses=list(request.statuses),
            queue=request.queue,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return jobs_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)

    @rpc
    async def PauseJob(self, request: jobs_pb2.PauseJobRequest, context: Any) -> types_pb2.Job:
        return await self._changed(self._core.pause(request.job_id, time.time(), release=request.release))

    @rpc
    async def ResumeJob(self, request: jobs_pb2.ResumeJobRequest, context: Any) -> types_pb2.Job:
        return await self._changed(self._core.resume(request.job_id, time.time()))

    @rpc
    async def CancelJob(self, request: jobs_pb2.CancelJobRequest, context: Any) -> types_pb2.Job:
        return await self._changed(self._core.cancel(request.job_id, time.time(), request.reason))

    @rpc
    async def DeleteJob(self, request: jobs_pb2.DeleteJobRequest, context: Any) -> jobs_pb2.DeleteJobResponse:
        self._core.delete(request.job_id, time.time())
        await self._committer.durable()
        return jobs_pb2.DeleteJobResponse()

    @rpc
    async def RetryFailed(self, request: jobs_pb2.RetryFailedRequest, context: Any) -> types_pb2.Job:
        return await self._changed(self._core.retry_failed(request.job_id, time.time()))

    @rpc
    async def UpdateJob(self, request: jobs_pb2.UpdateJobRequest, context: Any) -> types_pb2.Job:
        def given(name: str) -> Any:
            return getattr(request, name) if request.HasField(name) else None  # type: ignore[arg-type]

        job = self._core.update_job(
            request.job_id,
            time.time(),
            priority=given("priority"),
            weight=given("weight"),
            max_concurrency=given("max_concurrency"),
            max_leases_per_second=given("max_leases_per_second"),
            burst=given("burst"),
        )
        return await self._changed(job)

    @rpc
    async def GetJobTree(
        self, request: jobs_pb2.GetJobTreeRequest, context: Any
    ) -> jobs_pb2.GetJobTreeResponse:
        record = self._views.get(request.job_id)
        job = self._core.get(request.job_id)
        if request.max_depth > 64:
            raise errors.InvalidArgument("max_depth", "must be at most 64")
        # The nodes are the live tree (they may run ahead of the job record by one commit), to the
        # depth that keeps the answer within MAX_TREE_NODES nodes.
        out = jobs_pb2.GetJobTreeResponse(job=record)
        tree_to_proto(job.tree.root, depth_within(job.tree.root, request.max_depth, MAX_TREE_NODES), out.root)
        return out

    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: Any
    ) -> AsyncIterator[types_pb2.JobEvent]:
        """Backlog after ``after_seq``, then live events, until the job ends (unless ``follow``).

        Only events on disk are sent. With ``follow`` the stream still ends after ``JOB_DELETED``.
        """
        try:
            job = self._views.get(request.job_id)
        except errors.CoordinatorError as err:
            await context.abort(STATUS_OF[type(err)], str(err))
            return
        unknown = [t for t in request.types if t not in EventType._value2member_map_]
        if unknown:
            # Dropped silently, a filter of only unknown types would become "every event".
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"types: {unknown[0]} is not an EventType")
            return
        types = {EventType(t) for t in request.types}
        live: asyncio.Queue[Event | None] = asyncio.Queue()

        def listen(event: Event) -> None:
            if live.qsize() >= WATCH_BUFFER:
                live.put_nowait(None)
            else:
                live.put_nowait(event)

        unsubscribe = self._core.events.subscribe(job.id, listen)
        try:
            last = request.after_seq
            backlog, covered = self._core.events.recent(job.id, last)
            if not covered:
                # Older events are on disk only; make sure everything before the window is written,
                # then read them a page at a time (bounded memory, whatever the retention).
                await self._committer.durable()
                first = backlog[0].seq if backlog else self._core.events.durable_seq(job.id) + 1
                loop = asyncio.get_running_loop()
                while last < first - 1:
                    page = await loop.run_in_executor(
                        None, self._store.read_events, job.id, last, first - 1, MAX_WATCH_PAGE
                    )
                    for event in page:
                        if not types or event.type in types:
                            yield event.to_proto()
                    last = page[-1].seq if len(page) == MAX_WATCH_PAGE else first - 1
            for event in backlog:
                last = event.seq
                if not types or event.type in types:
                    yield event.to_proto()
            # The record as of the backlog's last event (records and events are published
            # together), not as of the call: the job may have ended in between.
            current = self._views.find(job.id)
            if current is None or (JobStatus(current.status) in FINISHED and not request.follow):
                return
            while True:
                pushed = await live.get()
                if pushed is None:
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"watcher fell behind; reconnect with after_seq={last}",
                    )
                    return
                if pushed.seq <= last:
                    continue
                last = pushed.seq
                if not types or pushed.type in types:
                    yield pushed.to_proto()
                if pushed.type is EventType.JOB_DELETED or (
                    pushed.type in TERMINAL_EVENTS and not request.follow
                ):
                    return
        finally:
            unsubscribe()


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    """The worker API: the Work stream and its unary forms."""

    def __init__(
        self,
        core: Core,
        committer: Committer,
        dispatcher: Dispatcher,
        heartbeat_ms: int,
        limits: Limits = DEFAULT_LIMITS,
        registry: WorkerRegistry | None = None,
    ) -> None:
        self._core = core
        self._committer = committer
        self._dispatcher = dispatcher
        self._limits = limits
        self._registry = registry if registry is not None else WorkerRegistry()
        # Work streams open per worker id (--max-streams-per-worker).
        self._streams: dict[str, int] = {}
        self.results_taken = 0
        """Result messages (completions, failures) taken on Work streams so far: a shutdown ends the
        streams once none has come for a moment, so every result in hand is answered."""
        self._welcome = worker_pb2.Welcome(coordinator_version=__version__)
        if heartbeat_ms:
            self._welcome.heartbeat_interval.FromMilliseconds(heartbeat_ms)

    # -- shared by stream and unary -------------------------------------------------------------

    def _heartbeat(self, request: worker_pb2.HeartbeatRequest, holder: str) -> worker_pb2.HeartbeatResponse:
        self._limits.check_count("leases", len(request.leases))
        beats = [
            Beat(
                fence=h.fence,
                cursor=h.cursor if h.HasField("cursor") else None,
                details=_details(h.details),
                message=h.message,
                claimed=h.claimed if h.splittable else -1,
                shrink=(h.shrink.new_end, h.shrink.accepted) if h.HasField("shrink") else None,
            )
            for h in request.leases
        ]
        out = worker_pb2.HeartbeatResponse()
        now = time.time()
        directives = self._core.heartbeat(beats, now, holder)
        # Leases the worker has not started may go to an idle worker (docs/protocol.md, "Revoke").
        waiting = [
            fence
            for h, (fence, action, _, _) in zip(request.leases, directives, strict=True)
            if h.waiting and action is Action.CONTINUE
        ]
        revoked = self._dispatcher.revocable(waiting, holder) if waiting else set()
        if revoked:
            log.info(
                "taking back %d leases worker %s has not started, for idle workers",
                len(revoked),
                holder,
                extra={"worker_id": holder},
            )
        for fence, action, reason, new_end in directives:
            if fence in revoked:
                action, reason = Action.REVOKE, "another worker of the queue is idle"
            out.directives.add(fence=fence, action=int(action), reason=reason, new_end=new_end)
        self._registry.heartbeat(holder, now)
        return out

    def _complete(self, request: worker_pb2.CompleteRequest, holder: str) -> worker_pb2.CompleteResponse:
        self._limits.check_count("fences and skipped", len(request.fences) + len(request.skipped))
        for name in ("results_json", "ends"):
            given = len(getattr(request, name))
            if given and given != len(request.fences):
                raise errors.InvalidArgument(
                    name, f"has {given} entries for {len(request.fences)} fences: give one per fence, or none"
                )
        handler_us = request.handler_us
        self._limits.check_count("failed_leaves", len(request.failed_leaves))
        failed = _failed_leaves(request) if request.failed_leaves else None
        accepted, rejected = self._core.complete(
            request.fences,
            request.skipped,
            time.time(),
            request.results_json,
            holder,
            request.ends,
            handler_us if len(handler_us) == len(request.fences) else (),
            failed,
        )
        out = worker_pb2.CompleteResponse(accepted=accepted, request_id=request.request_id)
        _rejections(rejected, out.rejected)
        self._dispatcher.poke()
        self._registry.completed(holder, request, out)
        return out

    def _fail(self, request: worker_pb2.FailRequest, holder: str) -> worker_pb2.FailResponse:
        self._limits.check_count("failures", len(request.failures))
        failures = [
            Failure(
                fence=f.fence,
                retryable=not f.permanent,
                message=f.message,
                released=f.released,
                cursor=f.cursor if f.HasField("cursor") else None,
                details=_details(f.details),
            )
            for f in request.failures
        ]
        accepted, rejected = self._core.fail(failures, time.time(), holder)
        out = worker_pb2.FailResponse(accepted=accepted, request_id=request.request_id)
        _rejections(rejected, out.rejected)
        self._dispatcher.poke()
        self._registry.failed(holder, request, out)
        return out

    # -- stream ---------------------------------------------------------------------------------

    async def Work(
        self, request_iterator: AsyncIterator[worker_pb2.WorkRequest], context: Any
    ) -> AsyncIterator[worker_pb2.WorkResponse]:
        """One worker's stream: a reader task applies requests; this generator writes responses."""
        peer = context.peer()
        session = Session(worker_id=peer, queues=("default",), address=peer)
        reader = asyncio.create_task(self._read(request_iterator, session))
        reader.add_done_callback(lambda _: session.out.put_nowait(None))
        try:
            while True:
                msg = await session.out.get()
                if msg is None:
                    break
                yield msg
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                err = reader.exception()
                if isinstance(err, errors.CoordinatorError):
                    await context.abort(STATUS_OF[type(err)], str(err))
                raise err  # type: ignore[misc]
        finally:
            self._dispatcher.remove(session)
            reader.cancel()
            if session.said_hello:
                self._stream_ended(session.worker_id)
                self._registry.disconnected(session)

    def _stream_started(self, worker_id: str) -> None:
        open_now = self._streams.get(worker_id, 0)
        if open_now >= self._limits.streams_per_worker:
            raise errors.ResourceExhausted(
                f"worker {worker_id[:64]!r} has {open_now} Work streams open, the coordinator's "
                f"--max-streams-per-worker ({self._limits.streams_per_worker})"
            )
        self._streams[worker_id] = open_now + 1

    def _stream_ended(self, worker_id: str) -> None:
        left = self._streams.pop(worker_id, 1) - 1
        if left:
            self._streams[worker_id] = left

    def _reply_when_durable(self, session: Session, response: worker_pb2.WorkResponse) -> None:
        self.results_taken += 1

        def send(fut: asyncio.Future[None]) -> None:
            if fut.cancelled() or fut.exception() is not None:
                # Not durable: end the stream so the worker reconnects and sends its results again.
                session.out.put_nowait(None)
            else:
                session.out.put_nowait(response)

        self._committer.durable().add_done_callback(send)

    async def _read(self, requests: AsyncIterator[worker_pb2.WorkRequest], session: Session) -> None:
        async for request in requests:
            if session.out.qsize() > MAX_QUEUED_ANSWERS:
                # Answers pile up only when the worker does not read them: do not hold more.
                log.warning("worker %s does not read its answers: ending its stream", session.worker_id)
                raise errors.ResourceExhausted(
                    f"more than {MAX_QUEUED_ANSWERS} answers wait to be read on this stream: read them"
                )
            kind = request.WhichOneof("msg")
            if kind == "hello":
                if session.said_hello:
                    raise errors.InvalidArgument("hello", "a Work stream sends hello once, first")
                hello = request.hello
                session.worker_id = hello.worker_id[:MAX_WORKER_ID] or session.worker_id
                session.queues = _queues(hello.queues, "hello.queues")
                session.concurrency = hello.concurrency
                session.packed = hello.packed_grants
                # Leaf runs are granted in packed columns only (a run is a lease wider than a leaf).
                session.runs = hello.packed_grants and hello.leaf_runs
                self._stream_started(session.worker_id)
                session.said_hello = True
                self._registry.connected(session, hello, time.time())
                log.info(
                    "worker %s connected (%s; queues %s)",
                    session.worker_id,
                    hello.sdk[:MAX_WORKER_ID] or "sdk not named",
                    ",".join(session.queues),
                    extra={"worker_id": session.worker_id},
                )
                self._dispatcher.add(session)
                session.out.put_nowait(worker_pb2.WorkResponse(welcome=self._welcome))
            elif not session.said_hello:
                raise errors.InvalidArgument("hello", "the first message of a Work stream must be hello")
            elif kind == "lease":
                lease = request.lease
                if lease.withdraw:
                    if lease.count:
                        raise errors.InvalidArgument("lease.count", "must be 0 with withdraw")
                    self._dispatcher.withdraw(session)
                elif not lease.count:
                    raise errors.InvalidArgument("lease.count", "must be greater than 0")
                else:
                    self._limits.check_count("lease.count", lease.count)
                    self._dispatcher.credit(session, lease.count)
            elif kind == "heartbeat":
                beat = self._heartbeat(request.heartbeat, session.worker_id)
                session.out.put_nowait(worker_pb2.WorkResponse(heartbeat=beat))
            elif kind == "complete":
                done = self._complete(request.complete, session.worker_id)
                self._reply_when_durable(session, worker_pb2.WorkResponse(complete=done))
            elif kind == "fail":
                failed = self._fail(request.fail, session.worker_id)
                self._reply_when_durable(session, worker_pb2.WorkResponse(fail=failed))
        # Half-closed: nothing more comes from this worker. Grant it nothing more, then end the
        # stream once the answers it is owed are written and queued (they resolve in order).
        self._dispatcher.close(session)
        await self._committer.durable()

    # -- unary ----------------------------------------------------------------------------------

    @rpc
    async def Lease(self, request: worker_pb2.LeaseRequest, context: Any) -> worker_pb2.LeaseGrant:
        if request.count == 0:
            raise errors.InvalidArgument("count", "must be greater than 0")
        self._limits.check_count("count", request.count)
        session = Session(
            worker_id=_holder(request.worker_id, context), queues=_queues(request.queues, "queues")
        )
        self._dispatcher.add(session)
        self._dispatcher.credit(session, request.count)
        grant = worker_pb2.LeaseGrant()
        try:
            wait = min(request.wait.ToMilliseconds(), MAX_LEASE_WAIT_MS) if request.HasField("wait") else 0
            first = await asyncio.wait_for(session.out.get(), timeout=max(wait, 1) / 1000)
            if first is not None and first.HasField("grant"):
                grant.MergeFrom(first.grant)
        except TimeoutError:
            pass
        finally:
            self._dispatcher.remove(session)
        while not session.out.empty():
            late = session.out.get_nowait()
            if late is not None and late.HasField("grant"):
                grant.MergeFrom(late.grant)
        return grant

    @rpc
    async def Heartbeat(
        self, request: worker_pb2.HeartbeatRequest, context: Any
    ) -> worker_pb2.HeartbeatResponse:
        return self._heartbeat(request, _holder(request.worker_id, context))

    @rpc
    async def Complete(
        self, request: worker_pb2.CompleteRequest, context: Any
    ) -> worker_pb2.CompleteResponse:
        out = self._complete(request, _holder(request.worker_id, context))
        await self._committer.durable()
        return out

    @rpc
    async def Fail(self, request: worker_pb2.FailRequest, context: Any) -> worker_pb2.FailResponse:
        out = self._fail(request, _holder(request.worker_id, context))
        await self._committer.durable()
        return out

    @rpc
    async def ListWorkers(
        self, request: worker_pb2.ListWorkersRequest, context: Any
    ) -> worker_pb2.ListWorkersResponse:
        workers = self._registry.workers(self._core.leases.holder_counts())
        return worker_pb2.ListWorkersResponse(workers=workers)


def _failed_leaves(request: worker_pb2.CompleteRequest) -> dict[int, list[LeafFailure]]:
    """``request.failed_leaves`` by fence; INVALID_ARGUMENT when one names a fence the request
    does not complete or an empty range."""
    fences = set(request.fences)
    out: dict[int, list[LeafFailure]] = {}
    for item in request.failed_leaves:
        if item.fence not in fences:
            raise errors.InvalidArgument(
                "failed_leaves", f"names fence {item.fence}, which is not one of this request's fences"
            )
        if item.start >= item.end:
            raise errors.InvalidArgument(
                "failed_leaves", f"has an empty range [{item.start}, {item.end}) for fence {item.fence}"
            )
        out.setdefault(item.fence, []).append(LeafFailure(item.start, item.end, item.message, item.permanent))
    return out
