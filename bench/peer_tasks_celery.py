"""The Celery side of the peer benchmark: one no-op task per chunk of ids (Redis broker)."""

from __future__ import annotations

import os

import redis
from celery import Celery

BROKER = os.environ.get("PARCELO_BENCH_REDIS", "redis://127.0.0.1:6379/0")
app = Celery("parcelo_bench", broker=BROKER)
app.conf.update(
    task_ignore_result=True, worker_hijack_root_logger=False, broker_connection_retry_on_startup=True
)
_counter = redis.Redis.from_url(BROKER)


@app.task(name="chunk")  # type: ignore[untyped-decorator]
def chunk(start: int, end: int) -> None:
    """Do nothing but count itself done (INCR), so the benchmark knows when all ran."""
    _counter.incr("parcelo-bench-done")
