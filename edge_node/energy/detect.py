"""Backend detection: probe real reads in a fixed order and say why each backend was rejected."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Literal

import psutil

from edge_node.energy.estimate import build_estimate_meter
from edge_node.energy.jetson import build_jetson_meter
from edge_node.energy.modeled import UnavailableEnergyMeter
from edge_node.energy.nvml import build_nvml_meter
from edge_node.energy.rapl import build_rapl_meter
from edge_node.energy.settings import BackendName, EnergySettings
from edge_node.energy.sysinfo import cpu_model_name
from edge_node.energy.types import EnergyBackendError, EnergyMeter

logger = logging.getLogger(__name__)

AUTO_ORDER: tuple[BackendName, ...] = ("nvml", "jetson", "rapl", "estimate")
"""Detection order for ``backend="auto"``; the estimate always comes last."""

CPU_COMPUTE_REASON = "nvml: the model computes on the CPU (no GPU layers), not on a GPU"

_Builder = Callable[[tuple[str, ...]], EnergyMeter]


def detect_meter(
    settings: EnergySettings,
    *,
    compute: Literal["cpu", "gpu"] = "gpu",
    sys_root: Path = Path("/"),
    nvml: ModuleType | None = None,
    clock: Callable[[], float] = time.monotonic,
    process: psutil.Process | None = None,
) -> EnergyMeter:
    """Choose and build the node's energy meter (not started; call ``start``).

    With ``settings.backend == "auto"`` the backends are probed in :data:`AUTO_ORDER` with
    real reads (two counter reads, or one power read); the first that works is returned,
    and :attr:`MeterInfo.rejected` lists why each earlier one was not used. If even the
    estimate fails, an :class:`UnavailableEnergyMeter` reports unknown energy. An explicit
    backend is probed alone and must work.

    The energy is read from the device that computes: when the model runs on the CPU
    (``compute="cpu"``), NVML is not probed in auto mode (a GPU board's energy is not the CPU's
    work) and the reason is listed; an explicit ``nvml`` is honoured with a warning.

    Args:
        settings: Backend choice and sampling settings.
        compute: Where the model's layers run (``edge_node.offload``).
        sys_root: Root of ``/sys``, ``/proc`` and ``/etc`` (a fake tree in tests).
        nvml: ``pynvml`` or a fake; default imports ``pynvml`` when NVML is probed.
        clock: Monotonic clock of the callers' window edges.
        process: Process charged by the estimate; default this process.

    Raises:
        EnergyBackendError: The explicitly requested backend failed its probe; ``reasons``
            says why.
    """
    builders: dict[BackendName, _Builder] = {
        "nvml": lambda rejected: build_nvml_meter(settings, nvml, clock=clock, rejected=rejected),
        "jetson": lambda rejected: build_jetson_meter(
            settings, sys_root=sys_root, clock=clock, rejected=rejected
        ),
        "rapl": lambda rejected: build_rapl_meter(
            settings, sys_root=sys_root, clock=clock, rejected=rejected
        ),
        "estimate": lambda rejected: build_estimate_meter(
            settings, process=process, sys_root=sys_root, clock=clock, rejected=rejected
        ),
    }
    if settings.backend != "auto":
        if settings.backend == "nvml" and compute == "cpu":
            logger.warning("energy backend nvml forced, but the model computes on the CPU")
        return _build(settings.backend, builders[settings.backend], ())
    rejected: list[str] = []
    for name in AUTO_ORDER:
        if name == "nvml" and compute == "cpu":
            rejected.append(CPU_COMPUTE_REASON)
            continue
        try:
            meter = _build(name, builders[name], tuple(rejected))
        except EnergyBackendError as err:
            logger.info("energy backend %s rejected: %s", name, err)
            rejected.extend(err.reasons)
            continue
        logger.info(
            "energy backend %s: %s (%s); rejected: %s",
            name,
            meter.info.source,
            meter.info.scope,
            rejected or "none",
        )
        return meter
    logger.warning("no energy backend works; energy will be reported as unknown: %s", rejected)
    return UnavailableEnergyMeter(tuple(rejected), device_name=cpu_model_name(sys_root))


def _build(name: str, builder: _Builder, rejected: tuple[str, ...]) -> EnergyMeter:
    try:
        return builder(rejected)
    except EnergyBackendError:
        raise
    except Exception as err:  # a probe must never crash startup; report it as a reason
        logger.debug("probe of %s failed unexpectedly", name, exc_info=True)
        raise EnergyBackendError((f"{name}: unexpected {type(err).__name__}: {err}",)) from err
