"""Emulated device heterogeneity for the testbed (never a measurement).

The paper's fleet mixes Jetson Orin boards and RTX 4090s; on one machine the testbed emulates
that honestly: a device profile stretches each request's compute time by ``compute_scale``
(the engine thread sleeps, so the node is busy exactly as long as the slower device would be,
and queueing behaves accordingly) and charges ``power_w`` watts over the stretched window.
Every energy figure of an emulated node is labelled ``estimated`` and ``emulated``.

Only slowing down is possible, so the profiles are relative to this host: the fastest profile
runs at the host's speed. The figures are illustrative orders of magnitude for small quantised
models, not a hardware model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from edge_node.engine import Engine, GenerateParams, Generation, Scores, TokenCallback


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """How an emulated device differs from this host."""

    name: str
    compute_scale: float  # >= 1: compute seconds on the device per compute second here
    power_w: float  # modeled board power while computing
    description: str


DEVICE_PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile("rtx-4090", 1.0, 300.0, "desktop GPU: fastest, most power-hungry"),
        DeviceProfile("orin-agx", 1.6, 40.0, "Jetson AGX Orin (MAXN): mid speed, mid power"),
        DeviceProfile("orin-nano", 3.0, 12.0, "Jetson Orin Nano: slow and frugal"),
        DeviceProfile("host", 1.0, 0.0, "this machine as it is (energy from the real meter)"),
    )
}


class EmulatedEngine:
    """Wraps an Engine and stretches its compute time by ``compute_scale``.

    Generation is stretched token by token (each token is delayed by ``scale - 1`` times the
    time it took), so streaming timestamps look like the slower device's; scoring is stretched
    once after the call. Waits end early when the request is cancelled.
    """

    def __init__(self, engine: Engine, compute_scale: float) -> None:
        if not compute_scale >= 1.0:
            raise ValueError(f"compute_scale must be >= 1, got {compute_scale}")
        self._engine = engine
        self._extra = compute_scale - 1.0
        self.info = engine.info

    def generate(
        self, params: GenerateParams, on_token: TokenCallback, cancel: threading.Event
    ) -> Generation:
        """Generate, delaying every emitted chunk in proportion to its compute time."""
        last = time.monotonic()
        first_token_s: list[float] = []

        def stretched(text: str, tokens: int, at_s: float) -> None:
            nonlocal last
            now = time.monotonic()
            if self._extra > 0:
                cancel.wait(self._extra * (now - last))
            last = time.monotonic()
            if not first_token_s:
                first_token_s.append(last)
            on_token(text, tokens, last)

        result = self._engine.generate(params, stretched, cancel)
        if first_token_s:
            return Generation(
                result.text,
                result.prompt_tokens,
                result.completion_tokens,
                result.finish_reason,
                first_token_s[0],
            )
        return result

    def score(
        self, prompt: str, choices: Sequence[str], chat_template: bool, cancel: threading.Event
    ) -> Scores:
        """Score, then wait ``scale - 1`` times the compute time."""
        started = time.monotonic()
        scores = self._engine.score(prompt, choices, chat_template, cancel)
        if self._extra > 0:
            cancel.wait(self._extra * (time.monotonic() - started))
        return scores

    def close(self) -> None:
        """Close the wrapped engine."""
        self._engine.close()
