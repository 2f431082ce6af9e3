"""Budgets work from the first request: experts without figures are measured before planning."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from edge_node.engine import FakeEngine
from orchestrator.client import AsyncClient
from orchestrator.config import ClusterConfig, NodeEntry
from orchestrator.server import RunningOrchestrator, reload_files, start_orchestrator
from tests.helpers.nodes import StartNode
from tests.helpers.profiles import profile

CHOICES = [" yes", " no"]


def cluster(nodes: dict[str, int], **options: object) -> ClusterConfig:
    return ClusterConfig.model_validate(
        {
            "nodes": [NodeEntry(name=n, address=f"127.0.0.1:{port}") for n, port in nodes.items()],
            **options,
        }
    )


async def sources(running: RunningOrchestrator) -> dict[str, str]:
    async with AsyncClient(f"127.0.0.1:{running.port}") as client:
        fleet, _, _ = await client.experts()
    return {e.name: e.profile_source for e in fleet}


async def test_a_cluster_without_a_profile_is_measured_before_it_serves(
    node_factory: StartNode,
) -> None:
    fast = await node_factory(FakeEngine(model_id="fast", prefill_delay_s=0.01))
    slow = await node_factory(FakeEngine(model_id="slow", prefill_delay_s=0.3))
    running = await start_orchestrator(cluster({"fast": fast.port, "slow": slow.port}))
    try:
        assert await sources(running) == {"fast": "probe", "slow": "probe"}
        book = running.orchestrator.book
        assert (book.latency_s("fast", "*") or 0) < 0.2 < (book.latency_s("slow", "*") or 0)
        async with AsyncClient(f"127.0.0.1:{running.port}") as client:
            # the first budgeted request works: no hand-made profile, no FAILED_PRECONDITION
            answer = await client.ask("Is it?", choices=CHOICES, delay_budget_s=0.2, top_k=1)
            assert answer.subset == ("fast",)  # the probe measured the slow one at ~0.3 s
            both = await client.ask("Is it?", choices=CHOICES, delay_budget_s=5.0, top_k=2)
            assert set(both.subset) == {"fast", "slow"}
    finally:
        await running.stop(None)


async def test_a_node_registered_at_run_time_is_probed_before_budgeted_plans_use_it(
    node_factory: StartNode,
) -> None:
    first = await node_factory(FakeEngine(model_id="first"))
    running = await start_orchestrator(cluster({"first": first.port}))
    try:
        late = await node_factory(FakeEngine(model_id="late"))
        async with AsyncClient(f"127.0.0.1:{running.port}") as client:
            # what RegisterNode does (the servicer's only step)
            await running.orchestrator.registry.add("late", f"127.0.0.1:{late.port}")
            deadline = time.monotonic() + 20
            while (await sources(running)).get("late") != "probe":
                assert time.monotonic() < deadline, "the new node was never probed"
                await asyncio.sleep(0.05)
            plan = await client.plan(delay_budget_s=5.0, top_k=2)
            assert set(plan.subset) == {"first", "late"}
    finally:
        await running.stop(None)


async def test_without_probing_a_budget_needs_a_profile(node_factory: StartNode) -> None:
    node = await node_factory(FakeEngine())
    running = await start_orchestrator(cluster({"a": node.port}, probe=False))
    try:
        assert await sources(running) == {"a": ""}
        async with AsyncClient(f"127.0.0.1:{running.port}") as client:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.ask("Is it?", choices=CHOICES, delay_budget_s=1.0)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "moe2 profile" in (caught.value.details() or "")
    finally:
        await running.stop(None)


async def test_sighup_reads_the_profile_file_again(node_factory: StartNode, tmp_path: Path) -> None:
    node = await node_factory(FakeEngine())
    path = tmp_path / "cluster.toml"
    nodes = f'[[nodes]]\nname = "a"\naddress = "127.0.0.1:{node.port}"\n'
    path.write_text(nodes)
    running = await start_orchestrator(cluster({"a": node.port}))
    try:
        assert await sources(running) == {"a": "probe"}
        profile({"a": (7.5, 2.0)}).save(tmp_path / "profile.json")
        path.write_text('profile = "profile.json"\n' + nodes)
        reload_files(path, running.orchestrator)
        assert await sources(running) == {"a": "file"}
        assert running.orchestrator.book.latency_s("a", "qa") == pytest.approx(7.5)
    finally:
        await running.stop(None)
