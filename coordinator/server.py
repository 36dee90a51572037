"""The coordinator daemon: open the store, rebuild state, serve gRPC, run the timers, stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from parcelo import defaults
from parcelo.coordinator.admin import AdminServicer, BackupInfo, Backups
from parcelo.coordinator.api import Api
from parcelo.coordinator.auth import TokenAuth, load_tokens
from parcelo.coordinator.changes import Changes
from parcelo.coordinator.committer import Committer
from parcelo.coordinator.core import Core
from parcelo.coordinator.dispatcher import Dispatcher
from parcelo.coordinator.errors import StartupError
from parcelo.coordinator.events import MEMORY_WINDOW
from parcelo.coordinator.http import HttpServer
from parcelo.coordinator.limits import DEFAULT_LIMITS, Limits
from parcelo.coordinator.listen import exposed, host_of
from parcelo.coordinator.queue_service import QueueServicer
from parcelo.coordinator.registry import WorkerRegistry
from parcelo.coordinator.schedule_service import ScheduleServicer
from parcelo.coordinator.schedules import ScheduleViews
from parcelo.coordinator.service import JobServicer, WorkerServicer
from parcelo.coordinator.store import Store
from parcelo.coordinator.telemetry import Telemetry
from parcelo.coordinator.tls import ReloadableCredentials, ServerTLS, load_ssl_context, server_ssl_context
from parcelo.coordinator.tracing import RpcSpans
from parcelo.coordinator.views import JobViews
from parcelo.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    queues_pb2,
    queues_pb2_grpc,
    schedules_pb2,
    schedules_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)

log = logging.getLogger(__name__)

SERVICES = (
    "",
    "parcelo.v1.JobService",
    "parcelo.v1.WorkerService",
    "parcelo.v1.QueueService",
    "parcelo.v1.ScheduleService",
    "parcelo.v1.AdminService",
)
"""Names the health service answers for: the server as a whole and each service."""

SERVED = (
    jobs_pb2.DESCRIPTOR.services_by_name["JobService"],
    worker_pb2.DESCRIPTOR.services_by_name["WorkerService"],
    queues_pb2.DESCRIPTOR.services_by_name["QueueService"],
    schedules_pb2.DESCRIPTOR.services_by_name["ScheduleService"],
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
)
"""Descriptors of every service the server serves: the token check has a rule for each of their RPCs."""

QUIET = 0.1
"""Seconds without a new result after which a stopping coordinator ends the Work streams."""

GC_THRESHOLD = 100_000
"""Allocations between young-generation collections (Python's default is 700): see ``_tune_gc``."""


@dataclass(frozen=True)
class Config:
    """How a coordinator runs; the CLI flags fill it."""

    data_dir: Path
    listen: str = defaults.DEFAULT_LISTEN
    tick_interval: float = 0.05
    heartbeat_interval_ms: int = 0
    # The HTTP port (API, dashboard, metrics); None: off.
    http_listen: str | None = defaults.DEFAULT_HTTP_LISTEN
    # /metrics without a token even with auth_tokens.
    public_metrics: bool = False
    # An OpenTelemetry TracerProvider: a span per RPC (None: no tracing, nothing spent on it).
    tracer_provider: Any = None
    event_retention: int = defaults.EVENT_RETENTION
    grace: float = 10.0
    backup_dir: Path | None = None
    max_result_bytes: int = defaults.MAX_RESULT_BYTES
    limits: Limits = DEFAULT_LIMITS
    tls: ServerTLS | None = None
    auth_tokens: Path | None = None
    insecure_listen_anywhere: bool = False

    @property
    def backups(self) -> Path:
        """Where SIGUSR1 writes online backups (each in a new timestamped folder)."""
        return self.backup_dir or self.data_dir.with_name(self.data_dir.name + "-backups")


def _tune_gc() -> None:
    """Make the cyclic garbage collector rare.

    The hot path creates and drops a few objects per leaf, and the tree breaks its own
    reference cycles (parent links) when it drops nodes, so reference counting frees them.
    With the default thresholds the collector ran every few hundred leaves and rescanned the
    live frontier each time (about 5% of the coordinator's CPU). What was loaded at start is
    frozen out of its scans.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 50, 100)


class Coordinator:
    """A running coordinator: ``await start()``, then ``await stop()``."""

    def __init__(self, config: Config, *, store: Store | None = None) -> None:
        """``store``: an open store to use instead of opening ``config.data_dir`` (tests inject faults)."""
        self.config = config
        self._given_store = store
        self.port = 0
        self.http_port = 0
        self.serving = False
        self.auth: TokenAuth | None = None
        self.certificates: ReloadableCredentials | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._ssl: ssl.SSLContext | None = None
        self.http: HttpServer | None = None

    async def start(self) -> int:
        """Load the store, reserve fences, bind and serve. Returns the bound port.

        If it fails (a port in use, a data dir of another format), the store is closed again.

        Raises:
            StartupError: The tokens file or the certificates are unusable, or the listen address
                is reachable from other hosts without authentication (and that was not allowed).
                Checked before the store is opened.
        """
        self._secure()
        self.store = self._given_store or Store(self.config.data_dir)
        try:
            return await self._start()
        except BaseException:
            self.store.close()
            raise

    def _secure(self) -> None:
        """Load the tokens and certificates, and check the listen address against them."""
        cfg = self.config
        if cfg.auth_tokens is not None:
            self.auth = TokenAuth(load_tokens(cfg.auth_tokens), SERVED)
            if not self.auth.count:
                log.warning("%s holds no tokens: every call but health checks is refused", cfg.auth_tokens)
        if cfg.tls is not None:
            self.certificates = ReloadableCredentials(cfg.tls)
        mutual = cfg.tls is not None and cfg.tls.mutual
        authenticated = self.auth is not None or mutual
        addresses = [(cfg.listen, "")]
        if cfg.http_listen is not None:
            addresses.append((cfg.http_listen, "--http-listen"))
        for address, flag in addresses:
            if exposed(address, authenticated=authenticated, allow=cfg.insecure_listen_anywhere, flag=flag):
                log.warning(
                    "listening on %s without tokens or client certificates (--insecure-listen-anywhere): "
                    "anyone who reaches this port can run, cancel and delete every job",
                    address,
                )
        log.info(
            "security: %s, %s",
            ("mutual TLS" if mutual else "TLS") if cfg.tls is not None else "plaintext",
            f"{self.auth.count} tokens from {cfg.auth_tokens}" if self.auth is not None else "no tokens",
        )

    def reload(self) -> None:
        """Read the tokens file and the certificates again (SIGHUP).

        New calls and connections use them; open streams go on. If a file is unusable, the error
        is logged and what was in use stays.
        """
        cfg = self.config
        if self.auth is None and self.certificates is None:
            log.info("nothing to reload: no --auth-tokens and no --tls-cert")
        if self.auth is not None and cfg.auth_tokens is not None:
            try:
                self.auth.replace(load_tokens(cfg.auth_tokens))
            except StartupError as err:
                log.error("tokens not reloaded, the previous ones stay: %s", err)
            else:
                log.info("reloaded %d tokens from %s", self.auth.count, cfg.auth_tokens)
        if self.certificates is not None:
            try:
                self.certificates.reload()
            except StartupError as err:
                log.error("certificates not reloaded, the previous ones stay: %s", err)
            else:
                log.info("reloaded the certificates; new connections use them")
        if self._ssl is not None and cfg.tls is not None:
            try:
                load_ssl_context(self._ssl, cfg.tls)
            except (StartupError, OSError) as err:
                log.error("HTTPS certificates not reloaded, the previous ones stay: %s", err)

    async def _start(self) -> int:
        cfg = self.config
        started = time.perf_counter()
        # The core signals new work to the dispatcher, which is made from the core just below.
        self.core = Core(
            fence_limit=self.store.fence_limit(),
            event_retention=cfg.event_retention,
            work_available=lambda: self.dispatcher.work_available(),
            max_result_bytes=cfg.max_result_bytes,
            limits=cfg.limits,
        )
        self.telemetry = Telemetry(
            self.core, cfg.data_dir, lambda: len(self.registry), export=cfg.http_listen is not None
        )
        self.registry = WorkerRegistry(on_results=self.telemetry.on_results)
        self.dispatcher = Dispatcher(
            self.core, on_grant=self.telemetry.on_grant, max_credit=cfg.limits.leases_per_request
        )
        # A bulk load of long-lived objects (every frontier node and live lease): the cyclic
        # collector would rescan the growing heap again and again while it runs, for nothing.
        gc.disable()
        try:
            stored = self.store.load(MEMORY_WINDOW)
            self.core.restore(stored, time.time(), accepted=self.store.load_accepted())
            self.core.queues.restore(self.store.load_queues(), time.time())
            self.core.schedules.restore(self.store.load_schedules())
        finally:
            gc.enable()
        self.views = JobViews()
        self.views.written((item.job for item in stored), ())
        self.schedule_views = ScheduleViews()
        # Records of their own: the core's change in place, before they are written.
        self.schedule_views.written({s.id: s for s in self.store.load_schedules()})
        _tune_gc()
        self.health = health.aio.HealthServicer()
        self.committer = Committer(
            self.core,
            self.store,
            on_written=self._written,
            on_batch=self.telemetry.on_batch,
            on_healthy=self._set_healthy,
        )
        # Reserve the first block of fences before any lease can be handed out.
        self.committer.write_now()
        self.backups = Backups(self.store, self.committer, cfg.backups)
        # No tokens, no tracing: no interceptor, and nothing paid per call for either.
        interceptors: list[aio.ServerInterceptor] = []
        if cfg.tracer_provider is not None:
            interceptors.append(RpcSpans(cfg.tracer_provider))
        if self.auth is not None:
            interceptors.append(self.auth)
        self.server = aio.server(
            interceptors=interceptors or None,
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", cfg.limits.message_bytes),
                ("grpc.max_send_message_length", cfg.limits.message_bytes),
            ],
        )
        heartbeat_ms = cfg.heartbeat_interval_ms or 0
        jobs = JobServicer(self.core, self.views, self.store, self.committer, self.dispatcher)
        workers = WorkerServicer(
            self.core, self.committer, self.dispatcher, heartbeat_ms, cfg.limits, registry=self.registry
        )
        self.workers = workers
        jobs_pb2_grpc.add_JobServiceServicer_to_server(jobs, self.server)
        worker_pb2_grpc.add_WorkerServiceServicer_to_server(workers, self.server)
        queues_pb2_grpc.add_QueueServiceServicer_to_server(
            QueueServicer(self.core, self.committer, self.dispatcher), self.server
        )
        schedules_pb2_grpc.add_ScheduleServiceServicer_to_server(
            ScheduleServicer(self.core, self.schedule_views, self.committer), self.server
        )
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(self.backups, cfg.data_dir), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        # grpcurl and other tools read the API from the server itself, without the .proto files.
        reflection.enable_server_reflection([s.full_name for s in SERVED], self.server)
        try:
            if self.certificates is not None:
                self.port = self.server.add_secure_port(cfg.listen, self.certificates.credentials)
            else:
                self.port = self.server.add_insecure_port(cfg.listen)
        except RuntimeError as err:  # grpc's way of saying the bind failed
            raise OSError(f"cannot listen on {cfg.listen} (in use, or not an address of this host)") from err
        if cfg.http_listen is not None:
            api = Api(
                jobs,
                workers,
                core=self.core,
                views=self.views,
                store=self.store,
                durable=self.committer.durable,
            )
            self._ssl = server_ssl_context(cfg.tls) if cfg.tls is not None else None
            self.http = HttpServer(
                api.routes(),
                auth=self.auth,
                ssl_context=self._ssl,
                ready=lambda: self.serving,
                metrics=self.telemetry.render,
                public_metrics=cfg.public_metrics,
                on_stop=api.close,
            )
            try:
                self.http_port = await self.http.start(cfg.http_listen)
            except BaseException:
                await self.server.stop(None)
                raise
            log.info(
                "HTTP on port %d: dashboard, API and metrics at %s://%s:%d/",
                self.http_port,
                "https" if self._ssl is not None else "http",
                host_of(cfg.http_listen) or "0.0.0.0",
                self.http_port,
            )
        await self.server.start()
        self._set_healthy(True)
        self._tasks = [
            asyncio.create_task(self.committer.run(), name="committer"),
            asyncio.create_task(self._tick(), name="ticker"),
        ]
        log.info(
            "serving on port %d (data dir %s, %d jobs, %d live leases, ready in %.3f s)",
            self.port,
            cfg.data_dir,
            len(self.core.jobs),
            len(self.core.leases),
            time.perf_counter() - started,
        )
        return self.port

    def _written(self, changes: Changes) -> None:
        """A batch is on disk: its fences may be used, its events and job records shown."""
        self.core.written(changes)
        self.views.written(changes.jobs.values(), changes.deleted_jobs)
        self.schedule_views.written(changes.schedules)
        if changes.fence_limit is not None:
            self.dispatcher.credit_changed()

    def _set_healthy(self, healthy: bool) -> None:
        """Health checks say SERVING, and leases are granted, only while the store takes writes."""
        self.serving = healthy and not self._stopping
        self.dispatcher.hold(not healthy)
        status = (
            health_pb2.HealthCheckResponse.SERVING if healthy else health_pb2.HealthCheckResponse.NOT_SERVING
        )

        async def set_all() -> None:
            for name in SERVICES:
                await self.health.set(name, status)

        # The aio servicer's set() is a coroutine (it wakes Watch callers); callers here are not.
        task = asyncio.get_running_loop().create_task(set_all())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_interval)
            try:
                now = time.time()
                self.telemetry.on_tick(*self.core.tick(now))
                self.dispatcher.rebalance(now)
            except Exception:
                log.exception("tick failed")
            self.dispatcher.poke()
            self.committer.kick()

    async def backup(self) -> BackupInfo:
        """A consistent online copy of the store in a new timestamped folder under the backup dir
        (SIGUSR1; see :meth:`Backups.write`)."""
        return await self.backups.write()

    def stop_granting(self) -> None:
        """Hand out no more leases: the first step of a shutdown, taken at once on SIGTERM.

        Grants queued but not yet sent are taken back; results are still taken and answered.
        """
        self.dispatcher.stop()

    async def _answer_results_in_hand(self) -> None:
        """Wait until the results workers send have stopped coming and every one is written and its
        answer queued, or the grace is over (a store that keeps failing, workers that keep sending).

        Results sent just before SIGTERM may still be on their way, and results read while a
        commit is being written join the next one: so the streams stay open until no result came
        for :data:`QUIET` seconds after a commit. Once no lease is granted, workers run out of
        results to send soon.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.grace
        while loop.time() < deadline:
            taken = self.workers.results_taken
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.committer.durable(), deadline - loop.time())
            if self.workers.results_taken == taken:
                await asyncio.sleep(max(0.0, min(QUIET, deadline - loop.time())))
                if self.workers.results_taken == taken:
                    return

    async def stop(self) -> None:
        """Stop granting and accepting calls, answer in-flight results, write everything, close the store.

        Work streams are ended once every answer owed to them is written and queued, so workers
        reconnect (to the next coordinator) at once rather than after the grace period. Calling
        it again does nothing.
        """
        if self._stopping:
            return
        self._stopping = True
        self.stop_granting()
        self.serving = False
        for name in SERVICES:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        stopping = asyncio.create_task(self.server.stop(self.config.grace))
        if self.http is not None:
            await self.http.stop()
        await self._answer_results_in_hand()
        self.dispatcher.end_streams()
        await stopping
        for task in self._tasks[1:]:
            task.cancel()
        await self.committer.close(self.config.grace)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.telemetry.close()
        self.store.close()
        self._stopped.set()


async def serve(config: Config) -> None:
    """Run a coordinator until SIGTERM or SIGINT, then stop gracefully; reload on SIGHUP."""
    coordinator = Coordinator(config)
    await coordinator.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def shutdown() -> None:
        # In the signal's own callback, not when the task awaiting ``stop`` next runs: a dispatch
        # round scheduled in between would still grant leases.
        coordinator.stop_granting()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown)
    backups: set[asyncio.Task[None]] = set()

    async def backup() -> None:
        try:
            await coordinator.backup()
        except Exception as err:
            log.error("backup failed: %s", err)

    def start_backup() -> None:
        task = asyncio.create_task(backup())
        backups.add(task)
        task.add_done_callback(backups.discard)

    loop.add_signal_handler(signal.SIGUSR1, start_backup)
    loop.add_signal_handler(signal.SIGHUP, coordinator.reload)
    await stop.wait()
    log.info("stopping: granting no more leases; answering in-flight results, writing what is pending")
    await coordinator.stop()
    log.info("stopped")
