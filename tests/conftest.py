"""Fixtures: real coordinator processes over temp data dirs, cleanup of every process, test certificates.

Before anything else, a stale compiled build stops the run (tests/stale_build.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from parcelo.testing import CoordinatorProcess as Coordinator
from parcelo.testing import Proc
from tests.stale_build import exit_if_stale

if TYPE_CHECKING:
    from tests.certs import Pki

# Session fixtures for the Node.js and Go toolchains (node, go_toolchain, go_worker).
pytest_plugins = ["tests.toolchains"]


def pytest_configure(config: pytest.Config) -> None:
    # In pytest_configure, pytest.exit prints one line and no test is collected.
    exit_if_stale()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA with server certificates for 127.0.0.1 and localhost, and a client certificate."""
    # Imported here, not at the top: tests/test_build.py runs a copy of conftest.py without
    # tests/certs.py, and only the TLS tests need the cryptography package.
    from tests.certs import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))


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
