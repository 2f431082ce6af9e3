from __future__ import annotations

import threading
import time

import psutil
import pytest

from edge_node.energy import EnergySettings, SampledMeter, detect_meter
from edge_node.energy.estimate import build_estimate_meter
from tests.edge_node.energy.fakes import FakeClock

MODEL = EnergySettings(backend="estimate", estimate_idle_w=2.0, estimate_cpu_w_per_core=10.0)


def test_estimate_charges_idle_power_and_cpu_time() -> None:
    clock = FakeClock()
    cpu = {"s": 100.0}
    meter = build_estimate_meter(MODEL, cpu_seconds=lambda: cpu["s"], clock=clock)
    meter.checkpoint()  # start edge, on the engine thread
    clock.now_ms = 1000
    cpu["s"] = 100.5
    meter.checkpoint()  # end edge
    clock.now_ms = 1010  # measure polls by itself once end + resolution has passed
    reading = meter.measure(0.0, 1.0, settle_timeout_s=0.0)
    assert reading.energy_j == pytest.approx(2.0 * 1.0 + 10.0 * 0.5)
    assert reading.source == "estimated"
    assert reading.method == "model_estimate"
    assert reading.uncertainty_j is None
    assert not reading.approximate
    assert "model, not a measurement" in reading.scope


def test_estimate_is_labelled_estimated_even_with_no_cpu_use() -> None:
    clock = FakeClock()
    meter = build_estimate_meter(EnergySettings(), cpu_seconds=lambda: 5.0, clock=clock)
    meter.checkpoint()
    clock.now_ms = 500
    meter.checkpoint()
    reading = meter.measure(0.0, 0.5, settle_timeout_s=0.0)
    assert reading.energy_j == 0.0  # a known zero: the model charges nothing for idle
    assert (reading.source, reading.method) == ("estimated", "model_estimate")
    assert meter.info.rejected == ()
    assert meter.info.device_kind == "cpu"


def test_real_process_estimate_sees_burned_cpu() -> None:
    meter = detect_meter(EnergySettings(backend="estimate"), process=psutil.Process())
    assert isinstance(meter, SampledMeter)
    meter.start()
    try:
        start_s = time.monotonic()
        meter.checkpoint()

        def burn() -> None:
            deadline = time.thread_time() + 0.2
            while time.thread_time() < deadline:
                pass

        worker = threading.Thread(target=burn)
        worker.start()
        worker.join()
        end_s = time.monotonic()
        meter.checkpoint()
        reading = meter.measure(start_s, end_s, settle_timeout_s=1.0)
    finally:
        meter.close()
    assert reading.energy_j is not None
    assert reading.energy_j > 0.0
    assert reading.energy_j == pytest.approx(10.0 * 0.2, rel=0.5)
    assert reading.source == "estimated"
    assert reading.method == "model_estimate"
    assert not reading.approximate
