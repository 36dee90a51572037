"""Peers measured by `make bench` on the same work as Parcelo: N no-op tasks, one per chunk of ids.

Both peers get 2 worker processes on this machine and their default
durability; the time is "enqueue all + drain all" with workers already up.

* Huey 2 with SQLite storage (``SqliteHuey``), ``huey_consumer -k process -w 2``;
  completion is counted from Huey's result store (each task returns 1).
* Celery 5 with a Redis broker (Debian's ``redis-server``, started here on a
  free loopback port), ``celery worker --pool prefork --concurrency 2``, results
  off; completion is counted by an INCR in Redis from each task.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from parcelo.testing import Proc, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class PeerResult:
    """One peer run."""

    name: str
    tasks: int
    seconds: float
    rate: float
    config: str


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {"PYTHONPATH": str(ROOT), **extra}


def run_huey(n_tasks: int, *, workers: int = 2, workdir: Path) -> PeerResult:
    db = workdir / "huey.db"
    env = _env({"PARCELO_BENCH_HUEY_DB": str(db)})
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    from bench import peer_tasks_huey as tasks

    consumer = Proc(
        [str(BIN / "huey_consumer"), "bench.peer_tasks_huey.huey", "-k", "process", "-w", str(workers), "-q"],
        workdir / "huey.log",
        env=env,
    )
    try:
        time.sleep(1.5)  # consumer processes up before the clock starts
        began = time.perf_counter()
        for i in range(n_tasks):
            tasks.chunk(i * 1000, (i + 1) * 1000)
        storage = tasks.huey.storage
        wait_for(lambda: storage.result_store_size() >= n_tasks, 600, "Huey to run every task", interval=0.05)
        took = time.perf_counter() - began
    finally:
        consumer.terminate(timeout=20)
    return PeerResult(
        "huey", n_tasks, took, n_tasks / took, f"SqliteHuey, huey_consumer -k process -w {workers}"
    )


def ensure_redis_server() -> str:
    """Path of redis-server, installing Debian's package if it is missing."""
    found = shutil.which("redis-server")
    if found:
        return found
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "redis-server"]):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(
                f"cannot install redis-server ({' '.join(cmd)}): {result.stderr.strip()[-300:]}"
            )
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("redis-server is still missing after apt-get install")
    return found


def run_celery(n_tasks: int, *, workers: int = 2, workdir: Path) -> PeerResult:
    import redis

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = Proc(
        [
            ensure_redis_server(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(workdir),
        ],
        workdir / "redis.log",
    )
    env = _env({"PARCELO_BENCH_REDIS": url})
    worker: Proc | None = None
    try:
        client = redis.Redis.from_url(url)
        wait_for(lambda: _ping(client), 20, "redis-server")
        os.environ.update(env)
        sys.path.insert(0, str(ROOT))
        from bench import peer_tasks_celery as tasks

        tasks.app.conf.broker_url = url
        worker = Proc(
            [
                str(BIN / "celery"),
                "-A",
                "bench.peer_tasks_celery",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                str(workers),
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                "WARNING",
            ],
            workdir / "celery.log",
            env=env,
        )
        time.sleep(3)  # worker processes up before the clock starts
        client.delete("parcelo-bench-done")
        began = time.perf_counter()
        for i in range(n_tasks):
            tasks.chunk.delay(i * 1000, (i + 1) * 1000)
        wait_for(
            lambda: int(client.get("parcelo-bench-done") or 0) >= n_tasks,
            600,
            "Celery to run every task",
            interval=0.05,
        )
        took = time.perf_counter() - began
    finally:
        if worker is not None:
            worker.terminate(timeout=20)
        server.terminate(timeout=10)
    return PeerResult(
        "celery",
        n_tasks,
        took,
        n_tasks / took,
        f"Celery + Redis, prefork --concurrency {workers}, results off",
    )


def _ping(client: object) -> bool:
    try:
        return bool(client.ping())  # type: ignore[attr-defined]
    except Exception:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="parcelo-peers-") as tmp:
        for run in (run_huey, run_celery):
            result = run(args.tasks, workers=2, workdir=Path(tmp))
            print(
                f"{result.name}: {result.rate:,.0f} tasks/s ({result.tasks} in {result.seconds:.1f} s; {result.config})"
            )


if __name__ == "__main__":
    main()
