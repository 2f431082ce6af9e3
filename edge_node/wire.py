"""The EdgeNode wire schema's messages to and from the node's Python values (edge_node.results).

The only place node protobuf is converted: the servicer (``edge_node.servicer``) and the SDK
(``edge_node.client``) call these, and so does the orchestrator where it relays a node's figures.
Absent optional fields decode to ``None``, and ``None`` stays absent (never 0): a protobuf
constructor leaves a field given as ``None`` unset, so the converters pass optional values
straight through. Enum values this version does not know decode to ``"unspecified"``.
"""

from __future__ import annotations

from collections.abc import Sequence

from edge_node.results import (
    EnergyReading,
    GenerateInput,
    GenerateResult,
    Latency,
    NodeInfo,
    ScoreResult,
    SourceLabel,
    TelemetrySample,
    TokenChunk,
)
from protos import edge_node_pb2 as pb

SOURCE_TO_PB: dict[SourceLabel, pb.EnergySource.ValueType] = {
    "measured-nvml": pb.ENERGY_SOURCE_MEASURED_NVML,
    "measured-rapl": pb.ENERGY_SOURCE_MEASURED_RAPL,
    "measured-jetson": pb.ENERGY_SOURCE_MEASURED_JETSON,
    "measured-mixed": pb.ENERGY_SOURCE_MEASURED_MIXED,
    "estimated": pb.ENERGY_SOURCE_ESTIMATED,
    "unavailable": pb.ENERGY_SOURCE_UNAVAILABLE,
    "unspecified": pb.ENERGY_SOURCE_UNSPECIFIED,
}
"""The one energy-source table: label <-> wire enum (``SOURCE_FROM_PB`` is its inverse)."""
SOURCE_FROM_PB: dict[int, SourceLabel] = {value: name for name, value in SOURCE_TO_PB.items()}

STATE_TO_PB: dict[str, pb.NodeState.ValueType] = {
    "unspecified": pb.NODE_STATE_UNSPECIFIED,
    "loading": pb.NODE_STATE_LOADING,
    "serving": pb.NODE_STATE_SERVING,
    "draining": pb.NODE_STATE_DRAINING,
}
STATE_FROM_PB: dict[int, str] = {value: name for name, value in STATE_TO_PB.items()}


def source_to_pb(label: SourceLabel) -> pb.EnergySource.ValueType:
    """The wire enum of a source label."""
    return SOURCE_TO_PB[label]


def source_from_pb(value: int) -> SourceLabel:
    """The label of a wire enum value; an unknown value is ``"unspecified"``."""
    return SOURCE_FROM_PB.get(value, "unspecified")


def energy_to_pb(reading: EnergyReading) -> pb.Energy:
    """An energy figure on the wire; an unknown figure stays absent (never 0)."""
    return pb.Energy(
        energy_j=reading.energy_j,
        source=source_to_pb(reading.source),
        method=reading.method,
        scope=reading.scope,
        window_s=reading.window_s,
        resolution_s=reading.resolution_s,
        approximate=reading.approximate,
        uncertainty_j=reading.uncertainty_j,
        emulated=reading.emulated,
        idle_power_w=reading.idle_power_w,
        energy_above_idle_j=reading.energy_above_idle_j,
        parts=[energy_to_pb(part) for part in reading.parts],
    )


def energy_from_pb(message: pb.Energy) -> EnergyReading:
    """An energy figure from the wire, keeping absent figures absent."""
    return EnergyReading(
        energy_j=message.energy_j if message.HasField("energy_j") else None,
        source=source_from_pb(message.source),
        method=message.method,
        scope=message.scope,
        window_s=message.window_s,
        resolution_s=message.resolution_s,
        approximate=message.approximate,
        uncertainty_j=message.uncertainty_j if message.HasField("uncertainty_j") else None,
        emulated=message.emulated,
        idle_power_w=message.idle_power_w if message.HasField("idle_power_w") else None,
        energy_above_idle_j=(
            message.energy_above_idle_j if message.HasField("energy_above_idle_j") else None
        ),
        parts=tuple(energy_from_pb(part) for part in message.parts),
    )


def latency_to_pb(latency: Latency) -> pb.Latency:
    """A latency breakdown on the wire."""
    return pb.Latency(
        queue_s=latency.queue_s,
        prefill_s=latency.prefill_s,
        decode_s=latency.decode_s,
        total_s=latency.total_s,
    )


def latency_from_pb(message: pb.Latency) -> Latency:
    """A latency breakdown from the wire."""
    return Latency(message.queue_s, message.prefill_s, message.decode_s, message.total_s)


def chunk_to_pb(chunk: TokenChunk) -> pb.GenerateResponse:
    """One streamed chunk as a Generate stream message."""
    return pb.GenerateResponse(
        chunk=pb.TokenChunk(text=chunk.text, tokens=chunk.tokens, elapsed_s=chunk.elapsed_s)
    )


def chunk_from_pb(message: pb.TokenChunk) -> TokenChunk:
    """One streamed chunk from the wire."""
    return TokenChunk(message.text, message.tokens, message.elapsed_s)


def generate_result_to_pb(result: GenerateResult) -> pb.GenerateResponse:
    """The final Generate stream message (the chunks went before it)."""
    return pb.GenerateResponse(
        result=pb.GenerateResult(
            text=result.text,
            finish_reason=result.finish_reason,
            usage=pb.Usage(
                prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens
            ),
            latency=latency_to_pb(result.latency),
            energy=energy_to_pb(result.energy),
        )
    )


def generate_result_from_pb(
    message: pb.GenerateResult, chunks: Sequence[TokenChunk] = ()
) -> GenerateResult:
    """The final result of a Generate stream, with the chunks that came before it."""
    return GenerateResult(
        text=message.text,
        finish_reason=message.finish_reason,
        prompt_tokens=message.usage.prompt_tokens,
        completion_tokens=message.usage.completion_tokens,
        latency=latency_from_pb(message.latency),
        energy=energy_from_pb(message.energy),
        chunks=tuple(chunks),
    )


def score_to_pb(result: ScoreResult) -> pb.ScoreResponse:
    """A ScoreResponse (the choices themselves are the caller's, not sent back)."""
    return pb.ScoreResponse(
        logprobs=list(result.logprobs),
        probs=list(result.probs),
        choice_tokens=list(result.choice_tokens),
        usage=pb.Usage(
            prompt_tokens=result.prompt_tokens, completion_tokens=result.evaluated_tokens
        ),
        latency=latency_to_pb(result.latency),
        energy=energy_to_pb(result.energy),
    )


def score_result(choices: Sequence[str], message: pb.ScoreResponse) -> ScoreResult:
    """A ScoreResponse with the choices it scored."""
    return ScoreResult(
        choices=tuple(choices),
        logprobs=tuple(message.logprobs),
        probs=tuple(message.probs),
        choice_tokens=tuple(message.choice_tokens),
        prompt_tokens=message.usage.prompt_tokens,
        latency=latency_from_pb(message.latency),
        energy=energy_from_pb(message.energy),
        evaluated_tokens=message.usage.completion_tokens,
    )


def node_info_to_pb(info: NodeInfo) -> pb.GetInfoResponse:
    """A GetInfoResponse."""
    return pb.GetInfoResponse(
        model_id=info.model_id,
        family=info.family,
        quantization=info.quantization,
        context_tokens=info.context_tokens,
        device_kind=info.device_kind,
        device_name=info.device_name,
        energy_source=source_to_pb(info.energy_source),
        energy_scope=info.energy_scope,
        energy_resolution_s=info.energy_resolution_s,
        energy_rejected=list(info.energy_rejected),
        state=STATE_TO_PB.get(info.state, pb.NODE_STATE_UNSPECIFIED),
        engine=info.engine,
        chat_template=info.chat_template,
        n_gpu_layers=info.n_gpu_layers,
        n_threads=info.n_threads,
        max_queue_depth=info.max_queue_depth,
        version=info.version,
        model_size_bytes=info.model_size_bytes,
        model_sha256=info.model_sha256,
        gpu_offload_supported=info.gpu_offload_supported,
        model_layers=info.model_layers,
        compute_device=info.compute_device,
    )


def node_info_from_pb(m: pb.GetInfoResponse) -> NodeInfo:
    """What a node serves, from its GetInfoResponse."""
    return NodeInfo(
        m.model_id,
        m.family,
        m.quantization,
        m.context_tokens,
        m.device_kind,
        m.device_name,
        source_from_pb(m.energy_source),
        m.energy_scope,
        m.energy_resolution_s,
        tuple(m.energy_rejected),
        STATE_FROM_PB.get(m.state, "unspecified"),
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


def telemetry_to_pb(sample: TelemetrySample) -> pb.StreamTelemetryResponse:
    """One StreamTelemetry message; unknown figures stay absent."""
    return pb.StreamTelemetryResponse(
        timestamp_s=sample.timestamp_s,
        power_w=sample.power_w,
        energy_total_j=sample.energy_total_j,
        energy_source=source_to_pb(sample.energy_source),
        cpu_utilization=sample.cpu_utilization,
        memory_rss_bytes=sample.memory_rss_bytes,
        queue_depth=sample.queue_depth,
        requests_total=sample.requests_total,
        gpu_utilization=sample.gpu_utilization,
    )


def telemetry_from_pb(m: pb.StreamTelemetryResponse) -> TelemetrySample:
    """One telemetry sample from the wire."""
    return TelemetrySample(
        m.timestamp_s,
        m.power_w if m.HasField("power_w") else None,
        m.energy_total_j if m.HasField("energy_total_j") else None,
        source_from_pb(m.energy_source),
        m.cpu_utilization,
        m.memory_rss_bytes,
        m.queue_depth,
        m.requests_total,
        m.gpu_utilization if m.HasField("gpu_utilization") else None,
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
    return pb.GenerateRequest(
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        stop=list(stop),
        raw=raw,
        request_id=request_id,
    )


def score_request(
    prompt: str, choices: Sequence[str], *, chat_template: bool = False, request_id: str = ""
) -> pb.ScoreRequest:
    """Build a ScoreRequest."""
    return pb.ScoreRequest(
        prompt=prompt, choices=list(choices), chat_template=chat_template, request_id=request_id
    )


def generate_input_from_pb(request: pb.GenerateRequest) -> GenerateInput:
    """A GenerateRequest as the node sees it, absent fields as None."""
    return GenerateInput(
        prompt=request.prompt,
        max_tokens=request.max_tokens if request.HasField("max_tokens") else None,
        temperature=request.temperature if request.HasField("temperature") else None,
        seed=request.seed if request.HasField("seed") else None,
        stop=tuple(request.stop),
        raw=request.raw,
        request_id=request.request_id,
    )
