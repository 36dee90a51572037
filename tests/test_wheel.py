"""`make wheel`: a binary wheel whose hot path is compiled, installed by pip into a fresh venv.

The fresh venv borrows the dependencies (grpcio, protobuf, ...) from the test's own environment
through a path file, so nothing is downloaded; parcelo itself comes from the wheel alone.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.stale_build import ROOT, compiled_names

pytestmark = pytest.mark.integration

CHECK = """
import importlib, sys
names = sys.argv[1].split(",")
for name in names:
    module = importlib.import_module(f"parcelo.coordinator.{name}")
    assert module.__file__.startswith(sys.prefix) and module.__file__.endswith(".so"), module.__file__
from parcelo.coordinator.core import Core
from parcelo.v1 import types_pb2
core = Core(fence_limit=1)
core.fences.made_durable(core.fences.pending_limit() or 0)
core.create_job(types_pb2.JobSpec(range=types_pb2.Range(start=0, end=100), max_range_size=10), 0.0)
leases = core.lease(["default"], 10, 1.0)
assert len(core.complete([lease.fence for lease in leases], [], 1.0)[0]) == 10
print("compiled", len(names))
"""


def test_make_wheel_builds_a_wheel_that_installs_and_runs_compiled(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = subprocess.run(
        ["make", "-s", "wheel", f"WHEEL_DIR={dist}"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = dist.glob("parcelo-*.whl")
    assert sysconfig.get_config_var("SOABI").split("-")[0].replace("cpython", "cp") in wheel.name
    fresh = tmp_path / "venv"
    venv.create(fresh, with_pip=False)
    python = fresh / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The dependencies, not parcelo: this environment's site-packages, whose editable-install path
    # files are not read from a plain path entry.
    (Path(site) / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    names = compiled_names()
    ran = subprocess.run(
        [str(python), "-c", CHECK, ",".join(names)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.split() == ["compiled", str(len(names))]
