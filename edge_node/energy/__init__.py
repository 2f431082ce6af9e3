"""Per-request energy for an edge LLM node: NVML, Jetson INA3221, RAPL, or a labelled estimate.

The engine thread records ``start_s``/``end_s`` with ``time.monotonic()`` around the compute
(calling :meth:`EnergyMeter.checkpoint` at both edges); a worker thread then calls
:meth:`EnergyMeter.measure`. Every figure carries its source, method, scope and resolution;
unknown energy is ``None``, never 0. See docs/energy.md.
"""

from edge_node.energy.detect import AUTO_ORDER, detect_meter
from edge_node.energy.modeled import ModeledEnergyMeter, UnavailableEnergyMeter
from edge_node.energy.settings import BackendName, EnergySettings
from edge_node.energy.timeline import SampledMeter, Timeline
from edge_node.energy.types import (
    CounterSource,
    EnergyBackendError,
    EnergyMeter,
    EnergyReading,
    MeterInfo,
    Method,
    PowerSample,
    PowerSource,
    SampleInvalidError,
    SourceLabel,
)

__all__ = [
    "AUTO_ORDER",
    "BackendName",
    "CounterSource",
    "EnergyBackendError",
    "EnergyMeter",
    "EnergyReading",
    "EnergySettings",
    "MeterInfo",
    "Method",
    "ModeledEnergyMeter",
    "PowerSample",
    "PowerSource",
    "SampleInvalidError",
    "SampledMeter",
    "SourceLabel",
    "Timeline",
    "UnavailableEnergyMeter",
    "detect_meter",
]
