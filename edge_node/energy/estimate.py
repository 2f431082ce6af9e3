"""The labelled fallback: energy estimated from this process's CPU time and a power model.

``E = estimate_idle_w * window_s + estimate_cpu_w_per_core * process_cpu_s``, where
``process_cpu_s`` is user + system CPU time of the node process (all its threads) from psutil.
This is a model, not a measurement: every figure is labelled ``estimated`` /
``model_estimate`` and carries no uncertainty bound (expect +-30-50 % even when calibrated).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from edge_node.energy.settings import EnergySettings
from edge_node.energy.sysinfo import cpu_model_name
from edge_node.energy.timeline import SampledMeter
from edge_node.energy.types import EnergyBackendError, MeterInfo


def process_cpu_seconds(process: psutil.Process) -> Callable[[], float]:
    """A function returning user + system CPU seconds of ``process``."""

    def read() -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    return read


def cpu_tick_s() -> float:
    """Granularity of the kernel's per-process CPU accounting (1 / USER_HZ, usually 10 ms)."""
    try:
        return 1.0 / os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return 0.01


class CpuTimeEstimate:
    """Cumulative modeled joules: idle power x elapsed time + W per core x CPU seconds."""

    def __init__(
        self,
        cpu_seconds: Callable[[], float],
        *,
        idle_w: float,
        cpu_w_per_core: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Read the baseline CPU time now.

        Args:
            cpu_seconds: Cumulative CPU seconds of the process (non-decreasing).
            idle_w: Watts charged per second of wall time.
            cpu_w_per_core: Watts per fully busy core.
            clock: Monotonic clock.
        """
        self._cpu_seconds = cpu_seconds
        self._idle_w = idle_w
        self._cpu_w_per_core = cpu_w_per_core
        self._clock = clock
        self._origin_s = clock()
        self._cpu_origin_s = cpu_seconds()

    def read_joules(self) -> float:
        """Modeled joules since construction."""
        cpu_s = max(0.0, self._cpu_seconds() - self._cpu_origin_s)
        elapsed_s = max(0.0, self._clock() - self._origin_s)
        return self._idle_w * elapsed_s + self._cpu_w_per_core * cpu_s

    def close(self) -> None:
        """Nothing to release."""


def build_estimate_meter(
    settings: EnergySettings,
    *,
    process: psutil.Process | None = None,
    cpu_seconds: Callable[[], float] | None = None,
    sys_root: Path = Path("/"),
    clock: Callable[[], float] = time.monotonic,
    rejected: tuple[str, ...] = (),
) -> SampledMeter:
    """Build the CPU-time model meter for ``process`` (default: this process).

    Args:
        settings: The power-model coefficients and sampling settings.
        process: The process whose CPU time is charged.
        cpu_seconds: Overrides ``process``: any cumulative CPU-seconds function (tests).
        sys_root: Root for ``/proc/cpuinfo`` (the device name).
        clock: Monotonic clock of the callers' window edges.
        rejected: Reasons from earlier backends, copied into :attr:`MeterInfo.rejected`.

    Raises:
        EnergyBackendError: The process's CPU times cannot be read.
    """
    if cpu_seconds is None:
        target = psutil.Process() if process is None else process
        cpu_seconds = process_cpu_seconds(target)
        who = f"process {target.pid}"
    else:
        who = "the process"
    try:
        source = CpuTimeEstimate(
            cpu_seconds,
            idle_w=settings.estimate_idle_w,
            cpu_w_per_core=settings.estimate_cpu_w_per_core,
            clock=clock,
        )
    except (psutil.Error, OSError) as err:
        raise EnergyBackendError((f"estimate: cannot read CPU times: {err!r}",)) from err
    scope = (
        f"model, not a measurement: {settings.estimate_idle_w:g} W idle x window + "
        f"{settings.estimate_cpu_w_per_core:g} W per busy core x CPU time of {who}"
    )
    info = MeterInfo(
        source="estimated",
        method="model_estimate",
        scope=scope,
        resolution_s=cpu_tick_s(),
        device_kind="cpu",
        device_name=cpu_model_name(sys_root),
        rejected=rejected,
    )
    return SampledMeter(
        info,
        counter=source,
        sample_interval_s=settings.sample_interval_s,
        timeline_seconds=settings.timeline_seconds,
        cheap_reads=True,
        clock=clock,
    )
