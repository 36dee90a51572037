"""Build hook: with ``PARCELO_COMPILE=1``, compile the coordinator's pure-logic modules with mypyc.

Everything else about the distribution is in pyproject.toml. The compiled
modules are plain, strictly typed Python and run unchanged when not compiled;
compiled, the coordinator's per-leaf bookkeeping (tree, leases, events, core)
costs about half as much CPU (docs/benchmarks.md). Compiling needs a C compiler
and mypy in the build environment, so it is opt-in: ``make install`` turns it
on, a plain ``pip install parcelo`` (the thin worker SDK) does not.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from setuptools import setup  # type: ignore[import-untyped]

# The per-leaf hot path, found by profiling (docs/benchmarks.md). I/O modules stay interpreted.
COMPILED = ("results", "runs", "scheduler", "tree", "leases", "events", "jobs", "codec", "records", "core")


def _ext_modules() -> list[Any]:
    if os.environ.get("PARCELO_COMPILE") != "1":
        return []
    from mypyc.build import mypycify

    # mypyc names a module after its path, so the sources are staged under their import path
    # (parcelo.coordinator.*) rather than compiled from coordinator/.
    root = Path(__file__).resolve().parent
    stage = root / "build" / "mypyc-src"
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(root / "worker_sdk", stage / "parcelo", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(
        root / "coordinator", stage / "parcelo" / "coordinator", ignore=shutil.ignore_patterns("__pycache__")
    )
    paths = [str((stage / "parcelo" / "coordinator" / f"{name}.py").relative_to(root)) for name in COMPILED]
    return list(mypycify(paths, opt_level="3", target_dir=str(root / "build" / "mypyc")))


setup(ext_modules=_ext_modules())
