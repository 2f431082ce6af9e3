from __future__ import annotations

from pathlib import Path

import pytest

from edge_node.energy import EnergyBackendError, EnergySettings, SampledMeter, detect_meter
from edge_node.energy.jetson import build_jetson_meter, discover_rails
from tests.edge_node.energy.fakes import (
    FakeClock,
    hwmon_device,
    iio_device,
    set_hwmon,
    tegra,
    write,
)

JETSON = EnergySettings(backend="jetson", sample_interval_s=0.02)


def agx_orin(root: Path) -> Path:
    tegra(root)
    write(root / "proc" / "device-tree" / "model", "NVIDIA Jetson AGX Orin Developer Kit\x00")
    main = hwmon_device(
        root,
        "1-0040",
        {
            1: ("VDD_GPU_SOC", 5000, 1000),  # 5 W
            2: ("VDD_CPU_CV", 5000, 400),  # 2 W
            3: ("VIN_SYS_5V0", 5000, 600),  # 3 W
            7: ("sum of shunt voltages", 9999, 9999),
        },
        update_interval_ms=10,
    )
    hwmon_device(
        root,
        "1-0041",
        {1: ("NC", 0, 0), 2: ("VDDQ_VDD2_1V8AO", 1000, 500), 3: ("NC", 0, 0)},  # 0.5 W
        hwmon="hwmon4",
    )
    return main


def orin_nano(root: Path) -> Path:
    tegra(root)
    return hwmon_device(
        root,
        "1-0040",
        {
            1: ("VDD_IN", 5000, 1400),  # 7 W, the module input
            2: ("VDD_CPU_GPU_CV", 5000, 400),
            3: ("VDD_SOC", 5000, 300),
        },
    )


def jetson_meter(root: Path, clock: FakeClock, settings: EnergySettings = JETSON) -> SampledMeter:
    meter = detect_meter(settings, sys_root=root, clock=clock)
    assert isinstance(meter, SampledMeter)
    return meter


def test_agx_orin_sums_the_monitored_rails_and_skips_nc_and_sum(tmp_path: Path) -> None:
    agx_orin(tmp_path)
    names = [rail.name for rail in discover_rails(tmp_path)]
    assert names == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"]
    clock = FakeClock()
    meter = jetson_meter(tmp_path, clock)
    info = meter.info
    assert info.source == "measured-jetson"
    assert info.method == "power_integration"
    assert info.device_kind == "jetson"
    assert info.device_name == "NVIDIA Jetson AGX Orin Developer Kit"
    assert "VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0 + VDDQ_VDD2_1V8AO" in info.scope
    assert "carrier board" in info.scope
    meter.poll_once()
    assert meter.sample().power_w == pytest.approx(10.5)


def test_orin_nano_uses_vdd_in_alone(tmp_path: Path) -> None:
    orin_nano(tmp_path)
    meter = jetson_meter(tmp_path, FakeClock())
    assert meter.info.scope.startswith("Jetson module input VDD_IN")
    meter.poll_once()
    assert meter.sample().power_w == pytest.approx(7.0)


def test_configured_rails_override_the_default(tmp_path: Path) -> None:
    orin_nano(tmp_path)
    settings = EnergySettings(backend="jetson", jetson_rails=("VDD_CPU_GPU_CV", "VDD_SOC"))
    meter = jetson_meter(tmp_path, FakeClock(), settings)
    assert "VDD_CPU_GPU_CV + VDD_SOC" in meter.info.scope
    meter.poll_once()
    assert meter.sample().power_w == pytest.approx(3.5)
    missing = EnergySettings(backend="jetson", jetson_rails=("VDD_GPU",))
    with pytest.raises(EnergyBackendError, match=r"rails \['VDD_GPU'\] not found"):
        detect_meter(missing, sys_root=tmp_path)


def test_legacy_iio_layout_prefers_in_power(tmp_path: Path) -> None:
    tegra(tmp_path)
    iio_device(
        tmp_path,
        "6-0040",
        {
            0: ("POM_5V_IN", 5000, 800, 4100),  # in_power says 4.1 W
            1: ("POM_5V_GPU", 5000, 100, None),
            2: ("NC", 0, 0, None),
        },
    )
    meter = jetson_meter(tmp_path, FakeClock())
    assert meter.info.scope.startswith("Jetson module input POM_5V_IN")
    meter.poll_once()
    assert meter.sample().power_w == pytest.approx(4.1)


def test_trapezoid_integral_is_exact_under_a_fake_clock(tmp_path: Path) -> None:
    rails = orin_nano(tmp_path)
    clock = FakeClock(1000)
    meter = jetson_meter(tmp_path, clock)
    meter.poll_once()  # 7 W at 1.00 s
    for now_ms, milliamps in ((1020, 2000), (1040, 2000), (1060, 1000)):
        clock.now_ms = now_ms
        set_hwmon(rails, 1, 5000, milliamps)  # 10 W, 10 W, 5 W
        meter.poll_once()
    for now_ms in (1080, 1100):  # settled: a sample at >= end + resolution
        clock.now_ms = now_ms
        meter.poll_once()  # 5 W
    reading = meter.measure(1.0, 1.08, settle_timeout_s=0.0)
    expected_j = 0.02 * ((7 + 10) / 2 + (10 + 10) / 2 + (10 + 5) / 2 + (5 + 5) / 2)
    assert reading.energy_j == pytest.approx(expected_j)
    assert not reading.approximate
    assert reading.uncertainty_j == pytest.approx(0.02 * (10 - 5))
    half = meter.measure(1.01, 1.03, settle_timeout_s=0.0)  # interpolated edges
    assert half.energy_j == pytest.approx(0.02 * (7 + 10) / 2 / 2 + 0.01 * 10)


def test_update_interval_sets_the_resolution(tmp_path: Path) -> None:
    agx_orin(tmp_path)
    settings = EnergySettings(backend="jetson", sample_interval_s=0.005)
    meter = jetson_meter(tmp_path, FakeClock(), settings)
    assert meter.info.resolution_s == pytest.approx(0.01)


def test_not_tegra_is_rejected(tmp_path: Path) -> None:
    hwmon_device(tmp_path, "1-0040", {1: ("VDD_IN", 5000, 1000)})
    with pytest.raises(EnergyBackendError, match="jetson: not a Tegra system"):
        detect_meter(JETSON, sys_root=tmp_path)


def test_tegra_without_rails_is_rejected(tmp_path: Path) -> None:
    tegra(tmp_path)
    with pytest.raises(EnergyBackendError, match="jetson: no INA3221 rails"):
        detect_meter(JETSON, sys_root=tmp_path)


def test_unreadable_rail_is_rejected_with_reason(tmp_path: Path) -> None:
    orin_nano(tmp_path)

    def reader(path: Path) -> str:
        if path.name == "curr1_input":
            raise PermissionError(path)
        return path.read_text().strip()

    with pytest.raises(EnergyBackendError, match=r"jetson: PermissionError on VDD_IN"):
        build_jetson_meter(JETSON, sys_root=tmp_path, reader=reader)
