"""Assemble and run the edge node's grpc.aio server: engine, meter, servicer, health, reflection."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edge_node import transport
from edge_node.config import EdgeNodeSettings
from edge_node.energy import EnergyMeter, ModeledEnergyMeter, detect_meter
from edge_node.energy.split import split_if_partial
from edge_node.engine import Engine, FakeEngine, SerializedEngine
from edge_node.limits import RequestLimits
from edge_node.metrics import MetricsInterceptor, MetricsServer, NodeMetrics, start_metrics_server
from edge_node.node import Node
from edge_node.offload import ComputeDevice, Offload, build_supports_offload, plan_offload
from edge_node.security import SecurityError, ServerSecurity
from edge_node.servicer import EdgeNodeServicer, NodeState
from edge_node.version import package_version
from protos import edge_node_pb2 as pb
from protos import edge_node_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EdgeNode"].full_name


@dataclass(slots=True)
class RunningNode:
    """A started node: its server, bound port and the parts shutdown needs."""

    server: grpc.aio.Server
    port: int
    engine: SerializedEngine
    health: health.aio.HealthServicer
    state: NodeState
    metrics: NodeMetrics | None = None
    metrics_server: MetricsServer | None = None

    async def stop(self, grace_s: float | None) -> None:
        """Health NOT_SERVING, refuse new work, drain in-flight calls for grace_s, close."""
        self.state.value = pb.NODE_STATE_DRAINING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.engine.drain()
        await self.server.stop(grace_s)
        await asyncio.to_thread(self.engine.close)
        if self.metrics_server is not None:
            await asyncio.to_thread(self.metrics_server.close)


def settings_limits(settings: EdgeNodeSettings) -> RequestLimits:
    """Request bounds from the settings."""
    return RequestLimits(
        default_max_tokens=settings.default_max_tokens,
        max_prompt_bytes=settings.max_prompt_bytes,
        max_choices=settings.max_choices,
        max_choice_bytes=settings.max_choice_bytes,
        max_stops=settings.max_stops,
        max_stop_bytes=settings.max_stop_bytes,
    )


TOKEN_ENV = "EDGE_NODE_TOKEN"
"""The environment variable holding the node's token when no --token-file is given."""


def settings_security(settings: EdgeNodeSettings) -> ServerSecurity:
    """TLS and token files from the settings, read now.

    Raises:
        SecurityError: a missing or unreadable file, naming its flag.
    """
    return ServerSecurity.load(
        tls_cert=settings.tls_cert,
        tls_key=settings.tls_key,
        tls_client_ca=settings.tls_client_ca,
        token_file=settings.token_file,
        token_env=TOKEN_ENV,
        insecure=settings.insecure,
        reflection=settings.reflection,
    )


async def start_node(
    engine: SerializedEngine,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    limits: RequestLimits | None = None,
    emulated: bool = False,
    security: ServerSecurity | None = None,
    metrics_port: int | None = None,
) -> RunningNode:
    """Start a node server on host:port (0 = a free port) and mark it SERVING.

    With ``metrics_port`` (0 = a free port) Prometheus metrics are served at
    ``http://host:metrics_port/metrics`` from the node's own registry.

    Raises:
        AddressError: the address cannot be bound.
        SecurityError: a non-loopback host without TLS and a token, and not insecure.
    """
    security = security or ServerSecurity()
    security.check_bind(host)
    metrics = NodeMetrics() if metrics_port is not None else None
    # metrics first: a request the token check refuses is counted too
    interceptors = [MetricsInterceptor(metrics.rpc)] if metrics is not None else []
    server = transport.new_server([*interceptors, *security.interceptors()])
    state = NodeState()
    node = Node(
        engine,
        limits=limits or RequestLimits(),
        version=package_version(),
        emulated=emulated,
        metrics=metrics,
    )
    servicer = EdgeNodeServicer(node, state=state)
    pb_grpc.add_EdgeNodeServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if security.reflection_enabled(host):
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
    bound = transport.add_port(server, host, port, security.credentials())
    metrics_server = None
    if metrics is not None and metrics_port is not None:
        metrics.bind_queue(lambda: engine.depth)
        metrics_server = start_metrics_server(metrics.registry, host, metrics_port)
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningNode(server, bound, engine, health_servicer, state, metrics, metrics_server)


def offload_for(settings: EdgeNodeSettings) -> Offload:
    """The offload decision for these settings (the fake engine computes on the CPU).

    Raises:
        OffloadError: GPU layers asked for where they cannot run, without a CPU fallback.
    """
    supported = settings.engine == "llama" and build_supports_offload()
    return plan_offload(
        settings.n_gpu_layers, supported=supported, allow_cpu_fallback=settings.allow_cpu_fallback
    )


def build_engine(
    settings: EdgeNodeSettings, meter: EnergyMeter, offload: Offload | None = None
) -> SerializedEngine:
    """Load the configured model (blocking) behind a SerializedEngine.

    Raises:
        ModelError: unknown model, missing or corrupt file.
    """
    engine: Engine
    if settings.engine == "fake":
        engine = FakeEngine(
            token_delay_s=settings.fake_token_delay_s,
            prefill_delay_s=settings.fake_prefill_delay_s,
            context_tokens=settings.n_ctx,
            model_id="fake" if settings.model == "smollm2-135m" else settings.model,
        )
    else:
        from edge_node import models
        from edge_node.llama_engine import LlamaEngine, LlamaOptions

        model_id, path = models.resolve(settings.model)
        sha256 = models.CATALOGUE[model_id].sha256 if model_id in models.CATALOGUE else ""
        layers = (offload or offload_for(settings)).layers
        engine = LlamaEngine.load(
            path,
            model_id=model_id,
            sha256=sha256,
            options=LlamaOptions(
                n_ctx=settings.n_ctx,
                n_batch=settings.n_batch,
                n_threads=settings.n_threads,
                n_gpu_layers=layers,
                seed=settings.seed,
                use_mmap=settings.use_mmap,
            ),
        )
        if settings.emulate_device is None:
            meter = meter_for_offload(settings, meter, layers, engine.info.model_layers)
    if settings.emulate_device is not None:
        from edge_node.emulation import DEVICE_PROFILES, EmulatedEngine

        profile = DEVICE_PROFILES[settings.emulate_device]
        engine = EmulatedEngine(engine, profile, timing=settings.emulate_timing)
    return SerializedEngine(engine, meter, max_queue_depth=settings.max_queue_depth)


def meter_for_offload(
    settings: EdgeNodeSettings, meter: EnergyMeter, gpu_layers: int, model_layers: int
) -> EnergyMeter:
    """The GPU's meter joined by the CPU's when only part of the model is offloaded.

    Only an NVML meter is split: the Jetson rails the node reads by default already cover the
    CPU and the GPU together (docs/energy.md), so adding the CPU would count it twice.
    """
    if meter.info.source != "measured-nvml":
        return meter
    cpu_settings = settings.energy.model_copy(update={"backend": "auto"})
    return split_if_partial(
        meter,
        gpu_layers=gpu_layers,
        model_layers=model_layers,
        cpu_meter=lambda: detect_meter(cpu_settings, compute="cpu"),
    )


def build_meter(settings: EdgeNodeSettings, compute: ComputeDevice = "cpu") -> EnergyMeter:
    """The real meter, or a modeled one for an emulated device (labelled as such).

    An emulated device's per-request energy comes from its profile (edge_node.emulation); the
    modeled meter only describes it in GetInfo and serves telemetry at the profile's power.
    """
    if settings.emulate_device is not None:
        from edge_node.emulation import DEVICE_PROFILES

        profile = DEVICE_PROFILES[settings.emulate_device]
        if profile.power_w is not None:
            return ModeledEnergyMeter(profile.power_w, scope=profile.scope)
    return detect_meter(settings.energy, compute=compute)


async def serve(settings: EdgeNodeSettings) -> None:
    """Serve until SIGINT/SIGTERM, then drain with the configured grace period.

    Signal handlers are installed before the readiness line is printed, so a supervisor that
    signals as soon as it reads the line is handled (docs/architecture.md §10.4).
    """
    security = settings_security(settings)
    refusal = security.bind_refusal(settings.host)
    if refusal is not None:
        raise SecurityError(refusal)
    transport.check_bindable(settings.host, settings.port)  # before loading the model
    offload = offload_for(settings)  # before anything is loaded: a refusal costs nothing
    meter = build_meter(settings, offload.compute_device)
    meter.start()
    try:
        engine = await asyncio.to_thread(build_engine, settings, meter, offload)
    except BaseException:
        meter.close()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        node = await start_node(
            engine,
            host=settings.host,
            port=settings.port,
            limits=settings_limits(settings),
            emulated=settings.emulate_device is not None,
            security=security,
            metrics_port=settings.metrics_port,
        )
    except BaseException:
        await asyncio.to_thread(engine.close)
        raise
    info = engine.engine.info
    logger.info(
        "serving %s (%s) with energy source %s",
        info.model_id,
        info.engine,
        meter.info.source,
    )
    print(f"listening on {settings.host}:{node.port}", flush=True)
    if node.metrics_server is not None:
        print(f"metrics listening on {settings.host}:{node.metrics_server.port}", flush=True)
    await stop.wait()
    logger.info("shutting down: draining for up to %.1f s", settings.shutdown_grace_s)
    await node.stop(settings.shutdown_grace_s)
    logger.info("stopped")
    sys.stdout.flush()
