"""Start-up and output failures of both console scripts: one readable line, never a traceback."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.instances import INSTANCE

EDGE_NODE = [sys.executable, "-m", "edge_node.cli"]
MOE2 = [sys.executable, "-m", "testbed.cli"]
UNBINDABLE_HOST = "192.0.2.1"  # TEST-NET-1: never an address of this machine


def run(*command: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|DEBUG|WARNING) ")


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The only stderr line of a failed run besides INFO logs (asserts there is exactly one)."""
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if not LOG_LINE.match(line)]
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text('[[nodes]]\nname = "a"\naddress = "127.0.0.1:1"\n')
    return path


def test_edge_node_on_a_port_in_use(busy_port: int) -> None:
    done = run(*EDGE_NODE, "serve", "--engine", "fake", "--port", str(busy_port))
    assert one_line(done) == f"edge-node: error: --port: {busy_port} is already in use on 127.0.0.1"


def test_edge_node_on_a_host_it_cannot_bind() -> None:
    done = run(*EDGE_NODE, "serve", "--engine", "fake", "--host", UNBINDABLE_HOST, "--insecure")
    assert one_line(done) == (
        f"edge-node: error: --host: cannot bind {UNBINDABLE_HOST}:50051: "
        "Cannot assign requested address"
    )


def test_moe2_serve_on_a_port_in_use(busy_port: int, cluster: Path) -> None:
    done = run(*MOE2, "serve", "--cluster", str(cluster), "--port", str(busy_port))
    assert one_line(done) == f"moe2: error: --port: {busy_port} is already in use on 127.0.0.1"


def test_moe2_serve_on_a_host_it_cannot_bind(cluster: Path) -> None:
    done = run(
        *MOE2,
        "serve",
        "--cluster",
        str(cluster),
        "--host",
        UNBINDABLE_HOST,
        "--port",
        "0",
        "--insecure",
    )
    assert one_line(done) == (
        f"moe2: error: --host: cannot bind {UNBINDABLE_HOST}:0: Cannot assign requested address"
    )


def test_a_gguf_with_valid_magic_and_a_corrupt_body(tmp_path: Path) -> None:
    model = tmp_path / "broken.gguf"
    model.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(range(256)) * 16)
    done = run(*EDGE_NODE, "serve", "--model", str(model), "--port", "0")
    assert one_line(done) == (
        f"edge-node: error: model file {model} is not a loadable GGUF model "
        "(llama.cpp cannot read it)"
    )


def test_invalid_utf8_in_node_toml(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_bytes(b'engine = "fake"\nmodel = "\xff\xfe"\n')
    done = run(*EDGE_NODE, "serve", "--config", str(config), "--port", "0")
    assert done.returncode == 2
    assert one_line(done) == f"edge-node: error: config file {config} is not valid UTF-8 (byte 25)"


def test_invalid_utf8_in_cluster_toml(tmp_path: Path) -> None:
    config = tmp_path / "cluster.toml"
    config.write_bytes(b'[[nodes]]\nname = "\xc3\x28"\naddress = "127.0.0.1:1"\n')
    done = run(*MOE2, "serve", "--cluster", str(config), "--port", "0")
    assert one_line(done) == f"moe2: error: cluster file {config} is not valid UTF-8 (byte 18)"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            json.dumps(INSTANCE).replace('"top_k": 1', '"top_k": ' + "7" * 5000),
            "a number has more than 4300 digits",
        ),
        ('{"experts": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ],
)
def test_hostile_instance_files(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "instance.json"
    path.write_text(text)
    done = run(*MOE2, "optimize", "--instance", str(path), "--json")
    assert done.returncode == 2
    assert one_line(done) == f"error: instance file {path}: {reason}"


def closed_stdout(*command: str) -> tuple[int, str]:
    """Run with stdout a pipe whose reader is gone (``| head`` that already exited)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    stderr = process.stderr.read()
    return process.wait(timeout=120), stderr


def test_json_output_into_a_closed_pipe(tmp_path: Path) -> None:
    path = tmp_path / "instance.json"
    path.write_text(json.dumps(INSTANCE))
    moe2_code, moe2_err = closed_stdout(*MOE2, "optimize", "--instance", str(path), "--json")
    node_code, node_err = closed_stdout(*EDGE_NODE, "models", "list", "--json")
    assert (moe2_code, node_code) == (1, 1)
    assert moe2_err.strip().splitlines() == [
        "moe2: error: stdout: the reader closed the pipe; output truncated"
    ]
    assert node_err.strip().splitlines() == [
        "edge-node: error: stdout: the reader closed the pipe; output truncated"
    ]
