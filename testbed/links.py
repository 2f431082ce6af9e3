"""One emulated link's impairment and its packet schedule, shared by every way of emulating it.

:class:`LinkSpec` says what a link does (delay, jitter, rate, loss); :class:`LinkSchedule` turns
it into release times for one direction. The namespace hosts (:mod:`testbed.network`), their TUN
relay (:mod:`testbed.tun_relay`) and the TCP delay proxy (:mod:`testbed.proxy`) all use them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

QUEUE_LIMIT_PACKETS = 1000
"""Packets a link holds per direction (the netem default); beyond it, tail drop."""


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """The impairment of one link, applied in each direction separately.

    Attributes:
        delay_ms: One-way delay added in each direction, in milliseconds (so the round trip grows
            by twice this).
        jitter_ms: Uniform jitter of the delay, +- this many milliseconds. Packet and chunk order
            is kept (a packet is never released before the one in front of it).
        rate_mbit: Bandwidth limit in each direction in Mbit/s (10^6 bit/s); ``None`` is unlimited.
        loss_pct: Random packet loss in percent. Only real links (:class:`NetnsHost`) drop packets;
            :class:`DelayProxy` forwards a byte stream and ignores it.
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_mbit: float | None = None
    loss_pct: float = 0.0

    def describe(self) -> str:
        """The link in words, for logs."""
        rate = "unlimited" if self.rate_mbit is None else f"{self.rate_mbit:g} Mbit/s"
        return (
            f"delay {self.delay_ms:g} ms +- {self.jitter_ms:g} ms, {rate}, loss {self.loss_pct:g} %"
        )

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError("delay_ms and jitter_ms must be >= 0")
        if self.rate_mbit is not None and self.rate_mbit <= 0:
            raise ValueError("rate_mbit must be > 0 or None")
        if not 0.0 <= self.loss_pct <= 100.0:
            raise ValueError("loss_pct must be in [0, 100]")


class LinkSchedule:
    """Release times for one direction of a link: serialise at the rate, then delay.

    Like netem, a packet (or chunk) first waits for the transmitter (``rate_mbit``), then travels
    for ``delay_ms`` +- jitter. The delay of one item does not hold back the next: every item
    carries its own release time, so a 50 ms link adds 50 ms per direction, not 50 ms per item.
    Release times never decrease, so order is kept. Not thread-safe; one owner per direction.
    """

    def __init__(self, link: LinkSpec, *, seed: int | None = None) -> None:
        self._delay_s = link.delay_ms / 1000.0
        self._jitter_s = link.jitter_ms / 1000.0
        self._seconds_per_byte = (
            None if link.rate_mbit is None else 8.0 / (link.rate_mbit * 1_000_000.0)
        )
        self._loss = link.loss_pct / 100.0
        self._random = random.Random(seed)
        self._transmitter_free_s = 0.0
        self._last_release_s = 0.0

    def lost(self) -> bool:
        """Whether the next packet is dropped (``loss_pct``)."""
        return self._loss > 0.0 and self._random.random() < self._loss

    def release_s(self, size_bytes: int, now_s: float) -> float:
        """The clock time at which an item of ``size_bytes`` that arrived at ``now_s`` leaves."""
        sent_s = now_s
        if self._seconds_per_byte is not None:
            sent_s = max(now_s, self._transmitter_free_s) + size_bytes * self._seconds_per_byte
            self._transmitter_free_s = sent_s
        delay_s = self._delay_s
        if self._jitter_s > 0.0:
            delay_s = max(0.0, delay_s + self._random.uniform(-self._jitter_s, self._jitter_s))
        release_s = max(sent_s + delay_s, self._last_release_s)
        self._last_release_s = release_s
        return release_s
