"""Shared fixtures: real gRPC edge nodes on 127.0.0.1:0 (fake engine or a real model)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from edge_node.energy import EnergyMeter, ModeledEnergyMeter
from edge_node.engine import Engine, FakeEngine, SerializedEngine
from edge_node.limits import RequestLimits
from edge_node.security import ServerSecurity
from edge_node.server import RunningNode, start_node
from protos import edge_node_pb2 as pb
from tests.helpers.nodes import StartNode


@pytest.fixture
async def node_factory() -> AsyncIterator[StartNode]:
    """Start nodes over any engine; every node started is stopped at teardown."""
    started: list[RunningNode] = []

    async def start(
        engine: Engine | None = None,
        *,
        meter: EnergyMeter | None = None,
        max_queue_depth: int = 8,
        limits: RequestLimits | None = None,
        emulated: bool = False,
        security: ServerSecurity | None = None,
        host: str = "127.0.0.1",
        metrics_port: int | None = None,
    ) -> RunningNode:
        serialized = SerializedEngine(
            engine or FakeEngine(),
            meter or ModeledEnergyMeter(power_w=10.0),
            max_queue_depth=max_queue_depth,
        )
        try:
            node = await start_node(
                serialized,
                host=host,
                limits=limits,
                emulated=emulated,
                security=security,
                metrics_port=metrics_port,
            )
        except BaseException:
            serialized.close()
            raise
        started.append(node)
        return node

    yield start
    for node in started:
        if node.state.value != pb.NODE_STATE_DRAINING:  # not already stopped by the test
            await node.stop(None)


@pytest.fixture
async def fake_node(node_factory: StartNode) -> RunningNode:
    """A node with the fake engine, 10 ms per token."""
    return await node_factory(FakeEngine(token_delay_s=0.01))
