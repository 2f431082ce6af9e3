"""What a sweep ran on (``env.json``): versions, git revision, hardware, nodes and emulation."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from testbed.fleet import Fleet
from testbed.sweep_config import SweepConfig


def environment(fleet: Fleet, infos: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Versions, git revision, hardware, energy backends and emulation, for env.json."""

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    try:
        revision = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except OSError:
        revision = ""
    import psutil

    return {
        "created_unix_s": time.time(),
        "git_revision": revision or None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": {
            name: version(name)
            for name in ("moe2-edge", "llama_cpp_python", "numpy", "scipy", "grpcio", "protobuf")
        },
        "hardware": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "memory_bytes": psutil.virtual_memory().total,
        },
        "network_emulation": fleet.network_mode,
        "experts": infos,
        "emulated": any(info.get("emulated") for info in infos.values()),
    }


async def node_infos(targets: dict[str, str], config: SweepConfig) -> dict[str, dict[str, Any]]:
    """GetInfo of every node plus the emulation settings of the sweep."""
    from dataclasses import asdict

    from edge_node.client import AsyncEdgeNodeClient

    out = {}
    for expert in config.experts:
        async with AsyncEdgeNodeClient(targets[expert.name]) as client:
            info = asdict(await client.info())
        info["emulated_device"] = expert.device
        info["emulated"] = expert.device is not None
        info["link"] = {"delay_ms": expert.delay_ms, "rate_mbit": expert.rate_mbit}
        out[expert.name] = info
    return out
