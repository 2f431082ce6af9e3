"""Prometheus metrics: the node's own set, the gRPC interceptor both servers use, the scrape port.

Every server owns a ``CollectorRegistry`` (never the process-global one), so several servers in
one process (tests, the testbed) keep separate counts. Names carry their unit (``_seconds``,
``_joules``, ``_total``); docs/metrics.md lists them. Energy is a counter by ``source``, the
same labels as the wire (``measured-nvml``, ``measured-rapl``, ``measured-jetson``,
``estimated``), so an estimate is never summed into a measurement by accident.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

logger = logging.getLogger(__name__)

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")

# Seconds: from a fake engine's sub-millisecond calls to a CPU model's long generations.
LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)


@dataclass(frozen=True, slots=True)
class RpcInstruments:
    """What the interceptor records per RPC: count by status, duration, in flight."""

    requests: Counter  # labels: rpc, code
    duration: Histogram  # labels: rpc
    in_flight: Gauge


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts the RPCs of one proto package by method and final status code.

    Only methods under ``/{package}.`` are measured: health watches and reflection are
    long-lived streams that would swamp the in-flight gauge and the duration histogram. The
    status comes from the servicer context: the servicers' error boundary
    (``edge_node.boundary``) turns every failure into ``context.abort``, so the code is set by
    the time the handler raises; an unexpected escape is counted as UNKNOWN.
    """

    def __init__(self, instruments: RpcInstruments, package: str = "moe2.v1") -> None:
        self._instruments = instruments
        self._prefix = f"/{package}."

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Req, _Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Req, _Resp] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self._prefix):
            return handler
        rpc = method.rsplit("/", 1)[-1]
        # grpc's handlers are namedtuples typed loosely; Any is confined to this adapter.
        raw: Any = handler
        wrapped: Any
        if raw.unary_unary is not None:
            wrapped = grpc.unary_unary_rpc_method_handler(
                self._unary(rpc, raw.unary_unary),
                request_deserializer=raw.request_deserializer,
                response_serializer=raw.response_serializer,
            )
            return wrapped  # type: ignore[no-any-return]
        if raw.unary_stream is not None:
            wrapped = grpc.unary_stream_rpc_method_handler(
                self._stream(rpc, raw.unary_stream),
                request_deserializer=raw.request_deserializer,
                response_serializer=raw.response_serializer,
            )
            return wrapped  # type: ignore[no-any-return]
        return handler  # no client-streaming RPCs in moe2.v1

    def _finish(self, rpc: str, context: Any, started: float, error: BaseException | None) -> None:
        code = _status_name(context, error)
        self._instruments.requests.labels(rpc=rpc, code=code).inc()
        self._instruments.duration.labels(rpc=rpc).observe(time.monotonic() - started)
        self._instruments.in_flight.dec()

    def _unary(self, rpc: str, behavior: Any) -> Any:
        async def wrapper(request: Any, context: Any) -> Any:
            started = time.monotonic()
            self._instruments.in_flight.inc()
            try:
                response = await behavior(request, context)
            except BaseException as err:
                self._finish(rpc, context, started, err)
                raise
            self._finish(rpc, context, started, None)
            return response

        return wrapper

    def _stream(self, rpc: str, behavior: Any) -> Any:
        async def wrapper(request: Any, context: Any) -> AsyncIterator[Any]:
            started = time.monotonic()
            self._instruments.in_flight.inc()
            try:
                async for message in behavior(request, context):
                    yield message
            except BaseException as err:
                self._finish(rpc, context, started, err)
                raise
            self._finish(rpc, context, started, None)

        return wrapper


def _status_name(context: Any, error: BaseException | None) -> str:
    """The RPC's final status code name (OK, INVALID_ARGUMENT, ...)."""
    code = None
    try:
        code = context.code()
    except Exception:  # older grpc.aio contexts have no code(); fall back below
        code = None
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):  # grpc.aio may hand back the raw cygrpc integer
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return str(status.name)
    if error is None:
        return "OK"
    if isinstance(error, grpc.aio.AbortError):
        return "UNKNOWN"
    import asyncio

    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):  # the client went away
        return "CANCELLED"
    return "UNKNOWN"


class NodeMetrics:
    """The edge node's metrics (names start with ``edge_node_``), in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.rpc = RpcInstruments(
            requests=Counter(
                "edge_node_requests_total",
                "RPCs finished, by method and gRPC status code.",
                ["rpc", "code"],
                registry=registry,
            ),
            duration=Histogram(
                "edge_node_rpc_duration_seconds",
                "RPC handling time at the node's gRPC layer (every outcome), by method.",
                ["rpc"],
                buckets=LATENCY_BUCKETS_S,
                registry=registry,
            ),
            in_flight=Gauge(
                "edge_node_in_flight_requests",
                "RPCs being handled now (waiting in the engine queue or running).",
                registry=registry,
            ),
        )
        self._phases = {
            phase: Histogram(
                f"edge_node_request_{phase}_seconds",
                help_text,
                ["rpc"],
                buckets=LATENCY_BUCKETS_S,
                registry=registry,
            )
            for phase, help_text in (
                ("queue", "Time waiting for the engine (received to compute start)."),
                ("prefill", "Compute start to the first token (Score: the whole compute)."),
                ("decode", "First token to the last."),
                ("total", "Received to the result, as reported in the response's latency."),
            )
        }
        self._tokens = Counter(
            "edge_node_tokens_total",
            "Tokens processed by completed requests: kind=prompt (read) or completion "
            "(generated, or the choices' scored tokens).",
            ["rpc", "kind"],
            registry=registry,
        )
        self._energy = Counter(
            "edge_node_energy_joules_total",
            "Energy of completed requests over their compute windows, by source "
            "(measured-* or estimated); requests whose energy is unknown add nothing.",
            ["source"],
            registry=registry,
        )
        self._energy_unknown = Counter(
            "edge_node_energy_unknown_requests_total",
            "Completed requests whose energy is unknown (absent, never counted as 0 J).",
            registry=registry,
        )
        self.queue_depth = Gauge(
            "edge_node_queue_depth",
            "Engine calls waiting or running (refused beyond max_queue_depth).",
            registry=registry,
        )

    def bind_queue(self, depth: Callable[[], int]) -> None:
        """Read the queue depth from the engine at scrape time."""
        self.queue_depth.set_function(lambda: float(depth()))

    def observe_work(
        self,
        rpc: str,
        *,
        queue_s: float,
        prefill_s: float,
        decode_s: float,
        total_s: float,
        prompt_tokens: int,
        completion_tokens: int,
        energy_j: float | None,
        source: str,
    ) -> None:
        """One completed Generate or Score (seconds, tokens, joules with their source)."""
        for phase, seconds in (
            ("queue", queue_s),
            ("prefill", prefill_s),
            ("decode", decode_s),
            ("total", total_s),
        ):
            self._phases[phase].labels(rpc=rpc).observe(seconds)
        self._tokens.labels(rpc=rpc, kind="prompt").inc(prompt_tokens)
        self._tokens.labels(rpc=rpc, kind="completion").inc(completion_tokens)
        if energy_j is None:
            self._energy_unknown.inc()
        else:
            self._energy.labels(source=source).inc(energy_j)


@dataclass(slots=True)
class MetricsServer:
    """A running ``/metrics`` endpoint (prometheus_client's WSGI server on a daemon thread)."""

    server: WSGIServer
    host: str
    port: int

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()


def start_metrics_server(registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
    """Serve the registry's text format at ``http://host:port/metrics`` (0 = a free port).

    prometheus_client's own server, on its thread: a scrape never waits for the event loop.

    Raises:
        OSError: the address cannot be bound.
    """
    server, _thread = start_http_server(port, addr=host, registry=registry)
    bound = int(server.server_port)
    logger.info("metrics on http://%s:%d/metrics", host, bound)
    return MetricsServer(server, host, bound)
