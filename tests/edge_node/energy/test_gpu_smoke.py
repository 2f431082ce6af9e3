from __future__ import annotations

import time

import pytest

from edge_node.energy import EnergyBackendError, EnergySettings, detect_meter


@pytest.mark.gpu
def test_real_nvml_meter_measures_an_idle_window() -> None:
    pytest.importorskip("pynvml")
    try:
        meter = detect_meter(EnergySettings(backend="nvml"))
    except EnergyBackendError as err:
        pytest.skip(f"no usable NVML here: {err}")
    meter.start()
    try:
        start_s = time.monotonic()
        time.sleep(0.3)
        end_s = time.monotonic()
        reading = meter.measure(start_s, end_s, settle_timeout_s=1.0)
        sample = meter.sample()
    finally:
        meter.close()
    assert reading.source == "measured-nvml"
    assert reading.energy_j is not None
    assert not reading.approximate
    assert 1.0 < reading.energy_j / reading.window_s < 2000.0  # plausible GPU watts
    assert sample.power_w is not None
    assert sample.power_w > 0.0
