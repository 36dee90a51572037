"""The build: the hot-path modules run compiled when the Makefile built them, and from today's source."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stale_build import (
    ROOT,
    STAGED,
    STALE,
    compiled_names,
    exit_if_stale,
    installed_origin,
    stale_modules,
)

HOT_PATH = compiled_names()
COMPILED = {name for name in HOT_PATH if (installed_origin(name) or "").endswith(".so")}


@pytest.mark.skipif(
    os.environ.get("PARCELO_EXPECT_COMPILED") != "1", reason="only when the Makefile built the package"
)
@pytest.mark.parametrize("name", HOT_PATH)
def test_hot_path_modules_are_compiled(name: str) -> None:
    module = importlib.import_module(f"parcelo.coordinator.{name}")
    assert module.__file__ is not None and module.__file__.endswith(".so"), (
        f"{module.__file__}: interpreted (make dev?); make install compiles it"
    )


def _project(tmp_path: Path, source: str, staged: str | None) -> Path:
    """A project root whose setup.py compiles ``tree``, with that source and that staged copy."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "setup.py").write_text('COMPILED = ("tree",)\n')
    (tmp_path / "coordinator").mkdir()
    (tmp_path / "coordinator" / "tree.py").write_text(source)
    if staged is not None:
        (tmp_path / STAGED).mkdir(parents=True)
        (tmp_path / STAGED / "tree.py").write_text(staged)
    return tmp_path


def _compiled(name: str) -> str:
    return f"/site/parcelo/coordinator/{name}.cpython-311-x86_64-linux-gnu.so"


def _interpreted(name: str) -> str:
    return f"/site/parcelo/coordinator/{name}.py"


@pytest.mark.parametrize(
    ("source", "staged", "origin", "stale"),
    [
        ("x = 1\n", "x = 1\n", _compiled, []),
        ("x = 1\n", "x = 2\n", _compiled, ["tree"]),
        ("x = 1\n", None, _compiled, ["tree"]),  # a .so nobody can vouch for
        ("x = 1\n", "x = 2\n", _interpreted, []),  # interpreted code is the source itself
        ("x = 1\n", None, lambda name: None, []),
    ],
    ids=["fresh", "edited", "not-staged", "interpreted", "absent"],
)
def test_stale_modules(
    tmp_path: Path, source: str, staged: str | None, origin: object, stale: list[str]
) -> None:
    root = _project(tmp_path, source, staged)
    assert callable(origin)
    found = stale_modules(["tree"], sources=root / "coordinator", staged=root / STAGED, origin=origin)
    assert found == stale


def test_exit_if_stale_stops_with_one_line(tmp_path: Path) -> None:
    root = _project(tmp_path, "x = 1\n", "x = 2\n")
    with pytest.raises(pytest.exit.Exception) as stopped:
        exit_if_stale(root, origin=_compiled)
    assert stopped.value.returncode == pytest.ExitCode.INTERRUPTED
    assert stopped.value.msg == f"{STALE} (tree)"
    exit_if_stale(_project(tmp_path / "fresh", "x = 1\n", "x = 1\n"), origin=_compiled)


@pytest.mark.skipif(not COMPILED, reason="needs the compiled build (make install)")
@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "stale"])
def test_conftest_stops_the_whole_run_on_a_stale_module(tmp_path: Path, fresh: bool) -> None:
    # A copy of the test suite's plumbing over a project whose compiled module's staged copy is
    # (or is not) its source; the installed build is the real, compiled one.
    name = sorted(COMPILED)[0]
    root = tmp_path / "project"
    (root / "tests").mkdir(parents=True)
    for part in ("__init__.py", "conftest.py", "stale_build.py", "toolchains.py"):
        shutil.copy(ROOT / "tests" / part, root / "tests" / part)
    (root / "tests" / "test_one.py").write_text("def test_one() -> None:\n    pass\n")
    (root / "setup.py").write_text(f"COMPILED = ({name!r},)\n")
    (root / "coordinator").mkdir()
    (root / "coordinator" / f"{name}.py").write_text("x = 1\n")
    (root / STAGED).mkdir(parents=True)
    (root / STAGED / f"{name}.py").write_text("x = 1\n" if fresh else "x = 0\n")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if fresh:
        assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout + run.stderr
    else:
        assert run.returncode == pytest.ExitCode.INTERRUPTED, run.stdout + run.stderr
        assert run.stderr.splitlines() == [f"Exit: {STALE} ({name})"]
        assert "passed" not in run.stdout
