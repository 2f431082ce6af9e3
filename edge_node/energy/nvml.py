"""NVIDIA GPU energy through NVML: the total-energy counter, else integrated power.

Probing reads for real: ``nvmlInit`` succeeding proves nothing (on Jetson it succeeds and then
every power and energy call raises NotSupported). Errors are identified by comparing
``NVMLError.value`` with the ``NVML_ERROR_*`` constants, never by the dynamically created
``NVMLError_*`` subclasses, which are awkward to fake.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from types import ModuleType
from typing import Literal

from edge_node.energy.settings import EnergySettings
from edge_node.energy.timeline import SampledMeter
from edge_node.energy.types import EnergyBackendError, MeterInfo, SampleInvalidError

logger = logging.getLogger(__name__)

PowerMode = Literal["instant", "average"]

# c_nvmlValue_t member for each nvmlValueType_t, indexed by its value (stable NVML ABI).
_VALUE_MEMBERS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")


def import_pynvml() -> ModuleType:
    """Import ``pynvml`` (from the ``nvidia-ml-py`` distribution) lazily.

    Raises:
        EnergyBackendError: The module is not installed.
    """
    try:
        return importlib.import_module("pynvml")
    except ImportError as err:
        raise EnergyBackendError((f"nvml: pynvml (nvidia-ml-py) not importable: {err}",)) from err


def nvml_error_name(nvml: ModuleType, err: BaseException | int) -> str:
    """The ``NVML_ERROR_*`` name for an NVMLError or a raw return code."""
    value = err if isinstance(err, int) else getattr(err, "value", None)
    for name in dir(nvml):
        if name.startswith("NVML_ERROR_") and getattr(nvml, name) == value:
            return name
    if isinstance(err, int):
        return f"NVML return code {err}"
    return f"{type(err).__name__}: {err}"


class NvmlDevice:
    """An initialised NVML library and one device handle.

    ``close`` calls ``nvmlShutdown`` once; NVML reference-counts init/shutdown pairs, so
    several devices may be open at the same time.
    """

    def __init__(self, nvml: ModuleType, index: int) -> None:
        """Initialise NVML and open device ``index``.

        Raises:
            EnergyBackendError: Init failed (e.g. ``NVML_ERROR_LIBRARY_NOT_FOUND`` on a CPU
                box), there is no such device, or the handle cannot be obtained.
        """
        self.nvml = nvml
        self.index = index
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as err:
            raise EnergyBackendError((f"nvml: nvmlInit: {nvml_error_name(nvml, err)}",)) from err
        self._open = True
        try:
            count = int(nvml.nvmlDeviceGetCount())
            if index >= count:
                raise EnergyBackendError((f"nvml: gpu_index {index} but {count} device(s)",))
            self.handle: object = nvml.nvmlDeviceGetHandleByIndex(index)
        except nvml.NVMLError as err:
            self.close()
            raise EnergyBackendError(
                (f"nvml: device {index}: {nvml_error_name(nvml, err)}",)
            ) from err
        except BaseException:  # never leave NVML initialised behind a failed probe
            self.close()
            raise
        self.name = self._read_name()

    def _read_name(self) -> str:
        try:
            name = self.nvml.nvmlDeviceGetName(self.handle)
        except self.nvml.NVMLError:
            return "NVIDIA GPU"
        return name.decode() if isinstance(name, bytes) else str(name)

    def close(self) -> None:
        """Shut NVML down (once)."""
        if self._open:
            self._open = False
            try:
                self.nvml.nvmlShutdown()
            except self.nvml.NVMLError as err:  # shutting down: nothing left to recover
                logger.debug("nvmlShutdown: %s", nvml_error_name(self.nvml, err))

    def read_energy_mj(self) -> int:
        """Raw total-energy counter, mJ since the driver was (re)loaded (~3.8 ms on H100)."""
        return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def read_power_instant_w(self) -> float:
        """Instantaneous power from the ``NVML_FI_DEV_POWER_INSTANT`` field (µs per read).

        Raises:
            nvml.NVMLError: The call failed or the field's own return code is not success.
        """
        nvml = self.nvml
        value = nvml.nvmlDeviceGetFieldValues(self.handle, [nvml.NVML_FI_DEV_POWER_INSTANT])[0]
        if value.nvmlReturn != nvml.NVML_SUCCESS:
            raise nvml.NVMLError(value.nvmlReturn)
        value_type = int(value.valueType)
        member = _VALUE_MEMBERS[value_type] if value_type < len(_VALUE_MEMBERS) else "uiVal"
        return float(getattr(value.value, member)) / 1000.0

    def read_power_average_w(self) -> float:
        """``nvmlDeviceGetPowerUsage``: board power; a 1 s moving average on Ampere+."""
        return float(self.nvml.nvmlDeviceGetPowerUsage(self.handle)) / 1000.0

    def read_utilization(self) -> float | None:
        """GPU busy fraction 0..1, or None where NVML does not support it."""
        try:
            rates = self.nvml.nvmlDeviceGetUtilizationRates(self.handle)
        except self.nvml.NVMLError:
            return None
        return float(rates.gpu) / 100.0


class NvmlEnergyCounter:
    """Cumulative joules from the NVML total-energy counter, re-baselined on driver reload."""

    def __init__(self, device: NvmlDevice, *, owns_device: bool = True) -> None:
        """Wrap an open device; the first read sets the baseline.

        Args:
            device: The open device.
            owns_device: Whether ``close`` shuts the device down.
        """
        self._device = device
        self._owns_device = owns_device
        self._last_mj: int | None = None
        self._total_j = 0.0

    def read_joules(self) -> float:
        """Joules since the first read.

        Raises:
            SampleInvalidError: The counter went backwards (driver reload); re-baselined.
        """
        raw_mj = self._device.read_energy_mj()
        last_mj = self._last_mj
        self._last_mj = raw_mj
        if last_mj is None:
            return self._total_j
        if raw_mj < last_mj:
            raise SampleInvalidError(
                f"NVML energy counter went backwards ({last_mj} -> {raw_mj} mJ; driver reload?)"
            )
        self._total_j += (raw_mj - last_mj) / 1000.0
        return self._total_j

    def close(self) -> None:
        """Shut the device down if this counter owns it."""
        if self._owns_device:
            self._device.close()


class NvmlPower:
    """Instantaneous power in watts, from POWER_INSTANT or GetPowerUsage."""

    def __init__(self, device: NvmlDevice, mode: PowerMode, *, owns_device: bool = True) -> None:
        """Wrap an open device.

        Args:
            device: The open device.
            mode: ``"instant"`` (POWER_INSTANT field) or ``"average"`` (GetPowerUsage).
            owns_device: Whether ``close`` shuts the device down.
        """
        self._device = device
        self.mode = mode
        self._owns_device = owns_device

    def read_watts(self) -> float:
        """Current power in watts."""
        if self.mode == "instant":
            return self._device.read_power_instant_w()
        return self._device.read_power_average_w()

    def close(self) -> None:
        """Shut the device down if this source owns it."""
        if self._owns_device:
            self._device.close()


def _probe_counter(device: NvmlDevice) -> str | None:
    """Two real counter reads; returns a rejection reason or None."""
    nvml = device.nvml
    try:
        first_mj = device.read_energy_mj()
        second_mj = device.read_energy_mj()
    except nvml.NVMLError as err:
        return f"total-energy counter: {nvml_error_name(nvml, err)}"
    if second_mj < first_mj:
        return f"total-energy counter went backwards during the probe ({first_mj} -> {second_mj})"
    return None


def _probe_power(device: NvmlDevice) -> tuple[PowerMode | None, tuple[str, ...]]:
    """One real power read per method, preferring POWER_INSTANT; returns (mode, reasons)."""
    nvml = device.nvml
    reasons: list[str] = []
    readers: tuple[tuple[PowerMode, str, Callable[[], float]], ...] = (
        ("instant", "POWER_INSTANT field", device.read_power_instant_w),
        ("average", "GetPowerUsage", device.read_power_average_w),
    )
    for mode, label, read in readers:
        try:
            power_w = read()
        except nvml.NVMLError as err:
            reasons.append(f"{label}: {nvml_error_name(nvml, err)}")
            continue
        if power_w <= 0.0:  # a powered GPU never draws 0 W; the sensor is not real
            reasons.append(f"{label}: reads {power_w} W")
            continue
        return mode, tuple(reasons)
    return None, tuple(reasons)


def _power_scope(device: NvmlDevice, mode: PowerMode) -> str:
    prefix = f"GPU {device.index} ({device.name})"
    if mode == "instant":
        return f"{prefix} instantaneous power (NVML POWER_INSTANT field), integrated"
    return (
        f"{prefix} board incl. memory, NVML GetPowerUsage (a 1 s moving average on Ampere "
        "and newer, so it lags transients), integrated"
    )


def build_nvml_meter(
    settings: EnergySettings,
    nvml: ModuleType | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    rejected: tuple[str, ...] = (),
    prefer: Literal["counter", "power"] = "counter",
) -> SampledMeter:
    """Probe NVML device ``settings.gpu_index`` and build its meter.

    The counter is used where two real reads succeed; otherwise (or with
    ``prefer="power"``) a power source is integrated, POWER_INSTANT first, GetPowerUsage
    second. The returned meter owns the NVML session and shuts it down on ``close``.

    Args:
        settings: Sampling settings and the device index.
        nvml: The ``pynvml`` module or a fake; default imports ``pynvml``.
        clock: Monotonic clock of the callers' window edges.
        rejected: Reasons from earlier backends, copied into :attr:`MeterInfo.rejected`.
        prefer: ``"power"`` skips the counter (used by ``scripts/nvml_probe.py``).

    Raises:
        EnergyBackendError: NVML cannot be used; the reason names the NVML error.
    """
    module = import_pynvml() if nvml is None else nvml
    device = NvmlDevice(module, settings.gpu_index)
    try:
        return _build_meter(device, settings, clock, rejected, prefer)
    except BaseException:  # the meter was not built, so nothing else will shut NVML down
        device.close()
        raise


def _build_meter(
    device: NvmlDevice,
    settings: EnergySettings,
    clock: Callable[[], float],
    rejected: tuple[str, ...],
    prefer: Literal["counter", "power"],
) -> SampledMeter:
    counter_reason = _probe_counter(device) if prefer == "counter" else "not requested"
    power_mode, power_reasons = _probe_power(device)
    utilization: Callable[[], float | None] | None = (
        device.read_utilization if device.read_utilization() is not None else None
    )
    if counter_reason is None:
        instant: Callable[[], float | None] | None = None
        if power_mode is not None:
            power_source = NvmlPower(device, power_mode, owns_device=False)
            instant = power_source.read_watts
        info = MeterInfo(
            source="measured-nvml",
            method="counter",
            scope=f"GPU {device.index} ({device.name}) board incl. memory, NVML total-energy "
            "counter",
            resolution_s=settings.nvml_counter_period_s,
            device_kind="cuda",
            device_name=device.name,
            rejected=rejected,
        )
        counter = NvmlEnergyCounter(device)
        counter.read_joules()  # baseline
        return SampledMeter(
            info,
            counter=counter,
            sample_interval_s=settings.sample_interval_s,
            timeline_seconds=settings.timeline_seconds,
            cheap_reads=False,  # ~3.8 ms per read on H100: never on the engine thread
            stepped=True,
            clock=clock,
            instant_power_w=instant,
            gpu_utilization=utilization,
        )
    if power_mode is not None:
        info = MeterInfo(
            source="measured-nvml",
            method="power_integration",
            scope=_power_scope(device, power_mode),
            resolution_s=settings.sample_interval_s,
            device_kind="cuda",
            device_name=device.name,
            rejected=rejected,
        )
        return SampledMeter(
            info,
            power=NvmlPower(device, power_mode),
            sample_interval_s=settings.sample_interval_s,
            timeline_seconds=settings.timeline_seconds,
            cheap_reads=True,
            clock=clock,
            gpu_utilization=utilization,
        )
    detail = "; ".join((counter_reason, *power_reasons))
    raise EnergyBackendError((f"nvml: GPU {device.index} ({device.name}): {detail}",))
