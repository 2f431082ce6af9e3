"""The fleet: one long-lived channel per edge node, health watched, nodes joining and leaving.

Each node's ``grpc.health.v1`` Watch stream marks it up or down the moment its state changes;
a broken stream (node killed) marks it down and is re-opened with capped backoff, so a node that
comes back is re-admitted within about a second. A node that stops answering without closing
its connection (a hung process, a frozen host, a cable pulled mid-route) sends nothing on the
stream, so a prober also asks each node ``Check`` every :data:`PROBE_INTERVAL_S` with a
:data:`PROBE_TIMEOUT_S` deadline: no answer in time marks it down within about two seconds,
and the first SERVING answer re-admits it. ``version`` increases on every change of the up-set,
which invalidates cached plans (re-plan without a down node before dispatching).

An expert that is not an edge node (an OpenAI-compatible HTTP server,
``orchestrator.openai_expert``) is added with :meth:`Registry.add_polled`: its client answers
``check`` over its own protocol on the same timer and deadline (no Watch stream), with the
same up / down / re-admit rules. The core sees every expert's client through
:class:`ExpertClient` and never asks which kind it is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge_node import transport
from edge_node.client import AsyncEdgeNodeClient, GenerateResult, NodeInfo, ScoreResult, TokenChunk
from edge_node.security import ClientSecurity, open_channel

logger = logging.getLogger(__name__)

EDGE_NODE_SERVICE = "moe2.v1.EdgeNode"
PROBE_INTERVAL_S = 1.0
"""How often the prober asks each node for its health (seconds)."""
PROBE_TIMEOUT_S = 1.0
"""How long a health check may take before the node counts as not answering (seconds)."""
Health = Literal["up", "down", "unknown"]

# Reconnect quickly: the default gRPC backoff grows to 120 s, far too slow to re-admit a node.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    *transport.CHANNEL_OPTIONS,
)


class ExpertClient(Protocol):
    """What the core calls on an expert, whatever serves it (edge node or OpenAI server).

    Results carry latency and energy as an edge node reports them (energy ``joules`` None when
    unknown, never 0). Failures raise ``grpc.aio.AioRpcError`` with the status code the core
    accounts (DEADLINE_EXCEEDED: deadline; UNAVAILABLE: the expert is marked down; anything
    else: that expert's error); a client that is not gRPC maps its failures to those codes.
    """

    async def score(
        self,
        prompt: str,
        choices: Sequence[str],
        *,
        chat_template: bool = False,
        timeout_s: float | None = None,
        request_id: str = "",
    ) -> ScoreResult:
        """Log-probabilities of the candidate continuations."""
        ...

    async def generate(
        self,
        prompt: str,
        *,
        timeout_s: float | None = None,
        on_chunk: Callable[[TokenChunk], None] | None = None,
        **options: Any,
    ) -> GenerateResult:
        """One generation (``max_tokens`` among the options)."""
        ...

    async def info(self, *, timeout_s: float | None = 10.0) -> NodeInfo:
        """What the expert serves."""
        ...

    async def close(self) -> None:
        """Release the connection."""
        ...


class PolledClient(ExpertClient, Protocol):
    """An expert whose health is asked over its own protocol (no gRPC health service)."""

    async def check(self, *, timeout_s: float) -> str:
        """Return "" when the expert serves; otherwise why not (one line, no secrets)."""
        ...


@dataclass(slots=True, eq=False)
class Expert:
    """One expert as the orchestrator sees it (event-loop owned)."""

    name: str
    address: str
    device: str
    client: ExpertClient
    health: Health = "unknown"
    info: NodeInfo | None = None
    last_error: str = ""
    in_flight: int = 0
    spec: str = ""  # what add_polled was given, to tell a changed entry from the same one
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)
    prober: asyncio.Task[None] | None = field(default=None, repr=False)


class Registry:
    """Nodes by expert name, with health kept current by Watch streams."""

    def __init__(
        self,
        on_change: Callable[[], None] | None = None,
        *,
        default_security: ClientSecurity | None = None,
        probe_interval_s: float = PROBE_INTERVAL_S,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        self._probe_interval_s = probe_interval_s
        self._probe_timeout_s = probe_timeout_s
        self._experts: dict[str, Expert] = {}
        self.default_security = default_security  # for nodes added without their own
        self._on_change = on_change
        self.version = 0
        self._changed = asyncio.Event()

    def __contains__(self, name: str) -> bool:
        return name in self._experts

    def get(self, name: str) -> Expert | None:
        """The expert of that name, if registered."""
        return self._experts.get(name)

    def all(self) -> list[Expert]:
        """Every registered expert, in registration order."""
        return list(self._experts.values())

    def up(self) -> list[Expert]:
        """Experts whose node is serving."""
        return [e for e in self._experts.values() if e.health == "up"]

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()
        if self._on_change is not None:
            self._on_change()

    async def add(
        self,
        name: str,
        address: str,
        device: str = "",
        security: ClientSecurity | None = None,
    ) -> Expert:
        """Register (or re-address) a node and start watching it (TLS/token per security)."""
        existing = self._experts.get(name)
        if existing is not None:
            if existing.address == address:
                return existing
            await self.remove(name)
        channel = open_channel(address, security or self.default_security, CHANNEL_OPTIONS)
        client = AsyncEdgeNodeClient(address, channel=channel)
        expert = Expert(name, address, device, client)
        self._experts[name] = expert
        expert.watcher = asyncio.create_task(self._watch(expert, client), name=f"watch-{name}")
        expert.prober = asyncio.create_task(self._probe(expert, client), name=f"probe-{name}")
        self._bump()
        logger.info("registered expert %s at %s", name, address)
        return expert

    async def add_polled(
        self, name: str, address: str, device: str, client: PolledClient, *, spec: str = ""
    ) -> Expert:
        """Register an expert whose client answers ``check`` (e.g. an OpenAI server).

        Its health is polled every probe interval with the probe timeout: the first healthy
        answer admits it (after fetching its info), a failed or late one marks it down. An
        existing expert of that name with the same ``address`` and ``spec`` is kept (and
        ``client`` closed); otherwise it is replaced.
        """
        existing = self._experts.get(name)
        if existing is not None:
            if existing.address == address and existing.spec == spec:
                await client.close()
                return existing
            await self.remove(name)
        expert = Expert(name, address, device, client, spec=spec)
        self._experts[name] = expert
        expert.prober = asyncio.create_task(self._poll(expert, client), name=f"poll-{name}")
        self._bump()
        logger.info("registered expert %s at %s", name, address)
        return expert

    async def remove(self, name: str) -> bool:
        """Stop watching a node and close its channel; False if unknown."""
        expert = self._experts.pop(name, None)
        if expert is None:
            return False
        tasks = [t for t in (expert.watcher, expert.prober) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await expert.client.close()
        self._bump()
        logger.info("deregistered expert %s", name)
        return True

    async def close(self) -> None:
        """Remove every node."""
        for name in list(self._experts):
            await self.remove(name)

    async def wait_settled(self, timeout_s: float) -> None:
        """Wait until no node's health is unknown (or the timeout passes)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while any(e.health == "unknown" for e in self._experts.values()):
            remaining = end - loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return

    def mark_failed(self, expert: Expert, code: grpc.StatusCode) -> None:
        """A dispatch found the node unreachable: mark it down now rather than on the watch."""
        if code == grpc.StatusCode.UNAVAILABLE and expert.health == "up":
            self._set(expert, "down", "UNAVAILABLE during a request")

    def _set(self, expert: Expert, health: Health, error: str = "") -> None:
        if error:
            expert.last_error = error
        if expert.health != health:
            logger.log(
                logging.INFO if health == "up" else logging.WARNING,
                "expert %s is %s%s",
                expert.name,
                health,
                f" ({error})" if error else "",
            )
            expert.health = health
            self._bump()

    async def _watch(self, expert: Expert, client: AsyncEdgeNodeClient) -> None:
        backoff_s = 0.1
        stub = health_pb2_grpc.HealthStub(client.channel)
        request = health_pb2.HealthCheckRequest(service=EDGE_NODE_SERVICE)
        while True:
            try:
                call = stub.Watch(request)  # type: ignore[attr-defined]  # untyped stub
                async for response in call:
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        if expert.info is None:
                            expert.info = await expert.client.info(timeout_s=5.0)
                        self._set(expert, "up")
                        backoff_s = 0.1
                    else:
                        self._set(expert, "down", "NOT_SERVING")
                self._set(expert, "down", "health stream ended")
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as err:
                self._set(expert, "down", err.code().name)
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, 1.0)

    async def _probe(self, expert: Expert, client: AsyncEdgeNodeClient) -> None:
        """Ask Check on a timer: a node that answers nothing in time is down, SERVING is up."""
        stub = health_pb2_grpc.HealthStub(client.channel)
        request = health_pb2.HealthCheckRequest(service=EDGE_NODE_SERVICE)
        while True:
            await asyncio.sleep(self._probe_interval_s)
            if expert.health == "unknown":
                continue  # the watch admits a node first (it also fetches its info)
            try:
                response = await stub.Check(  # type: ignore[attr-defined]  # untyped stub
                    request, timeout=self._probe_timeout_s
                )
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as err:
                if expert.health == "up":
                    self._set(
                        expert,
                        "down",
                        f"no health answer within {self._probe_timeout_s:g} s ({err.code().name})",
                    )
                continue
            if response.status != health_pb2.HealthCheckResponse.SERVING:
                self._set(expert, "down", "NOT_SERVING")
            elif expert.info is not None:
                self._set(expert, "up")

    async def _poll(self, expert: Expert, client: PolledClient) -> None:
        """Ask ``check`` at once and then on the probe timer; up only with the expert's info."""
        while True:
            try:
                problem = await asyncio.wait_for(
                    client.check(timeout_s=self._probe_timeout_s), self._probe_timeout_s
                )
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                problem = f"no health answer within {self._probe_timeout_s:g} s"
            except Exception as err:  # a client bug must not end the polling
                problem = f"health check failed ({type(err).__name__})"
            if problem:
                self._set(expert, "down", problem)
            else:
                if expert.info is None:
                    try:
                        expert.info = await client.info(timeout_s=5.0)
                    except asyncio.CancelledError:
                        raise
                    except Exception as err:  # info is best effort; health decides admission
                        logger.warning("expert %s: no info (%s)", expert.name, type(err).__name__)
                if expert.info is not None:
                    self._set(expert, "up")
            await asyncio.sleep(self._probe_interval_s)
