"""The Huey side of the peer benchmark: one no-op task per chunk of ids (SQLite storage)."""

from __future__ import annotations

import os

from huey import SqliteHuey

huey = SqliteHuey(filename=os.environ.get("PARCELO_BENCH_HUEY_DB", "/tmp/parcelo-bench-huey.db"))


@huey.task()  # type: ignore[untyped-decorator]
def chunk(start: int, end: int) -> int:
    """Do nothing; return 1 so Huey stores a result the benchmark can count."""
    return 1
