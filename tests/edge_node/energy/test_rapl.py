from __future__ import annotations

from pathlib import Path

import pytest

from edge_node.energy import EnergyBackendError, EnergySettings, SampledMeter, detect_meter
from edge_node.energy.rapl import RaplCounter, build_rapl_meter, discover_rapl_zones
from edge_node.energy.types import SampleInvalidError
from tests.edge_node.energy.fakes import FakeClock, rapl_zone, write

RAPL = EnergySettings(backend="rapl")


def two_socket_tree(root: Path) -> tuple[Path, Path, Path]:
    package0 = rapl_zone(root, "intel-rapl:0", "package-0", 1_000_000, 10_000_000)
    rapl_zone(root, "intel-rapl:0:0", "core", 500, parent="intel-rapl:0")
    dram = rapl_zone(root, "intel-rapl:0:1", "dram", 2_000_000, 10_000_000, parent="intel-rapl:0")
    package1 = rapl_zone(root, "intel-rapl:1", "package-1", 3_000_000, 10_000_000)
    rapl_zone(root, "intel-rapl-mmio:0", "package-0", 7_000_000)  # duplicate: ignored
    return package0, dram, package1


def rapl_meter(root: Path, clock: FakeClock) -> SampledMeter:
    meter = detect_meter(RAPL, sys_root=root, clock=clock)
    assert isinstance(meter, SampledMeter)
    return meter


def test_zones_sum_packages_and_dram_and_skip_mmio(tmp_path: Path) -> None:
    two_socket_tree(tmp_path)
    zones, _ = discover_rapl_zones(tmp_path)
    assert [(z.label, z.name) for z in zones] == [
        ("intel-rapl:0", "package-0"),
        ("intel-rapl:0:1", "dram"),
        ("intel-rapl:1", "package-1"),
    ]
    meter = rapl_meter(tmp_path, FakeClock())
    assert meter.info.source == "measured-rapl"
    assert meter.info.method == "counter"
    assert "dram" in meter.info.scope
    assert "mmio" not in meter.info.scope
    assert meter.info.resolution_s == pytest.approx(0.001)


def test_plain_delta(tmp_path: Path) -> None:
    package0, dram, package1 = two_socket_tree(tmp_path)
    clock = FakeClock()
    meter = rapl_meter(tmp_path, clock)
    meter.checkpoint()
    clock.advance_ms(1000)
    write(package0 / "energy_uj", 6_000_000)  # +5 J
    write(dram / "energy_uj", 2_500_000)  # +0.5 J
    write(package1 / "energy_uj", 4_000_000)  # +1 J
    meter.checkpoint()  # the engine thread's end-of-window checkpoint
    clock.advance_ms(1)
    reading = meter.measure(0.0, 1.0, settle_timeout_s=0.0)  # polls itself: reads are cheap
    assert reading.energy_j == pytest.approx(6.5)
    assert not reading.approximate


def test_single_wrap(tmp_path: Path) -> None:
    zone = rapl_zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000 - 100, 1_000_000)
    clock = FakeClock()
    meter = rapl_meter(tmp_path, clock)
    meter.checkpoint()
    clock.advance_ms(100)
    write(zone / "energy_uj", 50)
    meter.checkpoint()
    reading = meter.measure(0.0, 0.1, settle_timeout_s=0.0)
    assert reading.energy_j == pytest.approx(150e-6)


def test_double_wrap_caught_by_sampler(tmp_path: Path) -> None:
    zone = rapl_zone(tmp_path, "intel-rapl:0", "package-0", 100, 1000)
    clock = FakeClock()
    meter = rapl_meter(tmp_path, clock)
    meter.poll_once()
    for raw in (900, 200, 800, 100):  # wraps twice between the window edges
        clock.advance_ms(50)
        write(zone / "energy_uj", raw)
        meter.poll_once()
    clock.advance_ms(50)
    meter.poll_once()
    reading = meter.measure(0.0, 0.2, settle_timeout_s=0.0)
    assert reading.energy_j == pytest.approx((800 + 300 + 600 + 300) * 1e-6)


def test_unreadable_max_range_marks_the_wrap_invalid(tmp_path: Path) -> None:
    zone = rapl_zone(tmp_path, "intel-rapl:0", "package-0", 900, max_range_uj=None)
    clock = FakeClock()
    meter = rapl_meter(tmp_path, clock)
    meter.poll_once()
    for raw in (950, 20, 80):  # wraps between 50 and 100 ms
        clock.advance_ms(50)
        write(zone / "energy_uj", raw)
        meter.poll_once()
    clock.advance_ms(50)
    write(zone / "energy_uj", 100)
    meter.poll_once()
    assert meter.measure(0.0, 0.05, settle_timeout_s=0.0).energy_j == pytest.approx(50e-6)
    spanning = meter.measure(0.0, 0.15, settle_timeout_s=0.0)
    assert spanning.energy_j is None  # unknown, not negative and not 0
    assert meter.measure(0.15, 0.2, settle_timeout_s=0.0).energy_j == pytest.approx(20e-6)


def test_counter_read_raises_on_unknown_wrap(tmp_path: Path) -> None:
    zone_dir = rapl_zone(tmp_path, "intel-rapl:0", "package-0", 900, max_range_uj=None)
    zones, notes = discover_rapl_zones(tmp_path)
    assert any("max_energy_range_uj unreadable" in note for note in notes)
    assert (
        "windows spanning a wrap are unknown"
        in build_rapl_meter(RAPL, sys_root=tmp_path).info.scope
    )
    counter = RaplCounter(zones)
    write(zone_dir / "energy_uj", 10)
    with pytest.raises(SampleInvalidError):
        counter.read_joules()
    write(zone_dir / "energy_uj", 30)
    assert counter.read_joules() == pytest.approx(20e-6)


def test_permission_error_is_rejected_with_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_socket_tree(tmp_path)
    real_read_text = Path.read_text

    def guarded(self: Path, *args: object, **kwargs: object) -> str:
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self)

    monkeypatch.setattr(Path, "read_text", guarded)
    with pytest.raises(EnergyBackendError) as excinfo:
        detect_meter(RAPL, sys_root=tmp_path)
    assert excinfo.value.reasons == ("rapl: PermissionError on intel-rapl:0/energy_uj",)


def test_injected_reader_permission_error(tmp_path: Path) -> None:
    two_socket_tree(tmp_path)

    def reader(path: Path) -> str:
        if path.name == "energy_uj":
            raise PermissionError(path)
        return path.read_text().strip()

    with pytest.raises(EnergyBackendError, match=r"PermissionError on intel-rapl:0/energy_uj"):
        build_rapl_meter(RAPL, sys_root=tmp_path, reader=reader)


def test_no_powercap_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(EnergyBackendError, match=r"rapl: no .*powercap"):
        detect_meter(RAPL, sys_root=tmp_path)


def test_psys_only_is_rejected(tmp_path: Path) -> None:
    rapl_zone(tmp_path, "intel-rapl:1", "psys", 1000)
    with pytest.raises(EnergyBackendError, match="no intel-rapl package zones"):
        detect_meter(RAPL, sys_root=tmp_path)
