"""The version is written once, in pyproject.toml; everything else reads the package metadata."""

from __future__ import annotations

import tomllib
from pathlib import Path

import parcelo
from parcelo import worker

ROOT = Path(__file__).resolve().parent.parent


def test_version_is_pyprojects() -> None:
    with open(ROOT / "pyproject.toml", "rb") as file:
        version = tomllib.load(file)["project"]["version"]
    assert parcelo.__version__ == version
    assert worker.SDK.split("/") == ["parcelo-python", version]
