"""Hardware-free core: the cumulative-energy timeline and the sampled meter built on it.

Backends only read hardware. Everything else lives here: trapezoid integration of power
sources, a ring buffer of ``(t_s, cumulative_j, epoch)`` knots, linear interpolation at window
edges, the settle rule, and the background sampler thread. Tests drive it with
:meth:`SampledMeter.poll_once` and a fake clock, without sleeping.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from edge_node.energy.types import (
    CounterSource,
    EnergyReading,
    MeterInfo,
    PowerSample,
    PowerSource,
    SampleInvalidError,
)

logger = logging.getLogger(__name__)

_JOIN_TIMEOUT_S = 5.0
_POWER_AVERAGE_SPAN_S = 1.0


@dataclass(frozen=True, slots=True)
class Knot:
    """One point of the cumulative-energy curve.

    Attributes:
        t_s: Monotonic-clock time of the point.
        energy_j: Cumulative joules at ``t_s``.
        epoch: Continuity segment; windows spanning two epochs are unknown.
        power_w: Power read at this point (power sources only).
    """

    t_s: float
    energy_j: float
    epoch: int
    power_w: float | None = None


def _knot_time(knot: Knot) -> float:
    return knot.t_s


class Timeline:
    """Cumulative energy against monotonic time, with gaps marked by epochs.

    In *stepped* mode (counters that update more slowly than they are polled, like NVML's
    ~100 ms total-energy counter) only change points become knots, placed midway between
    the last sample with the old value and the first with the new one. Interpolating
    between change points recovers the average power between steps, where interpolating
    between every sample would reproduce the staircase and read 0 J for short windows.

    Not thread-safe; :class:`SampledMeter` serialises access.
    """

    def __init__(self, *, max_age_s: float, stepped: bool, max_points: int) -> None:
        self._max_age_s = max_age_s
        self._stepped = stepped
        self._knots: deque[Knot] = deque(maxlen=max_points)
        self._last: Knot | None = None
        self._origin_j: float | None = None

    @property
    def latest(self) -> Knot | None:
        """The newest observation (in stepped mode possibly a flat sample, not a knot)."""
        return self._last

    @property
    def origin_j(self) -> float | None:
        """Cumulative joules at the first observation ever added."""
        return self._origin_j

    def add(self, t_s: float, energy_j: float, epoch: int, power_w: float | None = None) -> bool:
        """Record an observation; returns False (and drops it) if it is not newer than the last.

        Args:
            t_s: Monotonic time of the observation.
            energy_j: Cumulative joules.
            epoch: Continuity segment of the observation.
            power_w: Power at ``t_s``, for power sources.
        """
        last = self._last
        if last is not None and t_s <= last.t_s:
            return False
        point = Knot(t_s, energy_j, epoch, power_w)
        if self._origin_j is None:
            self._origin_j = energy_j
        if not self._stepped or last is None or epoch != last.epoch:
            self._knots.append(point)
        elif energy_j != last.energy_j:
            # The counter stepped somewhere in (last.t_s, t_s]; the midpoint is unbiased.
            self._knots.append(Knot((last.t_s + t_s) / 2.0, energy_j, epoch, power_w))
        self._last = point
        horizon_s = t_s - self._max_age_s
        while len(self._knots) > 2 and self._knots[1].t_s < horizon_s:
            self._knots.popleft()
        return True

    def recent_rate_w(self) -> float | None:
        """Slope of the last two knots of the newest epoch, in watts (None if unknown)."""
        if len(self._knots) < 2:
            return None
        before, last = self._knots[-2], self._knots[-1]
        if before.epoch != last.epoch or last.t_s <= before.t_s:
            return None
        return (last.energy_j - before.energy_j) / (last.t_s - before.t_s)

    def value_at(
        self, t_s: float, *, extrapolate: bool, rate_w: float | None
    ) -> tuple[float, int] | None:
        """Cumulative joules at ``t_s`` and its epoch, or None if unknown.

        Unknown means before the retained history or inside a gap between epochs. Past the
        last knot the curve is held flat (the counter says nothing more happened) unless
        ``extrapolate`` is set, used when the settle wait timed out: then it continues at
        ``rate_w``.
        """
        if not self._knots or t_s < self._knots[0].t_s:
            return None
        index = bisect.bisect_right(self._knots, t_s, key=_knot_time)
        if index >= len(self._knots):
            anchor = self._knots[-1]
            if extrapolate and rate_w is not None:
                return anchor.energy_j + max(rate_w, 0.0) * (t_s - anchor.t_s), anchor.epoch
            return anchor.energy_j, anchor.epoch
        before, after = self._knots[index - 1], self._knots[index]
        if t_s == before.t_s:
            return before.energy_j, before.epoch
        if before.epoch != after.epoch:
            return None  # inside a gap: nothing is known about this interval
        fraction = (t_s - before.t_s) / (after.t_s - before.t_s)
        return before.energy_j + fraction * (after.energy_j - before.energy_j), before.epoch

    def power_range_w(self, start_s: float, end_s: float) -> tuple[float, float] | None:
        """Min and max power of the knots in ``[start_s, end_s]`` (None if fewer than two)."""
        powers = [
            k.power_w for k in self._knots if start_s <= k.t_s <= end_s and k.power_w is not None
        ]
        if len(powers) < 2:
            return None
        return min(powers), max(powers)

    def average_power_w(self, span_s: float) -> float | None:
        """Mean power over the last ``span_s`` seconds of the newest epoch."""
        last = self._last
        if last is None:
            return None
        earlier = self.value_at(last.t_s - span_s, extrapolate=False, rate_w=None)
        now = self.value_at(last.t_s, extrapolate=False, rate_w=None)
        if earlier is None or now is None or earlier[1] != now[1]:
            return self.recent_rate_w()
        return (now[0] - earlier[0]) / span_s


class SampledMeter:
    """An :class:`~edge_node.energy.types.EnergyMeter` over one counter or power source.

    A daemon thread polls the source every ``sample_interval_s`` into a :class:`Timeline`;
    power sources are integrated with the trapezoid rule as they are polled. ``measure``
    interpolates that timeline, so slow reads (NVML's counter costs ~3.8 ms) never sit on the
    request path and overlapping windows are supported.

    Error handling: a source read that raises :class:`SampleInvalidError` starts a new epoch
    (windows across it become unknown, never negative); any other read error is counted and
    skipped, because the next counter read still covers the interval, and a power source
    only breaks the epoch when the gap exceeds ``max_gap_s``. The sampler thread must never
    die on a read error, hence the broad ``except``.
    """

    def __init__(
        self,
        info: MeterInfo,
        *,
        counter: CounterSource | None = None,
        power: PowerSource | None = None,
        sample_interval_s: float,
        timeline_seconds: float,
        cheap_reads: bool,
        stepped: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        max_gap_s: float | None = None,
        instant_power_w: Callable[[], float | None] | None = None,
        gpu_utilization: Callable[[], float | None] | None = None,
    ) -> None:
        """Create a meter; nothing is read until ``start``, ``checkpoint`` or ``poll_once``.

        Args:
            info: Labels for every reading.
            counter: Cumulative source (exactly one of ``counter`` and ``power``).
            power: Instantaneous power source, integrated by the sampler.
            sample_interval_s: Background polling period.
            timeline_seconds: History kept; windows older than this are unknown.
            cheap_reads: Whether a read costs microseconds, so ``checkpoint`` and ``measure``
                may poll on the caller's thread.
            stepped: Counter updates more slowly than it is polled (see :class:`Timeline`).
            clock: Monotonic clock shared with the callers' ``start_s``/``end_s``.
            wall_clock: Clock for :attr:`PowerSample.timestamp_s`.
            max_gap_s: Longest gap a power integral may bridge; default
                ``max(1 s, 20 * sample_interval_s)``.
            instant_power_w: Optional cheap power read for ``sample`` (counter meters).
            gpu_utilization: Optional GPU busy fraction 0..1 for ``sample``.
        """
        if (counter is None) == (power is None):
            raise ValueError("pass exactly one of counter= and power=")
        self.info = info
        self._counter = counter
        self._power = power
        self._interval_s = sample_interval_s
        self._cheap_reads = cheap_reads
        self._clock = clock
        self._wall_clock = wall_clock
        self._max_gap_s = max(1.0, 20.0 * sample_interval_s) if max_gap_s is None else max_gap_s
        self._instant_power_w = instant_power_w
        self._gpu_utilization = gpu_utilization
        max_points = math.ceil(timeline_seconds / sample_interval_s) * 4 + 1024
        self._timeline = Timeline(
            max_age_s=timeline_seconds, stepped=stepped, max_points=max_points
        )
        self._epoch = 0
        self._energy_j = 0.0  # running trapezoid integral (power sources)
        self._read_errors = 0
        self._lock = threading.Lock()
        self._updated = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def read_errors(self) -> int:
        """How many source reads have failed since the meter was created."""
        return self._read_errors

    def start(self) -> None:
        """Take a first sample and start the daemon sampler thread; idempotent."""
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(
                target=self._run, name=f"energy-sampler-{self.info.source}", daemon=True
            )
        self.poll_once()
        self._thread.start()

    def close(self) -> None:
        """Stop the sampler thread and close the source; idempotent."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT_S)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            source = self._counter if self._counter is not None else self._power
            self._updated.notify_all()
        if source is not None:
            source.close()

    def checkpoint(self) -> None:
        """Sample now if reads are cheap; a no-op for slow sources (engine thread)."""
        if self._cheap_reads:
            self.poll_once()

    def poll_once(self, now_s: float | None = None) -> bool:
        """Read the source once and extend the timeline; True if a point was added.

        Args:
            now_s: Timestamp to record (tests pass a fake time). Default: the midpoint of
                the clock before and after the read, since a slow read reflects its middle.
        """
        with self._lock:
            if self._closed:
                return False
            before_s = self._clock()
            if self._counter is not None:
                return self._poll_counter(self._counter, before_s, now_s)
            assert self._power is not None
            return self._poll_power(self._power, before_s, now_s)

    def _poll_counter(self, counter: CounterSource, before_s: float, now_s: float | None) -> bool:
        try:
            energy_j = counter.read_joules()
        except SampleInvalidError as err:
            self._epoch += 1
            logger.warning("%s: %s; starting a new energy epoch", self.info.source, err)
            return False
        except Exception as err:  # the sampler must survive any read failure
            self._count_read_error(err)
            return False
        t_s = now_s if now_s is not None else (before_s + self._clock()) / 2.0
        added = self._timeline.add(t_s, energy_j, self._epoch)
        self._updated.notify_all()
        return added

    def _poll_power(self, power: PowerSource, before_s: float, now_s: float | None) -> bool:
        try:
            power_w = power.read_watts()
        except Exception as err:  # the sampler must survive any read failure
            self._count_read_error(err)
            return False
        t_s = now_s if now_s is not None else (before_s + self._clock()) / 2.0
        last = self._timeline.latest
        if last is not None:
            if t_s <= last.t_s:
                return False
            if t_s - last.t_s > self._max_gap_s or last.power_w is None:
                self._epoch += 1
            else:
                self._energy_j += (last.power_w + power_w) / 2.0 * (t_s - last.t_s)
        added = self._timeline.add(t_s, self._energy_j, self._epoch, power_w)
        self._updated.notify_all()
        return added

    def _count_read_error(self, err: Exception) -> None:
        self._read_errors += 1
        level = logging.WARNING if self._read_errors == 1 else logging.DEBUG
        logger.log(
            level, "%s: read failed (%d so far): %r", self.info.source, self._read_errors, err
        )

    def _run(self) -> None:
        # Real time paces the thread; the injected clock only timestamps samples.
        next_s = time.monotonic() + self._interval_s
        while not self._stop.wait(max(0.0, next_s - time.monotonic())):
            self.poll_once()
            next_s = max(next_s + self._interval_s, time.monotonic())

    def _settled(self, target_s: float) -> bool:
        latest = self._timeline.latest
        return latest is not None and latest.t_s >= target_s

    def _wait_settled(self, target_s: float, settle_timeout_s: float) -> bool:
        # The wait is bounded in real time even when the meter runs on a fake clock.
        deadline_s = time.monotonic() + settle_timeout_s
        polls_left = 3
        while True:
            with self._lock:
                if self._settled(target_s):
                    return True
                closed = self._closed
            if self._cheap_reads and not closed and polls_left > 0 and self._clock() >= target_s:
                polls_left -= 1
                self.poll_once()
                continue
            remaining_s = deadline_s - time.monotonic()
            if remaining_s <= 0.0:
                return False
            with self._lock:
                if self._settled(target_s):
                    return True
                self._updated.wait(min(remaining_s, self._interval_s))

    def measure(
        self, start_s: float, end_s: float, *, settle_timeout_s: float = 0.5
    ) -> EnergyReading:
        """Energy between two monotonic instants (blocking; call from a worker thread).

        Waits until the timeline holds a sample at or after ``end_s + resolution_s`` (the
        NVML counter settles ~100 ms late; for cheap sources a sample at ``end_s`` suffices),
        at most ``settle_timeout_s``; on timeout the
        curve is extrapolated at the recent rate and the reading is marked approximate.

        Args:
            start_s: Window start, ``time.monotonic()`` on the engine thread.
            end_s: Window end, same clock.
            settle_timeout_s: Longest wait for the settling sample, in seconds.

        Returns:
            The reading; ``energy_j`` is None when the window is outside the retained
            history or spans a gap in the timeline.

        Raises:
            ValueError: ``end_s`` is before ``start_s``.
        """
        if end_s < start_s:
            raise ValueError(f"end_s {end_s} is before start_s {start_s}")
        resolution_s = self.info.resolution_s
        window_s = end_s - start_s
        # Slow counters (NVML's ~100 ms steps) must be read one update period after the window;
        # cheap sources (RAPL, hwmon, process CPU time) are sampled at the window's end by the
        # engine thread's checkpoint, so a sample at or after end_s is already final.
        settle_at_s = end_s if self._cheap_reads else end_s + resolution_s
        settled = self._wait_settled(settle_at_s, settle_timeout_s)
        with self._lock:
            rate_w = self._rate_w_locked()
            extrapolate = not settled
            at_start = self._timeline.value_at(start_s, extrapolate=extrapolate, rate_w=rate_w)
            at_end = self._timeline.value_at(end_s, extrapolate=extrapolate, rate_w=rate_w)
            energy_j: float | None = None
            if at_start is not None and at_end is not None and at_start[1] == at_end[1]:
                energy_j = max(0.0, at_end[0] - at_start[0])
            uncertainty_j = self._uncertainty_j_locked(start_s, end_s, energy_j, rate_w)
        return EnergyReading(
            energy_j=energy_j,
            source=self.info.source,
            method=self.info.method,
            scope=self.info.scope,
            window_s=window_s,
            resolution_s=resolution_s,
            approximate=window_s < resolution_s or not settled,
            uncertainty_j=uncertainty_j,
        )

    def _rate_w_locked(self) -> float | None:
        latest = self._timeline.latest
        if self._power is not None:
            return None if latest is None else latest.power_w
        return self._timeline.recent_rate_w()

    def _uncertainty_j_locked(
        self, start_s: float, end_s: float, energy_j: float | None, rate_w: float | None
    ) -> float | None:
        if energy_j is None:
            return None
        resolution_s = self.info.resolution_s
        window_s = end_s - start_s
        if self.info.method == "counter":
            # +-1 counter step at each edge: 2 x period x power (docs/energy.md, uncertainty_j).
            power_w = energy_j / window_s if window_s > 0 else rate_w
            return None if power_w is None else 2.0 * resolution_s * max(power_w, 0.0)
        if self.info.method == "power_integration":
            spread = self._timeline.power_range_w(start_s - resolution_s, end_s + resolution_s)
            return None if spread is None else resolution_s * (spread[1] - spread[0])
        return None

    def sample(self) -> PowerSample:
        """Latest power and cumulative energy since the meter's first sample."""
        with self._lock:
            latest = self._timeline.latest
            origin_j = self._timeline.origin_j
            energy_total_j = (
                None if latest is None or origin_j is None else latest.energy_j - origin_j
            )
            if self._power is not None:
                power_w = None if latest is None else latest.power_w
            else:
                power_w = self._timeline.average_power_w(_POWER_AVERAGE_SPAN_S)
        instant_w = _optional_read(self._instant_power_w)
        if instant_w is not None:
            power_w = instant_w
        utilization = _optional_read(self._gpu_utilization)
        return PowerSample(self._wall_clock(), power_w, energy_total_j, utilization)


def _optional_read(read: Callable[[], float | None] | None) -> float | None:
    """Telemetry extras are best effort: a failed read (e.g. after close) is unknown."""
    if read is None:
        return None
    try:
        return read()
    except Exception:  # telemetry must not fail because an auxiliary sensor did
        logger.debug("auxiliary telemetry read failed", exc_info=True)
        return None
