"""`--log-level` and `--log-format json` on both CLIs, before or after the subcommand."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from testbed.procs import Served

EDGE_NODE = [sys.executable, "-m", "edge_node.cli"]
MOE2 = [sys.executable, "-m", "testbed.cli"]


def json_lines(served: Served) -> list[dict[str, str]]:
    deadline = time.monotonic() + 5
    while not served.stderr_tail and time.monotonic() < deadline:
        time.sleep(0.05)
    return [json.loads(line) for line in served.stderr_tail if line.strip()]


def test_a_node_logs_one_json_object_per_line_with_the_flag_before_or_after() -> None:
    for flags in (
        [*EDGE_NODE, "--log-format", "json", "serve"],
        [*EDGE_NODE, "serve", "--log-format", "json"],
    ):
        with Served([*flags, "--engine", "fake", "--port", "0"]) as node:
            records = json_lines(node)
        assert records, "no log line"
        assert all(set(r) >= {"ts", "level", "logger", "message"} for r in records)
        assert any(r["logger"].startswith("edge_node") for r in records)


def test_log_level_quiets_a_server(tmp_path: Path) -> None:
    with Served.fake_node(0.0) as node:
        cluster = tmp_path / "c.toml"
        cluster.write_text(f'[[nodes]]\nname = "a"\naddress = "{node.target}"\n')
        command = [*MOE2, "serve", "--cluster", str(cluster), "--port", "0"]
        with Served([*command, "--log-level", "error", "--log-format", "json"]) as quiet:
            time.sleep(0.5)
            assert quiet.stderr_tail == []  # nothing at error level during a clean start
        with Served([*MOE2, "--log-format", "json", *command[len(MOE2) :]]) as chatty:
            records = json_lines(chatty)
        assert any(r["level"] == "info" for r in records)
