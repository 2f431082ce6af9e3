"""gRPC adapter of the edge node: protobuf in, ``Node`` call, protobuf out.

No node logic here (that is ``edge_node.node``): each handler converts with ``edge_node.wire``,
reads what only the RPC context knows (cancellation, the ``moe2-emulate-timing`` metadata entry)
and writes what only it can carry (the emulated stretch in trailing metadata). Every handler sits
behind the single error boundary (``edge_node.boundary``): domain errors become their status with
their message, anything unexpected becomes INTERNAL with a generic message (the traceback goes
to the node log only), so a client never sees UNKNOWN or exception text.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc

from edge_node import wire
from edge_node.boundary import grpc_errors, grpc_stream_errors
from edge_node.emulation import STRETCH_METADATA_KEY, TIMING_METADATA_KEY
from edge_node.node import Node, Served
from protos import edge_node_pb2 as pb
from protos import edge_node_pb2_grpc as pb_grpc


class NodeState:
    """Mutable lifecycle flag shared by the servicer and the shutdown path (event-loop only)."""

    def __init__(self) -> None:
        self.value: pb.NodeState.ValueType = pb.NODE_STATE_SERVING


def cancel_event(context: grpc.aio.ServicerContext[Any, Any]) -> threading.Event:
    """An event set when the RPC ends for any reason (client cancel, deadline, done)."""
    cancel = threading.Event()

    def on_done(_: grpc.aio.ServicerContext[Any, Any]) -> None:
        cancel.set()

    context.add_done_callback(on_done)  # type: ignore[arg-type]  # stub class, not a Protocol
    return cancel


def requested_timing(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The request's ``moe2-emulate-timing`` metadata value (the last one), if any."""
    requested = None
    for key, value in context.invocation_metadata() or ():
        if key == TIMING_METADATA_KEY:
            requested = value.decode() if isinstance(value, bytes) else value
    return requested


def report_stretch(context: grpc.aio.ServicerContext[Any, Any], served: Served[Any]) -> None:
    """Tell the caller the seconds an emulated device accounted but did not spend."""
    if served.stretch_s is not None:
        context.set_trailing_metadata(((STRETCH_METADATA_KEY, repr(served.stretch_s)),))


class EdgeNodeServicer(pb_grpc.EdgeNodeServicer):
    """Implements moe2.v1.EdgeNode over a ``Node``."""

    def __init__(self, node: Node, *, state: NodeState) -> None:
        self._node = node
        self._state = state

    @grpc_errors
    async def GetInfo(
        self,
        request: pb.GetInfoRequest,
        context: grpc.aio.ServicerContext[pb.GetInfoRequest, pb.GetInfoResponse],
    ) -> pb.GetInfoResponse:
        state = wire.STATE_FROM_PB.get(self._state.value, "unspecified")
        return wire.node_info_to_pb(self._node.info(state))

    @grpc_stream_errors
    async def Generate(
        self,
        request: pb.GenerateRequest,
        context: grpc.aio.ServicerContext[pb.GenerateRequest, pb.GenerateResponse],
    ) -> AsyncIterator[pb.GenerateResponse]:
        received_s = time.monotonic()
        params = self._node.generate_params(wire.generate_input_from_pb(request))
        events = self._node.generate(
            params,
            cancel_event(context),
            timing=requested_timing(context),
            received_s=received_s,
        )
        async with aclosing(events):
            async for event in events:
                if isinstance(event, Served):
                    report_stretch(context, event)
                    yield wire.generate_result_to_pb(event.result)
                else:
                    yield wire.chunk_to_pb(event)

    @grpc_errors
    async def Score(
        self,
        request: pb.ScoreRequest,
        context: grpc.aio.ServicerContext[pb.ScoreRequest, pb.ScoreResponse],
    ) -> pb.ScoreResponse:
        received_s = time.monotonic()
        served = await self._node.score(
            request.prompt,
            request.choices,
            cancel_event(context),
            chat_template=request.chat_template,
            timing=requested_timing(context),
            received_s=received_s,
        )
        report_stretch(context, served)
        return wire.score_to_pb(served.result)

    @grpc_stream_errors
    async def StreamTelemetry(
        self,
        request: pb.StreamTelemetryRequest,
        context: grpc.aio.ServicerContext[pb.StreamTelemetryRequest, pb.StreamTelemetryResponse],
    ) -> AsyncIterator[pb.StreamTelemetryResponse]:
        interval_s = request.interval_s if request.HasField("interval_s") else None
        samples = self._node.telemetry(
            interval_s, lambda: self._state.value == pb.NODE_STATE_SERVING
        )
        async with aclosing(samples):
            async for sample in samples:
                yield wire.telemetry_to_pb(sample)
