"""A fresh cluster, never profiled by hand: the first budgeted `moe2 ask` is answered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from testbed.procs import Served

MOE2 = [sys.executable, "-m", "testbed.cli"]


def test_two_nodes_a_cluster_file_and_a_budgeted_ask(tmp_path: Path) -> None:
    with Served.fake_node(0.0) as first, Served.fake_node(0.0) as second:
        cluster = tmp_path / "c.toml"
        cluster.write_text(
            f'[[nodes]]\nname = "a"\naddress = "{first.target}"\n\n'
            f'[[nodes]]\nname = "b"\naddress = "{second.target}"\n'
        )
        with Served([*MOE2, "serve", "--cluster", str(cluster), "--port", "0"]) as moe2:
            done = subprocess.run(
                [
                    *MOE2,
                    "ask",
                    "--target",
                    moe2.target,
                    "--energy-budget-j",
                    "50",
                    "--delay-budget-s",
                    "5",
                    "--top-k",
                    "2",
                    "--json",
                    "Is the sky blue?",
                    "--choices",
                    " yes",
                    " no",
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            answer = json.loads(done.stdout)
            assert answer["answer"] in (" yes", " no")
            assert set(answer["subset"]) == {"a", "b"}
            plan = subprocess.run(
                [*MOE2, "plan", "--target", moe2.target, "--delay-budget-s", "5", "--json"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert plan.returncode == 0, plan.stderr
            assert set(json.loads(plan.stdout)["subset"]) == {"a", "b"}
            experts = subprocess.run(
                [*MOE2, "experts", "--target", moe2.target, "--json"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert experts.returncode == 0, experts.stderr
            listed = json.loads(experts.stdout)["experts"]
            assert {e["name"]: e["profile_source"] for e in listed} == {"a": "probe", "b": "probe"}
            assert all(e["health"] == "up" and e["profile_age_s"] >= 0 for e in listed)


def test_both_clis_say_their_version() -> None:
    for command in (MOE2, [sys.executable, "-m", "edge_node.cli"]):
        done = subprocess.run(
            [*command, "--version"], capture_output=True, text=True, timeout=60, check=True
        )
        name, version = done.stdout.split()
        assert name in ("moe2", "edge-node")
        assert version[0].isdigit() or version == "dev"
