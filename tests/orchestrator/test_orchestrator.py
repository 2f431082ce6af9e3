"""The orchestrator end to end over loopback with real `edge-node serve --engine fake` processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from optimizer.fine import ExitOrder, LinearPool
from orchestrator.client import AsyncClient
from orchestrator.config import ClusterConfig, NodeEntry
from orchestrator.gate import Gate, GateMetadata
from orchestrator.server import RunningOrchestrator, start_orchestrator
from testbed.procs import Served
from tests.helpers.profiles import profile

CHOICES = [" yes", " no"]


@pytest.fixture
def nodes() -> Iterator[dict[str, Served]]:
    """Three fake nodes: fast, medium (20 ms/token) and slow (1 s/token)."""
    with (
        Served.fake_node(0.0) as fast,
        Served.fake_node(0.02) as medium,
        Served.fake_node(1.0) as slow,
    ):
        yield {"fast": fast, "medium": medium, "slow": slow}


async def start(
    nodes: dict[str, Served],
    tmp_path: Path,
    figures: dict[str, tuple[float, float]],
    **options: object,
) -> RunningOrchestrator:
    path = tmp_path / "profile.json"
    profile(figures).save(path)
    config = ClusterConfig.model_validate(
        {
            "nodes": [NodeEntry(name=n, address=s.target) for n, s in nodes.items()],
            "profile": path,
            **options,
        }
    )
    return await start_orchestrator(config)


@pytest.fixture
async def running(nodes: dict[str, Served], tmp_path: Path) -> AsyncIterator[RunningOrchestrator]:
    orchestrator = await start(
        nodes, tmp_path, {"fast": (0.05, 1.0), "medium": (0.1, 2.0), "slow": (0.2, 3.0)}
    )
    yield orchestrator
    await orchestrator.stop(None)


def target(running: RunningOrchestrator) -> str:
    return f"127.0.0.1:{running.port}"


async def test_multiple_choice_is_fused_from_the_top_k_experts(
    running: RunningOrchestrator,
) -> None:
    async with AsyncClient(target(running)) as client:
        answer = await client.ask("Is it?", choices=CHOICES, category="qa", top_k=2)
    assert answer.subset == ("fast", "medium", "slow")  # no budgets: every expert is feasible
    assert len(answer.experts) == 2
    assert sum(e.gate_weight for e in answer.experts) == pytest.approx(1.0)
    assert answer.answer in CHOICES
    assert answer.fused_probs[answer.choice_index or 0] == max(answer.fused_probs)
    expected = [
        sum(e.gate_weight * e.probs[i] for e in answer.experts) for i in range(len(CHOICES))
    ]
    assert list(answer.fused_probs) == pytest.approx(expected)
    known = [
        e.energy.energy_j for e in answer.experts if e.energy and e.energy.energy_j is not None
    ]
    assert answer.energy_j == pytest.approx(sum(known))
    assert answer.energy_includes_estimates  # fake nodes estimate; never passed off as measured
    assert not answer.gate_trained


async def test_budgets_select_the_feasible_subset_with_a_certificate(
    running: RunningOrchestrator,
) -> None:
    async with AsyncClient(target(running)) as client:
        cheap = await client.plan(energy_budget_j=1.5, top_k=1)
        fast = await client.plan(delay_budget_s=0.12, top_k=1)
        both = await client.plan(energy_budget_j=3.5, delay_budget_s=1.0, top_k=2)
    assert cheap.subset == ("fast",)
    assert set(fast.subset) == {"fast", "medium"}
    assert max(fast.predicted_latency_s.values()) <= 0.12
    assert both.predicted_energy_j <= 3.5  # the two largest energies in S fit
    for plan in (cheap, fast, both):
        assert plan.upper_bound == pytest.approx(plan.objective_value)


@pytest.mark.parametrize(
    ("budgets", "named"),
    [({"delay_budget_s": 0.01}, "delay_budget_s"), ({"energy_budget_j": 0.5}, "energy_budget_j")],
)
async def test_budgets_no_subset_meets_are_failed_precondition_naming_the_budget(
    running: RunningOrchestrator, budgets: dict[str, float], named: str
) -> None:
    async with AsyncClient(target(running)) as client:
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await client.ask(
                "Is it?",
                choices=CHOICES,
                category="qa",
                energy_budget_j=budgets.get("energy_budget_j"),
                delay_budget_s=budgets.get("delay_budget_s"),
            )
    assert excinfo.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (excinfo.value.details() or "").startswith(named)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"energy_budget_j": -1.0}, "energy_budget_j"),
        ({"category": "poetry"}, "category"),
        ({"top_k": 0}, "top_k"),
        ({"scoring": "median"}, "scoring"),
    ],
)
async def test_bad_asks_are_invalid_argument_naming_the_field(
    running: RunningOrchestrator, options: dict[str, object], field: str
) -> None:
    request: dict[str, object] = {"prompt": "Is it?", "choices": CHOICES, "category": "qa"}
    request.update(options)
    prompt = str(request.pop("prompt"))
    async with AsyncClient(target(running)) as client:
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await client.ask(prompt, **request)  # type: ignore[arg-type]
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (excinfo.value.details() or "").startswith(field)


async def test_a_slow_expert_is_dropped_at_the_deadline(
    nodes: dict[str, Served], tmp_path: Path
) -> None:
    # The profile claims "slow" is fast, so the plan includes it; the node then takes 2 s.
    # ("medium" has no figures and is not probed, so budgeted plans leave it out.)
    figures = {"fast": (0.05, 1.0), "slow": (0.05, 1.0)}
    running = await start(nodes, tmp_path, figures, top_k=2, probe=False)
    try:
        async with AsyncClient(target(running)) as client:
            started = time.monotonic()
            answer = await client.ask("Is it?", choices=CHOICES, category="qa", delay_budget_s=0.5)
            elapsed = time.monotonic() - started
    finally:
        await running.stop(None)
    outcomes = {e.expert: e.outcome for e in answer.experts}
    assert outcomes == {"fast": "ok", "slow": "deadline"}
    assert elapsed < 0.5 + 0.2  # the answer came within the budget (plus transport slack)
    fast = next(e for e in answer.experts if e.expert == "fast")
    assert fast.gate_weight == pytest.approx(1.0)  # renormalised over those that answered
    assert answer.fused_probs == pytest.approx(fast.probs)


async def test_a_killed_node_is_dropped_replanned_and_readmitted(tmp_path: Path) -> None:
    with Served.fake_node(0.0) as steady, Served.fake_node(0.3) as doomed:
        nodes = {"steady": steady, "doomed": doomed}
        running = await start(nodes, tmp_path, {"steady": (0.05, 1.0), "doomed": (0.7, 1.0)})
        try:
            async with AsyncClient(target(running)) as client:
                pending = asyncio.create_task(
                    client.ask(
                        "Is it?", choices=CHOICES, category="qa", top_k=2, delay_budget_s=2.0
                    )
                )
                await asyncio.sleep(0.2)
                doomed.kill()  # mid-request: its Score takes 0.6 s
                answer = await pending
                outcomes = {e.expert: (e.outcome, e.status_code) for e in answer.experts}
                assert outcomes["steady"] == ("ok", "OK")
                assert outcomes["doomed"] == ("error", "UNAVAILABLE")
                assert answer.latency_s < 2.0

                registry = running.orchestrator.registry
                replanned = await client.ask("Is it?", choices=CHOICES, category="qa", top_k=2)
                assert replanned.subset == ("steady",)
                fleet, _, _ = await client.experts()
                assert {e.name: e.health for e in fleet}["doomed"] == "down"

                with Served.fake_node(0.0, port=doomed.port):
                    deadline = time.monotonic() + 10
                    while registry.get("doomed").health != "up":  # type: ignore[union-attr]
                        assert time.monotonic() < deadline, "node was not re-admitted"
                        await asyncio.sleep(0.05)
                    back = await client.ask("Is it?", choices=CHOICES, category="qa", top_k=2)
                    assert set(back.subset) == {"steady", "doomed"}
                    assert all(e.outcome == "ok" for e in back.experts)
        finally:
            await running.stop(None)


async def test_open_prompts_are_generated_and_fused(running: RunningOrchestrator) -> None:
    async with AsyncClient(target(running)) as client:
        answer = await client.ask("Tell me", category="qa", top_k=3, max_tokens=3)
    texts = {e.text for e in answer.experts}
    assert len(answer.experts) == 3
    assert len(texts) == 1  # the fake engine answers the same prompt identically
    assert answer.answer == texts.pop()
    assert answer.choice_index is None


async def test_list_experts_and_runtime_registration(
    running: RunningOrchestrator, nodes: dict[str, Served]
) -> None:
    async with AsyncClient(target(running)) as client:
        fleet, trained, gate = await client.experts()
        assert {e.name for e in fleet} == {"fast", "medium", "slow"}
        assert all(e.health == "up" for e in fleet)
        assert all(e.profile_age_s is not None for e in fleet)
        assert not trained
        assert "uniform" in gate
        with Served.fake_node(0.0) as extra:
            from protos import orchestrator_pb2 as pb
            from protos import orchestrator_pb2_grpc as pb_grpc

            async with grpc.aio.insecure_channel(target(running)) as channel:
                stub = pb_grpc.OrchestratorStub(channel)
                added = await stub.RegisterNode(
                    pb.RegisterNodeRequest(name="extra", address=extra.target), timeout=5
                )
                assert added.expert.health == "up"
                with pytest.raises(grpc.aio.AioRpcError) as bad:
                    await stub.RegisterNode(pb.RegisterNodeRequest(name="x", address="nope"))
                assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                await stub.DeregisterNode(pb.DeregisterNodeRequest(name="extra"), timeout=5)
                with pytest.raises(grpc.aio.AioRpcError) as missing:
                    await stub.DeregisterNode(pb.DeregisterNodeRequest(name="extra"))
                assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        fleet, _, _ = await client.experts()
    assert {e.name for e in fleet} == {"fast", "medium", "slow"}


async def test_reloading_the_cluster_file_adds_and_removes_nodes(tmp_path: Path) -> None:
    from orchestrator.config import load_cluster
    from orchestrator.server import reload_nodes

    with Served.fake_node(0.0) as first, Served.fake_node(0.0) as second:
        cluster = tmp_path / "cluster.toml"
        cluster.write_text(f'[[nodes]]\nname = "first"\naddress = "{first.target}"\n')
        running = await start_orchestrator(load_cluster(cluster))
        registry = running.orchestrator.registry
        try:
            cluster.write_text(
                cluster.read_text() + f'[[nodes]]\nname = "second"\naddress = "{second.target}"\n'
            )
            await reload_nodes(cluster, registry)
            await registry.wait_settled(5.0)
            assert {e.name: e.health for e in registry.all()} == {"first": "up", "second": "up"}
            cluster.write_text(f'[[nodes]]\nname = "second"\naddress = "{second.target}"\n')
            await reload_nodes(cluster, registry)
            assert [e.name for e in registry.all()] == ["second"]
        finally:
            await running.stop(None)


@pytest.fixture
def three_fast() -> Iterator[dict[str, Served]]:
    """Three fake nodes that answer at once (their profile says what the plan believes)."""
    with Served.fake_node(0.0) as a, Served.fake_node(0.0) as b, Served.fake_node(0.0) as c:
        yield {"a": a, "b": b, "c": c}


@pytest.mark.parametrize(
    ("threshold", "delay_budget_s", "asked", "staged"),
    [
        (0.5, 2.5, 1, True),  # one in turn (1 s + the slowest of the rest, 1 s): it is sure enough
        (1.0, 2.5, 3, True),  # one in turn, never sure enough: the other two together
        (0.5, 3.5, 1, True),  # all three in turn fit (3 s)
        (0.5, 1.5, 3, False),  # not even one in turn fits: in parallel, as without early exit
    ],
)
async def test_early_exit_runs_in_turn_as_many_experts_as_the_delay_budget_allows(
    three_fast: dict[str, Served],
    tmp_path: Path,
    threshold: float,
    delay_budget_s: float,
    asked: int,
    staged: bool,
) -> None:
    meta = GateMetadata(
        experts=("a", "b", "c"), encoder_name="hashing", encoder_dim=2, head="uniform"
    )
    gate = Gate(
        meta, {}, LinearPool(), exit_threshold=threshold, exit_order=ExitOrder.cheapest([1, 2, 3])
    )
    figures = {name: (1.0, 1.0) for name in three_fast}  # worst case 1 s each
    running = await start(three_fast, tmp_path, figures, gate=gate.save(tmp_path / "gate.npz"))
    try:
        async with AsyncClient(target(running)) as client:
            answer = await client.ask(
                "Is it?",
                choices=CHOICES,
                category="qa",
                top_k=3,
                early_exit=True,
                delay_budget_s=delay_budget_s,
            )
    finally:
        await running.stop(None)
    assert answer.early_exit is staged
    assert len(answer.experts) == asked and answer.experts_skipped == 3 - asked
    assert answer.experts[0].expert == "a"  # the exit order's first
    assert answer.within_delay_budget
