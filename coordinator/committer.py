"""Group commit: the loop that writes what the core changed, and tells waiters when it is on disk.

``Committer`` takes everything the core changed since its last write
(:meth:`Core.take_changes`), has the store encode it into one RocksDB batch,
writes it in a thread (the event loop keeps serving meanwhile), synced when
anybody waits for durability, and resolves the waiters after the batch that
holds their change is on disk.

A batch is never dropped. When a write fails (a full disk, an I/O error) the
committer keeps that batch, reports itself unhealthy, and writes it again
with backoff (reopening the store, which refuses writes after a WAL error)
until it succeeds; nothing newer is written or acknowledged meanwhile, so
memory and disk never disagree about what a worker or a reader was told.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from parcelo.coordinator.changes import Changes
from parcelo.coordinator.core import Core
from parcelo.coordinator.records import Batch
from parcelo.coordinator.store import Store

log = logging.getLogger(__name__)

COMMIT_GATHER = 0.002
"""Seconds a commit waits for more changes to join it (bounds syncs to a few hundred per second)."""

RETRY_INITIAL = 0.05
"""First delay before writing a failed batch again."""

RETRY_MAX = 2.0
"""Longest delay between attempts at a failed batch: the coordinator resumes soon after space returns."""


def _ignore(*_: object) -> None:
    pass


class Committer:
    """Writes the core's changes in batches; resolves durability waiters after each written batch.

    Args:
        core: The state whose changes are written.
        store: Where they are written.
        on_written: Called on the event loop with each batch's changes once they are on disk
            (the coordinator publishes events, job records and fences from it).
        on_batch: Telemetry: ops written and seconds taken, per batch.
        on_healthy: Called with False when writes start failing and True when they succeed again.
    """

    def __init__(
        self,
        core: Core,
        store: Store,
        *,
        on_written: Callable[[Changes], None],
        on_batch: Callable[[int, float], None] = _ignore,
        on_healthy: Callable[[bool], None] = _ignore,
    ) -> None:
        self._core = core
        self._store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parcelo-commit")
        self._wake = asyncio.Event()
        self._waiting: list[asyncio.Future[None]] = []
        self._stopping = False
        self._on_written = on_written
        self._on_batch = on_batch
        self._on_healthy = on_healthy
        self.failing_since = 0.0
        """When the batch being retried first failed (0: writes succeed)."""

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
        """Synchronously write and sync everything pending (start-up); raises if the write fails."""
        changes = self._core.take_changes()
        self._store.write(self._store.encode(changes), sync=True)
        self._on_written(changes)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            if not self._stopping:
                # rocksdict holds the GIL while it writes, so every commit stalls the loop a
                # little: gathering changes a moment longer makes fewer, larger commits.
                await asyncio.sleep(COMMIT_GATHER)
            self._wake.clear()
            changes = self._core.take_changes()
            waiters, self._waiting = self._waiting, []
            if changes:
                batch = self._store.encode(changes)
                sync = bool(waiters) or changes.fence_limit is not None or changes.status_changed
                started = time.perf_counter()
                await self._write(batch, sync)
                self._on_batch(len(batch.ops) + len(batch.ranges), time.perf_counter() - started)
                self._on_written(changes)
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
            if self._stopping and not self._waiting:
                return

    async def _write(self, batch: Batch, sync: bool) -> None:
        """Write ``batch``, trying again (with backoff, reopening the store) until it is written."""
        loop = asyncio.get_running_loop()
        delay = RETRY_INITIAL
        while True:
            try:
                await loop.run_in_executor(self._pool, lambda: self._store.write(batch, sync=sync))
            except Exception as err:
                if not self.failing_since:
                    self.failing_since = time.monotonic()
                    log.error(
                        "store write failed (%s); holding %d ops and every acknowledgement until it "
                        "succeeds, retrying",
                        err,
                        len(batch.ops),
                    )
                    self._on_healthy(False)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                try:
                    await loop.run_in_executor(self._pool, self._store.reopen)
                except Exception as reopen_err:
                    log.debug("store reopen failed: %s", reopen_err)
                continue
            if self.failing_since:
                log.warning("store writes succeed again after %.1f s", time.monotonic() - self.failing_since)
                self.failing_since = 0.0
                self._on_healthy(True)
            return

    async def close(self, grace: float | None = None) -> bool:
        """Write what is left and stop the loop; False if that did not finish within ``grace`` s.

        Only a store that keeps failing makes it time out: then what was not written was never
        acknowledged either (workers send their results again to the next coordinator).
        """
        self._stopping = True
        try:
            await asyncio.wait_for(asyncio.shield(self.durable()), grace)
        except TimeoutError:
            log.error("stopping with changes not written: the store still fails")
            self._pool.shutdown(wait=False)
            return False
        self._pool.shutdown(wait=True)
        return True
