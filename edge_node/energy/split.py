"""Partial GPU offload: the GPU computes some layers, the CPU the rest, and both are metered.

With ``--n-gpu-layers`` between 0 and the model's layer count, a request's work is split between
the GPU board (NVML, or the Jetson rails) and the CPU (RAPL, or the estimate). :class:`SplitMeter`
reads both over the same window and reports their sum with each part, under its own source and
scope, in :attr:`EnergyReading.parts`. The total is ``measured-mixed`` only when every part is
a measurement; one estimated part makes it ``estimated``, one unknown part makes it unknown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from edge_node.energy.types import (
    EnergyMeter,
    EnergyReading,
    MeterInfo,
    Method,
    PowerSample,
    SourceLabel,
)

logger = logging.getLogger(__name__)


def is_partial_offload(gpu_layers: int, model_layers: int) -> bool:
    """Whether some but not all of the model's layers run on the GPU (-1 is all)."""
    return gpu_layers > 0 and model_layers > 0 and gpu_layers < model_layers


def _total_source(
    parts: tuple[MeterInfo, ...] | tuple[EnergyReading, ...],
) -> tuple[SourceLabel, Method]:
    """(source, method) of a sum: measured only if every part is measured."""
    if all(p.source.startswith("measured-") for p in parts):
        return "measured-mixed", "sum_of_parts"
    if any(p.source == "unavailable" for p in parts):
        return "unavailable", "unavailable"
    return "estimated", "sum_of_parts"


class SplitMeter:
    """Two meters over one window: the GPU part and the CPU part of a partially offloaded model.

    Follows the :class:`EnergyMeter` thread model of its parts (``measure`` blocks).
    """

    def __init__(self, gpu: EnergyMeter, cpu: EnergyMeter) -> None:
        self.parts = (gpu, cpu)
        infos = (gpu.info, cpu.info)
        source, method = _total_source(infos)
        self.info = MeterInfo(
            source=source,
            method=method,
            scope=" + ".join(f"{i.scope} ({i.source})" for i in infos),
            resolution_s=max(i.resolution_s for i in infos),
            device_kind=gpu.info.device_kind,
            device_name=" + ".join(i.device_name for i in infos),
            rejected=tuple(dict.fromkeys((*gpu.info.rejected, *cpu.info.rejected))),
        )

    def start(self) -> None:
        """Start both parts' samplers."""
        for part in self.parts:
            part.start()

    def close(self) -> None:
        """Stop both parts."""
        for part in self.parts:
            part.close()

    def checkpoint(self) -> None:
        """Checkpoint both parts (each is cheap or a no-op)."""
        for part in self.parts:
            part.checkpoint()

    def measure(
        self, start_s: float, end_s: float, *, settle_timeout_s: float = 0.5
    ) -> EnergyReading:
        """Both parts over the window, and their sum (unknown if either part is)."""
        readings = tuple(
            part.measure(start_s, end_s, settle_timeout_s=settle_timeout_s) for part in self.parts
        )
        energies = [r.energy_j for r in readings]
        known = all(e is not None for e in energies)
        uncertainties = [r.uncertainty_j for r in readings]
        source, method = _total_source(readings) if known else ("unavailable", "unavailable")
        return EnergyReading(
            energy_j=sum(e for e in energies if e is not None) if known else None,
            source=source,
            method=method,
            scope=self.info.scope,
            window_s=max(r.window_s for r in readings),
            resolution_s=max(r.resolution_s for r in readings),
            approximate=any(r.approximate for r in readings),
            uncertainty_j=(
                sum(u for u in uncertainties if u is not None)
                if known and all(u is not None for u in uncertainties)
                else None
            ),
            parts=tuple(replace(r, parts=()) for r in readings),
        )

    def sample(self) -> PowerSample:
        """Summed power and energy of the parts (unknown if either part's is)."""
        samples = [part.sample() for part in self.parts]
        powers = [s.power_w for s in samples]
        totals = [s.energy_total_j for s in samples]
        return PowerSample(
            timestamp_s=max(s.timestamp_s for s in samples),
            power_w=None if None in powers else sum(p for p in powers if p is not None),
            energy_total_j=None if None in totals else sum(t for t in totals if t is not None),
            gpu_utilization=samples[0].gpu_utilization,
        )


def split_if_partial(
    meter: EnergyMeter,
    *,
    gpu_layers: int,
    model_layers: int,
    cpu_meter: Callable[[], EnergyMeter],
) -> EnergyMeter:
    """``meter`` (the GPU's) joined by a CPU meter when the offload is partial, else as is.

    ``cpu_meter`` builds the CPU part (``detect_meter(..., compute="cpu")``); it is called only
    for a partial offload, and the CPU part is started (``meter`` already runs: the node
    starts its meter before loading the model).
    """
    if not is_partial_offload(gpu_layers, model_layers):
        return meter
    cpu = cpu_meter()
    cpu.start()
    logger.info(
        "partial offload (%d of %d layers on the GPU): energy is %s plus %s",
        gpu_layers,
        model_layers,
        meter.info.scope,
        cpu.info.scope,
    )
    return SplitMeter(meter, cpu)
