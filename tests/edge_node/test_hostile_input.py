"""Hostile input that costs nothing: refused with INVALID_ARGUMENT before any engine work."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import grpc
import pytest

from edge_node.client import AsyncEdgeNodeClient
from edge_node.engine import FakeEngine
from edge_node.server import RunningNode
from protos import edge_node_pb2 as pb
from tests.helpers.grpc_raw import GARBAGE, raw_call
from tests.helpers.nodes import StartNode


def address(node: RunningNode) -> str:
    return f"127.0.0.1:{node.port}"


@pytest.mark.parametrize(
    ("method", "streaming"),
    [
        ("/moe2.v1.EdgeNode/GetInfo", False),
        ("/moe2.v1.EdgeNode/Generate", True),
        ("/moe2.v1.EdgeNode/Score", False),
        ("/moe2.v1.EdgeNode/StreamTelemetry", True),
        ("/grpc.health.v1.Health/Check", False),
    ],
)
async def test_malformed_protobuf_is_invalid_argument_with_a_plain_message(
    fake_node: RunningNode, method: str, streaming: bool
) -> None:
    err = await raw_call(address(fake_node), method, GARBAGE, streaming=streaming)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    name = method.rsplit("/", 1)[-1]
    assert err.details() == f"request: not a valid {name} request message"


async def test_a_well_formed_raw_request_still_works(fake_node: RunningNode) -> None:
    """The guard only replaces failures: valid bytes parse and are served as before."""
    async with grpc.aio.insecure_channel(address(fake_node)) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, pb.GetInfoResponse] = channel.unary_unary(
            "/moe2.v1.EdgeNode/GetInfo",
            response_deserializer=pb.GetInfoResponse.FromString,
        )
        info = await call(pb.GetInfoRequest().SerializeToString(), timeout=5)
    assert info.engine == "fake"


async def test_an_oversized_score_is_refused_in_milliseconds_without_queueing(
    node_factory: StartNode,
) -> None:
    """The 1.1 MB Score of the issue: refused on the servicer; a normal request is not delayed."""
    node = await node_factory(FakeEngine(prefill_delay_s=0.2))
    prompt = "word " * 199_200  # 996 000 characters
    choices = ["x" * 4096] * 32
    async with AsyncEdgeNodeClient(address(node)) as client:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await client.score(prompt, choices, timeout_s=10)
        refused_s = time.monotonic() - started
        normal = await client.score("a normal prompt", [" yes", " no"], timeout_s=10)
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert excinfo.value.details() == "prompt: 996000 bytes exceeds the limit of 262144 bytes"
    assert refused_s < 0.5  # never queued behind (or ahead of) the 0.2 s prefill
    assert node.engine.completed == 1  # only the normal request reached the engine
    assert normal.latency.queue_s < 0.05


async def test_prompt_bytes_not_characters_are_counted(node_factory: StartNode) -> None:
    from edge_node.limits import RequestLimits

    node = await node_factory(limits=RequestLimits(max_prompt_bytes=8))
    async with AsyncEdgeNodeClient(address(node)) as client:
        ok = await client.generate("abcdefgh", max_tokens=1, timeout_s=5)
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await client.generate("ééééé", max_tokens=1, timeout_s=5)  # 5 characters, 10 bytes
    assert ok.completion_tokens == 1
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert excinfo.value.details() == "prompt: 10 bytes exceeds the limit of 8 bytes"


@pytest.mark.parametrize(
    ("stop", "details"),
    [
        (["s"] * 20_000, "stop: 20000 given, at most 16 allowed"),
        (["ok", "x" * 257], "stop[1]: 257 bytes exceeds the limit of 256 bytes"),
    ],
)
async def test_stop_strings_are_bounded_in_count_and_length(
    fake_node: RunningNode, stop: list[str], details: str
) -> None:
    async with AsyncEdgeNodeClient(address(fake_node)) as client:
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await client.generate("hello", max_tokens=8, stop=stop, timeout_s=5)
        fine = await client.generate("hello", max_tokens=2, stop=["x" * 256] * 16, timeout_s=5)
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert excinfo.value.details() == details
    assert fine.completion_tokens == 2
    assert fake_node.engine.completed == 1


async def test_too_many_choices_and_oversized_choices_are_refused(fake_node: RunningNode) -> None:
    async with AsyncEdgeNodeClient(address(fake_node)) as client:
        many = await asyncio.gather(
            client.score("p", ["a"] * 33, timeout_s=5), return_exceptions=True
        )
        big = await asyncio.gather(
            client.score("p", ["a", "é" * 2049], timeout_s=5), return_exceptions=True
        )
    assert isinstance(many[0], grpc.aio.AioRpcError) and isinstance(big[0], grpc.aio.AioRpcError)
    assert many[0].details() == "choices: 33 given, at most 32 allowed"
    assert big[0].details() == "choices[1]: 4098 bytes exceeds the limit of 4096 bytes"
    assert fake_node.engine.completed == 0


def test_a_port_outside_the_range_is_an_error_naming_the_flag() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edge_node.cli", "serve", "--engine", "fake", "--port", "70000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "edge-node: error: settings: port: Input should be less than or equal to 65535"
    ]


async def test_a_malformed_message_in_a_request_stream_is_invalid_argument(
    fake_node: RunningNode,
) -> None:
    """Reflection is the one streaming-request service: each message is checked as it comes."""
    method = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    async with grpc.aio.insecure_channel(address(fake_node)) as channel:
        call: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(method)
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            async for _ in call(iter([GARBAGE]), timeout=5):
                pass
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert excinfo.value.details() == "request: not a valid ServerReflectionInfo request message"
