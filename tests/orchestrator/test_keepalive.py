"""Idle and slow links stay up: matching keepalive on every server and channel.

The orchestrator's channels ping their nodes on a timer (edge_node.transport), also while a
long request sends nothing and while the link is idle. A node that kept gRPC's default ping
policy answers ``GOAWAY too_many_pings`` after a few pings, and the request in flight loses
that expert (seen in a live sweep with an emulated Orin Nano taking 16-46 s per answer). The
test runs the real servers and channels with the project's options scaled down (pings every
0.4 s instead of 10 s), one node taking ten ping intervals per answer, and idle pauses of five
intervals; every expert must answer every request.
"""

from __future__ import annotations

import asyncio

import pytest

from edge_node import transport
from edge_node.engine import FakeEngine
from orchestrator import registry
from orchestrator.client import AsyncClient
from orchestrator.config import ClusterConfig, NodeEntry
from orchestrator.server import start_orchestrator
from tests.helpers.nodes import StartNode

PING_MS = 400


def _scaled(options: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int], ...]:
    scale = {
        "grpc.keepalive_time_ms": PING_MS,
        "grpc.keepalive_timeout_ms": PING_MS,
        "grpc.http2.min_recv_ping_interval_without_data_ms": PING_MS // 2,
        "grpc.http2.min_ping_interval_without_data_ms": PING_MS // 2,
    }
    return tuple((key, scale.get(key, value)) for key, value in options)


@pytest.mark.slow
async def test_a_fleet_left_idle_answers_with_every_expert(
    node_factory: StartNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "SERVER_OPTIONS", _scaled(transport.SERVER_OPTIONS))
    monkeypatch.setattr(transport, "CHANNEL_OPTIONS", _scaled(transport.CHANNEL_OPTIONS))
    monkeypatch.setattr(registry, "CHANNEL_OPTIONS", _scaled(registry.CHANNEL_OPTIONS))
    names = ("a", "b", "c")
    # Node "c" takes ten ping intervals per answer: pings arrive while its call sends nothing.
    delays = {"a": 0.0, "b": 0.0, "c": 10 * PING_MS / 1000}
    nodes = {
        n: await node_factory(FakeEngine(model_id=f"fake-{n}", prefill_delay_s=delays[n]))
        for n in names
    }
    config = ClusterConfig.model_validate(
        {"nodes": [NodeEntry(name=n, address=f"127.0.0.1:{v.port}") for n, v in nodes.items()]}
    )
    running = await start_orchestrator(config)
    try:
        async with AsyncClient(f"127.0.0.1:{running.port}", retries=0) as client:
            for _ in range(2):
                answer = await client.ask("Is the sky blue?", choices=[" yes", " no"], top_k=3)
                assert sorted(e.expert for e in answer.experts) == list(names)
                await asyncio.sleep(5 * PING_MS / 1000)  # idle: only pings on the links
                answer = await client.ask("Is the sky blue?", choices=[" yes", " no"], top_k=3)
                assert [e.outcome for e in answer.experts] == ["ok"] * 3
    finally:
        await running.stop(None)
