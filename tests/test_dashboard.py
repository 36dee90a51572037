"""The dashboard in a real browser: headless Chromium (tests/browser.py) against a real coordinator
and worker processes, while a job runs.

Screenshots go to ``.artifacts/screenshots/`` at the repository root (``PARCELO_ARTIFACTS``
overrides the folder); the test prints where. The browser is Debian's chromium, which ``make
test`` installs (``make toolchains``); without it the test fails, it never skips.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from parcelo import JobOptions
from parcelo.testing import CoordinatorProcess, Proc, start_worker
from parcelo.v1 import types_pb2
from tests.browser import Page, chromium

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("PARCELO_ARTIFACTS", ROOT / ".artifacts")) / "screenshots"
STATUSES = {"pending", "running", "done", "skipped", "error"}

SEGMENTS = "[...document.querySelectorAll('#range-map .seg')]"
MAP_STATE = f"{SEGMENTS}.map(s => s.dataset.status + ':' + s.dataset.start + '-' + s.dataset.end).join(' ')"


async def segments(page: Page) -> list[dict[str, Any]]:
    """The range map's segments: status, range, and the colour the browser paints."""
    return list(
        await page.evaluate(
            f"{SEGMENTS}.map(s => ({{status: s.dataset.status, start: s.dataset.start, end: s.dataset.end, "
            "colour: getComputedStyle(s).backgroundColor, width: s.getBoundingClientRect().width}))"
        )
    )


def test_the_dashboard_shows_the_job_its_progress_and_a_live_range_map(
    tmp_path: Path, log_dir: Path, procs: list[Proc]
) -> None:
    coord = CoordinatorProcess(tmp_path / "data", log_dir, http=True).start()
    try:
        # 64 leaves of 0.15 s, two at a time: about five seconds of visible progress.
        job = coord.create_job(
            JobOptions(
                0,
                6400,
                max_range_size=100,
                params={"sleep": 0.15, "fail_start": 300},
                reduce="sum",
                job_id="dashboard-demo",
            )
        )
        worker = start_worker(
            coord.target, "tests.handlers:nap", log_dir, "--concurrency", "2", "--prefetch", "2"
        )
        procs.append(worker)
        asyncio.run(asyncio.wait_for(_browse(coord, job.id, tmp_path / "chromium-profile"), 90))
        final = coord.wait_status(job.id, {types_pb2.JOB_STATUS_COMPLETED}, timeout=60)
        assert final.result_json == "6400"
    finally:
        coord.stop()
    print(f"\nscreenshots in {ARTIFACTS}")


async def _browse(coord: CoordinatorProcess, job_id: str, profile: Path) -> None:
    base = coord.http_url
    async with chromium(profile, ARTIFACTS.parent / "chromium.log") as browser:
        page = await browser.new_page()
        # The jobs table: the job's row, its status and a progress that moves.
        await page.goto(f"{base}/")
        row = f"document.querySelector('tr[data-job-id=\"{job_id}\"]')"
        await page.wait_for(f"!!{row}", "the job's row")
        first = float(await page.wait_for(f"{row} && {row}.dataset.progress", "the row's progress"))
        await page.wait_for(f"parseFloat({row}.dataset.progress) > {first}", "the progress to move")
        assert await page.evaluate(f"{row}.querySelector('.bar > span').style.width") != ""
        await page.screenshot(ARTIFACTS / "jobs.png")

        # The job's page, from its row's link: the range map, coloured by status, changing as leaves finish.
        await page.evaluate(f"{row}.querySelector('a').click()")
        await page.wait_for(f"location.pathname === '/jobs/{job_id}'", "the job's page")
        await page.wait_for(f"{SEGMENTS}.length > 1", "the range map's segments")
        seen = await segments(page)
        assert {s["status"] for s in seen} <= STATUSES
        assert all(s["colour"] not in ("", "rgba(0, 0, 0, 0)") for s in seen), seen
        assert sum(s["width"] for s in seen) > 0
        before = await page.evaluate(MAP_STATE)
        await page.screenshot(ARTIFACTS / "job-running.png")
        await page.wait_for(f"{MAP_STATE} !== {before!r}", "the range map to change as the job runs")
        await page.wait_for(
            f"{SEGMENTS}.some(s => s.dataset.status === 'done')", "a done segment while the job runs"
        )
        # The failed first attempt of one leaf is listed with its leaf.
        await page.wait_for(
            "[...document.querySelectorAll('#errors td')].some(td => td.textContent === '[300, 400)')",
            "the failed attempt among the recent errors",
        )
        # Until it completes: then one done segment covers the whole range, and the result shows.
        await page.wait_for(
            "document.getElementById('job-status').textContent === 'completed'", "the job to complete", 60
        )
        await page.wait_for(
            f"{SEGMENTS}.length > 0 && {SEGMENTS}.every(s => s.dataset.status === 'done')",
            "an all-done range map",
        )
        assert "6400" in await page.evaluate("document.getElementById('job-result').textContent")
        await page.screenshot(ARTIFACTS / "job-completed.png")

        # Zoom: clicking a segment shows its subtree (a breadcrumb leads back).
        await page.evaluate(f"{SEGMENTS}[0].click()")
        await page.wait_for(
            "document.querySelector('.crumbs').textContent.includes('\u203a')", "the zoomed view"
        )

        # Phone width: the page still fits, the map too.
        await page.viewport(390, 844, mobile=True)
        await page.goto(f"{base}/jobs/{job_id}")
        await page.wait_for(f"{SEGMENTS}.length > 0", "the range map on a phone-width screen")
        width = await page.evaluate("document.getElementById('range-map').getBoundingClientRect().width")
        assert 0 < width <= 390
        await page.screenshot(ARTIFACTS / "job-phone.png")

        # The workers page lists the worker with the leases it holds.
        await page.viewport(1280, 900)
        await page.goto(f"{base}/workers")
        await page.wait_for("document.querySelectorAll('#workers tbody tr').length === 1", "the worker's row")
        await page.screenshot(ARTIFACTS / "workers.png")
