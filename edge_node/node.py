"""The node's work, transport-agnostic: validate, run on the engine, measure, report.

``Node`` answers GetInfo, Generate, Score and StreamTelemetry in plain values
(``edge_node.results``); ``edge_node.servicer`` is the thin gRPC adapter over it (protobuf via
``edge_node.wire``, errors via ``edge_node.boundary``, deadline, cancellation and metadata from
the RPC context) — the split the orchestrator has between ``core`` and ``servicer``.

Runs on the event loop. The engine runs on its one-thread executor (``SerializedEngine``);
blocking meter reads (``measure``, ``sample``) run in worker threads, as the meter's thread rule
says. Domain errors (``edge_node.errors``) carry their status for the boundary.

On a node emulating a device (edge_node.emulation, docs/devices.md) latency stays wall-clock
(stretched, waited or accounted per the request's timing mode) and energy is the device's
modelled energy for the work, labelled estimated and emulated.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

import psutil

from edge_node.emulation import (
    TIMING_METADATA_KEY,
    Charge,
    EmulatedEngine,
    EmulateTiming,
    parse_timing,
)
from edge_node.energy.idle import IdleBaseline
from edge_node.energy.split import is_partial_offload
from edge_node.engine import GenerateParams, Generation, Scores, SerializedEngine, Timed
from edge_node.errors import InvalidRequestError, RequestCancelledError
from edge_node.limits import RequestLimits, check_choices, check_prompt, check_stops
from edge_node.metrics import NodeMetrics
from edge_node.results import (
    EnergyReading,
    GenerateInput,
    GenerateResult,
    Latency,
    NodeInfo,
    ScoreResult,
    TelemetrySample,
    TokenChunk,
)

_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class Served(Generic[_R]):
    """A result with what an emulated device accounted but did not spend.

    Attributes:
        result: The GenerateResult or ScoreResult.
        stretch_s: Seconds the caller should add to its wall clock (``account`` timing; 0 when
            slept); ``None`` on a node that emulates nothing.
    """

    result: _R
    stretch_s: float | None


def softmax(values: Sequence[float]) -> list[float]:
    """Numerically stable softmax of log-probabilities."""
    peak = max(values)
    weights = [math.exp(v - peak) for v in values]
    total = sum(weights)
    return [w / total for w in weights]


def latency_of(
    received_s: float, timed: Timed[Any], first_token_s: float | None, charge: Charge | None = None
) -> Latency:
    """Queue, prefill (to the first token), decode and total seconds from one clock.

    An accounted emulation charge (``account`` timing) adds its extra seconds per phase, so the
    breakdown is what the node would have reported had it waited them out.
    """
    first = first_token_s if first_token_s is not None else timed.finished_s
    prefill_extra_s = decode_extra_s = 0.0
    if charge is not None and charge.accounted:
        prefill_extra_s, decode_extra_s = charge.prefill_extra_s, charge.decode_extra_s
    return Latency(
        queue_s=max(0.0, timed.started_s - received_s),
        prefill_s=max(0.0, first - timed.started_s) + prefill_extra_s,
        decode_s=max(0.0, timed.finished_s - first) + decode_extra_s,
        total_s=max(0.0, timed.finished_s - received_s) + prefill_extra_s + decode_extra_s,
    )


class TokenPump:
    """Hands tokens from the engine thread to the event loop, one wake-up per batch.

    When the loop falls behind, tokens coalesce into one batch instead of costing one wake-up
    each. ``on_token`` runs on the engine thread; ``finish`` and ``take`` on the loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[tuple[str, int, float]] = []
        self._lock = threading.Lock()
        self._wake = asyncio.Event()
        self._finished = False

    def on_token(self, text: str, tokens: int, at_s: float) -> None:
        """One emitted chunk (an engine ``TokenCallback``; engine thread)."""
        with self._lock:
            self._pending.append((text, tokens, at_s))
            first = len(self._pending) == 1
        if first:
            self._loop.call_soon_threadsafe(self._wake.set)

    def finish(self) -> None:
        """No more tokens (event loop, once the engine call has ended).

        The wake-ups of the last tokens were posted before the call's result (FIFO), so every
        token is pending when this runs.
        """
        self._finished = True
        self._wake.set()

    async def take(self) -> list[tuple[str, int, float]] | None:
        """The next batch of ``(text, tokens, at_s)``; None once finished and drained."""
        while not (self._finished and not self._pending):
            await self._wake.wait()
            self._wake.clear()
            with self._lock:
                batch = self._pending[:]
                self._pending.clear()
            if batch:
                return batch
        return None


class Node:
    """One model behind its serialized engine and energy meter, in plain values."""

    def __init__(
        self,
        engine: SerializedEngine,
        *,
        limits: RequestLimits,
        version: str,
        emulated: bool = False,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._serialized = engine
        self._engine = engine.engine
        self._meter = engine.meter
        self._idle = IdleBaseline(engine.meter)  # idle from now until the first request
        self._emulator = engine.engine if isinstance(engine.engine, EmulatedEngine) else None
        self._limits = limits
        self._version = version
        self._emulated = emulated
        self._metrics = metrics
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # prime: the first call always returns 0

    def info(self, state: str) -> NodeInfo:
        """What this node serves, in lifecycle ``state`` (``serving``, ``draining``, …)."""
        model = self._engine.info
        meter = self._meter.info
        return NodeInfo(
            model_id=model.model_id,
            family=model.family,
            quantization=model.quantization,
            context_tokens=model.context_tokens,
            device_kind=meter.device_kind if model.n_gpu_layers != 0 else "cpu",
            device_name=meter.device_name,
            energy_source=meter.source,
            energy_scope=meter.scope,
            energy_resolution_s=meter.resolution_s,
            energy_rejected=tuple(meter.rejected),
            state=state,
            engine=model.engine,
            chat_template=model.chat_template,
            n_gpu_layers=model.n_gpu_layers,
            n_threads=model.n_threads,
            max_queue_depth=self._serialized.max_queue_depth,
            version=self._version,
            model_size_bytes=model.size_bytes,
            model_sha256=model.sha256,
            gpu_offload_supported=model.gpu_offload_supported,
            model_layers=model.model_layers,
            compute_device=(
                "cpu"
                if model.n_gpu_layers == 0
                else "gpu+cpu"
                if is_partial_offload(model.n_gpu_layers, model.model_layers)
                else "gpu"
            ),
        )

    def generate_params(self, request: GenerateInput) -> GenerateParams:
        """Validate a Generate request and fill the node's defaults.

        Raises:
            InvalidRequestError: a field out of bounds (the message names it).
        """
        check_prompt(request.prompt, self._limits)
        check_stops(request.stop, self._limits)
        max_tokens = (
            request.max_tokens
            if request.max_tokens is not None
            else self._limits.default_max_tokens
        )
        if max_tokens <= 0:
            raise InvalidRequestError(f"max_tokens: must be positive, got {max_tokens}")
        temperature = request.temperature if request.temperature is not None else 0.0
        if not (0.0 <= temperature <= 10.0) or math.isnan(temperature):
            raise InvalidRequestError(f"temperature: must be in [0, 10], got {temperature}")
        return GenerateParams(
            prompt=request.prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=request.seed,
            stop=tuple(s for s in request.stop if s),
            raw=request.raw,
        )

    def _timing(self, requested: str | None) -> tuple[EmulatedEngine, EmulateTiming] | None:
        """The emulated engine and this request's timing mode; None on a node emulating nothing.

        The mode is the node's default unless the request names one (the
        ``moe2-emulate-timing`` metadata entry, passed as ``requested``); a node that emulates
        nothing ignores it.

        Raises:
            InvalidRequestError: ``requested`` names no mode.
        """
        if self._emulator is None:
            return None
        timing = self._emulator.timing
        if requested is not None:
            try:
                timing = parse_timing(requested)
            except ValueError as err:
                raise InvalidRequestError(f"{TIMING_METADATA_KEY}: {err}") from None
        return self._emulator, timing

    async def generate(
        self,
        params: GenerateParams,
        cancel: threading.Event,
        *,
        timing: str | None = None,
        received_s: float | None = None,
    ) -> AsyncGenerator[TokenChunk | Served[GenerateResult], None]:
        """Generate, yielding token chunks as they come and the result last.

        ``cancel`` is set by the caller when nobody waits any more; the engine stops at its next
        token. ``timing`` is the timing mode the request asks an emulating node for (see
        ``_timing``). ``received_s`` (``time.monotonic()``) is when the request arrived
        (default: now).
        Close the iterator (``contextlib.aclosing``) when abandoning it, so a queued call is
        withdrawn at once.

        Raises:
            InvalidRequestError: ``timing`` names no mode.
            NodeBusyError, NodeDrainingError, ContextOverflowError: from the engine.
            RequestCancelledError: the generation was cancelled.
        """
        received_s = time.monotonic() if received_s is None else received_s
        emulation = self._timing(timing)
        pump = TokenPump(asyncio.get_running_loop())

        def compute(event: threading.Event) -> tuple[Generation, Charge | None]:  # engine thread
            if emulation is None:
                return self._engine.generate(params, pump.on_token, event), None
            engine, mode = emulation
            return engine.generate_charged(params, pump.on_token, event, mode)

        async def produce() -> Timed[tuple[Generation, Charge | None]]:
            try:
                return await self._serialized.run(compute, cancel)
            finally:
                pump.finish()

        task = asyncio.ensure_future(produce())
        try:
            while (batch := await pump.take()) is not None:
                yield TokenChunk(
                    text="".join(text for text, _, _ in batch),
                    tokens=sum(tokens for _, tokens, _ in batch),
                    elapsed_s=batch[-1][2] - received_s,
                )
            timed = await task
        finally:
            task.cancel()  # abandoned: a call still queued never runs
        generation, charge = timed.value
        if generation.finish_reason == "cancelled":
            raise RequestCancelledError("generation cancelled")
        result = GenerateResult(
            text=generation.text,
            finish_reason=generation.finish_reason,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            latency=latency_of(received_s, timed, generation.first_token_s, charge),
            energy=await self._measure(timed, charge),
        )
        self._observe(
            "Generate",
            result.latency,
            result.energy,
            result.prompt_tokens,
            result.completion_tokens,
        )
        yield Served(result, self._stretch_s(charge))

    async def score(
        self,
        prompt: str,
        choices: Sequence[str],
        cancel: threading.Event,
        *,
        chat_template: bool = False,
        timing: str | None = None,
        received_s: float | None = None,
    ) -> Served[ScoreResult]:
        """Log-probabilities of the choices as continuations of the prompt, with their softmax.

        Raises:
            InvalidRequestError: the prompt or the choices are out of bounds, or ``timing``
                names no mode.
            NodeBusyError, NodeDrainingError, ContextOverflowError, RequestCancelledError.
        """
        received_s = time.monotonic() if received_s is None else received_s
        check_prompt(prompt, self._limits)
        choices = list(choices)
        check_choices(choices, self._limits)
        emulation = self._timing(timing)

        def compute(event: threading.Event) -> tuple[Scores, Charge | None]:  # engine thread
            if emulation is None:
                return self._engine.score(prompt, choices, chat_template, event), None
            engine, mode = emulation
            return engine.score_charged(prompt, choices, chat_template, event, mode)

        timed = await self._serialized.run(compute, cancel)
        scores, charge = timed.value
        result = ScoreResult(
            choices=tuple(choices),
            logprobs=scores.logprobs,
            probs=tuple(softmax(scores.logprobs)),
            choice_tokens=scores.choice_tokens,
            prompt_tokens=scores.prompt_tokens,
            latency=latency_of(received_s, timed, None, charge),
            energy=await self._measure(timed, charge),
            evaluated_tokens=scores.evaluated_tokens,
        )
        self._observe(
            "Score", result.latency, result.energy, result.prompt_tokens, result.evaluated_tokens
        )
        return Served(result, self._stretch_s(charge))

    async def telemetry(
        self, interval_s: float | None, serving: Callable[[], bool]
    ) -> AsyncGenerator[TelemetrySample, None]:
        """A sample every ``interval_s`` seconds (default 1) while ``serving()`` holds.

        Raises:
            InvalidRequestError: ``interval_s`` outside [0.05, 60].
        """
        interval_s = 1.0 if interval_s is None else interval_s
        if not (0.05 <= interval_s <= 60.0):
            raise InvalidRequestError(f"interval_s: must be in [0.05, 60], got {interval_s}")
        source = self._meter.info.source
        while serving():
            sample = await asyncio.to_thread(self._meter.sample)
            yield TelemetrySample(
                timestamp_s=sample.timestamp_s,
                power_w=sample.power_w,
                energy_total_j=sample.energy_total_j,
                energy_source=source,
                cpu_utilization=self._process.cpu_percent(None) / 100.0,
                memory_rss_bytes=self._process.memory_info().rss,
                queue_depth=self._serialized.depth,
                requests_total=self._serialized.completed,
                gpu_utilization=sample.gpu_utilization,
            )
            await asyncio.sleep(interval_s)

    @staticmethod
    def _stretch_s(charge: Charge | None) -> float | None:
        return None if charge is None else charge.stretch_s

    async def _measure(self, timed: Timed[Any], charge: Charge | None = None) -> EnergyReading:
        """Energy over the engine's own compute window; may wait for the counter to settle.

        An emulated device's energy is its modelled energy for the work (the charge), over its
        modelled device time. Otherwise the meter is read in a worker thread (``measure``
        blocks): first without waiting, which is final for cheap sources (the engine thread
        sampled them at the window's end); only a source that still needs to settle (NVML's
        ~100 ms counter) then waits for it.
        """
        if charge is not None and self._emulator is not None:
            modelled = charge.reading(self._emulator.profile.scope)
            if modelled is not None:
                return modelled
        meter, idle = self._meter, self._idle
        gap = None if self._emulated else idle.gap(timed.started_s, timed.finished_s)

        def settle() -> EnergyReading:  # worker thread
            if gap is not None:
                idle.measure(gap)  # idle power from the gap before this request
            reading = meter.measure(timed.started_s, timed.finished_s, settle_timeout_s=0.0)
            if reading.approximate and reading.window_s >= reading.resolution_s:
                reading = meter.measure(timed.started_s, timed.finished_s)
            return reading

        reading = await asyncio.to_thread(settle)
        if self._emulated:
            return replace(reading, emulated=True)
        return idle.above_idle(reading)

    def _observe(
        self,
        rpc: str,
        latency: Latency,
        energy: EnergyReading,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        """Record one completed request's seconds, tokens and joules."""
        if self._metrics is None:
            return
        self._metrics.observe_work(
            rpc,
            queue_s=latency.queue_s,
            prefill_s=latency.prefill_s,
            decode_s=latency.decode_s,
            total_s=latency.total_s,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            energy_j=energy.energy_j,
            source=energy.source,
        )
