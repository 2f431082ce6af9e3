# ruff: noqa: N802, N803
"""A fake ``pynvml`` module: only what edge_node.energy.nvml calls, with real signatures/types.

Return types mirror nvidia-ml-py: ints for counts, mJ and mW, ``str`` names, a ctypes array
of ``c_nvmlFieldValue_t`` from GetFieldValues and a ``c_nvmlUtilization_t`` structure from
GetUtilizationRates. ``test_fake_nvml_matches_real_pynvml`` checks names, parameters,
constants and structure fields against the installed real module.
"""

from __future__ import annotations

import ctypes
import types
from collections.abc import Callable, Sequence


class FakeNVMLError(Exception):
    """Like ``pynvml.NVMLError``: constructed from an NVML return code kept in ``.value``."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return f"NVML Error with code {self.value}"


class FakeValue(ctypes.Union):
    _fields_ = (
        ("dVal", ctypes.c_double),
        ("uiVal", ctypes.c_uint),
        ("ulVal", ctypes.c_ulong),
        ("ullVal", ctypes.c_ulong),
        ("sllVal", ctypes.c_long),
        ("siVal", ctypes.c_int),
        ("usVal", ctypes.c_ushort),
    )


class FakeFieldValue(ctypes.Structure):
    _fields_ = (
        ("fieldId", ctypes.c_uint),
        ("scopeId", ctypes.c_uint),
        ("timestamp", ctypes.c_long),
        ("latencyUsec", ctypes.c_long),
        ("valueType", ctypes.c_uint),
        ("nvmlReturn", ctypes.c_uint),
        ("value", FakeValue),
    )


class FakeUtilization(ctypes.Structure):
    _fields_ = (("gpu", ctypes.c_uint), ("memory", ctypes.c_uint))


class FakeNvml(types.ModuleType):
    """One fake GPU. Set ``*_error`` to an ``NVML_ERROR_*`` code to make that call fail.

    Attributes:
        energy_mj: Returns the total-energy counter in mJ (default 0 forever).
        power_mw: Returns the power in mW for both GetPowerUsage and POWER_INSTANT.
        init_calls: How many times nvmlInit succeeded.
        shutdown_calls: How many times nvmlShutdown ran.
    """

    NVML_SUCCESS = 0
    NVML_ERROR_UNINITIALIZED = 1
    NVML_ERROR_INVALID_ARGUMENT = 2
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_NO_PERMISSION = 4
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_FUNCTION_NOT_FOUND = 13
    NVML_ERROR_GPU_IS_LOST = 15
    NVML_ERROR_UNKNOWN = 999
    NVML_FI_DEV_POWER_INSTANT = 186
    NVMLError = FakeNVMLError

    def __init__(
        self,
        *,
        name: str = "NVIDIA H100 80GB HBM3",
        device_count: int = 1,
        energy_mj: Callable[[], int] = lambda: 0,
        power_mw: Callable[[], int] = lambda: 75_000,
        utilization_pct: int = 42,
        init_error: int | None = None,
        energy_error: int | None = None,
        power_error: int | None = None,
        field_error: int | None = None,
        utilization_error: int | None = None,
    ) -> None:
        super().__init__("pynvml")
        # A real module keeps its constants in its __dict__ (what dir(module) lists).
        for constant in dir(type(self)):
            if constant.startswith("NVML"):
                setattr(self, constant, getattr(type(self), constant))
        self.name = name
        self.device_count = device_count
        self.energy_mj = energy_mj
        self.power_mw = power_mw
        self.utilization_pct = utilization_pct
        self.init_error = init_error
        self.energy_error = energy_error
        self.power_error = power_error
        self.field_error = field_error
        self.utilization_error = utilization_error
        self.init_calls = 0
        self.shutdown_calls = 0

    def _check(self, error: int | None) -> None:
        if self.init_calls <= self.shutdown_calls:
            raise FakeNVMLError(self.NVML_ERROR_UNINITIALIZED)
        if error is not None:
            raise FakeNVMLError(error)

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)
        self.init_calls += 1

    def nvmlShutdown(self) -> None:
        self._check(None)
        self.shutdown_calls += 1

    def nvmlDeviceGetCount(self) -> int:
        self._check(None)
        return self.device_count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> ctypes.c_void_p:
        self._check(None)
        if not 0 <= index < self.device_count:
            raise FakeNVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
        return ctypes.c_void_p(0x1000 + index)

    def nvmlDeviceGetName(self, handle: ctypes.c_void_p) -> str:
        self._check(None)
        return self.name

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: ctypes.c_void_p) -> int:
        self._check(self.energy_error)
        return self.energy_mj()

    def nvmlDeviceGetPowerUsage(self, handle: ctypes.c_void_p) -> int:
        self._check(self.power_error)
        return self.power_mw()

    def nvmlDeviceGetFieldValues(
        self, handle: ctypes.c_void_p, fieldIds: Sequence[int | tuple[int, int]]
    ) -> ctypes.Array[FakeFieldValue]:
        self._check(None)
        values = (FakeFieldValue * len(fieldIds))()
        for slot, field in zip(values, fieldIds, strict=True):
            field_id, scope_id = field if isinstance(field, tuple) else (field, 0)
            slot.fieldId, slot.scopeId, slot.valueType = field_id, scope_id, 1
            if field_id != self.NVML_FI_DEV_POWER_INSTANT or self.field_error is not None:
                slot.nvmlReturn = self.field_error or self.NVML_ERROR_NOT_SUPPORTED
                continue
            slot.nvmlReturn = self.NVML_SUCCESS
            slot.value.uiVal = self.power_mw()
        return values

    def nvmlDeviceGetUtilizationRates(self, handle: ctypes.c_void_p) -> FakeUtilization:
        self._check(self.utilization_error)
        return FakeUtilization(gpu=self.utilization_pct, memory=10)


def jetson_like() -> FakeNvml:
    """Init and device count work; every power, energy and utilisation call is NotSupported."""
    unsupported = FakeNvml.NVML_ERROR_NOT_SUPPORTED
    return FakeNvml(
        name="Orin (nvgpu)",
        energy_error=unsupported,
        power_error=unsupported,
        field_error=unsupported,
        utilization_error=unsupported,
    )
