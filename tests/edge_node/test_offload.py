"""GPU offload: asked-for layers on a build that cannot offload never run silently on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from edge_node.offload import OffloadError, build_supports_offload, plan_offload
from testbed.procs import Served

EDGE_NODE = [sys.executable, "-m", "edge_node.cli"]


def test_layers_pass_through_where_the_build_offloads() -> None:
    offload = plan_offload(-1, supported=True, allow_cpu_fallback=False)
    assert (offload.layers, offload.compute_device, offload.fell_back) == (-1, "gpu", False)
    none = plan_offload(0, supported=False, allow_cpu_fallback=False)
    assert (none.layers, none.compute_device) == (0, "cpu")


def test_a_cpu_only_build_refuses_gpu_layers_unless_the_fallback_is_allowed() -> None:
    with pytest.raises(OffloadError, match=r"^--n-gpu-layers 20: .*cannot offload") as caught:
        plan_offload(20, supported=False, allow_cpu_fallback=False)
    assert "LLAMA_BACKEND=cuda" in str(caught.value)
    fallback = plan_offload(20, supported=False, allow_cpu_fallback=True)
    assert (fallback.layers, fallback.compute_device, fallback.fell_back) == (0, "cpu", True)


def test_build_support_is_what_llama_cpp_says() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    assert build_supports_offload() is bool(llama_cpp.llama_supports_gpu_offload())


def test_serve_with_gpu_layers_on_the_cpu_is_one_line_before_anything_loads() -> None:
    # the fake engine computes on the CPU, like a CPU-only llama.cpp build
    started = time.monotonic()
    done = subprocess.run(
        [*EDGE_NODE, "serve", "--engine", "fake", "--port", "0", "--n-gpu-layers", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("edge-node: error: --n-gpu-layers -1: ")
    assert "listening" not in done.stdout
    assert time.monotonic() - started < 30


def test_the_fallback_serves_on_the_cpu_and_says_so() -> None:
    with Served.edge_node(
        "--engine", "fake", "--n-gpu-layers", "-1", "--allow-cpu-fallback"
    ) as node:
        info = subprocess.run(
            [*EDGE_NODE, "info", "--target", node.target, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        fields = json.loads(info.stdout)
        assert fields["compute_device"] == "cpu"
        assert fields["n_gpu_layers"] == 0
        assert fields["gpu_offload_supported"] is False
        assert "nvml: the model computes on the CPU" in " ".join(fields["energy_rejected"])
