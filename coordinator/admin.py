"""Online backups of a running coordinator, and the admin API that asks for them.

:class:`Backups` writes RocksDB checkpoints of the live store, in a thread (the event loop keeps
serving), after everything changed so far is on disk; SIGUSR1 and ``AdminService.Backup`` both
go through it. :class:`AdminServicer` checks the request's folder and maps failures to status codes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parcelo.coordinator import errors
from parcelo.coordinator.committer import Committer
from parcelo.coordinator.service import rpc
from parcelo.coordinator.store import Store
from parcelo.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackupInfo:
    """A backup once written: its folder, the size and number of its files, the seconds it took."""

    path: Path
    bytes: int
    files: int
    seconds: float


class Backups:
    """Writes online backups of ``store``.

    Args:
        store: The open store of the running coordinator.
        committer: Its committer: a backup holds every change made before it was asked for.
        default_dir: Where backups without a folder of their own (SIGUSR1) get a new timestamped one.
    """

    def __init__(self, store: Store, committer: Committer, default_dir: Path) -> None:
        self._store = store
        self._committer = committer
        self._default_dir = default_dir

    async def write(self, dest: Path | None = None) -> BackupInfo:
        """A consistent copy of the store in the new folder ``dest`` (missing parents are created),
        or in a new timestamped folder under the default dir; returns once it is complete.

        Raises:
            errors.FailedPrecondition: The store cannot write now (a full disk): its flush would fail,
                and waiting for the changes made so far could take until the disk has room.
            FileExistsError: ``dest`` exists.
            Exception: The checkpoint failed (an ``OSError``, or RocksDB's error).
        """
        if self._committer.failing_since:
            raise errors.FailedPrecondition(
                f"the store cannot write now (failing for {time.monotonic() - self._committer.failing_since:.0f} s): "
                "no backup until writes succeed again"
            )
        await self._committer.durable()
        if dest is None:
            dest = self._new_default()
        started = time.perf_counter()
        size, files = await asyncio.get_running_loop().run_in_executor(None, self._checkpoint, dest)
        log.info("backup written to %s", dest)
        return BackupInfo(dest, size, files, time.perf_counter() - started)

    def _new_default(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = self._default_dir / stamp
        n = 1
        while dest.exists():  # two backups within one second
            n += 1
            dest = self._default_dir / f"{stamp}-{n}"
        return dest

    def _checkpoint(self, dest: Path) -> tuple[int, int]:
        """Write the checkpoint (blocking); the total size and number of its files."""
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            # A file where a parent folder should be: not "dest exists", which is what callers map
            # FileExistsError to.
            raise NotADirectoryError(f"{dest.parent} is not a folder") from None
        self._store.backup(dest)
        sizes = [path.stat().st_size for path in dest.rglob("*") if path.is_file()]
        return sum(sizes), len(sizes)


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """The operator API: backups.

    Args:
        backups: What writes them.
        data_dir: The live data dir, which a backup must not be written into.
    """

    def __init__(self, backups: Backups, data_dir: Path) -> None:
        self._backups = backups
        self._data_dir = data_dir.resolve()

    @rpc
    async def Backup(self, request: admin_pb2.BackupRequest, context: Any) -> admin_pb2.BackupResponse:
        dest = self._destination(request.to_dir)
        try:
            info = await self._backups.write(dest)
        except FileExistsError:
            raise errors.AlreadyExists(f"to_dir: {dest} exists; give a new folder") from None
        except errors.CoordinatorError:
            raise
        except Exception as err:
            log.error("backup to %s failed: %s", dest, err)
            raise errors.FailedPrecondition(f"cannot write a backup to {dest}: {err}") from None
        out = admin_pb2.BackupResponse(path=str(info.path), bytes=info.bytes, files=info.files)
        out.took.FromNanoseconds(int(info.seconds * 1e9))
        return out

    def _destination(self, to_dir: str) -> Path:
        """The folder ``to_dir`` names, checked: absolute, new, and outside the data dir."""
        if not to_dir:
            raise errors.InvalidArgument(
                "to_dir", "is required: the absolute path of a new folder on the coordinator's host"
            )
        if not os.path.isabs(to_dir):
            raise errors.InvalidArgument(
                "to_dir", f"must be an absolute path on the coordinator's host, not {to_dir!r}"
            )
        dest = Path(to_dir).resolve()
        if dest == self._data_dir or dest.is_relative_to(self._data_dir):
            raise errors.InvalidArgument("to_dir", f"{dest} is in the data dir {self._data_dir}")
        if dest.exists():
            raise errors.AlreadyExists(f"to_dir: {dest} exists; give a new folder")
        return dest
