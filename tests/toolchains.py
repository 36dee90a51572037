"""The toolchains the cross-language tests need, as session fixtures (loaded by tests/conftest.py).

Node.js with the Node worker's locked packages, and Go with the Go worker built once. A toolchain
that is missing and cannot be installed fails the tests that need it: they never skip. `make test`
installs both first (`make toolchains`); the fixtures then only check.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "examples" / "node-worker"
NODE_STAMP = NODE_DIR / "node_modules" / ".parcelo-lock-sha256"
"""Written after a successful ``npm ci``: the sha256 of the package-lock.json it installed."""
MIN_NODE = 20
GO_EXAMPLE = ROOT / "examples" / "go-worker"
GO_INSTALL = ROOT / "scripts" / "install-go-toolchain.sh"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} not found on PATH: the Node worker tests need Node.js {MIN_NODE}+ with npm "
            "(e.g. apt-get install nodejs npm)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def node() -> str:
    """The ``node`` binary, with examples/node-worker's locked packages installed."""
    node = _tool("node")
    npm = _tool("npm")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    major = int(version.lstrip("v").split(".")[0])
    if major < MIN_NODE:
        pytest.fail(f"Node.js {MIN_NODE}+ is needed for the Node worker, found {version}", pytrace=False)
    lock = hashlib.sha256((NODE_DIR / "package-lock.json").read_bytes()).hexdigest()
    if not NODE_STAMP.exists() or NODE_STAMP.read_text().strip() != lock:
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True, text=True, timeout=300
        )
        if result.returncode != 0:
            pytest.fail(
                f"npm ci in {NODE_DIR} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}",
                pytrace=False,
            )
        NODE_STAMP.write_text(lock + "\n")
    return node


def run_setup(args: list[str], what: str, timeout: float) -> str:
    """Run a setup command; fail (never skip) with its output when it does not succeed."""
    try:
        done = subprocess.run(
            args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.fail(f"{what} failed: {err}", pytrace=False)
    if done.returncode != 0:
        pytest.fail(
            f"{what} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}",
            pytrace=False,
        )
    return done.stdout


@pytest.fixture(scope="session")
def go_toolchain() -> None:
    """Go, grpc-go, protobuf-go and protoc, from Debian; installed by the script when missing."""
    run_setup(["bash", str(GO_INSTALL)], "installing the Go toolchain (scripts/install-go-toolchain.sh)", 900)


@pytest.fixture(scope="session")
def go_worker(go_toolchain: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The parcelo-go-worker binary, built once per test session into a temp dir."""
    out = tmp_path_factory.mktemp("go-worker-bin")
    run_setup(["bash", str(GO_EXAMPLE / "build.sh"), str(out)], "building the Go worker (build.sh)", 900)
    return out / "parcelo-go-worker"
