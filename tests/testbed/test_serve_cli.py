"""`moe2 serve` and `moe2 ask` as a user runs them, against real fake-engine nodes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from testbed.procs import Served

MOE2 = [sys.executable, "-m", "testbed.cli"]


def moe2(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MOE2, *args], capture_output=True, text=True, timeout=120)


def test_serve_and_ask_through_the_cli(tmp_path: Path) -> None:
    with Served.fake_node(0.0) as first, Served.fake_node(0.0) as second:
        cluster = tmp_path / "cluster.toml"
        cluster.write_text(
            f'[[nodes]]\nname = "first"\naddress = "{first.target}"\n\n'
            f'[[nodes]]\nname = "second"\naddress = "{second.target}"\n'
        )
        with Served([*MOE2, "serve", "--cluster", str(cluster), "--port", "0"]) as orchestrator:
            done = moe2(
                "ask",
                "--target",
                orchestrator.target,
                "--choices",
                " yes",
                " no",
                "--top-k",
                "2",
                "--json",
                "Is it?",
            )
            assert done.returncode == 0, done.stderr
            answer = json.loads(done.stdout)
            assert answer["answer"] in (" yes", " no")
            assert {e["expert"] for e in answer["experts"]} == {"first", "second"}
            assert sum(e["gate_weight"] for e in answer["experts"]) == 1.0
            assert answer["gate_trained"] is False
            text = moe2("ask", "--target", orchestrator.target, "--max-tokens", "3", "Hello")
            assert text.returncode == 0, text.stderr
            assert text.stdout.strip().startswith("w")
            bad = moe2("ask", "--target", orchestrator.target, "--delay-budget-s", "-1", "Hi")
            assert bad.returncode == 1
            assert bad.stderr.strip() == (
                "moe2: error: INVALID_ARGUMENT: "
                "delay_budget_s: must be a finite positive number, got -1.0"
            )
            assert orchestrator.terminate() == 0


def test_bad_cluster_files_are_one_line(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster.toml"
    cluster.write_text('[[nodes]]\nname = "a"\naddress = "localhost"\n')
    done = moe2("serve", "--cluster", str(cluster), "--port", "0")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"moe2: error: {cluster}: nodes.0.address: must be host:port, got 'localhost'"
    )
    cluster.write_text('[[nodes]]\nname = "a"\naddress = "h:1"\ncolour = "red"\n')
    done = moe2("serve", "--cluster", str(cluster), "--port", "0")
    assert (
        done.stderr.strip().splitlines()[-1]
        == f"moe2: error: {cluster}: nodes.0.colour: unknown key"
    )
    done = moe2("serve", "--cluster", str(tmp_path / "absent.toml"))
    assert "does not exist" in done.stderr
    assert "Traceback" not in done.stderr
