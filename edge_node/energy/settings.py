"""Validated settings for energy-meter detection and sampling."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

BackendName = Literal["auto", "nvml", "jetson", "rapl", "estimate"]


class EnergySettings(BaseModel):
    """How the node measures energy.

    The estimate backend is a *power model*, not a measurement:
    ``E = estimate_idle_w * window_s + estimate_cpu_w_per_core * process_cpu_s``. Its defaults
    (0 W idle, 10 W per fully busy core) are round numbers of the right order for a modern
    x86 or ARM core under load; calibrate them per node against RAPL, INA3221 or a wall
    meter. Figures from it are always labelled ``estimated`` / ``model_estimate``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: BackendName = Field(
        default="auto",
        description=(
            "auto probes nvml, jetson, rapl, then falls back to estimate; any other value "
            "forces that backend and fails startup if its probe fails"
        ),
    )
    gpu_index: int = Field(default=0, ge=0, description="NVML device index (NVML/PCI order)")
    sample_interval_s: float = Field(
        default=0.05,
        ge=0.001,
        le=10.0,
        description="background sampler period; <=10 s so RAPL wraps are never missed",
    )
    estimate_idle_w: float = Field(
        default=0.0,
        ge=0.0,
        le=10_000.0,
        description="model: constant power in W charged for every second of a window",
    )
    estimate_cpu_w_per_core: float = Field(
        default=10.0,
        gt=0.0,
        le=1_000.0,
        description="model: W per fully busy core, times the process CPU seconds",
    )
    timeline_seconds: float = Field(
        default=600.0,
        ge=1.0,
        le=86_400.0,
        description="history kept in the ring buffer; older windows become unknown",
    )
    nvml_counter_period_s: float = Field(
        default=0.1,
        gt=0.0,
        le=2.0,
        description="NVML total-energy counter update period (measured ~100 ms on H100)",
    )
    jetson_rails: tuple[str, ...] | None = Field(
        default=None,
        description=(
            "INA3221 rail labels to sum; None picks VDD_IN alone where present (Orin NX/Nano), "
            "else every monitored rail (AGX Orin)"
        ),
    )
