"""Idle power from the gaps between requests, and each request's energy above it."""

from __future__ import annotations

import asyncio
import time

import pytest

from edge_node.client import AsyncEdgeNodeClient
from edge_node.energy import MeterInfo, ModeledEnergyMeter, SampledMeter
from edge_node.energy.idle import MIN_IDLE_WINDOW_S, IdleBaseline
from tests.edge_node.energy.fakes import FakeClock
from tests.helpers.nodes import StartNode

RAPL = MeterInfo("measured-rapl", "counter", "package-0", 0.001, "cpu", "test cpu")


class PoweredCounter:
    """A cumulative counter integrating a power profile over the fake clock's time."""

    def __init__(self, clock: FakeClock, watts: dict[float, float]) -> None:
        self.clock = clock
        self.watts = sorted(watts.items())  # (from_s, watts), piecewise constant
        self.joules = 0.0
        self.last_s = 0.0

    def read_joules(self) -> float:
        now_s = self.clock()
        while self.last_s < now_s:
            power = [w for start, w in self.watts if start <= self.last_s][-1]
            step = min(0.001, now_s - self.last_s)
            self.joules += power * step
            self.last_s += step
        return self.joules

    def close(self) -> None:
        pass


def run_until(meter: SampledMeter, clock: FakeClock, until_s: float) -> None:
    while clock() < until_s:
        clock.advance_ms(10)
        meter.poll_once()


def test_idle_power_is_measured_in_gaps_and_subtracted_from_requests() -> None:
    clock = FakeClock()
    # idle 5 W; a request draws 25 W over [2, 3] s; the device idles at 8 W from 4 s on
    counter = PoweredCounter(clock, {0.0: 5.0, 2.0: 25.0, 3.0: 5.0, 4.0: 8.0, 10.0: 28.0})
    meter = SampledMeter(
        RAPL, counter=counter, sample_interval_s=0.01, timeline_seconds=60.0,
        cheap_reads=False, clock=clock,
    )  # fmt: skip
    meter.poll_once()
    baseline = IdleBaseline(meter, clock=clock)
    assert baseline.latest is None
    run_until(meter, clock, 3.2)
    gap = baseline.gap(2.0, 3.0)
    assert gap is not None
    baseline.measure(gap)
    assert baseline.latest is not None
    assert baseline.latest.power_w == pytest.approx(5.0, rel=0.01)
    reading = baseline.above_idle(meter.measure(2.0, 3.0, settle_timeout_s=0.0))
    assert reading.energy_j == pytest.approx(25.0, rel=0.01)
    assert reading.idle_power_w == pytest.approx(5.0, rel=0.01)
    assert reading.energy_above_idle_j == pytest.approx(20.0, rel=0.02)
    # a request right after the last one: no gap to measure, the baseline stays
    assert baseline.gap(3.05, 3.1) is None
    # a later long gap re-measures the idle power (8 W from 4 s on)
    run_until(meter, clock, 11.2)
    later = baseline.gap(10.0, 11.0)
    assert later is not None
    assert later[1] - later[0] >= MIN_IDLE_WINDOW_S
    baseline.measure(later)
    assert baseline.latest.power_w == pytest.approx(8.0, rel=0.05)
    spent = baseline.above_idle(meter.measure(10.0, 11.0, settle_timeout_s=0.0))
    assert spent.energy_above_idle_j == pytest.approx(20.0, rel=0.05)


def test_a_gap_outside_the_timeline_leaves_idle_power_unknown() -> None:
    clock = FakeClock()
    counter = PoweredCounter(clock, {0.0: 5.0})
    meter = SampledMeter(
        RAPL, counter=counter, sample_interval_s=0.01, timeline_seconds=2.0,
        cheap_reads=False, clock=clock,
    )  # fmt: skip
    baseline = IdleBaseline(meter, clock=clock)
    run_until(meter, clock, 40.0)
    gap = baseline.gap(39.0, 39.5)
    assert gap is not None  # long enough, but mostly older than the 2 s of history
    baseline.measure(gap)
    assert baseline.latest is None
    reading = baseline.above_idle(meter.measure(39.0, 39.5, settle_timeout_s=0.0))
    assert reading.energy_j is not None
    assert (reading.idle_power_w, reading.energy_above_idle_j) == (None, None)  # not 0


def test_an_estimate_gets_no_idle_baseline() -> None:
    meter = ModeledEnergyMeter(power_w=10.0)
    baseline = IdleBaseline(meter)
    assert baseline.gap(time.monotonic() + 5.0, time.monotonic() + 6.0) is None


class RealTimeCounter:
    """A measured device at a constant 4 W on the real monotonic clock."""

    def read_joules(self) -> float:
        return 4.0 * time.monotonic()

    def close(self) -> None:
        pass


async def test_a_node_reports_idle_power_and_energy_above_it_on_the_wire(
    node_factory: StartNode,
) -> None:
    meter = SampledMeter(
        RAPL, counter=RealTimeCounter(), sample_interval_s=0.01, timeline_seconds=60.0,
        cheap_reads=True,
    )  # fmt: skip
    meter.start()  # as `edge-node serve` does before loading the model
    try:
        node = await node_factory(meter=meter)
        await asyncio.sleep(MIN_IDLE_WINDOW_S + 0.4)  # idle after start-up
        async with AsyncEdgeNodeClient(f"127.0.0.1:{node.port}") as client:
            result = await client.score("Is it?", [" yes", " no"])
    finally:
        meter.close()
    energy = result.energy
    assert energy.source == "measured-rapl"
    assert energy.idle_power_w == pytest.approx(4.0, rel=0.05)
    assert energy.energy_above_idle_j is not None
    assert energy.energy_j is not None
    # a constant draw is all idle: nothing above it, up to the window's edges
    assert energy.energy_above_idle_j <= 0.05 * energy.energy_j + 0.01
    assert energy.to_json()["idle_power_w"] == energy.idle_power_w
