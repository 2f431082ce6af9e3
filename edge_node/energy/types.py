"""Value types, labels and seams shared by every energy backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

# The energy figure and its labels are defined once, in edge_node.results (the node's reported
# values, shared with the SDK and the orchestrator without importing the meters).
from edge_node.results import EnergyReading, Method, SourceLabel

__all__ = [
    "CounterSource",
    "DeviceKind",
    "EnergyBackendError",
    "EnergyMeter",
    "EnergyReading",
    "MeterInfo",
    "Method",
    "PowerSample",
    "PowerSource",
    "SampleInvalidError",
    "SourceLabel",
]

DeviceKind = Literal["cuda", "jetson", "cpu"]


class EnergyBackendError(RuntimeError):
    """An explicitly requested energy backend failed its probe.

    Attributes:
        reasons: One line per rejected backend, e.g. ``"rapl: PermissionError on
            intel-rapl:0/energy_uj"``; the message joins them.
    """

    def __init__(self, reasons: tuple[str, ...]) -> None:
        super().__init__("; ".join(reasons) if reasons else "energy backend unavailable")
        self.reasons = reasons


class SampleInvalidError(RuntimeError):
    """A counter read lost continuity (reset, or a wrap with an unknown range).

    The source has already re-baselined itself, so its next read is valid again; the
    sampler starts a new timeline epoch, which makes any window spanning the gap unknown
    instead of wrong.
    """


@dataclass(frozen=True, slots=True)
class MeterInfo:
    """What a meter measures, and which backends were rejected before it was chosen.

    Attributes:
        source: Label attached to every figure this meter produces.
        method: Counter, power integration, model estimate or unavailable.
        scope: The hardware the figure physically covers, in words.
        resolution_s: Counter update period, or the sampler period for power sources.
        device_kind: ``"cuda"``, ``"jetson"`` or ``"cpu"``.
        device_name: GPU name, Jetson model or CPU model.
        rejected: ``"backend: reason"`` for every backend rejected during detection.
    """

    source: SourceLabel
    method: Method
    scope: str
    resolution_s: float
    device_kind: str
    device_name: str
    rejected: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PowerSample:
    """Latest power and cumulative energy, for the telemetry stream.

    Attributes:
        timestamp_s: Wall-clock time of the sample (``time.time()``).
        power_w: Current power in watts, ``None`` if unknown.
        energy_total_j: Joules since the meter started (gaps excluded), ``None`` if unknown.
        gpu_utilization: GPU busy fraction 0..1 where known (NVML), else ``None``.
    """

    timestamp_s: float
    power_w: float | None
    energy_total_j: float | None
    gpu_utilization: float | None


class EnergyMeter(Protocol):
    """Per-window energy of one device, with a background sampler.

    Thread model: ``checkpoint`` runs on the engine thread and must stay cheap; ``measure``
    blocks (call it from a worker thread); ``sample`` serves the telemetry stream.
    """

    info: MeterInfo

    def start(self) -> None:
        """Start the background sampler thread; idempotent."""
        ...

    def close(self) -> None:
        """Stop the sampler and release the hardware handle; idempotent."""
        ...

    def checkpoint(self) -> None:
        """Add a sample now if reads are cheap; a no-op where a read is slow."""
        ...

    def measure(
        self, start_s: float, end_s: float, *, settle_timeout_s: float = 0.5
    ) -> EnergyReading:
        """Energy between two ``time.monotonic()`` instants, once the timeline has settled."""
        ...

    def sample(self) -> PowerSample:
        """Latest power and cumulative energy."""
        ...


class CounterSource(Protocol):
    """Hardware that accumulates energy itself (NVML total energy, RAPL)."""

    def read_joules(self) -> float:
        """Joules since the source was opened, wrap-corrected and non-decreasing.

        Raises:
            SampleInvalidError: Continuity was lost; the source re-baselined.
            OSError: A transient read failure; the next read covers the interval.
        """
        ...

    def close(self) -> None:
        """Release the hardware handle."""
        ...


class PowerSource(Protocol):
    """Hardware that reports instantaneous power (NVML power, INA3221 rails)."""

    def read_watts(self) -> float:
        """Current power in watts.

        Raises:
            OSError: A transient read failure; the sampler skips this sample.
        """
        ...

    def close(self) -> None:
        """Release the hardware handle."""
        ...
