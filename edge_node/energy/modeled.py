"""Meters that measure nothing: a constant-power model, and the explicit "unavailable" meter."""

from __future__ import annotations

import time
from collections.abc import Callable

from edge_node.energy.types import EnergyReading, MeterInfo, PowerSample


class ModeledEnergyMeter:
    """Constant ``power_w`` times the window length, for the fake engine and emulation.

    Every figure is labelled ``estimated`` / ``model_estimate``: it is a model, never a
    measurement. No thread and no hardware, so ``start``/``close``/``checkpoint`` do nothing.
    """

    def __init__(
        self,
        power_w: float,
        *,
        scope: str = "modeled constant power",
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """Create the model.

        Args:
            power_w: The constant power in watts charged for every second of a window.
            scope: What the figure stands for, in words.
            clock: Monotonic clock, for ``sample``'s running total.
            wall_clock: Clock for :attr:`PowerSample.timestamp_s`.

        Raises:
            ValueError: ``power_w`` is negative or not finite.
        """
        if not power_w >= 0.0 or power_w == float("inf"):
            raise ValueError(f"power_w must be finite and >= 0, got {power_w}")
        self._power_w = power_w
        self._clock = clock
        self._wall_clock = wall_clock
        self._created_s = clock()
        self.info = MeterInfo(
            source="estimated",
            method="model_estimate",
            scope=scope,
            resolution_s=0.0,
            device_kind="cpu",
            device_name="modeled",
        )

    def start(self) -> None:
        """Nothing to start."""

    def close(self) -> None:
        """Nothing to stop."""

    def checkpoint(self) -> None:
        """Nothing to sample."""

    def measure(
        self, start_s: float, end_s: float, *, settle_timeout_s: float = 0.5
    ) -> EnergyReading:
        """``power_w * (end_s - start_s)``, immediately.

        Raises:
            ValueError: ``end_s`` is before ``start_s``.
        """
        if end_s < start_s:
            raise ValueError(f"end_s {end_s} is before start_s {start_s}")
        window_s = end_s - start_s
        return EnergyReading(
            energy_j=self._power_w * window_s,
            source=self.info.source,
            method=self.info.method,
            scope=self.info.scope,
            window_s=window_s,
            resolution_s=0.0,
            approximate=False,
            uncertainty_j=None,
        )

    def sample(self) -> PowerSample:
        """The constant power and the energy it implies since construction."""
        elapsed_s = max(0.0, self._clock() - self._created_s)
        return PowerSample(self._wall_clock(), self._power_w, self._power_w * elapsed_s, None)


class UnavailableEnergyMeter:
    """Reports unknown energy (``None``, never 0) with the reasons every backend failed."""

    def __init__(self, rejected: tuple[str, ...], *, device_name: str = "unknown") -> None:
        """Create the null meter.

        Args:
            rejected: ``"backend: reason"`` lines, shown to operators in GetInfo.
            device_name: Best known name of the device.
        """
        self.info = MeterInfo(
            source="unavailable",
            method="unavailable",
            scope="nothing measured",
            resolution_s=0.0,
            device_kind="cpu",
            device_name=device_name,
            rejected=rejected,
        )

    def start(self) -> None:
        """Nothing to start."""

    def close(self) -> None:
        """Nothing to stop."""

    def checkpoint(self) -> None:
        """Nothing to sample."""

    def measure(
        self, start_s: float, end_s: float, *, settle_timeout_s: float = 0.5
    ) -> EnergyReading:
        """An unknown reading for the window.

        Raises:
            ValueError: ``end_s`` is before ``start_s``.
        """
        if end_s < start_s:
            raise ValueError(f"end_s {end_s} is before start_s {start_s}")
        return EnergyReading(
            energy_j=None,
            source="unavailable",
            method="unavailable",
            scope=self.info.scope,
            window_s=end_s - start_s,
            resolution_s=0.0,
            approximate=True,
            uncertainty_j=None,
        )

    def sample(self) -> PowerSample:
        """Unknown power and energy."""
        return PowerSample(time.time(), None, None, None)
