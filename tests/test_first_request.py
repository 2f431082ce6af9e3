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
