from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import psutil
import pytest

from edge_node.energy import (
    EnergyBackendError,
    EnergySettings,
    UnavailableEnergyMeter,
    detect_meter,
)
from edge_node.energy.detect import CPU_COMPUTE_REASON
from tests.edge_node.energy.fake_nvml import FakeNvml, jetson_like
from tests.edge_node.energy.fakes import FakeClock, hwmon_device, rapl_zone, tegra

AUTO = EnergySettings()


def no_library() -> FakeNvml:
    return FakeNvml(init_error=FakeNvml.NVML_ERROR_LIBRARY_NOT_FOUND)


class DeniedProcess(psutil.Process):
    def cpu_times(self) -> NoReturn:
        raise psutil.AccessDenied(self.pid)


def test_cpu_box_without_sensors_falls_back_to_estimate_with_reasons(tmp_path: Path) -> None:
    meter = detect_meter(AUTO, sys_root=tmp_path, nvml=no_library(), clock=FakeClock())
    assert meter.info.source == "estimated"
    assert meter.info.method == "model_estimate"
    rejected = meter.info.rejected
    assert rejected[0] == "nvml: nvmlInit: NVML_ERROR_LIBRARY_NOT_FOUND"
    assert rejected[1].startswith("jetson: not a Tegra system")
    assert rejected[2].startswith("rapl: no ")
    assert len(rejected) == 3


def test_working_nvml_counter_wins(tmp_path: Path) -> None:
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", 1000)
    meter = detect_meter(AUTO, sys_root=tmp_path, nvml=FakeNvml(energy_mj=lambda: 5))
    assert (meter.info.source, meter.info.method) == ("measured-nvml", "counter")
    assert meter.info.rejected == ()
    meter.close()


def test_jetson_with_init_ok_nvml_uses_the_rails(tmp_path: Path) -> None:
    tegra(tmp_path)
    hwmon_device(tmp_path, "1-0040", {1: ("VDD_IN", 5000, 1000)})
    meter = detect_meter(AUTO, sys_root=tmp_path, nvml=jetson_like())
    assert meter.info.source == "measured-jetson"
    assert len(meter.info.rejected) == 1
    assert meter.info.rejected[0].startswith("nvml: GPU 0 (Orin (nvgpu)): total-energy counter")


def test_rapl_chosen_after_nvml_and_jetson_fail(tmp_path: Path) -> None:
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", 1000)
    meter = detect_meter(AUTO, sys_root=tmp_path, nvml=no_library())
    assert meter.info.source == "measured-rapl"
    assert [r.split(":")[0] for r in meter.info.rejected] == ["nvml", "jetson"]


def test_rapl_permission_error_falls_back_to_estimate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", 1000)
    real_read_text = Path.read_text

    def guarded(self: Path, *args: object, **kwargs: object) -> str:
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self)

    monkeypatch.setattr(Path, "read_text", guarded)
    meter = detect_meter(AUTO, sys_root=tmp_path, nvml=no_library())
    assert meter.info.source == "estimated"
    assert "rapl: PermissionError on intel-rapl:0/energy_uj" in meter.info.rejected


def test_explicit_backend_skips_the_others(tmp_path: Path) -> None:
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", 1000)
    fake = FakeNvml(energy_mj=lambda: 5)
    meter = detect_meter(EnergySettings(backend="rapl"), sys_root=tmp_path, nvml=fake)
    assert meter.info.source == "measured-rapl"
    assert fake.init_calls == 0


def test_explicit_estimate_overrides_working_hardware(tmp_path: Path) -> None:
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", 1000)
    meter = detect_meter(
        EnergySettings(backend="estimate"), sys_root=tmp_path, nvml=FakeNvml(energy_mj=lambda: 5)
    )
    assert meter.info.source == "estimated"


@pytest.mark.parametrize(
    ("backend", "reason"),
    [
        ("nvml", "nvml: nvmlInit: NVML_ERROR_LIBRARY_NOT_FOUND"),
        ("jetson", "jetson: not a Tegra system"),
        ("rapl", "rapl: no "),
    ],
)
def test_explicit_unavailable_backend_raises_with_reason(
    tmp_path: Path, backend: str, reason: str
) -> None:
    settings = EnergySettings.model_validate({"backend": backend})
    with pytest.raises(EnergyBackendError) as excinfo:
        detect_meter(settings, sys_root=tmp_path, nvml=no_library())
    assert len(excinfo.value.reasons) == 1
    assert excinfo.value.reasons[0].startswith(reason)
    assert str(excinfo.value).startswith(reason)


def test_explicit_estimate_that_cannot_read_cpu_times_raises(tmp_path: Path) -> None:
    with pytest.raises(EnergyBackendError, match="estimate: cannot read CPU times"):
        detect_meter(EnergySettings(backend="estimate"), process=DeniedProcess())


def test_nothing_works_gives_the_unavailable_meter(tmp_path: Path) -> None:
    meter = detect_meter(AUTO, sys_root=tmp_path, nvml=no_library(), process=DeniedProcess())
    assert isinstance(meter, UnavailableEnergyMeter)
    assert [r.split(":")[0] for r in meter.info.rejected] == ["nvml", "jetson", "rapl", "estimate"]
    reading = meter.measure(1.0, 2.0)
    assert reading.energy_j is None
    assert (reading.source, reading.method) == ("unavailable", "unavailable")


def test_unexpected_probe_exception_becomes_a_reason(tmp_path: Path) -> None:
    class Broken(FakeNvml):
        def nvmlDeviceGetCount(self) -> int:  # noqa: N802
            raise RuntimeError("driver exploded")

    broken = Broken()
    meter = detect_meter(AUTO, sys_root=tmp_path, nvml=broken)
    assert meter.info.rejected[0] == "nvml: unexpected RuntimeError: driver exploded"
    assert broken.shutdown_calls == broken.init_calls == 1


def test_real_pynvml_on_this_machine_is_rejected_or_works(tmp_path: Path) -> None:
    meter = detect_meter(AUTO, sys_root=tmp_path)
    try:
        if meter.info.source != "measured-nvml":
            assert meter.info.rejected[0].startswith("nvml: ")
    finally:
        meter.close()


def test_settings_are_strict() -> None:
    with pytest.raises(ValueError, match="extra"):
        EnergySettings.model_validate({"backend": "auto", "bogus": 1})
    with pytest.raises(ValueError, match="backend"):
        EnergySettings.model_validate({"backend": "zeus"})
    with pytest.raises(ValueError, match="sample_interval_s"):
        EnergySettings(sample_interval_s=0.0)


def test_a_model_on_the_cpu_is_not_metered_by_the_gpu_board(tmp_path: Path) -> None:
    """NVML works, but the layers run on the CPU: RAPL (the CPU's package) is read instead."""
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", 1000)
    nvml = FakeNvml(energy_mj=lambda: 5)
    on_gpu = detect_meter(AUTO, compute="gpu", sys_root=tmp_path, nvml=nvml)
    assert on_gpu.info.source == "measured-nvml"
    on_gpu.close()
    on_cpu = detect_meter(AUTO, compute="cpu", sys_root=tmp_path, nvml=nvml)
    assert on_cpu.info.source == "measured-rapl"
    assert on_cpu.info.rejected[0] == CPU_COMPUTE_REASON
    assert [r.split(":")[0] for r in on_cpu.info.rejected] == ["nvml", "jetson"]


def test_a_cpu_model_without_rapl_is_estimated_even_with_a_working_gpu(tmp_path: Path) -> None:
    meter = detect_meter(AUTO, compute="cpu", sys_root=tmp_path, nvml=FakeNvml(energy_mj=lambda: 5))
    assert meter.info.source == "estimated"
    assert CPU_COMPUTE_REASON in meter.info.rejected
