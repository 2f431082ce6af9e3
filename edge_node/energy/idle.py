"""The device's idle power, from the meter's own timeline, and a request's energy above it.

A measured figure covers the whole device over the request's window: its idle draw included.
The node also reports the part above idle, ``energy_j - idle_power_w * window_s`` (never below
0), labelled by the idle power it used. Idle power is the meter's energy over a window with no
request on the engine, divided by its length: the first such window after start-up (the node
is idle from then until its first request), re-measured from every later gap between requests
that is long enough. No sleep and no extra sampling: the gap is read back from the timeline
the meter keeps anyway, so a gap older than the timeline's history is simply not used.

Only hardware measurements get a baseline: an estimate's idle share is a model parameter, and
an emulated device's figure is its model's, so both report no idle power (unknown, not 0).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from edge_node.energy.types import EnergyMeter, EnergyReading

MIN_IDLE_WINDOW_S = 1.0
"""The shortest gap between requests that measures idle power (counters step at ~100 ms)."""

MAX_IDLE_WINDOW_S = 30.0
"""Only the last this-many seconds of a longer gap are used (the timeline keeps about 60 s)."""

GUARD_S = 0.1
"""Kept off both ends of a gap: the tail of one request and the start of the next."""


@dataclass(frozen=True, slots=True)
class IdlePower:
    """One idle measurement.

    Attributes:
        power_w: Mean power over the window, watts.
        window_s: Length of the idle window it was measured over, seconds.
        measured_s: ``time.monotonic()`` at the window's end.
    """

    power_w: float
    window_s: float
    measured_s: float


class IdleBaseline:
    """Tracks the gaps between a node's compute windows and measures idle power in them."""

    def __init__(self, meter: EnergyMeter, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._meter = meter
        self._enabled = meter.info.source.startswith("measured-")
        self._lock = threading.Lock()
        self._busy_until_s = clock()  # idle from start-up on
        self._latest: IdlePower | None = None

    @property
    def latest(self) -> IdlePower | None:
        """The newest idle measurement, or None before the first (or for an estimate)."""
        with self._lock:
            return self._latest

    def gap(self, started_s: float, finished_s: float) -> tuple[float, float] | None:
        """Record a compute window; the idle window before it, if long enough to measure.

        Cheap: call it on the event loop as each request's window ends, so windows are noted
        in engine order even when their energy readings settle out of order.
        """
        with self._lock:
            gap_start_s = self._busy_until_s + GUARD_S
            self._busy_until_s = max(self._busy_until_s, finished_s)
        gap_end_s = started_s - GUARD_S
        gap_start_s = max(gap_start_s, gap_end_s - MAX_IDLE_WINDOW_S)
        if not self._enabled or gap_end_s - gap_start_s < MIN_IDLE_WINDOW_S:
            return None
        return gap_start_s, gap_end_s

    def measure(self, window: tuple[float, float]) -> None:
        """Measure idle power over ``window`` (from ``gap``); blocks, call in a worker thread."""
        start_s, end_s = window
        reading = self._meter.measure(start_s, end_s, settle_timeout_s=0.0)
        if reading.energy_j is None or reading.approximate or reading.window_s <= 0:
            return  # outside the timeline's history, or across a gap in it: no update
        idle = IdlePower(reading.energy_j / reading.window_s, reading.window_s, end_s)
        with self._lock:
            if self._latest is None or idle.measured_s >= self._latest.measured_s:
                self._latest = idle

    def above_idle(self, reading: EnergyReading) -> EnergyReading:
        """``reading`` with the idle power it is compared with and its energy above it."""
        idle = self.latest
        if idle is None or reading.energy_j is None or reading.emulated:
            return reading
        above_j = max(0.0, reading.energy_j - idle.power_w * reading.window_s)
        return replace(reading, idle_power_w=idle.power_w, energy_above_idle_j=above_j)
