"""A node-only install: edge_node/ needs none of the orchestrator's or testbed's libraries."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from testbed.cli import EXTRAS_MODULES

ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter where importing any extras module fails, as after
# `pip install 'moe2-edge[node]'`.
BLOCKER = f"""
import importlib.abc, sys
BLOCKED = {sorted(EXTRAS_MODULES)!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Block())
"""


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_every_node_module_imports_without_the_extras() -> None:
    done = _run(
        """
import importlib, pkgutil, edge_node, protos
names = [m.name for pkg in (edge_node, protos)
         for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
for name in names:
    importlib.import_module(name)
assert "edge_node.server" in names and "edge_node.llama_engine" in names, names
from edge_node.cli import main
try:
    main(["serve", "--help"])
except SystemExit as done:
    assert done.code == 0
print(len(names))
"""
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) > 20


def test_the_base_dependencies_are_the_nodes_only() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {
        dep.split(">")[0].split("=")[0].split(";")[0].strip() for dep in project["dependencies"]
    }
    extras = {
        dep.split(">")[0].split("=")[0].strip()
        for name in ("orchestrator", "testbed")
        for dep in project["optional-dependencies"][name]
    }
    assert {"grpcio", "protobuf", "pydantic", "psutil"} <= base
    assert not base & extras
    assert {"scipy", "pyarrow", "matplotlib", "tokenizers"} <= extras
    assert project["requires-python"] == ">=3.10"


def test_moe2_without_the_extras_says_which_to_install() -> None:
    done = _run(
        """
import sys
from testbed.cli import main
sys.exit(main(["plot", "docs/results/standard"]))
"""
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "pip install 'moe2-edge[testbed]'" in lines[0]
