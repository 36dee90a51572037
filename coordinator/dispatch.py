"""Group commit and lease dispatch: the two loops between the core and the outside world.

``Committer`` turns everything the core changed since its last write into one
RocksDB batch, written in a thread (the event loop keeps serving meanwhile)
and synced when anybody waits for durability; waiters are resolved after the
batch that contains their change is on disk.

``Dispatcher`` keeps the lease credit of every worker stream and hands out
leases when credit and work meet, one grant message per stream per round.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from parcelo.coordinator.codec import lease_to_proto
from parcelo.coordinator.core import Core
from parcelo.coordinator.store import Batch, Store
from parcelo.v1 import worker_pb2

log = logging.getLogger(__name__)

COMMIT_GATHER = 0.002
"""Seconds a commit waits for more changes to join it (bounds syncs to a few hundred per second)."""


class Committer:
    """Writes the core's changes in batches; resolves durability waiters after each synced batch."""

    def __init__(
        self, core: Core, store: Store, on_batch: Callable[[int, float], None] | None = None
    ) -> None:
        self._core = core
        self._store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parcelo-commit")
        self._wake = asyncio.Event()
        self._waiting: list[asyncio.Future[None]] = []
        self._stopping = False
        self._on_batch = on_batch
        self.after_commit: Callable[[], None] | None = None

    def durable(self) -> asyncio.Future[None]:
        """A future resolved once every change made so far is synced to disk."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        self._wake.set()
        return fut

    def kick(self) -> None:
        """Write pending changes soon, without waiting for them (lease grants, checkpoints)."""
        self._wake.set()

    def write_now(self) -> None:
        """Synchronously write and sync everything pending (start-up and shutdown)."""
        batch = self._core.collect_writes()
        self._store.write(batch, sync=True)
        if batch.fence_limit is not None:
            self._core.fences.made_durable(batch.fence_limit)

    def _write(self, batch: Batch, sync: bool) -> None:
        self._store.write(batch, sync=sync)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if not self._stopping:
                # rocksdict holds the GIL while it syncs, so every commit stalls the loop for one
                # fsync: gathering changes a moment longer makes fewer, larger commits.
                await asyncio.sleep(COMMIT_GATHER)
            self._wake.clear()
            batch = self._core.collect_writes()
            limit = batch.fence_limit
            waiters, self._waiting = self._waiting, []
            started = time.perf_counter()
            try:
                if batch:
                    sync = bool(waiters) or limit is not None
                    await loop.run_in_executor(self._pool, self._write, batch, sync)
            except Exception as err:
                log.exception("store write failed")
                for fut in waiters:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            if limit is not None:
                self._core.fences.made_durable(limit)
                if self.after_commit is not None:
                    self.after_commit()
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
            if self._on_batch is not None and batch:
                self._on_batch(len(batch.ops), time.perf_counter() - started)
            if self._stopping and not self._waiting:
                return

    async def close(self) -> None:
        """Write what is left and stop the loop."""
        self._stopping = True
        await self.durable()
        self._pool.shutdown(wait=True)


@dataclass(eq=False)
class Session:
    """One worker stream (or one waiting unary Lease call) and its lease credit."""

    worker_id: str
    queues: tuple[str, ...]
    out: asyncio.Queue[worker_pb2.WorkResponse | None] = field(default_factory=asyncio.Queue)
    credits: int = 0
    sent_jobs: set[str] = field(default_factory=set)


class Dispatcher:
    """Matches lease credit with available work."""

    def __init__(
        self, core: Core, committer: Committer, on_grant: Callable[[int], None] | None = None
    ) -> None:
        self._core = core
        self._committer = committer
        self._sessions: dict[int, Session] = {}
        self._scheduled = False
        self._want = False
        self._on_grant = on_grant

    def add(self, session: Session) -> None:
        self._sessions[id(session)] = session

    def remove(self, session: Session) -> None:
        self._sessions.pop(id(session), None)

    def credit(self, session: Session, count: int) -> None:
        """``session`` wants ``count`` more leases."""
        session.credits += count
        self._want = True
        self.poke()

    def credit_changed(self) -> None:
        """Something that limited the last round (fences running out) is gone: try again."""
        self._want = True
        self.poke()

    def poke(self) -> None:
        """Run a dispatch round soon (coalesced: many pokes, one round)."""
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._round)

    def _round(self) -> None:
        self._scheduled = False
        core = self._core
        if not (core.new_work or self._want):
            return
        core.new_work = False
        self._want = False
        now = time.time()
        granted = 0
        for session in list(self._sessions.values()):
            if session.credits <= 0:
                continue
            leases = core.lease(session.queues, session.credits, now)
            if not leases:
                continue
            session.credits -= len(leases)
            granted += len(leases)
            grant = worker_pb2.LeaseGrant()
            for job, node in leases:
                if job.id not in session.sent_jobs:
                    session.sent_jobs.add(job.id)
                    spec = job.spec
                    grant.jobs.add(
                        job_id=job.id,
                        queue=spec.queue,
                        params_json=spec.params_json,
                        max_range_size=spec.max_range_size,
                    )
                lease_to_proto(node, job, grant.leases.add())
            session.out.put_nowait(worker_pb2.WorkResponse(grant=grant))
        # Grants need no prompt write (a lost grant only re-runs a leaf): the ticker's write takes them.
        if granted and self._on_grant is not None:
            self._on_grant(granted)
