"""What a node takes and reports: its Generate input, the energy figure, latency, results, info.

These frozen dataclasses are the one shape of each concept from the meter to the SDK: the
energy meters produce ``EnergyReading``; ``edge_node.node`` builds results from them;
``edge_node.wire`` is the only place they become protobuf and back; the node SDK
(``edge_node.client``) and the orchestrator hand the same objects to their callers. Nothing
here imports gRPC or protobuf, so the meters, the node and the orchestrator core stay
transport-agnostic. Units are in every field name.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

SourceLabel = Literal[
    "measured-nvml",
    "measured-rapl",
    "measured-jetson",
    "measured-mixed",
    "estimated",
    "unavailable",
    "unspecified",
]
"""Where an energy figure comes from. Only the ``measured-*`` labels are measurements;
``measured-mixed`` is a sum of measured parts (a partially offloaded model: GPU and CPU, each in
``EnergyReading.parts``); ``unspecified`` is what a wire message without a source decodes to
(no meter produces it)."""

Method = Literal["counter", "power_integration", "model_estimate", "sum_of_parts", "unavailable"]
"""How a figure was obtained: a hardware energy counter, sampled power integrated over time,
a power model (not a measurement), the sum of ``parts``, or nothing."""


@dataclass(frozen=True, slots=True)
class EnergyReading:
    """Energy of one time window (a request's compute window), with where it came from.

    Attributes:
        energy_j: Joules in the window; ``None`` means unknown (never reported as 0).
        source: Label of the meter that produced it.
        method: How it was obtained (one of ``Method`` for every figure this project makes;
            a plain string because a figure decoded from the wire carries what the node sent).
        scope: What hardware it covers, in words.
        window_s: Length of the window in seconds.
        resolution_s: Counter update period / sampler period of the meter, in seconds.
        approximate: True when ``window_s < resolution_s`` or the settle wait timed out.
        uncertainty_j: Rough error bound in joules, ``None`` where there is no basis for one
            (model estimates, unknown energy).
        emulated: True when the figure is an emulated device's model (docs/devices.md).
        idle_power_w: The device's idle power the node measured (``edge_node.energy.idle``),
            watts; ``None`` when unknown (estimates, emulated figures, no idle window yet).
        energy_above_idle_j: ``energy_j`` less ``idle_power_w * window_s``, never below 0:
            what the request cost beyond keeping the device on; ``None`` when either is unknown.
        parts: For a partially offloaded model, the figures this one sums (the GPU's and the
            CPU's, each with its own source and scope); empty otherwise.
    """

    energy_j: float | None
    source: SourceLabel
    method: str
    scope: str
    window_s: float
    resolution_s: float
    approximate: bool
    uncertainty_j: float | None
    emulated: bool = False
    idle_power_w: float | None = None
    energy_above_idle_j: float | None = None
    parts: tuple[EnergyReading, ...] = ()

    @property
    def measured(self) -> bool:
        """True only for hardware measurements (not estimates, not emulated)."""
        return self.source.startswith("measured-") and not self.emulated

    @property
    def joules(self) -> float | None:
        """Deprecated alias of ``energy_j`` (the SDK's ``Energy.joules``); removed next release."""
        warnings.warn("Energy.joules is deprecated; use energy_j", DeprecationWarning, stacklevel=2)
        return self.energy_j

    def to_json(self) -> dict[str, Any]:
        """The ``energy`` object of the CLIs' ``--json`` documents and the HTTP API.

        Its keys are a published contract (docs/architecture.md §3): ``joules`` first, then
        the other fields under their own names.
        """
        document = asdict(self)
        document["parts"] = [part.to_json() for part in self.parts]
        return {"joules": document.pop("energy_j"), **document}


@dataclass(frozen=True, slots=True)
class Latency:
    """Server-side latency breakdown of one request, in seconds."""

    queue_s: float
    prefill_s: float
    decode_s: float
    total_s: float


@dataclass(frozen=True, slots=True)
class TokenChunk:
    """Streamed text with its token count and time since the request was received."""

    text: str
    tokens: int
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class GenerateResult:
    """The final result of one generation."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    latency: Latency
    energy: EnergyReading
    chunks: tuple[TokenChunk, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The ``edge-node generate --json`` document (docs/architecture.md §3)."""
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "completion_tokens": self.completion_tokens,
            "prompt_tokens": self.prompt_tokens,
            "latency": asdict(self.latency),
            "energy": self.energy.to_json(),
        }


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """Log-probabilities (nats) of candidate continuations and their softmax.

    ``evaluated_tokens`` is the tokens the node ran for the choices (the wire's
    ``usage.completion_tokens``).
    """

    choices: tuple[str, ...]
    logprobs: tuple[float, ...]
    probs: tuple[float, ...]
    choice_tokens: tuple[int, ...]
    prompt_tokens: int
    latency: Latency
    energy: EnergyReading
    evaluated_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        """The ``edge-node score --json`` document (docs/architecture.md §3)."""
        return {
            "choices": list(self.choices),
            "logprobs": list(self.logprobs),
            "probs": list(self.probs),
            "choice_tokens": list(self.choice_tokens),
            "prompt_tokens": self.prompt_tokens,
            "latency": asdict(self.latency),
            "energy": self.energy.to_json(),
        }


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What a node serves (GetInfo)."""

    model_id: str
    family: str
    quantization: str
    context_tokens: int
    device_kind: str
    device_name: str
    energy_source: SourceLabel
    energy_scope: str
    energy_resolution_s: float
    energy_rejected: tuple[str, ...]
    state: str
    engine: str
    chat_template: bool
    n_gpu_layers: int
    n_threads: int
    max_queue_depth: int
    version: str
    model_size_bytes: int
    model_sha256: str
    gpu_offload_supported: bool = False
    model_layers: int = 0
    compute_device: str = ""


@dataclass(frozen=True, slots=True)
class TelemetrySample:
    """One telemetry sample; absent figures are None."""

    timestamp_s: float
    power_w: float | None
    energy_total_j: float | None
    energy_source: SourceLabel
    cpu_utilization: float
    memory_rss_bytes: int
    queue_depth: int
    requests_total: int
    gpu_utilization: float | None


@dataclass(frozen=True, slots=True)
class GenerateInput:
    """One Generate request as sent; ``None`` leaves a field to the node (which validates it)."""

    prompt: str
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    raw: bool = False
    request_id: str = ""
