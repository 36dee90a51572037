"""What the tests share: reference answers, worker launchers, the run log, a raw Work-stream client,
and the pieces of in-process tests (a coordinator in the test's own event loop, a running SDK worker).

Test modules import from here and from ``parcelo``, never from one another. The
handlers that worker processes run live in ``tests/handlers.py`` (loaded by name,
``tests.handlers:record``); :func:`runs` reads the log they write.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import queue
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, ParamSpec

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parcelo import Range, Worker
from parcelo.channel import Metadata
from parcelo.client import Client
from parcelo.coordinator.server import Config, Coordinator
from parcelo.coordinator.store import Store
from parcelo.grants import GrantedLease, leases_of
from parcelo.testing import CoordinatorProcess, Proc, start_worker
from parcelo.v1 import types_pb2, worker_pb2, worker_pb2_grpc
from tests.handlers import keep_multiples

P = ParamSpec("P")

HANDLERS = "tests.handlers"
"""The module worker processes load their handlers from."""

# -- reference answers ---------------------------------------------------------------------------


def reference_leaves(start: int, end: int, max_size: int) -> list[tuple[int, int]]:
    """Leaves by the contract's rule, computed eagerly and independently of the tree.

    A node wider than ``max_size`` splits at ``mid = start + (end - start) // 2``.
    """
    if end - start <= max_size:
        return [(start, end)]
    mid = start + (end - start) // 2
    return reference_leaves(start, mid, max_size) + reference_leaves(mid, end, max_size)


def pruned_reference(start: int, end: int, size: int) -> tuple[list[tuple[int, int]], int, int]:
    """Under ``handlers.keep_multiples``: the leaves that run, the width skipped, the nodes materialised."""
    leaves: list[tuple[int, int]] = []
    skipped = 0
    nodes = 0

    def visit(s: int, e: int) -> None:
        nonlocal skipped, nodes
        nodes += 1
        if not keep_multiples(Range(s, e), e - s <= size):
            skipped += e - s
            return
        if e - s <= size:
            leaves.append((s, e))
            return
        mid = s + (e - s) // 2
        visit(s, mid)
        visit(mid, e)

    visit(start, end)
    return leaves, skipped, nodes


def raw_spec(end: int = 1000, size: int = 100, **fields: object) -> types_pb2.JobSpec:
    """A ``JobSpec`` over ``[0, end)`` as any gRPC client could send it (unchecked, unlike JobOptions)."""
    return types_pb2.JobSpec(range=types_pb2.Range(start=0, end=end), max_range_size=size, **fields)  # type: ignore[arg-type]


def tree_nodes(root: types_pb2.TreeNode) -> Iterator[types_pb2.TreeNode]:
    """Every node of a ``GetJobTree`` answer, pre-order."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children))


def completed_leaves(target: str, job_id: str, timeout: float = 120) -> list[tuple[int, int]]:
    """``(start, end)`` of every ``NODE_COMPLETED`` event of a finished job, in log order.

    Read with ``WatchJob`` from sequence 0, so the coordinator must retain them all
    (``--event-retention``). Each is one completion the coordinator accepted and wrote.
    """
    with Client(target, timeout=timeout) as client:
        return [
            (event.range.start, event.range.end)
            for event in client.watch(job_id, types=[types_pb2.EVENT_TYPE_NODE_COMPLETED], timeout=timeout)
            if event.type == types_pb2.EVENT_TYPE_NODE_COMPLETED
        ]


# -- health and full disks -----------------------------------------------------------------------


def health(coord: CoordinatorProcess) -> int:
    """The coordinator's ``grpc.health.v1`` status for the whole server (-1: it does not answer)."""
    try:
        answer = health_pb2_grpc.HealthStub(coord.channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    except grpc.RpcError:
        return -1
    return int(answer.status)


@contextlib.contextmanager
def tmpfs(mount: Path, size_mb: int) -> Iterator[Path]:
    """A fresh tmpfs of ``size_mb`` MB mounted on the new folder ``mount`` (root only), unmounted after."""
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def can_mount() -> bool:
    """Whether :func:`tmpfs` can work here (mounting needs root)."""
    return os.geteuid() == 0


def fill(fs: Path) -> Path:
    """Write a file until the filesystem is full; returns it (delete it to give the space back)."""
    filler = fs / "filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError:
            pass
        # The last few KB too, so that RocksDB's next append fails rather than fits.
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


# -- worker processes and their run log ----------------------------------------------------------


def start_recording_workers(
    coord: CoordinatorProcess,
    procs: list[Proc],
    log_dir: Path,
    run_log: Path,
    handler: str,
    *args: str,
    n: int = 1,
) -> list[Proc]:
    """Start ``n`` worker processes running ``tests.handlers.<handler>``, logging runs to ``run_log``.

    Each is appended to ``procs`` (the ``procs`` fixture kills what is left at the end).
    ``args`` are extra ``parcelo-worker`` flags.
    """
    started = [
        start_worker(
            coord.target,
            f"{HANDLERS}:{handler}",
            log_dir,
            *args,
            env={"PARCELO_TEST_LOG": str(run_log)},
            name=f"worker{len(procs) + i}",
        )
        for i in range(n)
    ]
    procs.extend(started)
    return started


def runs_with_pids(log: Path, event: str = "run") -> list[tuple[int, int, int, int]]:
    """``(start, end, attempt, pid)`` of each ``event`` line the recording handlers wrote to ``log``.

    The handlers of every language (tests/handlers.py, examples/node-worker, examples/go-worker)
    write the same line: ``event start end attempt pid``.
    """
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        kind, start, end, attempt, pid = line.split()
        if kind == event:
            out.append((int(start), int(end), int(attempt), int(pid)))
    return out


def runs(log: Path, event: str = "run") -> list[tuple[int, int, int]]:
    """``(start, end, attempt)`` of each ``event`` line ``tests/handlers.py`` wrote to ``log``, in order."""
    return [(start, end, attempt) for start, end, attempt, _ in runs_with_pids(log, event)]


# -- the Work stream by hand ---------------------------------------------------------------------


class RawWorker:
    """Speaks the Work stream directly: hello, lease, complete, heartbeat; answers read in order.

    A synchronous client for tests that need to control the protocol message by message.
    """

    def __init__(
        self,
        channel: grpc.Channel,
        worker_id: str = "raw",
        queues: tuple[str, ...] = ("default",),
        metadata: Metadata = (),
        *,
        leaf_runs: bool = False,
    ) -> None:
        self._out: queue.Queue[worker_pb2.WorkRequest | None] = queue.Queue()
        self._in: queue.Queue[worker_pb2.WorkResponse | Exception] = queue.Queue()
        # Leaf runs come in packed grants only (read them with lease_packed).
        hello = worker_pb2.Hello(
            worker_id=worker_id, queues=list(queues), packed_grants=leaf_runs, leaf_runs=leaf_runs
        )
        self._out.put(worker_pb2.WorkRequest(hello=hello))
        self._call = worker_pb2_grpc.WorkerServiceStub(channel).Work(self._requests(), metadata=metadata)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        welcome = self.next("welcome")
        self.heartbeat_interval_ms = welcome.welcome.heartbeat_interval.ToMilliseconds()

    def _requests(self) -> Iterator[worker_pb2.WorkRequest]:
        while True:
            msg = self._out.get()
            if msg is None:
                return
            yield msg

    def _read(self) -> None:
        try:
            for msg in self._call:
                self._in.put(msg)
        except Exception as err:  # the test decides whether a broken stream matters
            self._in.put(err)

    def next(self, kind: str, timeout: float = 10) -> worker_pb2.WorkResponse:
        """The next response of ``kind`` (others of other kinds are dropped).

        Raises:
            queue.Empty: none came within ``timeout`` seconds.
        """
        while True:
            msg = self._in.get(timeout=timeout)
            if isinstance(msg, Exception):
                raise msg
            if msg.WhichOneof("msg") == kind:
                return msg

    def send(self, msg: worker_pb2.WorkRequest) -> None:
        """Queue a request without waiting for its answer (to pipeline)."""
        self._out.put(msg)

    def lease(self, count: int, timeout: float = 10) -> list[worker_pb2.Lease]:
        """Ask for ``count`` leases and collect grants until that many arrived."""
        self._out.put(worker_pb2.WorkRequest(lease=worker_pb2.LeaseRequest(count=count)))
        leases: list[worker_pb2.Lease] = []
        while len(leases) < count:
            leases.extend(self.next("grant", timeout).grant.leases)
        return leases

    def lease_packed(self, count: int, timeout: float = 10) -> list[GrantedLease]:
        """As :meth:`lease`, for a stream whose hello set packed_grants."""
        self._out.put(worker_pb2.WorkRequest(lease=worker_pb2.LeaseRequest(count=count)))
        leases: list[GrantedLease] = []
        while len(leases) < count:
            leases.extend(leases_of(self.next("grant", timeout).grant))
        return leases

    def complete(self, fences: list[int], skipped: list[int] | None = None) -> worker_pb2.CompleteResponse:
        self._out.put(
            worker_pb2.WorkRequest(complete=worker_pb2.CompleteRequest(fences=fences, skipped=skipped or []))
        )
        return self.next("complete").complete

    def complete_request(self, request: worker_pb2.CompleteRequest) -> worker_pb2.CompleteResponse:
        """Send ``request`` as it is (results, handler times, failed leaves) and read its answer."""
        self._out.put(worker_pb2.WorkRequest(complete=request))
        return self.next("complete").complete

    def heartbeat(self, *beats: worker_pb2.LeaseHeartbeat) -> worker_pb2.HeartbeatResponse:
        self._out.put(worker_pb2.WorkRequest(heartbeat=worker_pb2.HeartbeatRequest(leases=list(beats))))
        return self.next("heartbeat").heartbeat

    def fail(self, *failures: worker_pb2.Failure) -> worker_pb2.FailResponse:
        self._out.put(worker_pb2.WorkRequest(fail=worker_pb2.FailRequest(failures=list(failures))))
        return self.next("fail").fail

    def close(self) -> None:
        self._out.put(None)
        self._call.cancel()


# -- in-process tests ----------------------------------------------------------------------------

ASYNC_TEST_TIMEOUT = 20.0
"""Seconds an :func:`async_test` may run before it is cancelled (its cleanups still run)."""


def async_test(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an ``async def`` test in a fresh event loop (pytest-asyncio is not a dependency).

    The test is cancelled after :data:`ASYNC_TEST_TIMEOUT` seconds, so a hang fails with a
    traceback and the ``async with`` blocks of the test still stop what they started.
    """

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), ASYNC_TEST_TIMEOUT))

    return run


class InProcessCoordinator:
    """A real coordinator (real RocksDB in ``data_dir``) serving on ``127.0.0.1:port`` in the running loop.

    Port 0 binds any free port (see :attr:`port` once started); give a former coordinator's port to
    restart on it. Workers are told to heartbeat every ``heartbeat_interval_ms`` so directives
    arrive quickly; ``grace`` bounds how long :meth:`stop` waits for open Work streams. ``http``:
    serve the HTTP port on a free loopback port (:attr:`http_port` once started); ``tracer_provider``:
    an OpenTelemetry provider for the coordinator's RPC spans.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        heartbeat_interval_ms: int = 50,
        grace: float = 0.2,
        store: Store | None = None,
        http: bool = False,
        tracer_provider: Any = None,
    ) -> None:
        self.coordinator = Coordinator(
            Config(
                data_dir=data_dir,
                listen=f"127.0.0.1:{port}",
                heartbeat_interval_ms=heartbeat_interval_ms,
                grace=grace,
                tick_interval=0.02,
                http_listen="127.0.0.1:0" if http else None,
                tracer_provider=tracer_provider,
            ),
            store=store,
        )
        self.port = port
        self._gc_threshold = gc.get_threshold()
        self._running = False

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_port(self) -> int:
        return self.coordinator.http_port

    async def start(self) -> int:
        """Start serving; returns the bound port."""
        self._gc_threshold = gc.get_threshold()
        self.port = await self.coordinator.start()
        self._running = True
        return self.port

    async def stop(self) -> None:
        """Stop serving and close the store; does nothing the second time."""
        if not self._running:
            return
        self._running = False
        try:
            await self.coordinator.stop()
        finally:
            # The coordinator tunes the process's garbage collector for its hot path; the rest of
            # the test run gets its own settings back.
            gc.unfreeze()
            gc.set_threshold(*self._gc_threshold)


@contextlib.asynccontextmanager
async def inprocess_coordinator(
    data_dir: Path,
    *,
    port: int = 0,
    heartbeat_interval_ms: int = 50,
    grace: float = 0.2,
    store: Store | None = None,
    http: bool = False,
    tracer_provider: Any = None,
) -> AsyncIterator[InProcessCoordinator]:
    """Start an :class:`InProcessCoordinator`; stop it on the way out (unless the test already did).

    ``store``: an open store to serve from instead of opening ``data_dir`` (to inject faults);
    ``http`` and ``tracer_provider`` as for :class:`InProcessCoordinator`.
    """
    coord = InProcessCoordinator(
        data_dir,
        port=port,
        heartbeat_interval_ms=heartbeat_interval_ms,
        grace=grace,
        store=store,
        http=http,
        tracer_provider=tracer_provider,
    )
    try:
        await coord.start()
        yield coord
    finally:
        await coord.stop()


def loopback_channel(port: int) -> aio.Channel:
    """A grpc.aio channel to ``127.0.0.1:port`` (use it in ``async with``)."""
    return aio.insecure_channel(f"127.0.0.1:{port}")


@contextlib.asynccontextmanager
async def running_worker(worker: Worker, stop_timeout: float = 15) -> AsyncIterator[Worker]:
    """Run an SDK worker in this loop (``worker.run()``); stop and drain it on the way out."""
    task = asyncio.create_task(worker.run(), name="worker")
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, stop_timeout)


async def eventually(predicate: Callable[[], Any], what: str, within: float = 5) -> None:
    """Poll ``predicate`` (plain or async) until it is truthy; fail naming ``what`` after ``within`` s.

    For conditions nobody announces (a stats counter, a worker's tally); await events where
    there are some.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.01)


class Stream:
    """One Work stream driven message by message."""

    def __init__(self, stub: worker_pb2_grpc.WorkerServiceStub) -> None:
        self._requests: asyncio.Queue[worker_pb2.WorkRequest] = asyncio.Queue()
        self.call = stub.Work(self._send())

    async def _send(self) -> AsyncIterator[worker_pb2.WorkRequest]:
        while True:
            yield await self._requests.get()

    async def send(self, **msg: object) -> None:
        await self._requests.put(worker_pb2.WorkRequest(**msg))  # type: ignore[arg-type]

    async def next(self, kind: str) -> worker_pb2.WorkResponse:
        while True:
            msg = await asyncio.wait_for(self.call.read(), ASYNC_TEST_TIMEOUT / 2)
            assert msg is not aio.EOF, f"the stream ended while waiting for {kind}"
            if msg.WhichOneof("msg") == kind:
                return msg
