"""A real full disk: a coordinator process whose data dir is on a small tmpfs that fills up mid-job.

The in-process twin of this test (tests/test_durability.py) injects the same failure into the
store; this one lets RocksDB itself hit ENOSPC, recover by reopening, and be killed mid-failure.
The scenario is `make chaos`'s disk-full phase (tests/chaos.py), on a smaller job.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos import disk_full
from tests.support import can_mount, tmpfs

pytestmark = pytest.mark.integration

FS_SIZE_MB = 64


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A fresh tmpfs of FS_SIZE_MB mounted for this test (root only: CI runs as root)."""
    if not can_mount():
        pytest.skip("mounting a tmpfs needs root; tests/test_durability.py covers the same in-process")
    with tmpfs(tmp_path / "fs", FS_SIZE_MB) as mount:
        yield mount


def test_a_full_disk_holds_every_answer_until_it_is_written_then_goes_on(
    small_fs: Path, tmp_path: Path
) -> None:
    # 2,048 leaves of 100 ids; every check is in the scenario.
    report = disk_full(small_fs, tmp_path, leaves=2048, width=100)
    assert report.leaves == 2048
