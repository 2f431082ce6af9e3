"""Clients of the EdgeNode service, async and sync, returning typed results.

Protobuf stops here (converted by ``edge_node.wire``): callers get the frozen dataclasses of
``edge_node.results``, re-exported here. ``Energy`` is ``EnergyReading``, the one energy figure
type; its ``joules`` attribute is a deprecated alias of ``energy_j`` for one release. Errors
are ``grpc.RpcError`` / ``grpc.aio.AioRpcError`` with the node's status code; branch on
``.code()``. TLS and the bearer token come from ``security``
(``edge_node.security.ClientSecurity``; docs/security.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any

import grpc
from typing_extensions import Self  # noqa: UP035 (typing.Self is 3.11+; the node supports 3.10)

from edge_node import transport, wire
from edge_node.loop_thread import BlockingFacade
from edge_node.results import (
    EnergyReading,
    GenerateResult,
    Latency,
    NodeInfo,
    ScoreResult,
    TelemetrySample,
    TokenChunk,
)
from edge_node.security import ClientSecurity, open_channel
from protos import edge_node_pb2 as pb
from protos import edge_node_pb2_grpc as pb_grpc

Energy = EnergyReading
"""The SDK's name for the energy figure of a request (``edge_node.results.EnergyReading``)."""

__all__ = [
    "AsyncEdgeNodeClient",
    "EdgeNodeClient",
    "Energy",
    "EnergyReading",
    "GenerateResult",
    "Latency",
    "NodeInfo",
    "ScoreResult",
    "TelemetrySample",
    "TokenChunk",
]


class AsyncEdgeNodeClient:
    """Async client over one long-lived channel. Use ``async with``, or call ``close()``."""

    def __init__(
        self,
        target: str,
        *,
        channel: grpc.aio.Channel | None = None,
        security: ClientSecurity | None = None,
    ) -> None:
        self.target = target
        self._channel = channel or open_channel(target, security, transport.CHANNEL_OPTIONS)
        self._stub = pb_grpc.EdgeNodeStub(self._channel)

    @property
    def channel(self) -> grpc.aio.Channel:
        """The long-lived channel (shared with e.g. a health stub)."""
        return self._channel

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def info(self, *, timeout_s: float | None = 10.0) -> NodeInfo:
        """GetInfo."""
        response = await self._stub.GetInfo(pb.GetInfoRequest(), timeout=timeout_s)
        return wire.node_info_from_pb(response)

    async def stream(
        self, prompt: str, *, timeout_s: float | None = None, **options: Any
    ) -> AsyncIterator[TokenChunk | GenerateResult]:
        """Generate, yielding token chunks as they arrive and the result last."""
        chunks: list[TokenChunk] = []
        call = self._stub.Generate(wire.generate_request(prompt, **options), timeout=timeout_s)
        async for message in call:
            if message.HasField("chunk"):
                chunk = wire.chunk_from_pb(message.chunk)
                chunks.append(chunk)
                yield chunk
            elif message.HasField("result"):
                yield wire.generate_result_from_pb(message.result, chunks)

    async def generate(
        self,
        prompt: str,
        *,
        timeout_s: float | None = None,
        on_chunk: Callable[[TokenChunk], None] | None = None,
        **options: Any,
    ) -> GenerateResult:
        """Generate and return the final result (chunks included).

        ``on_chunk`` is called on the event loop with every token chunk as it arrives.
        """
        async for event in self.stream(prompt, timeout_s=timeout_s, **options):
            if isinstance(event, GenerateResult):
                return event
            if on_chunk is not None:
                on_chunk(event)
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.INTERNAL,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details="the node closed the stream without a result",
        )

    async def score(
        self,
        prompt: str,
        choices: Sequence[str],
        *,
        chat_template: bool = False,
        timeout_s: float | None = None,
        request_id: str = "",
    ) -> ScoreResult:
        """Score candidate continuations."""
        request = wire.score_request(
            prompt, choices, chat_template=chat_template, request_id=request_id
        )
        return wire.score_result(choices, await self._stub.Score(request, timeout=timeout_s))

    async def telemetry(
        self, *, interval_s: float = 1.0, timeout_s: float | None = None
    ) -> AsyncIterator[TelemetrySample]:
        """Stream telemetry samples until the caller stops iterating or the timeout passes."""
        call = self._stub.StreamTelemetry(
            pb.StreamTelemetryRequest(interval_s=interval_s), timeout=timeout_s
        )
        try:
            async for message in call:
                yield wire.telemetry_from_pb(message)
        finally:
            call.cancel()


class EdgeNodeClient(BlockingFacade[AsyncEdgeNodeClient]):
    """Blocking client: runs an AsyncEdgeNodeClient on a private event-loop thread."""

    def __init__(self, target: str, *, security: ClientSecurity | None = None) -> None:
        self.target = target

        async def make() -> AsyncEdgeNodeClient:
            return AsyncEdgeNodeClient(target, security=security)

        super().__init__(make)

    def info(self, *, timeout_s: float | None = 10.0) -> NodeInfo:
        """GetInfo."""
        return self._run(self._client.info(timeout_s=timeout_s))

    def generate(
        self, prompt: str, *, timeout_s: float | None = None, **options: Any
    ) -> GenerateResult:
        """Generate and return the final result."""
        return self._run(self._client.generate(prompt, timeout_s=timeout_s, **options))

    def score(
        self,
        prompt: str,
        choices: Sequence[str],
        *,
        chat_template: bool = False,
        timeout_s: float | None = None,
    ) -> ScoreResult:
        """Score candidate continuations."""
        return self._run(
            self._client.score(prompt, choices, chat_template=chat_template, timeout_s=timeout_s)
        )

    def telemetry(self, *, interval_s: float = 1.0, count: int = 1) -> list[TelemetrySample]:
        """Collect ``count`` telemetry samples from one stream, interval_s apart."""
        return self._run(self._take(interval_s, count))

    async def _take(self, interval_s: float, count: int) -> list[TelemetrySample]:
        samples: list[TelemetrySample] = []
        async for sample in self._client.telemetry(interval_s=interval_s):
            samples.append(sample)
            if len(samples) >= count:
                break
        return samples
