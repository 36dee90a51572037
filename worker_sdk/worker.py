"""The Python worker: pull leases over one stream, run the handler, heartbeat, report in batches.

One asyncio loop per worker process. Sync handlers run in a thread pool of
``concurrency`` threads, each submission taking waiting leases one after another
for a couple of milliseconds (one thread hop per batch of short leaves); async
handlers run as tasks on the loop. How many leases are kept in hand follows the
leaves' observed durations (``pacing.Pacer``). Results are batched (one message
per few milliseconds) and kept until the coordinator acknowledges them, so a
reconnect after a coordinator restart sends them again. See docs/protocol.md for
the wire contract this follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import random
import signal
import socket
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from importlib.metadata import version
from typing import Any

from grpc import aio

from parcelo import defaults
from parcelo.channel import TLS, open_aio_channel, token_metadata
from parcelo.context import Context, Handler, Range, ShouldProcess
from parcelo.errors import PermanentError
from parcelo.grants import GrantedLease, leases_of
from parcelo.outbox import Outbox
from parcelo.pacing import Pacer
from parcelo.runs import RunResult, first_leaf, leaves
from parcelo.tracing import HandlerSpans, global_provider
from parcelo.v1 import types_pb2, worker_pb2, worker_pb2_grpc

log = logging.getLogger(__name__)

SDK = f"parcelo-python/{version('parcelo')}"
"""What a worker tells the coordinator it runs (``WorkerHello.sdk``); the version is pyproject.toml's."""
MAX_MESSAGE = 4096


@dataclass
class WorkerStats:
    """What a worker did; handy in tests and logs."""

    completed: int = 0
    skipped: int = 0
    failed: int = 0
    released: int = 0
    revoked: int = 0
    rejected: int = 0
    dropped: int = 0
    connects: int = 0


@dataclass(eq=False, slots=True)
class _Held:
    """A lease in hand: waiting for a slot, or running.

    A leaf lease waits in ``Worker._waiting`` until a handler takes it; whoever removes it from
    there (the loop starting an async handler, a pool thread starting a sync one, or the loop
    giving it back) owns its start, so "not started" is "still in the deque" and needs no lock.
    """

    lease: GrantedLease
    # Set when its handler starts (on the loop for async handlers, in the pool thread for sync ones).
    ctx: Context | None = None
    task: asyncio.Future[Any] | None = None  # async handlers only
    # The handler's run time in microseconds, once it ran (sent with its completion).
    run_us: int = 0
    # Set by directives: report nothing (cancel/lost), or give the lease back (release).
    dropped: bool = False
    release: bool = False
    # Whether a heartbeat told the coordinator its handler claims (so it may be split).
    claims_told: bool = False
    # A leaf run (docs/protocol.md, "Leaf runs"): its job's max_range_size (0: the lease is one
    # leaf), how many of its leaves ran and up to where, and the ones that failed.
    run_size: int = 0
    ran: int = 0
    done_to: int = 0
    failed_leaves: list[worker_pb2.LeafFailure] | None = None


def _claims(beat: worker_pb2.LeaseHeartbeat, ctx: Context) -> bool:
    """What a heartbeat says of a splittable handler: how far it claimed, and (once it accepted
    a SHRINK) its new end, again every time, in case the first answer was lost. Returns whether
    the handler claims."""
    if not ctx.splittable:
        return False
    beat.splittable = True
    beat.claimed = ctx.claimed
    if ctx.end < ctx.leaf.end:
        beat.shrink.new_end, beat.shrink.accepted = ctx.end, True
    return True


def _ran_to(held: _Held) -> int:
    """Where a lease was run to when a SHRINK (or, for a leaf run, a RELEASE) ended it early
    (0: its end)."""
    if held.run_size:
        return held.done_to if held.done_to < held.lease.end else 0
    ctx = held.ctx
    return ctx.end if ctx is not None and ctx.end < ctx.leaf.end else 0


def backoff_delays(initial: float, maximum: float, rng: random.Random) -> Any:
    """Reconnect delays: exponential from ``initial`` to ``maximum``, each with ±20% jitter."""
    delay = initial
    while True:
        yield delay * (0.8 + 0.4 * rng.random())
        delay = min(maximum, delay * 2)


class Worker:
    """A worker that runs ``handler`` on leaves from a coordinator at ``target``.

    Args:
        target: ``host:port`` of the coordinator.
        handler: ``(range, ctx)``, plain or async.
        queues: Queues to take leases from.
        concurrency: Handlers running at once.
        prefetch: Leases kept in hand beyond the running ones. ``None`` (the default): about
            a quarter second of work, from the leaves' observed durations, at most
            ``defaults.WORKER_PREFETCH_MAX``; a number fixes the count.
        should_process: Pruning callback ``(range, is_leaf) -> bool`` for probe leases.
        worker_id: Name shown to the coordinator (default ``host:pid``).
        drain_timeout: On stop, how long running handlers get to finish.
        tls: Connect over TLS (see :class:`parcelo.channel.TLS`); plaintext when ``None``. The
            files are read once, here.
        token: Bearer token for a coordinator started with ``--auth-tokens`` (role ``worker``).
        tracer_provider: An OpenTelemetry ``TracerProvider`` for the spans of handler runs, each a
            child of its job's trace. Default: the global one, when the application (or
            ``parcelo-worker``, from the ``OTEL_*`` variables) installed one; else no spans.

    Raises:
        ConfigError: A TLS file cannot be read or the token cannot be sent as metadata.
        ValueError: ``concurrency`` or ``prefetch`` is out of range.
    """

    def __init__(
        self,
        target: str,
        handler: Handler,
        *,
        queues: Sequence[str] = (defaults.DEFAULT_QUEUE,),
        concurrency: int = defaults.WORKER_CONCURRENCY,
        prefetch: int | None = None,
        should_process: ShouldProcess | None = None,
        worker_id: str | None = None,
        drain_timeout: timedelta = defaults.DRAIN_TIMEOUT,
        tls: TLS | None = None,
        token: str | None = None,
        tracer_provider: Any = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if prefetch is not None and prefetch < 0:
            raise ValueError("prefetch must not be negative")
        self.target = target
        self.handler = handler
        self.queues = list(queues) or [defaults.DEFAULT_QUEUE]
        self.concurrency = concurrency
        self.prefetch = prefetch
        self._pacer = Pacer(concurrency, prefetch)
        self.should_process = should_process
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.drain_timeout = drain_timeout
        self._credentials = tls.credentials() if tls is not None else None
        self._metadata = token_metadata(token)
        self.stats = WorkerStats()
        self._is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            type(handler).__call__
        )
        self._held: dict[int, _Held] = {}
        self._waiting: deque[_Held] = deque()
        # Sync leases pool threads finished, as (held, error, result, span), for the loop to report.
        self._finished: deque[tuple[_Held, BaseException | None, Any, Any]] = deque()
        self._running = 0
        self._params: dict[str, dict[str, Any]] = {}
        # Lease TTL of each job, from its JobInfo: heartbeats follow the shortest held.
        self._ttls: dict[str, float] = {}
        # Jobs whose leaf results the coordinator keeps (a reduce): only theirs are encoded and sent.
        self._reducing: set[str] = set()
        # Each job's reduce and max_range_size, from its JobInfo: a lease wider than that is a
        # leaf run, whose leaves' results are combined here.
        self._reduces: dict[str, int] = {}
        self._sizes: dict[str, int] = {}
        # Each job's trace context, from its JobInfo: the parent of its handler spans.
        self._traceparents: dict[str, str] = {}
        provider = tracer_provider if tracer_provider is not None else global_provider()
        self._spans = HandlerSpans(provider) if provider is not None else None
        self._outbox = Outbox()
        self._outstanding = 0  # credit asked for on this stream and not yet granted
        # Leases given back on REVOKE whose room is not asked for again until a handler finds
        # nothing waiting: the coordinator took them for an idle worker, and asking at once
        # could win them back before that worker gets them.
        self._revoked = 0
        self._out: asyncio.Queue[worker_pb2.WorkRequest | None] | None = None
        self._flush_handle: asyncio.TimerHandle | None = None
        self._stopping = False
        self._stop_event: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._rng = random.Random()

    # -- lifecycle ------------------------------------------------------------------------------

    def run_sync(self) -> None:
        """Run until SIGTERM or SIGINT, then drain and return."""
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            await self.run()

        asyncio.run(main())

    def stop(self) -> None:
        """Begin a graceful stop: no new leases, running handlers finish (within the drain timeout)."""
        self._stopping = True
        if self._stop_event is not None:
            self._stop_event.set()

    async def run(self) -> None:
        """Work until :meth:`stop` is called, then drain and return."""
        self._stop_event = asyncio.Event()
        self._changed = asyncio.Event()
        if self._stopping:
            self._stop_event.set()
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="parcelo-handler")
        connection = asyncio.create_task(self._connect_forever())
        try:
            await self._stop_event.wait()
            log.info(
                "stopping: giving back %d waiting leases, draining %d running",
                len(self._waiting),
                self._running,
            )
            # Credit not yet used is taken back, so nothing more is granted (not even the leases
            # this worker gives back now).
            if self._send(worker_pb2.WorkRequest(lease=worker_pb2.LeaseRequest(withdraw=True))):
                self._outstanding = 0
            self._release_waiting()
            if not await self._wait_until(lambda: self._running == 0, self.drain_timeout.total_seconds()):
                log.warning("drain timeout: stopping %d running handlers", self._running)
                for held in list(self._held.values()):
                    if held.ctx is not None:
                        held.release = True
                        held.ctx.cancelled.set()
                        if held.task is not None:
                            held.task.cancel()
                await self._wait_until(lambda: self._running == 0, 5)
            self._flush()
            await self._wait_until(lambda: not self._outbox.unanswered(), 10)
        finally:
            connection.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connection
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _wait_until(self, predicate: Any, seconds: float) -> bool:
        assert self._changed is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))
        return True

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    # -- connection -----------------------------------------------------------------------------

    async def _connect_forever(self) -> None:
        delays = backoff_delays(
            defaults.RECONNECT_INITIAL.total_seconds(), defaults.RECONNECT_MAX.total_seconds(), self._rng
        )
        while True:
            try:
                if await self._session():
                    delays = backoff_delays(
                        defaults.RECONNECT_INITIAL.total_seconds(),
                        defaults.RECONNECT_MAX.total_seconds(),
                        self._rng,
                    )
            except asyncio.CancelledError:
                raise
            except aio.AioRpcError as err:
                log.warning("stream to %s ended: %s %s", self.target, err.code().name, err.details())
            except Exception:
                log.exception("stream to %s failed", self.target)
            finally:
                self._out = None
                self._outstanding = 0
            await asyncio.sleep(next(delays))

    async def _session(self) -> bool:
        """One stream, from hello until it breaks. Returns whether it got as far as the welcome."""
        async with open_aio_channel(
            self.target, self._credentials, options=[("grpc.max_receive_message_length", 16 << 20)]
        ) as channel:
            # The token goes with the call, once: the whole stream is one call.
            call = worker_pb2_grpc.WorkerServiceStub(channel).Work(metadata=self._metadata)
            # Packed grants: no protobuf object per lease, on either side (docs/protocol.md).
            hello = worker_pb2.Hello(
                worker_id=self.worker_id,
                queues=self.queues,
                sdk=SDK,
                concurrency=self.concurrency,
                packed_grants=True,
                leaf_runs=True,
            )
            await call.write(worker_pb2.WorkRequest(hello=hello))
            welcome = await call.read()
            if welcome is aio.EOF or welcome.WhichOneof("msg") != "welcome":
                raise ConnectionError("coordinator did not answer hello")
            self.stats.connects += 1
            log.info("connected to %s as %s", self.target, self.worker_id)
            out: asyncio.Queue[worker_pb2.WorkRequest | None] = asyncio.Queue()
            self._out = out
            writer = asyncio.create_task(self._write(call, out))
            suggested = welcome.welcome.heartbeat_interval
            interval_ms = suggested.ToMilliseconds() if welcome.welcome.HasField("heartbeat_interval") else 0
            beats = asyncio.create_task(self._heartbeats(interval_ms))
            try:
                self._resend_unacked()
                self._send_heartbeat()
                self._ask_for_leases()
                while True:
                    msg = await call.read()
                    if msg is aio.EOF:
                        return True
                    self._on_message(msg)
            finally:
                writer.cancel()
                beats.cancel()
                self._out = None

    async def _write(self, call: Any, out: asyncio.Queue[worker_pb2.WorkRequest | None]) -> None:
        # The only task that writes to the stream: grpc.aio forbids concurrent writes.
        while (msg := await out.get()) is not None:
            await call.write(msg)

    def _send(self, msg: worker_pb2.WorkRequest) -> bool:
        if self._out is None:
            return False
        self._out.put_nowait(msg)
        return True

    async def _heartbeats(self, interval_ms: int) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            # Re-evaluated often: the interval follows the TTL of the leases held right now, and
            # the coordinator's suggestion never stretches it past a third of that TTL.
            interval = self._default_interval()
            if interval_ms:
                interval = min(interval, interval_ms / 1000)
            if self._waiting:
                # Leases wait for a slot: say so soon, so an idle worker can have them (REVOKE).
                interval = min(interval, defaults.WAITING_REPORT.total_seconds())
            await asyncio.sleep(min(interval, 0.1))
            if self._collect():
                # A long leaf holds a pool thread: the short ones it ran before are reported now.
                self._notify()
                self._ask_for_leases()
            if loop.time() - last >= interval or self._untold_claims():
                # A handler that started claiming is told at once: a split is worth most early.
                last = loop.time()
                self._send_heartbeat()

    def _untold_claims(self) -> bool:
        """Whether a lease's handler claims and no heartbeat said so yet (O(leases held), every
        0.1 s at most: a few hundred attribute reads)."""
        return any(
            not held.claims_told and held.ctx is not None and held.ctx.splittable
            for held in self._held.values()
        )

    def _default_interval(self) -> float:
        held_jobs = {h.lease.job_id for h in self._held.values()}
        ttls = [self._ttls[job] for job in held_jobs if job in self._ttls]
        ttl = min(ttls) if ttls else defaults.LEASE_TTL.total_seconds()
        return max(0.05, ttl / defaults.HEARTBEAT_FRACTION)

    def _send_heartbeat(self) -> None:
        if not self._held:
            return
        request = worker_pb2.HeartbeatRequest(worker_id=self.worker_id)
        for fence, held in self._held.items():
            beat = request.leases.add(fence=fence)
            ctx = held.ctx
            if ctx is not None and held.run_size:
                # A leaf run has no checkpoints and is never split: a message at most.
                beat.message = ctx.take_message()
            elif ctx is not None:
                checkpoint = ctx.last_checkpoint
                if checkpoint is not None:
                    beat.cursor, beat.details = checkpoint
                beat.message = ctx.take_message()
                held.claims_told = _claims(beat, ctx)
            elif held.lease.kind == worker_pb2.LEASE_KIND_LEAF and not held.release:
                # Not started (a pool thread may be starting it right now: a REVOKE for it then
                # finds it gone from the deque and is ignored).
                beat.waiting = True
        self._send(worker_pb2.WorkRequest(heartbeat=request))

    # -- messages from the coordinator ----------------------------------------------------------

    def _on_message(self, msg: worker_pb2.WorkResponse) -> None:
        kind = msg.WhichOneof("msg")
        if kind == "grant":
            self._on_grant(msg.grant)
        elif kind == "heartbeat":
            self._on_directives(msg.heartbeat)
        elif kind in ("complete", "fail"):
            answer = msg.complete if kind == "complete" else msg.fail
            for fence in answer.accepted:
                self._outbox.answered(fence)
            for rejection in answer.rejected:
                self._outbox.answered(rejection.fence)
                self.stats.rejected += 1
                log.info(
                    "result for lease %d rejected: %s",
                    rejection.fence,
                    rejection.message,
                    extra={"fence": rejection.fence, "worker_id": self.worker_id},
                )
            self._notify()

    def _on_grant(self, grant: worker_pb2.LeaseGrant) -> None:
        for info in grant.jobs:
            if info.HasField("lease_ttl"):
                self._ttls[info.job_id] = info.lease_ttl.ToMilliseconds() / 1000
            if info.reduce not in (types_pb2.REDUCE_UNSPECIFIED, types_pb2.REDUCE_NONE):
                self._reducing.add(info.job_id)
            self._reduces[info.job_id] = info.reduce
            self._sizes[info.job_id] = info.max_range_size
            if info.traceparent:
                self._traceparents[info.job_id] = info.traceparent
            try:
                self._params[info.job_id] = json.loads(info.params_json or "{}")
            except ValueError:
                self._params[info.job_id] = {}
        leases = leases_of(grant)
        self._outstanding = max(0, self._outstanding - len(leases))
        sizes = self._sizes
        for lease in leases:
            held = _Held(lease)
            size = sizes.get(lease.job_id, 0)
            if size and lease.end - lease.start > size and lease.kind == worker_pb2.LEASE_KIND_LEAF:
                held.run_size = size
                held.claims_told = True  # never splittable: nothing to tell
            if self._stopping:
                self._held[lease.fence] = held
                self._give_back(held)
                continue
            if lease.kind == worker_pb2.LEASE_KIND_PROBE:
                self._held[lease.fence] = held
                asyncio.get_running_loop().create_task(self._probe(held))
            else:
                self._held[lease.fence] = held
                self._waiting.append(held)
        self._pump()

    def _on_directives(self, answer: worker_pb2.HeartbeatResponse) -> None:
        for directive in answer.directives:
            held = self._held.get(directive.fence)
            if held is None or directive.action == worker_pb2.DIRECTIVE_ACTION_CONTINUE:
                continue
            action = directive.action
            if action == worker_pb2.DIRECTIVE_ACTION_SHRINK:
                self._answer_shrink(directive.fence, held, directive.new_end)
                continue
            if action == worker_pb2.DIRECTIVE_ACTION_REVOKE:
                # Another worker is idle: give the lease back if no handler took it yet.
                if self._unstart(held):
                    self.stats.revoked += 1
                    self._revoked += 1
                    self._give_back(held)
                continue
            if action == worker_pb2.DIRECTIVE_ACTION_RELEASE:
                held.release = True
            else:  # CANCEL or LOST: the lease is gone; report nothing.
                held.dropped = True
                self.stats.dropped += 1
            # The flags are set before the start is looked at: a pool thread sets ctx before it
            # reads them, so it either sees them (and skips the handler) or its ctx is seen here.
            if held.lease.kind == worker_pb2.LEASE_KIND_PROBE or self._unstart(held):
                # Not started yet: forget it (release: give it back at once).
                if held.release and not held.dropped:
                    self._give_back(held)
                else:
                    self._held.pop(directive.fence, None)
            elif held.run_size and not held.dropped:
                pass  # a leaf run given a RELEASE finishes the leaf it is in, then stops
            elif held.ctx is not None:
                held.ctx.cancelled.set()
                if held.task is not None:
                    held.task.cancel()
        self._ask_for_leases()

    def _answer_shrink(self, fence: int, held: _Held, new_end: int) -> None:
        """Accept a SHRINK unless the handler claimed at or past ``new_end`` (a lease not
        running yet has no claims, and is not split), and answer at once."""
        ctx = held.ctx
        # A leaf run is never split (it is short, and its handler's claims are its leaves').
        accepted = ctx is not None and not held.run_size and ctx.shrink(new_end)
        beat = worker_pb2.LeaseHeartbeat(fence=fence)
        if ctx is not None:
            _claims(beat, ctx)
        beat.shrink.new_end, beat.shrink.accepted = new_end, accepted
        self._send(
            worker_pb2.WorkRequest(
                heartbeat=worker_pb2.HeartbeatRequest(worker_id=self.worker_id, leases=[beat])
            )
        )

    # -- running --------------------------------------------------------------------------------

    def _pump(self) -> None:
        if self._is_async:
            while self._waiting and self._running < self.concurrency and not self._stopping:
                held = self._waiting.popleft()
                self._running += 1
                if not held.run_size:
                    held.ctx = self._context(held.lease)
                    held.task = asyncio.get_running_loop().create_task(self._run(held))
                else:
                    held.ctx = self._first_leaf(held)
                    held.task = asyncio.get_running_loop().create_task(self._run_leaf_run(held))
        elif not self._stopping:
            # Each submission takes waiting leases itself, so only start as many as the waiting
            # work needs (a thread per lease for long leaves, one for a crowd of short ones).
            loop = asyncio.get_running_loop()
            for _ in range(self._pacer.submissions(len(self._waiting), self._running)):
                self._running += 1
                loop.run_in_executor(self._pool, self._run_leases).add_done_callback(self._ran)
        self._ask_for_leases()

    def _context(self, lease: GrantedLease, leaf: Range | None = None) -> Context:
        """The context of ``lease``'s handler; ``leaf``: of that one leaf of a leaf run (a first
        attempt, no checkpoint) instead."""
        if leaf is None:
            leaf, cursor, details = Range(lease.start, lease.end), lease.cursor or lease.start, lease.details
        else:
            cursor, details = leaf.start, b""
        return Context(
            job_id=lease.job_id,
            params=self._params.get(lease.job_id, {}),
            attempt=lease.attempt,
            fence=lease.fence,
            leaf=leaf,
            cursor=cursor,
            details=details or None,
        )

    def _unstart(self, held: _Held) -> bool:
        """Take ``held`` out of the waiting leases; False when a handler already took it."""
        try:
            self._waiting.remove(held)
        except ValueError:
            return False
        return True

    async def _run(self, held: _Held) -> None:
        """One async handler run, as a task on the loop."""
        ctx = held.ctx
        assert ctx is not None
        # The leaf itself unless an earlier attempt checkpointed: one Range less per leaf.
        range_ = ctx.leaf if ctx.cursor == ctx.leaf.start else Range(ctx.cursor, ctx.leaf.end)
        error: BaseException | None = None
        result: Any = None
        spans = self._spans
        span = self._span(held.lease, range_) if spans is not None else None
        started = time.perf_counter()
        try:
            if spans is not None and span is not None:
                with spans.current(span):
                    result = await self.handler(range_, ctx)
            else:
                result = await self.handler(range_, ctx)
        except asyncio.CancelledError:
            error = None if (held.dropped or held.release) else asyncio.CancelledError()
        except Exception as err:
            error = err
        finally:
            self._running -= 1
            held.run_us = max(1, int((time.perf_counter() - started) * 1e6))
        self._pacer.observe(held.run_us / 1e6)
        outcome = self._finish(held, error, result=result)
        if spans is not None and span is not None:
            spans.end(span, error, outcome)
        self._slot_freed()

    async def _run_leaf_run(self, held: _Held) -> None:
        """A leaf run with an async handler: its leaves one after another in this one task (an
        ``await`` of each handler, no task per leaf)."""
        lease = held.lease
        combined = RunResult(self._reduces.get(lease.job_id, 0))
        handler = self.handler
        spans = self._spans
        began = time.perf_counter()
        run_us = 0
        try:
            for start, end in leaves(lease.start, lease.end, held.run_size):
                if held.dropped or held.release:
                    break
                ctx, span = self._next_leaf(held, start, end)
                error: BaseException | None = None
                result: Any = None
                started = time.perf_counter()
                try:
                    if spans is not None and span is not None:
                        with spans.current(span):
                            result = await handler(ctx.leaf, ctx)
                    else:
                        result = await handler(ctx.leaf, ctx)
                except asyncio.CancelledError:
                    if held.dropped or held.release:
                        break  # this leaf is not done; what ran before it is reported
                    error = asyncio.CancelledError()
                except Exception as err:
                    error = err
                run_us += int((time.perf_counter() - started) * 1e6)
                self._leaf_ran(held, combined, start, end, error, result, span)
        finally:
            self._running -= 1
            held.run_us = max(1, run_us)
        self._pacer.observe(time.perf_counter() - began)
        self._finish(held, None, result=combined.value)
        self._slot_freed()

    def _leaf_run_in_thread(self, held: _Held) -> Any:
        """In a pool thread: a leaf run with a sync handler, its leaves one after another;
        returns their results combined."""
        lease = held.lease
        combined = RunResult(self._reduces.get(lease.job_id, 0))
        handler = self.handler
        spans = self._spans
        run_us = 0
        for start, end in leaves(lease.start, lease.end, held.run_size):
            if held.dropped or held.release:
                break
            ctx, span = self._next_leaf(held, start, end)
            error: BaseException | None = None
            result: Any = None
            started = time.perf_counter()
            try:
                if spans is not None and span is not None:
                    with spans.current(span):
                        result = handler(ctx.leaf, ctx)
                else:
                    result = handler(ctx.leaf, ctx)
            except BaseException as err:  # as in _run_leases: it fails this leaf only
                error = err
            run_us += int((time.perf_counter() - started) * 1e6)
            self._leaf_ran(held, combined, start, end, error, result, span)
        held.run_us = max(1, run_us)
        return combined.value

    def _first_leaf(self, held: _Held) -> Context:
        """The context of a leaf run's first leaf (made as the run starts: a started lease has one)."""
        lease = held.lease
        return self._context(lease, Range(lease.start, first_leaf(lease.start, lease.end, held.run_size)))

    def _next_leaf(self, held: _Held, start: int, end: int) -> tuple[Context, Any]:
        """The context (the one made when the run started, for its first leaf) and span (None
        without tracing) of the leaf ``[start, end)`` of a leaf run about to run."""
        ctx = held.ctx if start == held.lease.start else None
        if ctx is None:
            ctx = held.ctx = self._context(held.lease, Range(start, end))
        return ctx, self._span(held.lease, ctx.leaf) if self._spans is not None else None

    def _leaf_ran(
        self,
        held: _Held,
        combined: RunResult,
        start: int,
        end: int,
        error: BaseException | None,
        result: Any,
        span: Any,
    ) -> None:
        """One leaf of a leaf run ran: its result is combined, or it is noted as failed."""
        if error is None:
            why = combined.add(result)
            if why:
                error = PermanentError(why)
        if error is not None:
            failure = worker_pb2.LeafFailure(
                fence=held.lease.fence,
                start=start,
                end=end,
                message=f"{type(error).__name__}: {error}"[:MAX_MESSAGE],
                permanent=isinstance(error, PermanentError),
            )
            if held.failed_leaves is None:
                held.failed_leaves = []
            held.failed_leaves.append(failure)
            log.info(
                "leaf [%d, %d) of %s failed: %s",
                start,
                end,
                held.lease.job_id,
                failure.message,
                extra={"job_id": held.lease.job_id, "fence": held.lease.fence, "worker_id": self.worker_id},
            )
        held.done_to = end
        held.ran += 1
        if span is not None and self._spans is not None:
            self._spans.end(span, error, "failed" if error is not None else "completed")

    def _slot_freed(self) -> None:
        if not self._waiting:
            self._revoked = 0  # a slot is free and nothing waits: the room is wanted again
        self._notify()
        self._pump()

    def _span(self, lease: GrantedLease, range_: Range) -> Any:
        assert self._spans is not None
        return self._spans.start(
            job_id=lease.job_id,
            traceparent=self._traceparents.get(lease.job_id, ""),
            fence=lease.fence,
            start=range_.start,
            end=range_.end,
            attempt=lease.attempt,
            worker_id=self.worker_id,
        )

    def _run_leases(self) -> None:
        """In a pool thread: run waiting leases one after another for up to the batch time.

        Each lease taken goes to ``_finished`` as ``(held, error, result, span)``, which the loop
        reports when the submission ends, or on its next tick if a long leaf holds the thread.
        """
        done = self._finished
        taken = 0
        waiting = self._waiting
        handler = self.handler
        spans = self._spans
        began = time.perf_counter()
        budget = self._pacer.batch_time
        while not self._stopping and taken < defaults.COMPLETION_BATCH:
            try:
                held = waiting.popleft()
            except IndexError:
                break
            taken += 1
            run = held.run_size
            ctx = self._first_leaf(held) if run else self._context(held.lease)
            held.ctx = ctx
            if held.dropped or held.release:
                # A directive came as this thread took the lease: not run; _finish reports what
                # the directive asked for (nothing, or the lease given back).
                done.append((held, None, None, None))
                continue
            if run:
                done.append((held, None, self._leaf_run_in_thread(held), None))
                if time.perf_counter() - began >= budget:
                    break
                continue
            range_ = Range(ctx.cursor, ctx.leaf.end)
            span = self._span(held.lease, range_) if spans is not None else None
            error: BaseException | None = None
            result: Any = None
            started = time.perf_counter()
            try:
                if spans is not None and span is not None:
                    with spans.current(span):
                        result = handler(range_, ctx)
                else:
                    result = handler(range_, ctx)
            except BaseException as err:
                # SystemExit or KeyboardInterrupt raised in a pool thread stops nothing else:
                # like any error, it fails this leaf instead of leaving it held by nobody.
                error = err
            now = time.perf_counter()
            held.run_us = max(1, int((now - started) * 1e6))
            done.append((held, error, result, span))
            if now - began >= budget:
                break

    def _ran(self, future: asyncio.Future[None]) -> None:
        """On the loop: a sync submission ended; report its leases, start more."""
        self._running -= 1
        if future.cancelled():
            return  # the pool was shut down (the worker is stopping)
        if (err := future.exception()) is not None:
            # A defect outside the handler (which cannot raise out of _run_leases): logged.
            log.error("a handler thread failed", exc_info=err)
        self._collect()
        self._slot_freed()

    def _collect(self) -> int:
        """On the loop: report the sync leases pool threads finished; returns how many."""
        finished = self._finished
        spans = self._spans
        ran = 0
        ran_us = 0
        count = 0
        while finished:
            held, error, result, span = finished.popleft()
            count += 1
            if held.run_us:
                ran += 1
                ran_us += held.run_us
            outcome = self._finish(held, error, result=result)
            if spans is not None and span is not None:
                spans.end(span, error, outcome)
        if ran:
            self._pacer.observe(ran_us / 1e6, ran)
        return count

    async def _probe(self, held: _Held) -> None:
        lease = held.lease
        keep: Any = True
        try:
            if self.should_process is not None:
                keep = self.should_process(Range(lease.start, lease.end), lease.is_leaf)
                if inspect.isawaitable(keep):
                    keep = await keep
        except Exception as err:
            self._finish(held, err)
        else:
            held.ctx = None
            self._finish(held, None, skip=not keep)
        # A probe frees its slot without going through _pump: ask for more now, or a worker whose
        # grants held only probes would wait for ever.
        self._ask_for_leases()

    def _finish(
        self, held: _Held, error: BaseException | None, *, skip: bool = False, result: Any = None
    ) -> str:
        """Queue the result of a lease; returns what became of it (completed, skipped, failed,
        released or dropped), for its span."""
        fence = held.lease.fence
        if self._held.pop(fence, None) is None or held.dropped:
            return "dropped"
        run = bool(held.run_size)
        checkpoint = held.ctx.last_checkpoint if held.ctx is not None and not run else None
        if held.release and not (run and held.done_to > held.lease.start):
            self._give_back(held, checkpoint)
            return "released"
        # (A leaf run released part way completes what it ran: _ran_to says how far.)
        outbox = self._outbox
        text = ""
        if error is None and result is not None and held.lease.job_id in self._reducing:
            try:
                # An int (the common result, a count) is its own JSON, without the encoder.
                text = (
                    str(result)
                    if type(result) is int
                    else json.dumps(result, allow_nan=False, separators=(",", ":"))
                )
            except (TypeError, ValueError, RecursionError) as err:
                # Deterministic: the same handler would return the same value again.
                error = PermanentError(f"the handler's result is not JSON: {err}")
        outcome = "failed"
        if error is None:
            if skip:
                outbox.skip(fence)
                self.stats.skipped += 1
                outcome = "skipped"
            else:
                failed = held.failed_leaves or ()
                outbox.complete(fence, text, held.run_us, _ran_to(held), failed)
                if not run:
                    self.stats.completed += 1
                else:  # counted per leaf, as if each had been a lease
                    self.stats.completed += held.ran - len(failed)
                    self.stats.failed += len(failed)
                outcome = "completed"
        else:
            failure = worker_pb2.Failure(
                fence=fence,
                permanent=isinstance(error, PermanentError),
                message=f"{type(error).__name__}: {error}"[:MAX_MESSAGE],
            )
            if checkpoint is not None:
                failure.cursor, failure.details = checkpoint
            outbox.fail(failure)
            self.stats.failed += 1
            log.info(
                "leaf [%d, %d) of %s failed: %s",
                held.lease.start,
                held.lease.end,
                held.lease.job_id,
                failure.message,
                extra={"job_id": held.lease.job_id, "fence": fence, "worker_id": self.worker_id},
            )
        self._schedule_flush()
        return outcome

    def _give_back(self, held: _Held, checkpoint: tuple[int, bytes] | None = None) -> None:
        self._held.pop(held.lease.fence, None)
        failure = worker_pb2.Failure(fence=held.lease.fence, released=True, message="released")
        if checkpoint is not None:
            failure.cursor, failure.details = checkpoint
        self._outbox.fail(failure)
        self.stats.released += 1
        self._schedule_flush()

    def _release_waiting(self) -> None:
        while True:
            try:  # pool threads may take the last ones meanwhile: they run them
                held = self._waiting.popleft()
            except IndexError:
                break
            self._give_back(held)
        self._flush()

    # -- sending results and asking for more ----------------------------------------------------

    def _schedule_flush(self) -> None:
        if self._outbox.pending() >= defaults.COMPLETION_BATCH:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(
                defaults.COMPLETION_FLUSH.total_seconds(), self._flush
            )

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._out is None or not self._outbox.pending():
            return  # kept unanswered; sent again on reconnect
        for request in self._outbox.take(self.worker_id):
            self._send(request)

    def _resend_unacked(self) -> None:
        self._outbox.requeue_unanswered()
        self._flush()

    def _ask_for_leases(self) -> None:
        if self._stopping or self._out is None:
            return
        pacer = self._pacer
        want = pacer.in_hand() - len(self._held) - self._outstanding - self._revoked
        if want >= pacer.ask_batch() or (want > 0 and not self._held and not self._outstanding):
            self._outstanding += want
            self._send(worker_pb2.WorkRequest(lease=worker_pb2.LeaseRequest(count=want)))
