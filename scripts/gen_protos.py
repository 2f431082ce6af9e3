"""Regenerate protos/*_pb2*.py(i) from protos/*.proto; the only generator (run from anywhere)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    """Run protoc with the gRPC and mypy-protobuf plugins over protos/*.proto."""
    # protoc finds the mypy-protobuf plugins (protoc-gen-mypy*) on PATH: use this interpreter's.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "protos").glob("*.proto"))
    # -I is the repo root, so protos/edge_node.proto is known as "protos/edge_node.proto" and the
    # generated code imports `from protos import edge_node_pb2` (no sed needed;
    # docs/architecture.md §10.5).
    args = [
        "protoc",
        f"-I{ROOT}",
        f"--python_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        f"--mypy_out={ROOT}",
        f"--mypy_grpc_out={ROOT}",
        *protos,
    ]
    return int(protoc.main(args))


if __name__ == "__main__":
    sys.exit(main())
