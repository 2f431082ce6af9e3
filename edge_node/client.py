"""Clients of the EdgeNode service, async and sync, returning typed results.

Protobuf stops here: callers get frozen dataclasses. Errors are ``grpc.RpcError`` /
``grpc.aio.AioRpcError`` with the node's status code; branch on ``.code()``. TLS and the bearer
token come from ``security`` (``edge_node.security.ClientSecurity``; docs/security.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

import grpc
from typing_extensions import Self  # noqa: UP035 (typing.Self is 3.11+; the node supports 3.10)

from edge_node import transport
from edge_node.loop_thread import BlockingFacade
from edge_node.security import ClientSecurity, open_channel
from protos import edge_node_pb2 as pb
from protos import edge_node_pb2_grpc as pb_grpc

SOURCE_NAMES: dict[int, str] = {
    pb.ENERGY_SOURCE_UNSPECIFIED: "unspecified",
    pb.ENERGY_SOURCE_MEASURED_NVML: "measured-nvml",
    pb.ENERGY_SOURCE_MEASURED_RAPL: "measured-rapl",
    pb.ENERGY_SOURCE_MEASURED_JETSON: "measured-jetson",
    pb.ENERGY_SOURCE_ESTIMATED: "estimated",
    pb.ENERGY_SOURCE_UNAVAILABLE: "unavailable",
}
STATE_NAMES: dict[int, str] = {
    pb.NODE_STATE_UNSPECIFIED: "unspecified",
    pb.NODE_STATE_LOADING: "loading",
    pb.NODE_STATE_SERVING: "serving",
    pb.NODE_STATE_DRAINING: "draining",
}


@dataclass(frozen=True, slots=True)
class Latency:
    """Server-side latency breakdown of one request, in seconds."""

    queue_s: float
    prefill_s: float
    decode_s: float
    total_s: float

    @classmethod
    def from_pb(cls, message: pb.Latency) -> Latency:
        """Convert from the wire."""
        return cls(message.queue_s, message.prefill_s, message.decode_s, message.total_s)


@dataclass(frozen=True, slots=True)
class Energy:
    """Energy of one request; ``joules`` is None when unknown (never 0 for unknown)."""

    joules: float | None
    source: str
    method: str
    scope: str
    window_s: float
    resolution_s: float
    approximate: bool
    uncertainty_j: float | None
    emulated: bool

    @property
    def measured(self) -> bool:
        """True only for hardware measurements (not estimates, not emulated)."""
        return self.source.startswith("measured-") and not self.emulated

    @classmethod
    def from_pb(cls, message: pb.Energy) -> Energy:
        """Convert from the wire, keeping absent figures absent."""
        return cls(
            joules=message.energy_j if message.HasField("energy_j") else None,
            source=SOURCE_NAMES.get(message.source, "unspecified"),
            method=message.method,
            scope=message.scope,
            window_s=message.window_s,
            resolution_s=message.resolution_s,
            approximate=message.approximate,
            uncertainty_j=message.uncertainty_j if message.HasField("uncertainty_j") else None,
            emulated=message.emulated,
        )


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
    energy: Energy
    chunks: tuple[TokenChunk, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The ``edge-node generate --json`` document (docs/architecture.md §3)."""
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "completion_tokens": self.completion_tokens,
            "prompt_tokens": self.prompt_tokens,
            "latency": asdict(self.latency),
            "energy": asdict(self.energy),
        }


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """Log-probabilities (nats) of candidate continuations and their softmax."""

    choices: tuple[str, ...]
    logprobs: tuple[float, ...]
    probs: tuple[float, ...]
    choice_tokens: tuple[int, ...]
    prompt_tokens: int
    latency: Latency
    energy: Energy

    def to_json(self) -> dict[str, Any]:
        """The ``edge-node score --json`` document (docs/architecture.md §3)."""
        return {
            "choices": list(self.choices),
            "logprobs": list(self.logprobs),
            "probs": list(self.probs),
            "choice_tokens": list(self.choice_tokens),
            "prompt_tokens": self.prompt_tokens,
            "latency": asdict(self.latency),
            "energy": asdict(self.energy),
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
    energy_source: str
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

    @classmethod
    def from_pb(cls, m: pb.GetInfoResponse) -> NodeInfo:
        """Convert from the wire."""
        return cls(
            m.model_id,
            m.family,
            m.quantization,
            m.context_tokens,
            m.device_kind,
            m.device_name,
            SOURCE_NAMES.get(m.energy_source, "unspecified"),
            m.energy_scope,
            m.energy_resolution_s,
            tuple(m.energy_rejected),
            STATE_NAMES.get(m.state, "unspecified"),
            m.engine,
            m.chat_template,
            m.n_gpu_layers,
            m.n_threads,
            m.max_queue_depth,
            m.version,
            m.model_size_bytes,
            m.model_sha256,
            m.gpu_offload_supported,
            m.model_layers,
            m.compute_device,
        )


@dataclass(frozen=True, slots=True)
class TelemetrySample:
    """One telemetry sample; absent figures are None."""

    timestamp_s: float
    power_w: float | None
    energy_total_j: float | None
    energy_source: str
    cpu_utilization: float
    memory_rss_bytes: int
    queue_depth: int
    requests_total: int
    gpu_utilization: float | None

    @classmethod
    def from_pb(cls, m: pb.StreamTelemetryResponse) -> TelemetrySample:
        """Convert from the wire."""
        return cls(
            m.timestamp_s,
            m.power_w if m.HasField("power_w") else None,
            m.energy_total_j if m.HasField("energy_total_j") else None,
            SOURCE_NAMES.get(m.energy_source, "unspecified"),
            m.cpu_utilization,
            m.memory_rss_bytes,
            m.queue_depth,
            m.requests_total,
            m.gpu_utilization if m.HasField("gpu_utilization") else None,
        )


def score_result(choices: Sequence[str], m: pb.ScoreResponse) -> ScoreResult:
    """Convert a ScoreResponse."""
    return ScoreResult(
        choices=tuple(choices),
        logprobs=tuple(m.logprobs),
        probs=tuple(m.probs),
        choice_tokens=tuple(m.choice_tokens),
        prompt_tokens=m.usage.prompt_tokens,
        latency=Latency.from_pb(m.latency),
        energy=Energy.from_pb(m.energy),
    )


def generate_request(
    prompt: str,
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
    raw: bool = False,
    request_id: str = "",
) -> pb.GenerateRequest:
    """Build a GenerateRequest; None leaves a field to the node's default."""
    request = pb.GenerateRequest(prompt=prompt, stop=list(stop), raw=raw, request_id=request_id)
    if max_tokens is not None:
        request.max_tokens = max_tokens
    if temperature is not None:
        request.temperature = temperature
    if seed is not None:
        request.seed = seed
    return request


class AsyncEdgeNodeClient:
    """Async client over one long-lived channel. Use ``async with``, or call ``close()``."""

    def __init__(
        self,
        target: str,
        *,
        channel: grpc.aio.Channel | None = None,
        security: ClientSecurity | None = None,
    ) -> None:
        self.target = target
        self._channel = channel or open_channel(target, security, transport.CHANNEL_OPTIONS)
        self._stub = pb_grpc.EdgeNodeStub(self._channel)

    @property
    def channel(self) -> grpc.aio.Channel:
        """The long-lived channel (shared with e.g. a health stub)."""
        return self._channel

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def info(self, *, timeout_s: float | None = 10.0) -> NodeInfo:
        """GetInfo."""
        return NodeInfo.from_pb(await self._stub.GetInfo(pb.GetInfoRequest(), timeout=timeout_s))

    async def stream(
        self, prompt: str, *, timeout_s: float | None = None, **options: Any
    ) -> AsyncIterator[TokenChunk | GenerateResult]:
        """Generate, yielding token chunks as they arrive and the result last."""
        chunks: list[TokenChunk] = []
        call = self._stub.Generate(generate_request(prompt, **options), timeout=timeout_s)
        async for message in call:
            if message.HasField("chunk"):
                chunk = TokenChunk(
                    message.chunk.text, message.chunk.tokens, message.chunk.elapsed_s
                )
                chunks.append(chunk)
                yield chunk
            elif message.HasField("result"):
                r = message.result
                yield GenerateResult(
                    text=r.text,
                    finish_reason=r.finish_reason,
                    prompt_tokens=r.usage.prompt_tokens,
                    completion_tokens=r.usage.completion_tokens,
                    latency=Latency.from_pb(r.latency),
                    energy=Energy.from_pb(r.energy),
                    chunks=tuple(chunks),
                )

    async def generate(
        self,
        prompt: str,
        *,
        timeout_s: float | None = None,
        on_chunk: Callable[[TokenChunk], None] | None = None,
        **options: Any,
    ) -> GenerateResult:
        """Generate and return the final result (chunks included).

        ``on_chunk`` is called on the event loop with every token chunk as it arrives.
        """
        async for event in self.stream(prompt, timeout_s=timeout_s, **options):
            if isinstance(event, GenerateResult):
                return event
            if on_chunk is not None:
                on_chunk(event)
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.INTERNAL,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details="the node closed the stream without a result",
        )

    async def score(
        self,
        prompt: str,
        choices: Sequence[str],
        *,
        chat_template: bool = False,
        timeout_s: float | None = None,
        request_id: str = "",
    ) -> ScoreResult:
        """Score candidate continuations."""
        request = pb.ScoreRequest(
            prompt=prompt, choices=list(choices), chat_template=chat_template, request_id=request_id
        )
        return score_result(choices, await self._stub.Score(request, timeout=timeout_s))

    async def telemetry(
        self, *, interval_s: float = 1.0, timeout_s: float | None = None
    ) -> AsyncIterator[TelemetrySample]:
        """Stream telemetry samples until the caller stops iterating or the timeout passes."""
        call = self._stub.StreamTelemetry(
            pb.StreamTelemetryRequest(interval_s=interval_s), timeout=timeout_s
        )
        try:
            async for message in call:
                yield TelemetrySample.from_pb(message)
        finally:
            call.cancel()


class EdgeNodeClient(BlockingFacade[AsyncEdgeNodeClient]):
    """Blocking client: runs an AsyncEdgeNodeClient on a private event-loop thread."""

    def __init__(self, target: str, *, security: ClientSecurity | None = None) -> None:
        self.target = target

        async def make() -> AsyncEdgeNodeClient:
            return AsyncEdgeNodeClient(target, security=security)

        super().__init__(make)

    def info(self, *, timeout_s: float | None = 10.0) -> NodeInfo:
        """GetInfo."""
        return self._run(self._client.info(timeout_s=timeout_s))

    def generate(
        self, prompt: str, *, timeout_s: float | None = None, **options: Any
    ) -> GenerateResult:
        """Generate and return the final result."""
        return self._run(self._client.generate(prompt, timeout_s=timeout_s, **options))

    def score(
        self,
        prompt: str,
        choices: Sequence[str],
        *,
        chat_template: bool = False,
        timeout_s: float | None = None,
    ) -> ScoreResult:
        """Score candidate continuations."""
        return self._run(
            self._client.score(prompt, choices, chat_template=chat_template, timeout_s=timeout_s)
        )

    def telemetry(self, *, interval_s: float = 1.0, count: int = 1) -> list[TelemetrySample]:
        """Collect ``count`` telemetry samples from one stream, interval_s apart."""
        return self._run(self._take(interval_s, count))

    async def _take(self, interval_s: float, count: int) -> list[TelemetrySample]:
        samples: list[TelemetrySample] = []
        async for sample in self._client.telemetry(interval_s=interval_s):
            samples.append(sample)
            if len(samples) >= count:
                break
        return samples
