"""The committed stubs in worker_sdk/v1 are exactly what proto/generate.py makes from proto/."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_match_the_proto_files(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("parcelo_generate", ROOT / "proto" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["parcelo_generate"] = module
    spec.loader.exec_module(module)
    fresh = {p.name: p.read_bytes() for p in module.generate(tmp_path / "v1")}
    committed = {p.name: p.read_bytes() for p in (ROOT / "worker_sdk" / "v1").iterdir() if p.is_file()}
    assert sorted(fresh) == sorted(committed), "stub files differ: run `make proto`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stubs out of date with proto/: {stale}; run `make proto`"
