"""Whether the compiled hot-path modules were built from today's sources; tests/conftest.py asks first.

``make install`` compiles setup.py's ``COMPILED`` modules with mypyc from copies staged under
``build/mypyc-src``. A compiled module whose staged copy differs from ``coordinator/<name>.py`` (or
has none) runs code that is not in the tree, so the whole run stops before any test: a run that
silently exercised the old build would prove nothing.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGED = Path("build", "mypyc-src", "parcelo", "coordinator")
"""Where setup.py stages the coordinator's sources it compiles, relative to the project root."""

STALE = "compiled modules are stale: run make install"


def compiled_names(root: Path = ROOT) -> tuple[str, ...]:
    """setup.py's COMPILED list, read without running setup.py."""
    for node in ast.parse((root / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == ["COMPILED"]:
            return tuple(ast.literal_eval(node.value))
    raise AssertionError(f"{root / 'setup.py'} has no COMPILED list")


def installed_origin(name: str) -> str | None:
    """The file ``parcelo.coordinator.<name>`` is imported from, without running the module."""
    spec = importlib.util.find_spec(f"parcelo.coordinator.{name}")
    return None if spec is None else spec.origin


def stale_modules(
    names: Iterable[str], *, sources: Path, staged: Path, origin: Callable[[str], str | None]
) -> list[str]:
    """The modules among ``names`` that are imported compiled but not from the source in ``sources``.

    Args:
        names: Module names (``"tree"``).
        sources: The folder holding ``<name>.py`` today (``coordinator/``).
        staged: The folder holding the copies they were compiled from.
        origin: Where a module is imported from (a ``.py``, or an extension module when compiled).
    """
    stale = []
    for name in names:
        where = origin(name)
        if where is None or not where.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            continue  # interpreted: it runs the source itself
        copy = staged / f"{name}.py"
        if not copy.is_file() or copy.read_bytes() != (sources / f"{name}.py").read_bytes():
            stale.append(name)
    return stale


def exit_if_stale(root: Path = ROOT, origin: Callable[[str], str | None] = installed_origin) -> None:
    """Stop the pytest run with one line when a compiled module is stale.

    Raises:
        pytest.exit.Exception: Some compiled module is not built from ``root``'s sources.
    """
    stale = stale_modules(
        compiled_names(root), sources=root / "coordinator", staged=root / STAGED, origin=origin
    )
    if stale:
        # Exit code 2, pytest's "interrupted": no test ran, and make test fails.
        pytest.exit(f"{STALE} ({', '.join(stale)})", returncode=pytest.ExitCode.INTERRUPTED)
