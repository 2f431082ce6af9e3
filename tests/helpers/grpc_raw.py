"""Raw gRPC calls with bytes that are not the method's request message."""

from __future__ import annotations

import grpc
import pytest

GARBAGE = b"\xff\xff\xff\xff\x0f not a protobuf message"


async def raw_call(
    target: str, method: str, payload: bytes, *, streaming: bool
) -> grpc.aio.AioRpcError:
    """Send bytes that are not the method's request message; return the error."""

    async def call(channel: grpc.aio.Channel) -> None:
        if streaming:
            stream: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(method)
            async for _ in stream(payload, timeout=5):
                pass
        else:
            unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
            await unary(payload, timeout=5)

    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await call(channel)
    return excinfo.value
