"""Names of the host's CPU and Jetson module, read from an injectable root."""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path

SysfsReader = Callable[[Path], str]
"""Reads one sysfs attribute; injected so tests can raise PermissionError as root."""


def read_sysfs(path: Path) -> str:
    """Read one sysfs attribute, stripped (the default reader)."""
    return path.read_text().strip()


def cpu_model_name(sys_root: Path = Path("/")) -> str:
    """CPU model from ``/proc/cpuinfo`` ("model name", or "Hardware"/"Model" on ARM)."""
    try:
        text = (sys_root / "proc" / "cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Hardware", "Model"):
        for line in text.splitlines():
            field, _, value = line.partition(":")
            if field.strip() == key and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def jetson_model_name(sys_root: Path = Path("/")) -> str:
    """Module name from the device tree, e.g. "NVIDIA Jetson AGX Orin Developer Kit"."""
    for relative in ("proc/device-tree/model", "sys/firmware/devicetree/base/model"):
        try:
            raw = (sys_root / relative).read_bytes()
        except OSError:
            continue
        name = raw.replace(b"\x00", b"").decode(errors="replace").strip()
        if name:
            return name
    return "Jetson"
