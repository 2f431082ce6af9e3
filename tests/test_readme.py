"""The README's SDK example runs against a real orchestrator over fake-engine nodes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.procs import Served

README = Path(__file__).resolve().parents[1] / "README.md"


def sdk_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    examples = [b for b in blocks if "orchestrator.client" in b]
    assert len(examples) == 1
    return str(examples[0])


def test_the_readme_sdk_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = sdk_example()
    assert len(code.strip().splitlines()) <= 10
    with Served.fake_node(0.0) as first, Served.fake_node(0.0) as second:
        cluster = tmp_path / "cluster.toml"
        cluster.write_text(
            f'[[nodes]]\nname = "a"\naddress = "{first.target}"\n'
            f'[[nodes]]\nname = "b"\naddress = "{second.target}"\n'
        )
        moe2 = [sys.executable, "-m", "testbed.cli"]
        profiled = subprocess.run(
            [
                *moe2,
                "profile",
                "--cluster",
                str(cluster),
                "--out",
                str(tmp_path / "p.json"),
                "--categories",
                "sst2",
                "--samples",
                "3",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert profiled.returncode == 0, profiled.stderr
        # top-level keys come before the [[nodes]] tables in TOML
        cluster.write_text('profile = "p.json"\n' + cluster.read_text())
        with Served([*moe2, "serve", "--cluster", str(cluster), "--port", "0"]) as orchestrator:
            monkeypatch.setenv("MOE2_TARGET", orchestrator.target)
            exec(compile(code, str(README), "exec"), {"os": os})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[0] in ("yes", "no")
    assert {line.split()[0] for line in printed[1:3]} == {"a", "b"}
    assert printed[-1] in ("('a', 'b')", "('a',)", "('b',)")
