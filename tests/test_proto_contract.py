"""The compatibility baseline: `buf breaking` (run by `make lint`) refuses an incompatible proto change.

These run buf on a copy of proto/, so they prove the check itself works; `make lint` runs the same
check on the real files.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUF = ROOT / "tools" / "buf" / "node_modules" / ".bin" / "buf"


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """proto/ and buf.yaml copied into a fresh folder, with the committed baseline."""
    assert BUF.exists(), "buf is not installed: run `make lint` (it installs tools/buf)"
    shutil.copytree(ROOT / "proto", tmp_path / "proto", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    return tmp_path


def breaking(where: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUF), "breaking", "--against", "proto/baseline.binpb"],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_proto_as_committed_is_compatible_with_the_baseline(copy: Path) -> None:
    out = breaking(copy)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    # A field's type changed, a field deleted, an enum value renumbered.
    [
        (
            "  uint64 fence = 1;\n  string job_id = 2;\n  LeaseKind kind = 3;",
            "  string fence = 1;\n  string job_id = 2;\n  LeaseKind kind = 3;",
            "type",
        ),
        ("  bool permanent = 8;\n", "", "deleted"),
        (
            "  LEASE_KIND_PROBE = 2;\n",
            "  LEASE_KIND_PROBE = 3;\n",
            'enum value "2" on enum "LeaseKind" was deleted',
        ),
    ],
)
def test_an_incompatible_change_is_refused(copy: Path, old: str, new: str, complaint: str) -> None:
    worker = copy / "proto" / "parcelo" / "v1" / "worker.proto"
    text = worker.read_text()
    assert old in text
    worker.write_text(text.replace(old, new, 1))
    out = breaking(copy)
    assert out.returncode != 0 and complaint in out.stdout, out.stdout + out.stderr
