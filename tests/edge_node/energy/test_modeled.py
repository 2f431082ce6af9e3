from __future__ import annotations

import pytest

from edge_node.energy import EnergyMeter, ModeledEnergyMeter, UnavailableEnergyMeter
from tests.edge_node.energy.fakes import FakeClock


def test_modeled_meter_is_constant_power_times_window() -> None:
    clock = FakeClock()
    meter: EnergyMeter = ModeledEnergyMeter(10.0, clock=clock)
    meter.start()
    meter.checkpoint()
    reading = meter.measure(1.0, 3.5)
    assert reading.energy_j == pytest.approx(25.0)
    assert (reading.source, reading.method) == ("estimated", "model_estimate")
    assert reading.scope == "modeled constant power"
    assert not reading.approximate
    clock.now_ms = 2000
    sample = meter.sample()
    assert sample.power_w == 10.0
    assert sample.energy_total_j == pytest.approx(20.0)
    meter.close()


def test_modeled_meter_rejects_negative_power() -> None:
    with pytest.raises(ValueError, match="power_w"):
        ModeledEnergyMeter(-1.0)
    with pytest.raises(ValueError, match="power_w"):
        ModeledEnergyMeter(float("nan"))


def test_unavailable_meter_never_reports_zero() -> None:
    meter: EnergyMeter = UnavailableEnergyMeter(("rapl: no powercap",))
    reading = meter.measure(0.0, 1.0)
    assert reading.energy_j is None
    assert reading.source == "unavailable"
    assert meter.info.rejected == ("rapl: no powercap",)
    assert meter.sample().energy_total_j is None
