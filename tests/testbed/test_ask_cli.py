"""`moe2 ask` and `edge-node score` say where the prompt goes when `--choices` took it."""

from __future__ import annotations

import subprocess
import sys

import pytest

MOE2 = [sys.executable, "-m", "testbed.cli"]
EDGE_NODE = [sys.executable, "-m", "edge_node.cli"]


@pytest.mark.parametrize(
    ("command", "needle"),
    [
        ([*MOE2, "ask", "--target", "127.0.0.1:9", "--choices", " yes", " no"], "--choices took"),
        ([*MOE2, "ask", "--target", "127.0.0.1:9"], "a PROMPT is needed"),
        ([*MOE2, "ask", "--target", "127.0.0.1:9", "Q?", "--choices", " yes"], "at least two"),
        ([*EDGE_NODE, "score", "--target", "127.0.0.1:9", "--choices", " yes"], "--choices took"),
    ],
)
def test_a_missing_prompt_is_one_line_showing_where_it_goes(
    command: list[str], needle: str
) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert needle in lines[0]
    assert '--choices " yes" " no"' in lines[0]  # the example shows the right order
