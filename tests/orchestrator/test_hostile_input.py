"""The orchestrator refuses what the nodes would refuse, and bad budgets, before dispatch."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from edge_node.server import RunningNode
from orchestrator.client import AsyncClient
from orchestrator.config import ClusterConfig, ClusterError, NodeEntry, load_cluster
from orchestrator.server import RunningOrchestrator, start_orchestrator
from tests.helpers.grpc_raw import GARBAGE, raw_call
from tests.helpers.nodes import StartNode


async def orchestrate(nodes: list[RunningNode], **options: object) -> RunningOrchestrator:
    config = ClusterConfig.model_validate(
        {
            "nodes": [
                NodeEntry(name=f"n{i}", address=f"127.0.0.1:{node.port}")
                for i, node in enumerate(nodes)
            ],
            **options,
        }
    )
    return await start_orchestrator(config, settle_s=5.0)


@pytest.fixture
async def pair(
    node_factory: StartNode,
) -> AsyncIterator[tuple[RunningOrchestrator, list[RunningNode]]]:
    nodes = [await node_factory(), await node_factory()]
    running = await orchestrate(nodes)
    yield running, nodes
    await running.stop(None)


def target(running: RunningOrchestrator) -> str:
    return f"127.0.0.1:{running.port}"


@pytest.mark.parametrize(
    "method",
    ["Ask", "Plan", "ListExperts", "RegisterNode", "DeregisterNode"],
)
async def test_malformed_protobuf_is_invalid_argument(
    pair: tuple[RunningOrchestrator, list[RunningNode]], method: str
) -> None:
    running, _ = pair
    err = await raw_call(
        target(running), f"/moe2.v1.Orchestrator/{method}", GARBAGE, streaming=False
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == f"request: not a valid {method} request message"


@pytest.mark.parametrize(
    ("prompt", "choices", "details"),
    [
        ("p" * 262_145, (), "prompt: 262145 bytes exceeds the limit of 262144 bytes"),
        ("p", tuple(f" {i}" for i in range(33)), "choices: 33 given, at most 32 allowed"),
        ("p", (" yes", "n" * 4097), "choices[1]: 4097 bytes exceeds the limit of 4096 bytes"),
    ],
)
async def test_what_the_nodes_would_refuse_is_refused_before_dispatch(
    pair: tuple[RunningOrchestrator, list[RunningNode]],
    prompt: str,
    choices: tuple[str, ...],
    details: str,
) -> None:
    running, nodes = pair
    before = [node.engine.completed for node in nodes]  # the start-up probes' requests
    async with AsyncClient(target(running)) as client:
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await client.ask(prompt, choices=choices, top_k=2)
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert excinfo.value.details() == details
    assert [node.engine.completed for node in nodes] == before  # nothing was dispatched


BAD_BUDGETS = [math.inf, math.nan, -1.0, 0.0, 1e10]


@pytest.mark.parametrize("value", BAD_BUDGETS)
@pytest.mark.parametrize("field", ["energy_budget_j", "delay_budget_s"])
async def test_bad_budgets_are_invalid_argument_on_ask_and_plan(
    pair: tuple[RunningOrchestrator, list[RunningNode]], field: str, value: float
) -> None:
    running, nodes = pair
    before = [node.engine.completed for node in nodes]  # the start-up probes' requests
    budgets: dict[str, float] = {field: value}
    async with AsyncClient(target(running)) as client:
        with pytest.raises(grpc.aio.AioRpcError) as asked:
            await client.ask(
                "Is it?",
                choices=[" yes", " no"],
                timeout_s=5,
                energy_budget_j=budgets.get("energy_budget_j"),
                delay_budget_s=budgets.get("delay_budget_s"),
            )
        with pytest.raises(grpc.aio.AioRpcError) as planned:
            await client.plan(
                energy_budget_j=budgets.get("energy_budget_j"),
                delay_budget_s=budgets.get("delay_budget_s"),
            )
    for err in (asked.value, planned.value):
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.details() or "").startswith(f"{field}: ")
    assert [node.engine.completed for node in nodes] == before


async def test_per_category_delay_budgets_are_checked_too(
    pair: tuple[RunningOrchestrator, list[RunningNode]],
) -> None:
    running, _ = pair
    async with AsyncClient(target(running)) as client:
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await client.plan(delay_budget_s={"qa": math.inf})
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        excinfo.value.details() == "delay_budget_s[qa]: must be a finite positive number, got inf"
    )


async def test_enumerating_plans_are_bounded_by_fleet_size(node_factory: StartNode) -> None:
    nodes = [await node_factory() for _ in range(17)]
    running = await orchestrate(nodes)
    try:
        async with AsyncClient(target(running)) as client:
            with pytest.raises(grpc.aio.AioRpcError) as excinfo:
                await client.plan(method="exhaustive")
            dmo = await client.plan(method="dmo")
    finally:
        await running.stop(None)
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert excinfo.value.details() == (
        "method: exhaustive enumerates subsets and is limited to 16 experts, 17 are up; "
        "use dmo, greedy or milp"
    )
    assert dmo.subset


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("delay_budget_s = inf", "delay_budget_s: must be a finite positive number, got inf"),
        ("energy_budget_j = 1e10", "energy_budget_j: 1e+10 exceeds the maximum of 1e+06"),
        ("default_timeout_s = 1e10", "default_timeout_s: 1e+10 exceeds the maximum of 3600"),
    ],
)
def test_bad_budgets_in_the_cluster_file_are_one_line(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(f'{line}\n[[nodes]]\nname = "a"\naddress = "127.0.0.1:1"\n')
    with pytest.raises(ClusterError) as excinfo:
        load_cluster(path)
    assert str(excinfo.value) == f"{path}: {message}"


def test_moe2_serve_refuses_a_port_outside_the_range(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text('[[nodes]]\nname = "a"\naddress = "127.0.0.1:1"\n')
    done = subprocess.run(
        [sys.executable, "-m", "testbed.cli", "serve", "--cluster", str(path), "--port", "70000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "moe2: error: --port: must be in 0-65535, got 70000"
    ]
