"""The node's Prometheus endpoint, scraped after real requests over gRPC."""

from __future__ import annotations

import grpc
import pytest

from edge_node.client import AsyncEdgeNodeClient
from edge_node.engine import FakeEngine
from tests.helpers.nodes import StartNode
from tests.scrape import delta, scrape, value


async def test_node_metrics_move_by_exactly_what_was_served(node_factory: StartNode) -> None:
    node = await node_factory(FakeEngine(), metrics_port=0)
    assert node.metrics_server is not None
    url = f"http://127.0.0.1:{node.metrics_server.port}/metrics"
    before = await scrape(url)
    async with AsyncEdgeNodeClient(f"127.0.0.1:{node.port}") as client:
        generated = await client.generate("one two three", max_tokens=4, timeout_s=10)
        scored = await client.score("Is it?", [" yes", " no"], timeout_s=10)
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await client.score("", [" yes"], timeout_s=10)
        assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        await client.info(timeout_s=10)
    after = await scrape(url)

    requests = "edge_node_requests_total"
    assert delta(before, after, requests, rpc="Generate", code="OK") == 1
    assert delta(before, after, requests, rpc="Score", code="OK") == 1
    assert delta(before, after, requests, rpc="Score", code="INVALID_ARGUMENT") == 1
    assert delta(before, after, requests, rpc="GetInfo", code="OK") == 1
    tokens = "edge_node_tokens_total"
    assert delta(before, after, tokens, rpc="Generate", kind="completion") == 4
    assert delta(before, after, tokens, rpc="Generate", kind="prompt") == generated.prompt_tokens
    assert delta(before, after, tokens, rpc="Score", kind="completion") == sum(scored.choice_tokens)
    # The fake node's meter is a model: its joules are counted under "estimated", never measured.
    assert generated.energy.source == scored.energy.source == "estimated"
    assert generated.energy.energy_j is not None and scored.energy.energy_j is not None
    assert delta(
        before, after, "edge_node_energy_joules_total", source="estimated"
    ) == pytest.approx(generated.energy.energy_j + scored.energy.energy_j)
    for phase in ("queue", "prefill", "decode", "total"):
        name = f"edge_node_request_{phase}_seconds"
        assert delta(before, after, f"{name}_count", rpc="Generate") == 1
        assert delta(before, after, f"{name}_count", rpc="Score") == 1  # the refused one: no work
    assert delta(
        before, after, "edge_node_request_total_seconds_sum", rpc="Generate"
    ) == pytest.approx(generated.latency.total_s)
    assert value(after, "edge_node_in_flight_requests") == 0
    assert value(after, "edge_node_queue_depth") == 0


async def test_two_nodes_in_one_process_count_separately(node_factory: StartNode) -> None:
    first = await node_factory(FakeEngine(), metrics_port=0)
    second = await node_factory(FakeEngine(), metrics_port=0)
    assert first.metrics_server is not None and second.metrics_server is not None
    async with AsyncEdgeNodeClient(f"127.0.0.1:{first.port}") as client:
        await client.score("Is it?", [" yes", " no"], timeout_s=10)
    counts = [
        value(
            await scrape(f"http://127.0.0.1:{n.metrics_server.port}/metrics"),
            "edge_node_requests_total",
            rpc="Score",
            code="OK",
        )
        for n in (first, second)
        if n.metrics_server is not None
    ]
    assert counts == [1, 0]
