"""The EdgeNode service over real gRPC on loopback, with the fake engine."""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from edge_node.client import AsyncEdgeNodeClient, GenerateResult, TokenChunk
from edge_node.energy import UnavailableEnergyMeter
from edge_node.engine import FakeEngine, GenerateParams, Generation, Scores, TokenCallback
from edge_node.limits import RequestLimits
from edge_node.server import SERVICE_NAME, RunningNode
from protos import edge_node_pb2 as pb
from protos import edge_node_pb2_grpc as pb_grpc
from tests.helpers.nodes import StartNode


def address(node: RunningNode) -> str:
    return f"127.0.0.1:{node.port}"


async def rpc_error(coroutine: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await coroutine  # type: ignore[misc]
    return excinfo.value


async def test_generate_streams_chunks_then_a_result_with_costs(fake_node: RunningNode) -> None:
    async with AsyncEdgeNodeClient(address(fake_node)) as client:
        events = [e async for e in client.stream("hello there", max_tokens=5, timeout_s=5)]
    chunks = [e for e in events if isinstance(e, TokenChunk)]
    result = events[-1]
    assert isinstance(result, GenerateResult)
    assert len(chunks) == 5
    assert "".join(c.text for c in chunks) == result.text
    assert [c.elapsed_s for c in chunks] == sorted(c.elapsed_s for c in chunks)
    assert result.completion_tokens == 5 and result.prompt_tokens == 2
    assert result.finish_reason == "length"
    latency = result.latency
    assert latency.decode_s >= 0.03  # 4 more tokens at 10 ms each after the first
    parts = latency.queue_s + latency.prefill_s + latency.decode_s
    assert parts == pytest.approx(latency.total_s, abs=1e-6)
    # ModeledEnergyMeter(10 W) over the compute window: labelled estimated, never measured.
    assert result.energy.source == "estimated"
    assert not result.energy.measured
    assert result.energy.energy_j == pytest.approx(10.0 * result.energy.window_s, rel=1e-6)


async def test_generate_is_deterministic_for_equal_prompts(fake_node: RunningNode) -> None:
    async with AsyncEdgeNodeClient(address(fake_node)) as client:
        first = await client.generate("same prompt", max_tokens=4)
        second = await client.generate("same prompt", max_tokens=4)
        other = await client.generate("other prompt", max_tokens=4)
    assert first.text == second.text
    assert first.text != other.text


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.GenerateRequest(prompt="", max_tokens=3), "prompt"),
        (pb.GenerateRequest(prompt="x", max_tokens=0), "max_tokens"),
        (pb.GenerateRequest(prompt="x", max_tokens=-4), "max_tokens"),
        (pb.GenerateRequest(prompt="x", max_tokens=3, temperature=math.nan), "temperature"),
        (pb.GenerateRequest(prompt="x", max_tokens=3, temperature=-1.0), "temperature"),
    ],
)
async def test_bad_generate_requests_are_invalid_argument_naming_the_field(
    fake_node: RunningNode, request_: pb.GenerateRequest, field: str
) -> None:
    async with grpc.aio.insecure_channel(address(fake_node)) as channel:
        stub = pb_grpc.EdgeNodeStub(channel)
        err = await rpc_error(_drain(stub.Generate(request_, timeout=5)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.details() or "").startswith(field)


async def _drain(call: grpc.aio.UnaryStreamCall[pb.GenerateRequest, pb.GenerateResponse]) -> None:
    async for _ in call:
        pass


@pytest.mark.parametrize(
    ("choices", "field"),
    [([], "choices"), (["a", ""], "choices[1]"), ([f"c{i}" for i in range(40)], "choices")],
)
async def test_bad_choice_lists_are_invalid_argument(
    fake_node: RunningNode, choices: Sequence[str], field: str
) -> None:
    async with AsyncEdgeNodeClient(address(fake_node)) as client:
        err = await rpc_error(client.score("prompt", choices, timeout_s=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.details() or "").startswith(field)


async def test_score_returns_a_distribution_over_choices(fake_node: RunningNode) -> None:
    async with AsyncEdgeNodeClient(address(fake_node)) as client:
        result = await client.score("Is the sky blue?", [" yes", " no", " maybe not"])
    assert sum(result.probs) == pytest.approx(1.0)
    assert result.choice_tokens == (1, 1, 2)
    assert len(set(result.logprobs)) == 3
    expected = [math.exp(v) for v in result.logprobs]
    assert result.probs == pytest.approx([v / sum(expected) for v in expected])


async def test_prompt_longer_than_the_context_names_both_token_counts(
    node_factory: StartNode,
) -> None:
    node = await node_factory(FakeEngine(context_tokens=8))
    async with AsyncEdgeNodeClient(address(node)) as client:
        err = await rpc_error(client.generate("one two three four five six seven eight nine"))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details() == "prompt is 9 tokens but the context window is 8 tokens"
        ok = await client.generate("short prompt", max_tokens=2)  # the node keeps serving
    assert ok.completion_tokens == 2


async def test_full_queue_is_resource_exhausted_and_recovers(node_factory: StartNode) -> None:
    node = await node_factory(FakeEngine(token_delay_s=0.05), max_queue_depth=1)
    async with AsyncEdgeNodeClient(address(node)) as client:
        busy = asyncio.create_task(client.generate("long job", max_tokens=8, timeout_s=10))
        while node.engine.depth == 0:
            await asyncio.sleep(0.005)
        err = await rpc_error(client.score("another", [" a", " b"], timeout_s=5))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue full" in (err.details() or "")
        assert (await busy).completion_tokens == 8
        after = await client.score("another", [" a", " b"], timeout_s=5)
    assert len(after.probs) == 2


async def test_deadline_stops_decoding_promptly_and_the_next_request_is_served(
    node_factory: StartNode,
) -> None:
    node = await node_factory(FakeEngine(token_delay_s=0.05))
    async with AsyncEdgeNodeClient(address(node)) as client:
        started = time.monotonic()
        err = await rpc_error(client.generate("slow", max_tokens=200, timeout_s=0.3))
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # 200 tokens would take 10 s; the engine must notice the cancel within a token or two.
        while node.engine.depth:
            await asyncio.sleep(0.01)
        assert time.monotonic() - started < 1.0
        nxt = await client.generate("next", max_tokens=2, timeout_s=5)
    assert nxt.completion_tokens == 2
    assert nxt.latency.queue_s < 0.1


async def test_client_cancellation_frees_the_engine(node_factory: StartNode) -> None:
    node = await node_factory(FakeEngine(token_delay_s=0.05))
    async with grpc.aio.insecure_channel(address(node)) as channel:
        stub = pb_grpc.EdgeNodeStub(channel)
        call = stub.Generate(pb.GenerateRequest(prompt="x", max_tokens=500))
        received = 0
        async for _ in call:
            received += 1
            if received == 2:
                break
        call.cancel()
        deadline = time.monotonic() + 1.0
        while node.engine.depth and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    assert node.engine.depth == 0


async def test_queued_request_whose_deadline_passes_never_runs(node_factory: StartNode) -> None:
    runs: list[str] = []

    class Recording(FakeEngine):
        def score(
            self, prompt: str, choices: Sequence[str], chat_template: bool, cancel: threading.Event
        ) -> Scores:
            runs.append(prompt)
            return super().score(prompt, choices, chat_template, cancel)

    node = await node_factory(Recording(token_delay_s=0.2))
    async with AsyncEdgeNodeClient(address(node)) as client:
        first = asyncio.create_task(client.score("first", [" a"], timeout_s=5))
        while node.engine.depth == 0:
            await asyncio.sleep(0.005)
        err = await rpc_error(client.score("second", [" a"], timeout_s=0.05))
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await first
        await client.score("third", [" a"], timeout_s=5)
    assert runs == ["first", "third"]


async def test_unexpected_engine_error_is_internal_without_details(
    node_factory: StartNode,
) -> None:
    class Broken(FakeEngine):
        def generate(
            self, params: GenerateParams, on_token: TokenCallback, cancel: threading.Event
        ) -> Generation:
            raise ValueError("secret internal detail")

    node = await node_factory(Broken())
    async with AsyncEdgeNodeClient(address(node)) as client:
        err = await rpc_error(client.generate("x", max_tokens=2))
        assert err.code() == grpc.StatusCode.INTERNAL
        assert "secret" not in (err.details() or "")
        assert len((await client.score("x", [" a"])).probs) == 1  # still serving


async def test_unknown_energy_is_absent_not_zero(node_factory: StartNode) -> None:
    node = await node_factory(meter=UnavailableEnergyMeter(("nvml: no GPU",)))
    async with grpc.aio.insecure_channel(address(node)) as channel:
        stub = pb_grpc.EdgeNodeStub(channel)
        response = await stub.Score(pb.ScoreRequest(prompt="x", choices=[" a"]), timeout=5)
        info = await stub.GetInfo(pb.GetInfoRequest(), timeout=5)
    assert not response.energy.HasField("energy_j")
    assert response.energy.source == pb.ENERGY_SOURCE_UNAVAILABLE
    assert list(info.energy_rejected) == ["nvml: no GPU"]


async def test_info_health_and_reflection(fake_node: RunningNode) -> None:
    async with grpc.aio.insecure_channel(address(fake_node)) as channel:
        info = await pb_grpc.EdgeNodeStub(channel).GetInfo(pb.GetInfoRequest(), timeout=5)
        # The grpc health/reflection stub packages leave these stubs untyped.
        health: Any = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE_NAME):
            status = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        reflect: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = [r async for r in reflect.ServerReflectionInfo(iter([request]))]
    names = {s.name for s in responses[0].list_services_response.service}
    assert SERVICE_NAME == "moe2.v1.EdgeNode"
    assert SERVICE_NAME in names
    assert info.engine == "fake" and info.state == pb.NODE_STATE_SERVING
    assert info.energy_source == pb.ENERGY_SOURCE_ESTIMATED


async def test_telemetry_streams_samples_with_queue_depth(fake_node: RunningNode) -> None:
    async with AsyncEdgeNodeClient(address(fake_node)) as client:
        samples = []
        async for sample in client.telemetry(interval_s=0.05, timeout_s=5):
            samples.append(sample)
            if len(samples) == 3:
                break
        bad = await rpc_error(_first(client, interval_s=0.0))
    assert [s.timestamp_s for s in samples] == sorted(s.timestamp_s for s in samples)
    assert all(s.energy_source == "estimated" for s in samples)
    assert all(s.memory_rss_bytes > 0 for s in samples)
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _first(client: AsyncEdgeNodeClient, interval_s: float) -> None:
    async for _ in client.telemetry(interval_s=interval_s, timeout_s=5):
        break


async def test_stop_drains_in_flight_work_and_refuses_new_work(node_factory: StartNode) -> None:
    node = await node_factory(FakeEngine(token_delay_s=0.05))
    async with AsyncEdgeNodeClient(address(node)) as client:
        in_flight = asyncio.create_task(client.generate("finish me", max_tokens=6, timeout_s=5))
        while node.engine.depth == 0:
            await asyncio.sleep(0.005)
        stopping = asyncio.create_task(node.stop(5.0))
        await asyncio.sleep(0.05)
        result = await in_flight
        await stopping
    assert result.completion_tokens == 6 and result.finish_reason == "length"
    assert node.state.value == pb.NODE_STATE_DRAINING


async def test_limits_come_from_settings(node_factory: StartNode) -> None:
    node = await node_factory(limits=RequestLimits(max_prompt_bytes=5, default_max_tokens=3))
    async with AsyncEdgeNodeClient(address(node)) as client:
        err = await rpc_error(client.generate("too long a prompt"))
        default = await client.generate("short")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert default.completion_tokens == 3


async def test_emulated_device_stretches_compute_and_labels_energy(
    node_factory: StartNode,
) -> None:
    from edge_node.emulation import TIME_DILATION_PREFILL, DeviceProfile, EmulatedEngine
    from edge_node.energy import ModeledEnergyMeter

    base = FakeEngine(token_delay_s=0.02)
    profile = DeviceProfile("test", "x3 prefill, x2 decode", 3.0, 2.0, 12.0)
    node = await node_factory(
        EmulatedEngine(base, profile),
        meter=ModeledEnergyMeter(100.0, scope="not used for emulated requests"),
        emulated=True,
    )
    node_plain = await node_factory(FakeEngine(token_delay_s=0.02))
    async with (
        AsyncEdgeNodeClient(address(node)) as slow,
        AsyncEdgeNodeClient(address(node_plain)) as plain,
    ):
        stretched = await slow.score("q", [" a b", " c d"])
        normal = await plain.score("q", [" a b", " c d"])
        streamed = await slow.generate("q", max_tokens=3)
    assert stretched.latency.prefill_s == pytest.approx(
        profile.prefill_slowdown * normal.latency.prefill_s, rel=0.3
    )
    # Energy in device terms: the profile's power over the modelled device time.
    assert stretched.energy.window_s == pytest.approx(
        profile.prefill_slowdown * normal.latency.prefill_s / TIME_DILATION_PREFILL, rel=0.3
    )
    assert stretched.energy.energy_j == pytest.approx(12.0 * stretched.energy.window_s, rel=1e-6)
    assert stretched.energy.source == "estimated"
    assert stretched.energy.method == "model_estimate"
    assert stretched.energy.emulated is True
    assert not stretched.energy.measured
    assert "emulated test" in stretched.energy.scope
    # token chunks arrive at the emulated device's pace: ~2 x 20 ms apart
    gaps = [b.elapsed_s - a.elapsed_s for a, b in itertools.pairwise(streamed.chunks)]
    assert min(gaps) > 0.035
