"""The README's SDK, curl and openai examples run against a real orchestrator over fake nodes."""

from __future__ import annotations

import json
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


def openai_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    examples = [b for b in blocks if "from openai import OpenAI" in b]
    assert len(examples) == 1
    return str(examples[0])


def curl_example() -> str:
    """The README's curl command: from `curl -s .../v1/chat/completions` to its block's end."""
    text = README.read_text()
    examples = re.findall(
        r"^(curl -s http://127\.0\.0\.1:8000/v1/chat/completions.*?)^```",
        text,
        flags=re.DOTALL | re.MULTILINE,
    )
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
        serve = [*moe2, "serve", "--cluster", str(cluster), "--port", "0", "--http-port", "0"]
        with Served(serve) as orchestrator:
            http = orchestrator.read_address("http")
            monkeypatch.setenv("MOE2_TARGET", orchestrator.target)
            exec(compile(code, str(README), "exec"), {"os": os})
            printed = capsys.readouterr().out.splitlines()
            assert printed[0].split()[0] in ("yes", "no")
            assert {line.split()[0] for line in printed[1:3]} == {"a", "b"}
            assert printed[-1] in ("('a', 'b')", "('a',)", "('b',)")

            curl = curl_example().replace("127.0.0.1:8000", http)
            done = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            reply = json.loads(done.stdout)
            assert reply["choices"][0]["message"]["content"] in (" yes", " no")
            assert {e["expert"] for e in reply["moe2"]["experts"]} == {"a", "b"}

            monkeypatch.setenv("MOE2_HTTP", f"http://{http}")
            exec(compile(openai_example(), str(README), "exec"), {"os": os})
            answer, streamed = capsys.readouterr().out.splitlines()
            assert answer.split()[0] in ("yes", "no")
            assert "'energy_j'" in answer
            assert streamed.strip() == answer.split()[0]  # the same answer, streamed
            assert orchestrator.terminate() == 0
