"""A node that stops answering without closing its connection is found in seconds (SIGSTOP)."""

from __future__ import annotations

import asyncio
import signal
import time

from orchestrator.client import AsyncClient
from orchestrator.config import ClusterConfig, NodeEntry
from orchestrator.server import start_orchestrator
from testbed.procs import Served

CHOICES = [" yes", " no"]


async def _wait_health(running: object, name: str, health: str, timeout_s: float) -> float:
    """Seconds until the registry reports ``health`` for ``name`` (fails after timeout_s)."""
    registry = running.orchestrator.registry  # type: ignore[attr-defined]
    started = time.monotonic()
    while registry.get(name).health != health:
        assert time.monotonic() - started < timeout_s, f"{name} never became {health}"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_a_stopped_node_is_marked_down_routed_around_and_readmitted() -> None:
    with Served.fake_node(0.0) as steady, Served.fake_node(0.0) as hung:
        config = ClusterConfig.model_validate(
            {
                "nodes": [
                    NodeEntry(name="steady", address=steady.target),
                    NodeEntry(name="hung", address=hung.target),
                ]
            }
        )
        running = await start_orchestrator(config)
        try:
            await _wait_health(running, "hung", "up", 10)
            hung.process.send_signal(signal.SIGSTOP)  # alive, connected, silent
            down_after_s = await _wait_health(running, "hung", "down", 10)
            assert down_after_s < 4.0  # one probe interval plus one probe timeout, and slack
            async with AsyncClient(f"127.0.0.1:{running.port}") as client:
                started = time.monotonic()
                answer = await client.ask("Is it?", choices=CHOICES, top_k=2)
                assert time.monotonic() - started < 2.0  # no wait on the silent node
                assert answer.subset == ("steady",)
                assert [e.outcome for e in answer.experts] == ["ok"]
                hung.process.send_signal(signal.SIGCONT)
                await _wait_health(running, "hung", "up", 10)
                back = await client.ask("Is it?", choices=CHOICES, top_k=2)
                assert set(back.subset) == {"steady", "hung"}
                assert all(e.outcome == "ok" for e in back.experts)
        finally:
            hung.process.send_signal(signal.SIGCONT)
            await running.stop(None)
