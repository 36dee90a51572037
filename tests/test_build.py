"""The build: the hot-path modules run compiled when the Makefile built them, and from today's source."""

from __future__ import annotations

import ast
import importlib
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _compiled() -> tuple[str, ...]:
    """setup.py's COMPILED list, read without running setup.py."""
    for node in ast.parse((ROOT / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == ["COMPILED"]:
            return tuple(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no COMPILED list")


HOT_PATH = _compiled()
# Where setup.py stages the sources it compiles.
STAGED = ROOT / "build" / "mypyc-src" / "parcelo" / "coordinator"


@pytest.mark.skipif(
    os.environ.get("PARCELO_EXPECT_COMPILED") != "1", reason="only when the Makefile built the package"
)
@pytest.mark.parametrize("name", HOT_PATH)
def test_hot_path_modules_are_compiled(name: str) -> None:
    module = importlib.import_module(f"parcelo.coordinator.{name}")
    assert module.__file__ is not None and module.__file__.endswith(".so"), module.__file__


@pytest.mark.parametrize("name", HOT_PATH)
def test_compiled_modules_are_built_from_the_current_source(name: str) -> None:
    module = importlib.import_module(f"parcelo.coordinator.{name}")
    if module.__file__ is None or not module.__file__.endswith(".so"):
        return  # interpreted: runs the source itself
    source = (ROOT / "coordinator" / f"{name}.py").read_bytes()
    assert (STAGED / f"{name}.py").read_bytes() == source, (
        f"parcelo.coordinator.{name} was compiled from an older source: run `make install`"
    )
