"""An orchestrator over one edge node and one OpenAI-compatible server, end to end via the SDK."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge_node.server import RunningNode
from orchestrator.client import AsyncClient
from orchestrator.config import ClusterConfig, ClusterError, NodeEntry, load_cluster
from orchestrator.server import RunningOrchestrator, StartupError, reload_nodes, start_orchestrator
from tests.helpers.fake_openai import LIKELY_LOGPROB, UNLIKELY_LOGPROB, FakeOpenAI

CHOICES = [" yes", " no"]
PROMPT = "Q: Is the sky blue?\nA:"


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI().start()
    yield server
    await server.stop()


def config_for(node: RunningNode, fake: FakeOpenAI, **openai: object) -> ClusterConfig:
    return ClusterConfig.model_validate(
        {
            "nodes": [
                NodeEntry(name="edge", address=f"127.0.0.1:{node.port}"),
                NodeEntry.model_validate(
                    {
                        "name": "oai",
                        "kind": "openai",
                        "base_url": fake.base_url,
                        "model": fake.state.model,
                        **openai,
                    }
                ),
            ],
            "top_k": 2,
        }
    )


async def started(config: ClusterConfig) -> RunningOrchestrator:
    running = await start_orchestrator(config)
    await wait_health(running, "oai", "up", 5)
    await wait_health(running, "edge", "up", 5)
    return running


async def wait_health(
    running: RunningOrchestrator, name: str, health: str, limit_s: float
) -> float:
    """Seconds until the registry reports ``health`` for ``name``."""
    registry = running.orchestrator.registry
    begun = time.monotonic()
    while (expert := registry.get(name)) is None or expert.health != health:
        assert time.monotonic() - begun < limit_s, f"{name} never became {health}"
        await asyncio.sleep(0.05)
    return time.monotonic() - begun


def target(running: RunningOrchestrator) -> str:
    return f"127.0.0.1:{running.port}"


async def test_multiple_choice_fuses_a_node_and_an_openai_server_by_log_probabilities(
    fake_node: RunningNode, fake: FakeOpenAI
) -> None:
    running = await started(config_for(fake_node, fake, multiple_choice="logprobs"))
    try:
        async with AsyncClient(target(running)) as client:
            answer = await client.ask(PROMPT, choices=CHOICES)
            fleet, _, _ = await client.experts()
    finally:
        await running.stop(None)
    by_name = {e.expert: e for e in answer.experts}
    assert {n: (e.outcome, e.status_code) for n, e in by_name.items()} == {
        "edge": ("ok", "OK"),
        "oai": ("ok", "OK"),
    }
    peak = math.exp(LIKELY_LOGPROB) / (math.exp(LIKELY_LOGPROB) + math.exp(UNLIKELY_LOGPROB))
    assert by_name["oai"].probs == pytest.approx((peak, 1 - peak))
    expected = [sum(e.gate_weight * e.probs[i] for e in answer.experts) for i in range(2)]
    assert list(answer.fused_probs) == pytest.approx(expected)
    oai_energy = by_name["oai"].energy
    assert oai_energy is not None
    assert oai_energy.energy_j is None  # unknown, never 0
    assert oai_energy.source == "unavailable"
    assert not answer.energy_complete
    edge_energy = by_name["edge"].energy
    assert edge_energy is not None
    assert answer.energy_j == pytest.approx(edge_energy.energy_j)
    listed = {e.name: e for e in fleet}["oai"]
    assert (listed.address, listed.model_id, listed.health) == (fake.base_url, "fake-model", "up")
    assert listed.energy_source == "unavailable"


async def test_multiple_choice_by_generation_where_the_server_refuses_echo(
    fake_node: RunningNode, fake: FakeOpenAI
) -> None:
    fake.state.echo = "refuse"
    fake.state.answer = " No."
    running = await started(config_for(fake_node, fake))  # multiple_choice = "auto"
    try:
        async with AsyncClient(target(running)) as client:
            answer = await client.ask(PROMPT, choices=CHOICES)
    finally:
        await running.stop(None)
    oai = next(e for e in answer.experts if e.expert == "oai")
    assert oai.outcome == "ok"
    assert oai.probs[1] == pytest.approx(1.0)  # one-hot on the matched choice
    assert answer.answer in CHOICES


async def test_open_prompts_and_an_estimated_energy_from_the_configured_power(
    fake_node: RunningNode, fake: FakeOpenAI
) -> None:
    fake.state.answer = " Blue, mostly."
    running = await started(config_for(fake_node, fake, power_w=25.0, endpoint="chat"))
    try:
        async with AsyncClient(target(running)) as client:
            answer = await client.ask("Tell me the colour of the sky.", max_tokens=4)
    finally:
        await running.stop(None)
    oai = next(e for e in answer.experts if e.expert == "oai")
    assert oai.outcome == "ok"
    assert oai.text == " Blue, mostly."
    assert answer.answer in {e.text for e in answer.experts}
    assert oai.energy is not None
    assert oai.energy.source == "estimated"  # labelled; never measured-*
    assert oai.energy.method == "configured-power-model"
    assert oai.energy.energy_j == pytest.approx(25.0 * (oai.node_latency.total_s), rel=1e-6)  # type: ignore[union-attr]
    assert answer.energy_complete
    assert answer.energy_includes_estimates
    assert fake.state.requests[-1][0] == "chat/completions"


async def test_an_openai_server_that_goes_down_is_routed_around_and_readmitted(
    fake_node: RunningNode, fake: FakeOpenAI
) -> None:
    running = await started(config_for(fake_node, fake))
    try:
        async with AsyncClient(target(running)) as client:
            await fake.stop()  # connections refused from now on
            assert await wait_health(running, "oai", "down", 10) < 3.0
            alone = await client.ask(PROMPT, choices=CHOICES)
            assert alone.subset == ("edge",)
            assert [e.outcome for e in alone.experts] == ["ok"]
            fleet, _, _ = await client.experts()
            assert {e.name: e.health for e in fleet} == {"edge": "up", "oai": "down"}
            await fake.start()  # the same port
            assert await wait_health(running, "oai", "up", 10) < 3.0
            back = await client.ask(PROMPT, choices=CHOICES)
            assert set(back.subset) == {"edge", "oai"}
            assert all(e.outcome == "ok" for e in back.experts)
    finally:
        await running.stop(None)


async def test_a_500_is_that_experts_error_and_the_other_answer_is_used(
    fake_node: RunningNode, fake: FakeOpenAI
) -> None:
    running = await started(config_for(fake_node, fake))
    try:
        fake.state.fail_with = 500
        async with AsyncClient(target(running)) as client:
            answer = await client.ask(PROMPT, choices=CHOICES)
            fake.state.fail_with = 503  # loading / overloaded: marked down until health is back
            later = await client.ask("Tell me", max_tokens=3)
    finally:
        await running.stop(None)
    outcomes = {e.expert: (e.outcome, e.status_code) for e in answer.experts}
    assert outcomes == {"edge": ("ok", "OK"), "oai": ("error", "INTERNAL")}
    edge = next(e for e in answer.experts if e.expert == "edge")
    assert edge.gate_weight == pytest.approx(1.0)
    assert answer.fused_probs == pytest.approx(edge.probs)
    later_outcomes = {e.expert: (e.outcome, e.status_code) for e in later.experts}
    assert later_outcomes == {"edge": ("ok", "OK"), "oai": ("error", "UNAVAILABLE")}


async def test_a_missed_deadline_is_reported_as_deadline(
    fake_node: RunningNode, fake: FakeOpenAI
) -> None:
    running = await started(config_for(fake_node, fake))
    try:
        fake.state.delay_s = 3.0
        async with AsyncClient(target(running)) as client:
            begun = time.monotonic()
            answer = await client.ask(PROMPT, choices=CHOICES, delay_budget_s=0.8)
            elapsed = time.monotonic() - begun
    finally:
        fake.state.delay_s = 0.0
        await running.stop(None)
    outcomes = {e.expert: e.outcome for e in answer.experts}
    assert outcomes == {"edge": "ok", "oai": "deadline"}
    assert elapsed < 0.8 + 0.3


async def test_reloading_keeps_an_unchanged_openai_entry_and_replaces_a_changed_one(
    fake_node: RunningNode, fake: FakeOpenAI, tmp_path: Path
) -> None:
    cluster = tmp_path / "cluster.toml"
    entry = f'[[nodes]]\nname = "oai"\nkind = "openai"\nbase_url = "{fake.base_url}"\n'
    cluster.write_text(entry + 'model = "fake-model"\n')
    running = await start_orchestrator(load_cluster(cluster))
    registry = running.orchestrator.registry
    try:
        await wait_health(running, "oai", "up", 5)
        first = registry.get("oai")
        await reload_nodes(cluster, registry)
        assert registry.get("oai") is first
        cluster.write_text(entry + 'model = "fake-model"\npower_w = 5.0\n')
        await reload_nodes(cluster, registry)
        replaced = registry.get("oai")
        assert replaced is not first
        await wait_health(running, "oai", "up", 5)
        assert replaced is not None
        assert replaced.info is not None
        assert replaced.info.energy_source == "estimated"
    finally:
        await running.stop(None)


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ('kind = "openai"\nmodel = "m"', 'nodes.0: base_url: required for kind = "openai"'),
        ('kind = "openai"\nbase_url = "http://h:8080/v1"', "nodes.0: model: required for kind"),
        (
            'kind = "openai"\nbase_url = "h:8080"\nmodel = "m"',
            "nodes.0.base_url: must be an http:// or https:// URL, got 'h:8080'",
        ),
        (
            'kind = "openai"\nbase_url = "http://h/v1"\nmodel = "m"\napi_key = "sk-1"',
            "nodes.0.api_key: unknown key",
        ),
        (
            'kind = "openai"\nbase_url = "http://h/v1"\nmodel = "m"\naddress = "h:1"',
            'nodes.0: address: not for kind = "openai" (use base_url)',
        ),
        (
            'kind = "openai"\nbase_url = "http://h/v1"\nmodel = "m"\npower_w = 0',
            "nodes.0.power_w: Input should be greater than 0",
        ),
        (
            'kind = "openai"\nbase_url = "http://h/v1"\nmodel = "m"\nmultiple_choice = "vote"',
            "nodes.0.multiple_choice: Input should be 'auto', 'logprobs' or 'generate'",
        ),
        ('address = "h:1"\nmodel = "m"', 'nodes.0: model: only for kind = "openai"'),
        ('kind = "grpc"\naddress = "h:1"', "nodes.0.kind: Input should be 'edge-node' or 'openai'"),
    ],
)
def test_cluster_file_errors_are_one_line_naming_the_key(
    tmp_path: Path, entry: str, error: str
) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(f'[[nodes]]\nname = "a"\n{entry}\n')
    with pytest.raises(ClusterError) as excinfo:
        load_cluster(path)
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {error}")


async def test_a_missing_api_key_file_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(
        '[[nodes]]\nname = "a"\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        'model = "m"\napi_key_file = "missing.key"\n'
    )
    config = load_cluster(path)
    assert config.nodes[0].api_key_file == tmp_path / "missing.key"  # relative to the file
    with pytest.raises(StartupError) as excinfo:
        await start_orchestrator(config)
    assert str(excinfo.value) == (
        f"cluster file: nodes[a].api_key_file: {tmp_path / 'missing.key'} does not exist"
    )


async def test_moe2_profile_measures_an_openai_expert(
    fake_node: RunningNode, fake: FakeOpenAI
) -> None:
    from testbed.categories import Item
    from testbed.profiling import profile_cluster

    items = [Item("qa", f"i{n}", PROMPT, tuple(CHOICES), 0, "sum") for n in range(3)]
    profile = await profile_cluster(config_for(fake_node, fake, power_w=10.0), items)
    oai = profile.experts["oai"]
    assert (oai.address, oai.model_id, oai.energy_source) == (
        fake.base_url,
        "fake-model",
        "estimated",
    )
    stats = oai.categories["qa"]
    assert stats.samples == 3
    assert stats.accuracy == 1.0  # the fake favours " yes", the gold choice
    assert stats.energy_j is not None
    assert stats.energy_j["max"] == pytest.approx(10.0 * stats.latency_s["max"], rel=0.5)


async def test_an_openai_expert_is_probed_so_a_budget_works_from_the_first_request(
    fake_node: RunningNode, fake: FakeOpenAI
) -> None:
    running = await started(config_for(fake_node, fake, power_w=10.0))
    try:
        assert running.orchestrator.book.has_figures("oai")  # measured before serving
        async with AsyncClient(target(running)) as client:
            answer = await client.ask(
                PROMPT, choices=CHOICES, delay_budget_s=5.0, energy_budget_j=1000.0
            )
    finally:
        await running.stop(None)
    assert set(answer.subset) == {"edge", "oai"}
    assert all(e.outcome == "ok" for e in answer.experts)


async def test_an_open_answer_from_an_openai_expert_alone_is_streamed(
    fake_node: RunningNode, fake: FakeOpenAI
) -> None:
    from orchestrator.core import AskParams

    fake.state.answer = " It is blue."
    running = await started(config_for(fake_node, fake))
    texts: list[str] = []
    try:
        result = await running.orchestrator.ask(
            AskParams(prompt="Tell me", expert="oai", max_tokens=8), on_text=texts.append
        )
    finally:
        await running.stop(None)
    assert texts == [" It", " is", " blue", "."]
    assert result.answer == " It is blue."
    assert [e.expert for e in result.experts] == ["oai"]
