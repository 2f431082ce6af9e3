"""Partial GPU offload: the GPU's and the CPU's energy, each with its scope, and their sum."""

from __future__ import annotations

import pytest

from edge_node import wire
from edge_node.config import EdgeNodeSettings
from edge_node.energy import EnergyMeter, MeterInfo, ModeledEnergyMeter, SampledMeter
from edge_node.energy.split import SplitMeter, is_partial_offload, split_if_partial
from edge_node.server import meter_for_offload
from tests.edge_node.energy.fakes import FakeClock

NVML = MeterInfo("measured-nvml", "counter", "GPU 0 board", 0.1, "cuda", "RTX 4090")
RAPL = MeterInfo("measured-rapl", "counter", "CPU package-0", 0.001, "cpu", "Xeon")
JETSON = MeterInfo("measured-jetson", "power_integration", "module VDD_IN", 0.02, "jetson", "t")


class WattCounter:
    """A counter at a constant power on the fake clock."""

    def __init__(self, clock: FakeClock, watts: float) -> None:
        self.clock, self.watts = clock, watts

    def read_joules(self) -> float:
        return self.watts * self.clock()

    def close(self) -> None:
        pass


def counter_meter(info: MeterInfo, clock: FakeClock, watts: float) -> SampledMeter:
    return SampledMeter(
        info, counter=WattCounter(clock, watts), sample_interval_s=0.01, timeline_seconds=60.0,
        cheap_reads=False, clock=clock,
    )  # fmt: skip


def advance(clock: FakeClock, meters: list[SampledMeter], until_s: float) -> None:
    for meter in meters:
        meter.poll_once()
    while clock() < until_s:
        clock.advance_ms(10)
        for meter in meters:
            meter.poll_once()


def test_partial_offload_reports_both_parts_and_their_measured_sum() -> None:
    clock = FakeClock()
    gpu, cpu = counter_meter(NVML, clock, 30.0), counter_meter(RAPL, clock, 10.0)
    split = SplitMeter(gpu, cpu)
    assert split.info.source == "measured-mixed"
    assert split.info.scope == "GPU 0 board (measured-nvml) + CPU package-0 (measured-rapl)"
    advance(clock, [gpu, cpu], 3.0)
    reading = split.measure(1.0, 2.0, settle_timeout_s=0.0)
    assert reading.energy_j == pytest.approx(40.0)
    assert reading.measured and reading.method == "sum_of_parts"
    assert [(p.source, p.scope) for p in reading.parts] == [
        ("measured-nvml", "GPU 0 board"),
        ("measured-rapl", "CPU package-0"),
    ]
    assert [p.energy_j for p in reading.parts] == [pytest.approx(30.0), pytest.approx(10.0)]
    assert wire.energy_from_pb(wire.energy_to_pb(reading)) == reading
    document = reading.to_json()
    assert [part["joules"] for part in document["parts"]] == [
        pytest.approx(30.0),
        pytest.approx(10.0),
    ]


def test_an_estimated_part_makes_the_sum_an_estimate_and_unknown_stays_unknown() -> None:
    clock = FakeClock()
    gpu = counter_meter(NVML, clock, 30.0)
    split = SplitMeter(gpu, ModeledEnergyMeter(power_w=5.0, clock=clock))
    assert split.info.source == "estimated"
    advance(clock, [gpu], 3.0)
    reading = split.measure(1.0, 2.0, settle_timeout_s=0.0)
    assert reading.source == "estimated" and not reading.measured
    assert reading.energy_j == pytest.approx(35.0)
    old = split.measure(-50.0, -49.0, settle_timeout_s=0.0)  # before the GPU's history
    assert old.energy_j is None and old.source == "unavailable"


def test_only_a_partial_offload_is_split() -> None:
    assert is_partial_offload(10, 30)
    assert not any(is_partial_offload(layers, 30) for layers in (0, -1, 30, 99))
    assert not is_partial_offload(10, 0)  # unknown layer count: not guessed

    def no_cpu_meter() -> EnergyMeter:
        raise AssertionError("built for a full or no offload")

    clock = FakeClock()
    gpu = counter_meter(NVML, clock, 30.0)
    for layers in (0, -1, 30):
        assert (
            split_if_partial(gpu, gpu_layers=layers, model_layers=30, cpu_meter=no_cpu_meter) is gpu
        )
    cpu = counter_meter(RAPL, clock, 10.0)
    split = split_if_partial(gpu, gpu_layers=10, model_layers=30, cpu_meter=lambda: cpu)
    try:
        assert isinstance(split, SplitMeter) and split.parts == (gpu, cpu)
    finally:
        split.close()  # the CPU part was started to run beside the (running) GPU meter


def test_the_jetson_rails_are_not_split_they_already_cover_the_cpu() -> None:
    jetson = counter_meter(JETSON, FakeClock(), 15.0)
    assert meter_for_offload(EdgeNodeSettings(), jetson, 10, 30) is jetson
    estimate = ModeledEnergyMeter(power_w=5.0)
    assert meter_for_offload(EdgeNodeSettings(), estimate, 10, 30) is estimate
