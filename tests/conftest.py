"""Fixtures: real coordinator processes over temp data dirs, and cleanup of every process.

Before anything else, a stale compiled build stops the run (tests/stale_build.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from parcelo.testing import CoordinatorProcess as Coordinator
from parcelo.testing import Proc
from tests.stale_build import exit_if_stale

# Session fixtures for the Node.js and Go toolchains (node, go_toolchain, go_worker).
pytest_plugins = ["tests.toolchains"]


def pytest_configure(config: pytest.Config) -> None:
    # In pytest_configure, pytest.exit prints one line and no test is collected.
    exit_if_stale()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes a test starts; all are killed at the end whatever happened."""
    started: list[Proc] = []
    yield started
    for proc in started:
        if proc.alive():
            proc.kill9()


@pytest.fixture
def coordinator(tmp_path: Path, log_dir: Path) -> Iterator[Coordinator]:
    """A running coordinator on a free loopback port with a fresh RocksDB data dir."""
    coord = Coordinator(tmp_path / "data", log_dir).start()
    try:
        yield coord
    finally:
        if coord.proc is not None and coord.proc.alive():
            coord.kill9()


@pytest.fixture
def make_coordinator(tmp_path: Path, log_dir: Path) -> Iterator[type[Coordinator]]:
    """For tests that restart a coordinator on the same data dir: coordinators they make are stopped."""
    made: list[Coordinator] = []

    class Tracked(Coordinator):
        def start(self) -> Coordinator:
            if self not in made:
                made.append(self)
            return super().start()

    yield Tracked
    for coord in made:
        if coord.proc is not None and coord.proc.alive():
            coord.kill9()
