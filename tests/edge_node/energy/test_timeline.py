from __future__ import annotations

import threading
import time

import pytest

from edge_node.energy import MeterInfo, SampledMeter, SampleInvalidError, Timeline
from tests.edge_node.energy.fakes import FakeClock

COUNTER_INFO = MeterInfo("measured-rapl", "counter", "test counter", 0.02, "cpu", "test")
POWER_INFO = MeterInfo("measured-jetson", "power_integration", "test rails", 0.02, "jetson", "t")


class ScriptedCounter:
    """Counter source returning scripted values; an exception instance is raised instead."""

    def __init__(self, values: list[float | Exception]) -> None:
        self.values = values
        self.closed = 0

    def read_joules(self) -> float:
        value = self.values.pop(0) if len(self.values) > 1 else self.values[0]
        if isinstance(value, Exception):
            raise value
        return value

    def close(self) -> None:
        self.closed += 1


class ScriptedPower:
    def __init__(self, values: list[float | Exception]) -> None:
        self.values = values

    def read_watts(self) -> float:
        value = self.values.pop(0) if len(self.values) > 1 else self.values[0]
        if isinstance(value, Exception):
            raise value
        return value

    def close(self) -> None:
        pass


class RisingCounter:
    """Thread-safe counter rising by 1 J per read (for the real-thread tests)."""

    def __init__(self) -> None:
        self.reads = 0

    def read_joules(self) -> float:
        self.reads += 1
        return float(self.reads)

    def close(self) -> None:
        pass


def test_timeline_interpolates_and_refuses_before_history() -> None:
    timeline = Timeline(max_age_s=100.0, stepped=False, max_points=100)
    timeline.add(1.0, 10.0, 0)
    timeline.add(2.0, 30.0, 0)
    assert timeline.value_at(1.5, extrapolate=False, rate_w=None) == (20.0, 0)
    assert timeline.value_at(0.5, extrapolate=False, rate_w=None) is None
    assert timeline.value_at(3.0, extrapolate=False, rate_w=None) == (30.0, 0)
    assert timeline.value_at(3.0, extrapolate=True, rate_w=20.0) == (50.0, 0)
    assert not timeline.add(1.5, 99.0, 0)  # out of order: dropped


def test_stepped_timeline_places_knots_at_change_midpoints() -> None:
    timeline = Timeline(max_age_s=100.0, stepped=True, max_points=100)
    for t_s, energy_j in ((0.0, 0.0), (0.05, 0.0), (0.1, 7.0), (0.15, 7.0), (0.2, 14.0)):
        timeline.add(t_s, energy_j, 0)
    # knots: (0, 0), (0.075, 7), (0.175, 14): the steps happened in (0.05, 0.1], (0.15, 0.2]
    for t_s, expected_j in ((0.075, 7.0), (0.125, 10.5)):
        value = timeline.value_at(t_s, extrapolate=False, rate_w=None)
        assert value is not None
        assert value[0] == pytest.approx(expected_j)
    assert timeline.recent_rate_w() == pytest.approx(70.0)


def test_gap_between_epochs_is_unknown() -> None:
    timeline = Timeline(max_age_s=100.0, stepped=False, max_points=100)
    timeline.add(1.0, 10.0, 0)
    timeline.add(2.0, 20.0, 1)
    assert timeline.value_at(1.0, extrapolate=False, rate_w=None) == (10.0, 0)
    assert timeline.value_at(1.5, extrapolate=False, rate_w=None) is None


def test_old_history_is_trimmed() -> None:
    timeline = Timeline(max_age_s=10.0, stepped=False, max_points=1000)
    for second in range(100):
        timeline.add(float(second), float(second), 0)
    assert timeline.value_at(50.0, extrapolate=False, rate_w=None) is None
    assert timeline.value_at(95.0, extrapolate=False, rate_w=None) == (95.0, 0)


def counter_meter(source: ScriptedCounter | RisingCounter, clock: FakeClock) -> SampledMeter:
    return SampledMeter(
        COUNTER_INFO,
        counter=source,
        sample_interval_s=0.01,
        timeline_seconds=60.0,
        cheap_reads=False,
        clock=clock,
    )


def test_transient_counter_errors_are_skipped_not_gaps() -> None:
    clock = FakeClock()
    meter = counter_meter(ScriptedCounter([0.0, OSError("EIO"), 2.0, 3.0]), clock)
    for now_ms in (0, 100, 200, 300):
        clock.now_ms = now_ms
        meter.poll_once()
    assert meter.read_errors == 1
    reading = meter.measure(0.0, 0.2, settle_timeout_s=0.0)
    assert reading.energy_j == pytest.approx(2.0)


def test_invalid_sample_starts_a_new_epoch() -> None:
    clock = FakeClock()
    meter = counter_meter(ScriptedCounter([0.0, SampleInvalidError("reset"), 5.0, 6.0]), clock)
    for now_ms in (0, 100, 200, 300):
        clock.now_ms = now_ms
        meter.poll_once()
    assert meter.measure(0.0, 0.25, settle_timeout_s=0.0).energy_j is None
    assert meter.measure(0.2, 0.3, settle_timeout_s=0.0).energy_j == pytest.approx(1.0)


def test_power_read_errors_are_bridged_but_long_gaps_break_the_epoch() -> None:
    clock = FakeClock()
    source = ScriptedPower([10.0, OSError("EIO"), 10.0, 10.0, 10.0])
    meter = SampledMeter(
        POWER_INFO,
        power=source,
        sample_interval_s=0.01,
        timeline_seconds=60.0,
        cheap_reads=True,
        clock=clock,
        max_gap_s=0.5,
    )
    for now_ms in (0, 100, 200, 300, 1000, 1100):
        clock.now_ms = now_ms
        meter.poll_once()
    assert meter.measure(0.0, 0.3, settle_timeout_s=0.0).energy_j == pytest.approx(3.0)
    assert meter.measure(0.2, 1.05, settle_timeout_s=0.0).energy_j is None
    assert meter.measure(1.0, 1.05, settle_timeout_s=0.0).energy_j == pytest.approx(0.5)


def test_end_before_start_is_an_error() -> None:
    meter = counter_meter(ScriptedCounter([0.0]), FakeClock())
    with pytest.raises(ValueError, match="before start_s"):
        meter.measure(2.0, 1.0)


def test_empty_meter_reports_unknown_after_a_bounded_wait() -> None:
    meter = counter_meter(ScriptedCounter([0.0]), FakeClock())
    began = time.monotonic()
    reading = meter.measure(0.0, 1.0, settle_timeout_s=0.05)
    assert time.monotonic() - began < 1.0
    assert reading.energy_j is None
    assert reading.approximate
    sample = meter.sample()
    assert (sample.power_w, sample.energy_total_j) == (None, None)


def test_sampler_thread_settles_a_window_and_stops() -> None:
    source = RisingCounter()
    meter = SampledMeter(
        COUNTER_INFO,
        counter=source,
        sample_interval_s=0.005,
        timeline_seconds=60.0,
        cheap_reads=False,
    )
    meter.start()
    meter.start()  # idempotent
    try:
        start_s = time.monotonic()
        time.sleep(0.02)
        end_s = time.monotonic()
        reading = meter.measure(start_s, end_s, settle_timeout_s=2.0)
    finally:
        meter.close()
        meter.close()
    assert not reading.approximate
    assert reading.energy_j is not None
    assert reading.energy_j > 0.0
    reads_after_close = source.reads
    time.sleep(0.02)
    assert source.reads == reads_after_close
    assert not any(t.name.startswith("energy-sampler") for t in threading.enumerate())
    sample = meter.sample()
    assert sample.energy_total_j is not None
    assert sample.energy_total_j > 0


def test_close_closes_the_source_once() -> None:
    source = ScriptedCounter([0.0])
    meter = counter_meter(source, FakeClock())
    meter.close()
    meter.close()
    assert source.closed == 1
    assert not meter.poll_once()


def test_exactly_one_source_is_required() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        SampledMeter(COUNTER_INFO, sample_interval_s=0.1, timeline_seconds=1.0, cheap_reads=True)
