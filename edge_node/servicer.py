"""gRPC adapter of the edge node: protobuf in, engine call, protobuf out.

No inference logic here. Every handler sits behind ``grpc_errors``, the single error boundary:
domain errors become their status with their message, anything unexpected becomes INTERNAL with
a generic message (the traceback goes to the node log only), so a client never sees UNKNOWN or
exception text.

On a node emulating a device (edge_node.emulation, docs/devices.md) latency stays wall-clock
(stretched, waited or accounted per the request's timing mode) and energy is the device's
modelled energy for the work, labelled estimated and emulated.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import psutil

from edge_node.boundary import grpc_errors, grpc_stream_errors
from edge_node.emulation import (
    STRETCH_METADATA_KEY,
    TIMING_METADATA_KEY,
    Charge,
    EmulatedEngine,
    EmulateTiming,
    parse_timing,
)
from edge_node.energy import EnergyReading, SourceLabel
from edge_node.engine import GenerateParams, Generation, Scores, SerializedEngine, Timed
from edge_node.errors import InvalidRequestError, RequestCancelledError
from edge_node.limits import RequestLimits, check_choices, check_prompt, check_stops
from edge_node.metrics import NodeMetrics
from protos import edge_node_pb2 as pb
from protos import edge_node_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

SOURCE_TO_PB: dict[SourceLabel, pb.EnergySource.ValueType] = {
    "measured-nvml": pb.ENERGY_SOURCE_MEASURED_NVML,
    "measured-rapl": pb.ENERGY_SOURCE_MEASURED_RAPL,
    "measured-jetson": pb.ENERGY_SOURCE_MEASURED_JETSON,
    "estimated": pb.ENERGY_SOURCE_ESTIMATED,
    "unavailable": pb.ENERGY_SOURCE_UNAVAILABLE,
}
_SOURCE_NAMES: dict[int, str] = {value: name for name, value in SOURCE_TO_PB.items()}


def energy_to_pb(reading: EnergyReading, *, emulated: bool = False) -> pb.Energy:
    """Convert an EnergyReading; an unknown figure stays absent (never 0)."""
    message = pb.Energy(
        source=SOURCE_TO_PB[reading.source],
        method=reading.method,
        scope=reading.scope,
        window_s=reading.window_s,
        resolution_s=reading.resolution_s,
        approximate=reading.approximate,
        emulated=emulated,
    )
    if reading.energy_j is not None:
        message.energy_j = reading.energy_j
    if reading.uncertainty_j is not None:
        message.uncertainty_j = reading.uncertainty_j
    return message


def latency_to_pb(
    received_s: float, timed: Timed[Any], first_token_s: float | None, charge: Charge | None = None
) -> pb.Latency:
    """Queue, prefill (to the first token), decode and total seconds from one clock.

    An accounted emulation charge (``account`` timing) adds its extra seconds per phase, so the
    breakdown is what the node would have reported had it waited them out.
    """
    first = first_token_s if first_token_s is not None else timed.finished_s
    prefill_extra_s = decode_extra_s = 0.0
    if charge is not None and charge.accounted:
        prefill_extra_s, decode_extra_s = charge.prefill_extra_s, charge.decode_extra_s
    return pb.Latency(
        queue_s=max(0.0, timed.started_s - received_s),
        prefill_s=max(0.0, first - timed.started_s) + prefill_extra_s,
        decode_s=max(0.0, timed.finished_s - first) + decode_extra_s,
        total_s=max(0.0, timed.finished_s - received_s) + prefill_extra_s + decode_extra_s,
    )


def softmax(values: Sequence[float]) -> list[float]:
    """Numerically stable softmax of log-probabilities."""
    peak = max(values)
    weights = [math.exp(v - peak) for v in values]
    total = sum(weights)
    return [w / total for w in weights]


class NodeState:
    """Mutable lifecycle flag shared by the servicer and the shutdown path (event-loop only)."""

    def __init__(self) -> None:
        self.value: pb.NodeState.ValueType = pb.NODE_STATE_SERVING


class EdgeNodeServicer(pb_grpc.EdgeNodeServicer):
    """Implements moe2.v1.EdgeNode over a SerializedEngine and its energy meter."""

    def __init__(
        self,
        engine: SerializedEngine,
        *,
        limits: RequestLimits,
        state: NodeState,
        version: str,
        emulated: bool = False,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._engine = engine
        self._metrics = metrics
        self._limits = limits
        self._state = state
        self._version = version
        self._emulated = emulated
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # prime: the first call always returns 0

    @grpc_errors
    async def GetInfo(
        self,
        request: pb.GetInfoRequest,
        context: grpc.aio.ServicerContext[pb.GetInfoRequest, pb.GetInfoResponse],
    ) -> pb.GetInfoResponse:
        model = self._engine.engine.info
        meter = self._engine.meter.info
        device_kind = meter.device_kind if model.n_gpu_layers != 0 else "cpu"
        return pb.GetInfoResponse(
            model_id=model.model_id,
            family=model.family,
            quantization=model.quantization,
            context_tokens=model.context_tokens,
            device_kind=device_kind,
            device_name=meter.device_name,
            energy_source=SOURCE_TO_PB[meter.source],
            energy_scope=meter.scope,
            energy_resolution_s=meter.resolution_s,
            energy_rejected=list(meter.rejected),
            state=self._state.value,
            engine=model.engine,
            chat_template=model.chat_template,
            n_gpu_layers=model.n_gpu_layers,
            n_threads=model.n_threads,
            max_queue_depth=self._engine.max_queue_depth,
            version=self._version,
            model_size_bytes=model.size_bytes,
            model_sha256=model.sha256,
            gpu_offload_supported=model.gpu_offload_supported,
            model_layers=model.model_layers,
            compute_device="gpu" if model.n_gpu_layers != 0 else "cpu",
        )

    def _cancel_event(self, context: grpc.aio.ServicerContext[Any, Any]) -> threading.Event:
        """An event set when the RPC ends for any reason (client cancel, deadline, done)."""
        cancel = threading.Event()

        def on_done(_: grpc.aio.ServicerContext[Any, Any]) -> None:
            cancel.set()

        context.add_done_callback(on_done)  # type: ignore[arg-type]  # stub class, not a Protocol
        return cancel

    def _emulation(
        self, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[EmulatedEngine, EmulateTiming] | None:
        """The emulated engine and this request's timing mode; None on a node that emulates nothing.

        The mode is the node's default unless the request's ``moe2-emulate-timing`` metadata
        entry names one.

        Raises:
            InvalidRequestError: the metadata entry names no mode.
        """
        engine = self._engine.engine
        if not isinstance(engine, EmulatedEngine):
            return None
        timing = engine.timing
        for key, value in context.invocation_metadata() or ():
            if key == TIMING_METADATA_KEY:
                text = value.decode() if isinstance(value, bytes) else value
                try:
                    timing = parse_timing(text)
                except ValueError as err:
                    raise InvalidRequestError(f"{TIMING_METADATA_KEY}: {err}") from None
        return engine, timing

    @staticmethod
    def _report_stretch(context: grpc.aio.ServicerContext[Any, Any], charge: Charge | None) -> None:
        """Tell the caller the seconds accounted but not spent (trailing metadata)."""
        if charge is not None:
            context.set_trailing_metadata(((STRETCH_METADATA_KEY, repr(charge.stretch_s)),))

    async def _measure(self, timed: Timed[Any], charge: Charge | None = None) -> pb.Energy:
        """Energy over the engine's own compute window; may wait for the counter to settle.

        An emulated device's energy is its modelled energy for the work (the charge), over its
        modelled device time. Otherwise cheap sources are final at once (the engine thread
        sampled them at the window's end), so the reading is first taken without waiting on
        the event loop; only a source that still needs to settle (NVML's ~100 ms counter) costs
        a worker-thread wait.
        """
        meter = self._engine.meter
        engine = self._engine.engine
        if charge is not None and isinstance(engine, EmulatedEngine):
            modelled = charge.reading(engine.profile.scope)
            if modelled is not None:
                return energy_to_pb(modelled, emulated=True)
        reading = meter.measure(timed.started_s, timed.finished_s, settle_timeout_s=0.0)
        if reading.approximate and reading.window_s >= reading.resolution_s:
            reading = await asyncio.to_thread(meter.measure, timed.started_s, timed.finished_s)
        return energy_to_pb(reading, emulated=self._emulated)

    def _observe(self, rpc: str, latency: pb.Latency, energy: pb.Energy, usage: pb.Usage) -> None:
        """Record one completed request's seconds, tokens and joules (plain values out)."""
        if self._metrics is None:
            return
        self._metrics.observe_work(
            rpc,
            queue_s=latency.queue_s,
            prefill_s=latency.prefill_s,
            decode_s=latency.decode_s,
            total_s=latency.total_s,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            energy_j=energy.energy_j if energy.HasField("energy_j") else None,
            source=_SOURCE_NAMES.get(energy.source, "unspecified"),
        )

    @grpc_stream_errors
    async def Generate(
        self,
        request: pb.GenerateRequest,
        context: grpc.aio.ServicerContext[pb.GenerateRequest, pb.GenerateResponse],
    ) -> AsyncIterator[pb.GenerateResponse]:
        received_s = time.monotonic()
        check_prompt(request.prompt, self._limits)
        check_stops(request.stop, self._limits)
        max_tokens = (
            request.max_tokens
            if request.HasField("max_tokens")
            else self._limits.default_max_tokens
        )
        if max_tokens <= 0:
            raise InvalidRequestError(f"max_tokens: must be positive, got {max_tokens}")
        temperature = request.temperature if request.HasField("temperature") else 0.0
        if not (0.0 <= temperature <= 10.0) or math.isnan(temperature):
            raise InvalidRequestError(f"temperature: must be in [0, 10], got {temperature}")
        params = GenerateParams(
            prompt=request.prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=request.seed if request.HasField("seed") else None,
            stop=tuple(s for s in request.stop if s),
            raw=request.raw,
        )
        cancel = self._cancel_event(context)
        emulation = self._emulation(context)
        loop = asyncio.get_running_loop()
        # Tokens are handed over through a locked list and one wake-up per batch: when the loop
        # falls behind, tokens coalesce into one message instead of one wake-up per token.
        pending: list[tuple[str, int, float]] = []
        lock = threading.Lock()
        wake = asyncio.Event()
        finished = False

        def on_token(text: str, tokens: int, at_s: float) -> None:  # engine thread
            with lock:
                pending.append((text, tokens, at_s))
                first = len(pending) == 1
            if first:
                loop.call_soon_threadsafe(wake.set)

        def compute(event: threading.Event) -> tuple[Generation, Charge | None]:  # engine thread
            if emulation is None:
                return self._engine.engine.generate(params, on_token, event), None
            engine, timing = emulation
            return engine.generate_charged(params, on_token, event, timing)

        async def produce() -> Timed[tuple[Generation, Charge | None]]:
            nonlocal finished
            try:
                return await self._engine.run(compute, cancel)
            finally:
                # The wake-ups of the last tokens were posted before the result (FIFO), so
                # every token is in `pending` when this runs.
                finished = True
                wake.set()

        task = asyncio.ensure_future(produce())
        try:
            while True:
                await wake.wait()
                wake.clear()
                with lock:
                    batch = pending[:]
                    pending.clear()
                if batch:
                    yield pb.GenerateResponse(
                        chunk=pb.TokenChunk(
                            text="".join(text for text, _, _ in batch),
                            tokens=sum(tokens for _, tokens, _ in batch),
                            elapsed_s=batch[-1][2] - received_s,
                        )
                    )
                if finished and not pending:
                    break
            timed = await task
        finally:
            task.cancel()
        generation, charge = timed.value
        if generation.finish_reason == "cancelled":
            raise RequestCancelledError("generation cancelled")
        self._report_stretch(context, charge)
        usage = pb.Usage(
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
        )
        latency = latency_to_pb(received_s, timed, generation.first_token_s, charge)
        energy = await self._measure(timed, charge)
        self._observe("Generate", latency, energy, usage)
        yield pb.GenerateResponse(
            result=pb.GenerateResult(
                text=generation.text,
                finish_reason=generation.finish_reason,
                usage=usage,
                latency=latency,
                energy=energy,
            )
        )

    @grpc_errors
    async def Score(
        self,
        request: pb.ScoreRequest,
        context: grpc.aio.ServicerContext[pb.ScoreRequest, pb.ScoreResponse],
    ) -> pb.ScoreResponse:
        received_s = time.monotonic()
        check_prompt(request.prompt, self._limits)
        choices = list(request.choices)
        check_choices(choices, self._limits)
        cancel = self._cancel_event(context)
        emulation = self._emulation(context)
        prompt, chat_template = request.prompt, request.chat_template

        def compute(event: threading.Event) -> tuple[Scores, Charge | None]:  # engine thread
            if emulation is None:
                return self._engine.engine.score(prompt, choices, chat_template, event), None
            engine, timing = emulation
            return engine.score_charged(prompt, choices, chat_template, event, timing)

        timed = await self._engine.run(compute, cancel)
        scores, charge = timed.value
        self._report_stretch(context, charge)
        usage = pb.Usage(
            prompt_tokens=scores.prompt_tokens, completion_tokens=scores.evaluated_tokens
        )
        latency = latency_to_pb(received_s, timed, None, charge)
        energy = await self._measure(timed, charge)
        self._observe("Score", latency, energy, usage)
        return pb.ScoreResponse(
            logprobs=list(scores.logprobs),
            probs=softmax(scores.logprobs),
            choice_tokens=list(scores.choice_tokens),
            usage=usage,
            latency=latency,
            energy=energy,
        )

    @grpc_stream_errors
    async def StreamTelemetry(
        self,
        request: pb.StreamTelemetryRequest,
        context: grpc.aio.ServicerContext[pb.StreamTelemetryRequest, pb.StreamTelemetryResponse],
    ) -> AsyncIterator[pb.StreamTelemetryResponse]:
        interval_s = request.interval_s if request.HasField("interval_s") else 1.0
        if not (0.05 <= interval_s <= 60.0):
            raise InvalidRequestError(f"interval_s: must be in [0.05, 60], got {interval_s}")
        source = SOURCE_TO_PB[self._engine.meter.info.source]
        while self._state.value == pb.NODE_STATE_SERVING:
            sample = await asyncio.to_thread(self._engine.meter.sample)
            message = pb.StreamTelemetryResponse(
                timestamp_s=sample.timestamp_s,
                energy_source=source,
                cpu_utilization=self._process.cpu_percent(None) / 100.0,
                memory_rss_bytes=self._process.memory_info().rss,
                queue_depth=self._engine.depth,
                requests_total=self._engine.completed,
            )
            if sample.power_w is not None:
                message.power_w = sample.power_w
            if sample.energy_total_j is not None:
                message.energy_total_j = sample.energy_total_j
            if sample.gpu_utilization is not None:
                message.gpu_utilization = sample.gpu_utilization
            yield message
            await asyncio.sleep(interval_s)
