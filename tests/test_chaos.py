"""`make chaos`'s kills phase, small: kill -9 of workers and of the coordinator during a job loses
nothing acknowledged and accepts no leaf twice (tests/chaos.py; `make chaos` runs it at full size)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos import KillPlan, kills

pytestmark = pytest.mark.integration


def test_kill9_of_workers_and_of_the_coordinator_covers_every_id_exactly_once(tmp_path: Path) -> None:
    report = kills(
        tmp_path,
        KillPlan(
            leaves=20_000,
            workers=3,
            concurrency=8,
            sleep=0.003,
            worker_kills=4,
            coordinator_kills=2,
            timeout=60,
        ),
    )
    assert (report.worker_kills, report.coordinator_kills) == (4, 2)
    assert report.witnessed > 0  # the check that nothing acknowledged is lost had something to check
