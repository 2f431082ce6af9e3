"""Assemble and run the orchestrator: cluster file -> registry, profiles, planner, gate, server."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edge_node import transport
from edge_node.metrics import MetricsInterceptor, MetricsServer, start_metrics_server
from edge_node.security import ClientSecurity, SecurityError, ServerSecurity
from orchestrator.config import ClusterConfig, NodeEntry, load_cluster
from orchestrator.core import Gating, Orchestrator
from orchestrator.http_api import HttpApi, HttpServer
from orchestrator.metrics import OrchestratorMetrics
from orchestrator.openai_expert import OpenAIExpertClient, load_api_key
from orchestrator.planner import Planner, SelectionData
from orchestrator.profiles import Profile, ProfileBook
from orchestrator.registry import ExpertClient, Registry
from orchestrator.servicer import OrchestratorServicer
from protos import orchestrator_pb2 as pb
from protos import orchestrator_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Orchestrator"].full_name


class StartupError(Exception):
    """A file named by the cluster config is unusable; one line naming it."""


def load_gating(config: ClusterConfig) -> Gating:
    """The trained gate and its encoder, or uniform weights (logged) without a gate file."""
    if config.gate is None:
        logger.warning("no gate file in the cluster config: uniform gate weights")
        return Gating()
    from orchestrator.encoder import EncoderName, load_encoder
    from orchestrator.gate import Gate, GateFileError

    try:
        gate = Gate.load(config.gate)
    except GateFileError as err:
        raise StartupError(str(err)) from None
    name = gate.metadata.encoder_name
    known: dict[str, EncoderName] = {"hashing": "hashing", "minilm": "minilm", "static": "static"}
    try:
        encoder = load_encoder(known.get(name, "auto"), hashing_dim=gate.metadata.encoder_dim)
    except FileNotFoundError as err:
        raise StartupError(f"{config.gate}: encoder {name!r} unavailable: {err}") from None
    if encoder.name != name:
        raise StartupError(
            f"{config.gate}: the gate was trained with encoder {name!r}, "
            f"but only {encoder.name!r} is available here"
        )
    if encoder.dim != gate.metadata.encoder_dim:
        raise StartupError(
            f"{config.gate}: the gate reads {gate.metadata.encoder_dim}-d {name} embeddings, "
            f"the encoder here gives {encoder.dim}-d"
        )
    return Gating(
        gate=gate,
        encoder=encoder,
        description=f"{config.gate} ({name} encoder, {gate.metadata.head} head, "
        f"{gate.metadata.variant} targets, {len(gate.experts)} experts)",
        categories=tuple(gate.metadata.categories),
    )


def build_orchestrator(config: ClusterConfig, registry: Registry) -> Orchestrator:
    """Everything but the nodes' channels (the registry adds those).

    Also limits this process to one BLAS thread: the prompt encoder runs one prompt at a time
    on the request path, where BLAS threads only add contention (measured 23-42 ms with one
    thread vs 98-300 ms with the default), so every embedder of the orchestrator (`moe2 serve`,
    the sweep's live phase, tests, SDK users) serves with the latency the planner assumes.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    profile, selection, gating = load_files(config)
    book = ProfileBook(
        profile,
        statistic=config.profile_statistic,
        window=config.profile_window,
        drift_ratio=config.drift_ratio,
    )
    planner = build_planner(config, book, selection, gating)
    orchestrator = Orchestrator(config, registry, book, planner, gating)
    if orchestrator.gating.trained:
        # Warm the encoder and seed the overhead estimate the planner adds to T^agg.
        for _ in range(3):
            started = time.perf_counter()
            orchestrator.gating.logits("warm-up prompt for the gate", "", [])
            orchestrator.record_overhead(time.perf_counter() - started)
    return orchestrator


def load_files(config: ClusterConfig) -> tuple[Profile | None, SelectionData | None, Gating]:
    """The profile, gate and selection files the cluster file names, read and checked.

    Raises:
        StartupError: a file is unusable; the message names it.
    """
    from orchestrator.planner import SelectionDataError
    from orchestrator.profiles import ProfileError

    try:
        profile = Profile.load(config.profile) if config.profile else None
        selection = SelectionData.load(config.selection) if config.selection else None
    except (ProfileError, SelectionDataError) as err:
        raise StartupError(str(err)) from None
    return profile, selection, load_gating(config)


def build_planner(
    config: ClusterConfig, book: ProfileBook, selection: SelectionData | None, gating: Gating
) -> Planner:
    """The coarse level over this book, with the gate's fusion rule and the selection file."""
    return Planner(
        book,
        aggregation_s=config.aggregation_s,
        selection=selection,
        objective=config.objective,
        fusion=gating.gate.fusion if gating.gate is not None else None,
        fusion_experts=gating.gate.experts if gating.gate is not None else (),
    )


def reload_files(path: Path, orchestrator: Orchestrator) -> None:
    """SIGHUP: re-read the profile, gate and selection files; plans are redone from them.

    Live observations are kept; experts probed at run time keep their figures unless the new
    profile has them. An unusable file leaves everything as it was (StartupError).
    """
    config = load_cluster(path)
    profile, selection, gating = load_files(config)
    planner = build_planner(config, orchestrator.book, selection, gating)
    if profile is not None:
        orchestrator.book.replace_profile(profile)
    orchestrator.gating = gating
    orchestrator.planner = planner


class HealthSync:
    """Keeps the gRPC health status in step with the fleet: SERVING only while an expert is up.

    The registry calls ``changed`` (on the event loop) whenever its up-set changes; the status
    is read when the update runs, so a burst of changes ends on the latest state.
    """

    def __init__(self, servicer: health.aio.HealthServicer) -> None:
        self.servicer = servicer
        self.registry: Registry | None = None
        self.active = False  # False before start-up is done and from shutdown on
        self._tasks: set[asyncio.Task[None]] = set()

    def changed(self) -> None:
        """Schedule an update (a no-op before start and after stop)."""
        if not self.active:
            return
        task = asyncio.get_running_loop().create_task(self.apply())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def apply(self) -> None:
        """Set "" and the Orchestrator service to SERVING or NOT_SERVING."""
        up = self.active and self.registry is not None and bool(self.registry.up())
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if up
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.servicer.set(name, status)


@dataclass(slots=True)
class RunningOrchestrator:
    """A started orchestrator server, with its HTTP API and metrics port where enabled."""

    server: grpc.aio.Server
    port: int
    orchestrator: Orchestrator
    health: health.aio.HealthServicer
    health_sync: HealthSync | None = None
    metrics: OrchestratorMetrics | None = None
    http: HttpServer | None = None
    metrics_server: MetricsServer | None = None

    @property
    def http_port(self) -> int | None:
        """The HTTP API's port, if it is served."""
        return None if self.http is None else self.http.port

    @property
    def metrics_port(self) -> int | None:
        """The metrics port, if it is served."""
        return None if self.metrics_server is None else self.metrics_server.port

    async def stop(self, grace_s: float | None) -> None:
        """NOT_SERVING, finish in-flight requests, close every node channel."""
        if self.health_sync is not None:
            self.health_sync.active = False
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.http is not None:
            await self.http.stop()
        await self.server.stop(grace_s)
        await self.orchestrator.close()
        await self.orchestrator.registry.close()
        if self.metrics_server is not None:
            await asyncio.to_thread(self.metrics_server.close)


ADMIN_METHODS = tuple(f"/{SERVICE_NAME}/{name}" for name in ("RegisterNode", "DeregisterNode"))
"""RPCs that change the fleet: they need the admin token (docs/security.md)."""

TOKEN_ENV = "MOE2_TOKEN"
ADMIN_TOKEN_ENV = "MOE2_ADMIN_TOKEN"


def node_security(config: ClusterConfig, node: NodeEntry | None) -> ClientSecurity | None:
    """How to reach a node: its ``tls`` table over the cluster's ``[tls]`` (None: plaintext).

    Raises:
        StartupError: a file the table names is unusable; the message names the key.
    """
    entry = node.tls.over(config.tls) if node is not None and node.tls else config.tls
    if entry is None:
        return None
    where = "tls" if node is None or node.tls is None else f"nodes[{node.name}].tls"
    try:
        return ClientSecurity.load(
            tls_ca=entry.ca,
            tls_cert=entry.cert,
            tls_key=entry.key,
            token_file=entry.token_file,
            names=(f"{where}.ca", f"{where}.cert", f"{where}.key", f"{where}.token_file"),
        )
    except SecurityError as err:
        raise StartupError(f"cluster file: {err}") from None


def openai_client(node: NodeEntry) -> OpenAIExpertClient:
    """The client of a ``kind = "openai"`` node (its API key read from ``api_key_file``).

    Raises:
        StartupError: the key file is unusable; the message names the node and the key.
    """
    assert node.base_url is not None  # checked by NodeEntry
    assert node.model is not None
    api_key = None
    if node.api_key_file is not None:
        try:
            api_key = load_api_key(node.api_key_file)
        except ValueError as err:
            raise StartupError(f"cluster file: nodes[{node.name}].api_key_file: {err}") from None
    return OpenAIExpertClient(
        node.base_url,
        node.model,
        api_key=api_key,
        power_w=node.power_w,
        multiple_choice=node.multiple_choice,
        endpoint=node.endpoint,
        device=node.device,
    )


def expert_client(config: ClusterConfig, node: NodeEntry) -> ExpertClient:
    """A client of any node kind, reached as the orchestrator reaches it (for `moe2 profile`).

    Raises:
        StartupError: a TLS, token or API key file the node needs is unusable.
    """
    if node.kind == "openai":
        return openai_client(node)
    from edge_node.client import AsyncEdgeNodeClient

    return AsyncEdgeNodeClient(node.address, security=node_security(config, node))


async def add_node(registry: Registry, config: ClusterConfig, node: NodeEntry) -> None:
    """Register one cluster-file node of either kind (an unchanged one is kept as it is).

    Raises:
        StartupError: a TLS, token or API key file the node needs is unusable.
    """
    if node.kind == "openai":
        await registry.add_polled(
            node.name,
            node.target,
            node.device,
            openai_client(node),
            spec=node.model_dump_json(exclude={"name", "device"}),
        )
    else:
        await registry.add(node.name, node.address, node.device, node_security(config, node))


async def start_orchestrator(
    config: ClusterConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    settle_s: float = 3.0,
    security: ServerSecurity | None = None,
    http_port: int | None = None,
    metrics_port: int | None = None,
) -> RunningOrchestrator:
    """Register the cluster's nodes, wait briefly for their health, and start serving.

    ``http_port`` serves the OpenAI-compatible API (orchestrator.http_api) on the same loop and
    core; ``metrics_port`` serves Prometheus metrics. 0 picks a free port; None leaves it off.
    Health is SERVING only while at least one expert is up.

    Raises:
        SecurityError: a non-loopback host without TLS and a token, and not insecure.
        StartupError: an unusable file named by the cluster file.
        AddressError: the address cannot be bound.
        OSError: the HTTP or metrics port cannot be bound.
    """
    security = security or ServerSecurity()
    security.check_bind(host)
    health_servicer = health.aio.HealthServicer()
    sync = HealthSync(health_servicer)
    built: list[Orchestrator] = []

    def fleet_changed() -> None:
        sync.changed()
        for orchestrator in built:  # a node joined or came up: measure it if it has no figures
            orchestrator.probe_unmeasured()

    registry = Registry(on_change=fleet_changed, default_security=node_security(config, None))
    sync.registry = registry
    orchestrator = build_orchestrator(config, registry)
    built.append(orchestrator)
    wants_metrics = http_port is not None or metrics_port is not None
    metrics = OrchestratorMetrics(registry) if wants_metrics else None
    orchestrator.observer = metrics
    for node in config.nodes:  # every file a node needs is checked before any is added
        if node.kind == "openai":
            await openai_client(node).close()
        else:
            node_security(config, node)
    for node in config.nodes:
        await add_node(registry, config, node)
    await registry.wait_settled(settle_s)
    probes = orchestrator.probe_unmeasured()
    if probes and config.probe_wait_s > 0:  # ready means budgets work: measure first
        _, pending = await asyncio.wait(probes, timeout=config.probe_wait_s)
        if pending:
            logger.warning(
                "%d expert probe(s) still running after %.0f s: those experts join budgeted "
                "plans once measured",
                len(pending),
                config.probe_wait_s,
            )
    # metrics first: a request the token check refuses is counted too
    interceptors = [MetricsInterceptor(metrics.rpc)] if metrics is not None else []
    server = transport.new_server([*interceptors, *security.interceptors(ADMIN_METHODS)])
    pb_grpc.add_OrchestratorServicer_to_server(OrchestratorServicer(orchestrator), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if security.reflection_enabled(host):
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
    try:
        bound = transport.add_port(server, host, port, security.credentials())
    except transport.AddressError:
        await registry.close()
        raise
    http: HttpServer | None = None
    metrics_server: MetricsServer | None = None
    try:
        if http_port is not None:
            http = HttpServer(HttpApi(orchestrator, metrics, security), host, http_port)
        if metrics is not None and metrics_port is not None:
            metrics_server = start_metrics_server(metrics.registry, host, metrics_port)
        await server.start()
        if http is not None:
            await http.start()
    except BaseException:
        if metrics_server is not None:
            metrics_server.close()
        await server.stop(None)
        await registry.close()
        raise
    sync.active = True
    await sync.apply()
    return RunningOrchestrator(
        server, bound, orchestrator, health_servicer, sync, metrics, http, metrics_server
    )


async def reload_nodes(path: Path, registry: Registry) -> None:
    """Apply the cluster file's node list: add new or re-addressed nodes, remove dropped ones."""
    config = load_cluster(path)
    wanted = {n.name: n for n in config.nodes}
    for expert in registry.all():
        if expert.name not in wanted:
            await registry.remove(expert.name)
    for node in wanted.values():
        await add_node(registry, config, node)


async def serve(
    path: Path,
    *,
    host: str,
    port: int,
    grace_s: float = 5.0,
    security: ServerSecurity | None = None,
    http_port: int | None = None,
    metrics_port: int | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; SIGHUP re-reads the cluster file's nodes, profile and gate.

    Prints ``listening on HOST:PORT`` first (the readiness line), then ``http listening on``
    and ``metrics listening on`` lines for the ports that are enabled.
    """
    security = security or ServerSecurity()
    refusal = security.bind_refusal(host)
    if refusal is not None:
        raise SecurityError(refusal)
    transport.check_bindable(host, port)
    for extra in (http_port, metrics_port):
        if extra is not None and extra != 0:
            transport.check_bindable(host, extra)
    config = load_cluster(path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    running = await start_orchestrator(
        config,
        host=host,
        port=port,
        security=security,
        http_port=http_port,
        metrics_port=metrics_port,
    )
    registry = running.orchestrator.registry

    reloads: set[asyncio.Task[None]] = set()

    def on_hangup() -> None:
        async def reload() -> None:
            try:
                reload_files(path, running.orchestrator)
                await reload_nodes(path, registry)
                logger.info("reloaded nodes, profile and gate from %s", path)
            except Exception as err:  # keep serving with the old fleet and files
                logger.error("cannot reload %s: %s", path, err)

        task = loop.create_task(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    up = len(registry.up())
    logger.info(
        "%d of %d experts up; %s", up, len(registry.all()), running.orchestrator.gating.description
    )
    print(f"listening on {host}:{running.port}", flush=True)
    if running.http_port is not None:
        print(f"http listening on {host}:{running.http_port}", flush=True)
    if running.metrics_port is not None:
        print(f"metrics listening on {host}:{running.metrics_port}", flush=True)
    await stop.wait()
    await running.stop(grace_s)
