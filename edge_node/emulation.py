"""Emulated device heterogeneity for the testbed (never a measurement).

The paper's fleet mixes Jetson Orin boards and RTX 4090s; on one machine the testbed emulates
them from published proportions (docs/devices.md gives every number's source and tolerance).

Time model. Each profile says how many times longer than an RTX 4090 the device takes for the
same work, separately for prompt processing (``prefill_slowdown``, compute-bound) and for
token generation (``decode_slowdown``, memory-bound). The host can only be slowed, so the
fastest device, the 4090, is mapped onto the host: one host second of compute stands for
``1 / TIME_DILATION_PREFILL`` (prefill) or ``1 / TIME_DILATION_DECODE`` (decode) 4090 seconds.
A node emulating a device stretches each phase of its host compute by the device's slowdown,
so relative speeds between emulated devices are right in wall-clock terms.

What a node reports:

- **Latency is wall-clock, host-relative** (the orchestrator plans deadlines in wall-clock
  seconds): the stretched compute time, ``host compute × slowdown`` per phase.
- **Energy is in device terms**: the device's modelled board power under load times its
  modelled compute time, ``power_w × Σ(host phase seconds × slowdown / dilation)``. The Energy
  message's ``window_s`` is that device time (so ``energy_j = power_w × window_s``); the figure is
  labelled ``estimated`` (``model_estimate``) and ``emulated``.

Timing modes. ``sleep`` (the default, for live serving) makes the stretch real: the engine
thread waits, so the node is busy exactly as long as the slower device would be and queueing
behaves accordingly. ``account`` (for recording) computes at host speed, does not wait, and
adds the stretch to the reported latency breakdown (prefill, decode, total) and to streamed
chunk timestamps instead; the energy is the same in both modes. A request may choose its mode
with the ``moe2-emulate-timing`` metadata entry; every reply of an emulated node carries the
seconds it accounted but did not spend in the ``moe2-emulated-stretch-s`` trailing metadata
entry (0 under ``sleep``), so a caller's wall time plus that figure is what live serving would
have taken. Account mode does not model queueing behind accounted (unslept) stretches.

The ``host`` profile is this machine as it is: no stretch, and energy from the real meter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, get_args

from edge_node.energy import EnergyReading
from edge_node.engine import Engine, GenerateParams, Generation, Scores, TokenCallback

EmulateTiming = Literal["sleep", "account"]
"""``sleep``: wait out the emulated stretch (live serving); ``account``: report it, don't wait."""
TIMING_CHOICES: tuple[str, ...] = get_args(EmulateTiming)

TIMING_METADATA_KEY = "moe2-emulate-timing"
"""Request metadata entry choosing a request's timing mode on an emulated node."""
STRETCH_METADATA_KEY = "moe2-emulated-stretch-s"
"""Trailing metadata entry: seconds of emulated compute accounted but not spent (``account``)."""

TIME_DILATION_PREFILL = 500.0
"""Host seconds per RTX 4090 second of prompt processing (2-core reference host; see docs)."""
TIME_DILATION_DECODE = 25.0
"""Host seconds per RTX 4090 second of token generation (2-core reference host)."""


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """An emulated device, relative to the RTX 4090 (which runs at the host's speed).

    Attributes:
        name: The ``--emulate-device`` name.
        description: The hardware and power mode the figures are for.
        prefill_slowdown: Device seconds per RTX 4090 second of prompt processing (>= 1).
        decode_slowdown: Device seconds per RTX 4090 second of token generation (>= 1).
        power_w: Modelled board power while computing; ``None`` for the host (real meter).
        idle_power_w: Modelled board power when idle (documentation; not charged per request).
    """

    name: str
    description: str
    prefill_slowdown: float
    decode_slowdown: float
    power_w: float | None
    idle_power_w: float | None = None

    @property
    def modelled(self) -> bool:
        """True when energy comes from this profile's power model (every device but the host)."""
        return self.power_w is not None

    def device_s(self, host_prefill_s: float, host_decode_s: float) -> float:
        """Modelled device compute seconds for the given host compute seconds per phase."""
        if not self.modelled:
            return host_prefill_s + host_decode_s
        return (
            host_prefill_s * self.prefill_slowdown / TIME_DILATION_PREFILL
            + host_decode_s * self.decode_slowdown / TIME_DILATION_DECODE
        )

    def energy_j(self, host_prefill_s: float, host_decode_s: float) -> float | None:
        """Modelled device energy for the given host compute; ``None`` for the host profile."""
        if self.power_w is None:
            return None
        return self.power_w * self.device_s(host_prefill_s, host_decode_s)

    @property
    def scope(self) -> str:
        """What an energy figure of this profile stands for, in words."""
        if self.power_w is None:
            return f"emulated {self.name}: the host's own meter"
        return (
            f"emulated {self.name} ({self.description}): {self.power_w:g} W x modelled device "
            f"compute time (host time x{self.prefill_slowdown:g} prefill / "
            f"x{self.decode_slowdown:g} decode, over time dilation {TIME_DILATION_PREFILL:g} / "
            f"{TIME_DILATION_DECODE:g}); a model, not a measurement"
        )


# Sources, derivations and tolerances: docs/devices.md.
DEVICE_PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile("rtx-4090", "GeForce RTX 4090, 450 W TGP", 1.0, 1.0, 250.0, 20.0),
        DeviceProfile("orin-agx", "Jetson AGX Orin 64GB, MAXN (60 W)", 7.8, 5.1, 48.0, 8.0),
        DeviceProfile("orin-nx", "Jetson Orin NX 16GB, 25 W mode", 22.0, 7.1, 20.0, 5.0),
        DeviceProfile("orin-nano", "Jetson Orin Nano 8GB, 15 W mode", 33.0, 11.2, 12.0, 4.0),
        DeviceProfile("host", "this machine as it is", 1.0, 1.0, None),
    )
}


@dataclass(frozen=True, slots=True)
class Charge:
    """What the emulated device adds to one call, and what the call costs on the device.

    Attributes:
        host_prefill_s: Host compute seconds up to the first token (Score: the whole call).
        host_decode_s: Host compute seconds after the first token.
        prefill_extra_s: Wall seconds the device adds to the prefill phase.
        decode_extra_s: Wall seconds the device adds to the decode phase.
        accounted: True when the extra time was reported but not waited (``account``).
        device_s: Modelled device compute seconds.
        energy_j: Modelled device energy; ``None`` for the host profile (real meter).
    """

    host_prefill_s: float
    host_decode_s: float
    prefill_extra_s: float
    decode_extra_s: float
    accounted: bool
    device_s: float
    energy_j: float | None

    @property
    def stretch_s(self) -> float:
        """Seconds to add to the wall clock: the extra time if accounted, else 0 (slept)."""
        return self.prefill_extra_s + self.decode_extra_s if self.accounted else 0.0

    def reading(self, scope: str) -> EnergyReading | None:
        """The modelled energy as an emulated reading over the device time; None for the host."""
        if self.energy_j is None:
            return None
        return EnergyReading(
            energy_j=self.energy_j,
            source="estimated",
            method="model_estimate",
            scope=scope,
            window_s=self.device_s,
            resolution_s=0.0,
            approximate=False,
            uncertainty_j=None,
            emulated=True,
        )


def parse_timing(value: str) -> EmulateTiming:
    """A timing mode from text (request metadata).

    Raises:
        ValueError: not ``sleep`` or ``account``.
    """
    if value == "sleep":
        return "sleep"
    if value == "account":
        return "account"
    raise ValueError(f"must be one of {', '.join(TIMING_CHOICES)}, got {value!r}")


class EmulatedEngine:
    """Wraps an Engine and stretches its compute time per phase by the device's slowdowns.

    Generation is stretched token by token: the compute before the first token by
    ``prefill_slowdown``, every later interval by ``decode_slowdown``, so streaming timestamps
    look like the slower device's. Scoring is prompt processing, stretched once after the call.
    Under ``sleep`` the extra time is waited (ending early when the request is cancelled);
    under ``account`` it is only added to the timestamps and the returned :class:`Charge`.
    """

    def __init__(
        self, engine: Engine, profile: DeviceProfile, *, timing: EmulateTiming = "sleep"
    ) -> None:
        """Wrap ``engine``.

        Raises:
            ValueError: a slowdown below 1 (the host can only be slowed).
        """
        for what, value in (
            ("prefill_slowdown", profile.prefill_slowdown),
            ("decode_slowdown", profile.decode_slowdown),
        ):
            if not value >= 1.0:
                raise ValueError(f"{what} must be >= 1, got {value}")
        self._engine = engine
        self.profile = profile
        self.timing: EmulateTiming = timing
        self.info = engine.info

    def _charge(self, host_prefill_s: float, host_decode_s: float, accounted: bool) -> Charge:
        profile = self.profile
        return Charge(
            host_prefill_s=host_prefill_s,
            host_decode_s=host_decode_s,
            prefill_extra_s=(profile.prefill_slowdown - 1.0) * host_prefill_s,
            decode_extra_s=(profile.decode_slowdown - 1.0) * host_decode_s,
            accounted=accounted,
            device_s=profile.device_s(host_prefill_s, host_decode_s),
            energy_j=profile.energy_j(host_prefill_s, host_decode_s),
        )

    def generate_charged(
        self,
        params: GenerateParams,
        on_token: TokenCallback,
        cancel: threading.Event,
        timing: EmulateTiming | None = None,
    ) -> tuple[Generation, Charge]:
        """Generate with the device's pace; returns the generation and its charge.

        Under ``account`` the chunk timestamps passed to ``on_token`` include the accounted
        stretch so far, while the returned ``first_token_s`` stays on the host clock (the
        caller adds :attr:`Charge.prefill_extra_s`).
        """
        sleep = (timing or self.timing) == "sleep"
        prefill_scale = self.profile.prefill_slowdown - 1.0
        decode_scale = self.profile.decode_slowdown - 1.0
        last = time.monotonic()
        host = [0.0, 0.0]  # compute seconds: prefill, decode
        extra = [0.0, 0.0]
        first_token_s: list[float] = []

        def add_compute(now: float) -> float:
            """Book the compute since ``last``; the extra seconds it implies."""
            phase = 1 if first_token_s else 0
            compute = max(0.0, now - last)
            host[phase] += compute
            stretch = (decode_scale if phase else prefill_scale) * compute
            extra[phase] += stretch
            return stretch

        def stretched(text: str, tokens: int, at_s: float) -> None:
            nonlocal last
            now = time.monotonic()
            stretch = add_compute(now)
            if sleep:
                if stretch > 0:
                    cancel.wait(stretch)
                emitted = time.monotonic()
            else:
                emitted = now + extra[0] + extra[1]
            if not first_token_s:
                first_token_s.append(emitted if sleep else now)
            on_token(text, tokens, emitted)
            last = time.monotonic()  # the callback's own time is not device compute

        result = self._engine.generate(params, stretched, cancel)
        tail = add_compute(time.monotonic())
        if sleep and tail > 0:
            cancel.wait(tail)
        charge = self._charge(host[0], host[1], accounted=not sleep)
        if first_token_s:
            result = replace(result, first_token_s=first_token_s[0])
        return result, charge

    def score_charged(
        self,
        prompt: str,
        choices: Sequence[str],
        chat_template: bool,
        cancel: threading.Event,
        timing: EmulateTiming | None = None,
    ) -> tuple[Scores, Charge]:
        """Score; the whole call is prompt processing, stretched by ``prefill_slowdown``."""
        sleep = (timing or self.timing) == "sleep"
        started = time.monotonic()
        scores = self._engine.score(prompt, choices, chat_template, cancel)
        charge = self._charge(max(0.0, time.monotonic() - started), 0.0, accounted=not sleep)
        if sleep and charge.prefill_extra_s > 0:
            cancel.wait(charge.prefill_extra_s)
        return scores, charge

    def generate(
        self, params: GenerateParams, on_token: TokenCallback, cancel: threading.Event
    ) -> Generation:
        """Generate in the engine's default timing mode (the Engine protocol)."""
        return self.generate_charged(params, on_token, cancel)[0]

    def score(
        self, prompt: str, choices: Sequence[str], chat_template: bool, cancel: threading.Event
    ) -> Scores:
        """Score in the engine's default timing mode (the Engine protocol)."""
        return self.score_charged(prompt, choices, chat_template, cancel)[0]

    def close(self) -> None:
        """Close the wrapped engine."""
        self._engine.close()
