"""The build: the hot-path modules run compiled when the Makefile built them so."""

from __future__ import annotations

import importlib
import os

import pytest

# setup.py's COMPILED list.
HOT_PATH = ("tree", "leases", "events", "jobs", "core")


@pytest.mark.skipif(
    os.environ.get("PARCELO_EXPECT_COMPILED") != "1", reason="only when the Makefile built the package"
)
@pytest.mark.parametrize("name", HOT_PATH)
def test_hot_path_modules_are_compiled(name: str) -> None:
    module = importlib.import_module(f"parcelo.coordinator.{name}")
    assert module.__file__ is not None and module.__file__.endswith(".so"), module.__file__
