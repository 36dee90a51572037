"""Generate the Python stubs of proto/parcelo/v1 into worker_sdk/v1.

Run as ``python proto/generate.py [OUT_DIR]``. Output is deterministic for a
given grpcio-tools and mypy-protobuf version (both pinned in pyproject.toml),
so tests/test_proto_drift.py regenerates into a temp dir and compares.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
DEFAULT_OUT = ROOT / "worker_sdk" / "v1"


def generate(out_dir: Path) -> list[Path]:
    """Compile every .proto under proto/parcelo/v1 into ``out_dir``; return the files written."""
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "parcelo" / "v1").glob("*.proto"))
    # protoc finds the mypy-protobuf plugins on PATH; they live beside this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        produced = Path(tmp) / "parcelo" / "v1"
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for src in sorted(produced.iterdir()):
            dst = out_dir / src.name
            shutil.copyfile(src, dst)
            written.append(dst)
        init = out_dir / "__init__.py"
        init.write_text(
            '"""Generated protobuf and gRPC stubs of parcelo.v1 (do not edit; run make proto)."""\n'
        )
        written.append(init)
        return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for path in generate(target):
        print(path.relative_to(target.parent) if path.is_relative_to(target.parent) else path)
