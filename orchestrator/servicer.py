"""gRPC adapter of the orchestrator: protobuf in, ``Orchestrator`` call, protobuf out.

The conversions are ``orchestrator.wire``'s; errors go through the one boundary
(``edge_node.boundary``).
"""

from __future__ import annotations

import logging

import grpc
from pydantic import ValidationError

from edge_node.boundary import grpc_errors
from orchestrator.core import InvalidAskError, Orchestrator
from orchestrator.registry import Expert
from orchestrator.wire import ask_params, ask_response, expert_status, plan_params, plan_response
from protos import orchestrator_pb2 as pb
from protos import orchestrator_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)


def _status(expert: Expert, orchestrator: Orchestrator) -> pb.ExpertStatus:
    """A registry entry on the wire, with its profile's sample count and age."""
    return expert_status(
        expert,
        profile_samples=orchestrator.book.samples(expert.name),
        profile_age_s=orchestrator.book.age_s(expert.name),
        profile_source=orchestrator.book.source(expert.name) or "",
    )


class OrchestratorServicer(pb_grpc.OrchestratorServicer):
    """Implements moe2.v1.Orchestrator over an ``Orchestrator``."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self._orchestrator = orchestrator

    @grpc_errors
    async def Ask(
        self,
        request: pb.AskRequest,
        context: grpc.aio.ServicerContext[pb.AskRequest, pb.AskResponse],
    ) -> pb.AskResponse:
        return ask_response(await self._orchestrator.ask(ask_params(request)))

    @grpc_errors
    async def Plan(
        self,
        request: pb.PlanRequest,
        context: grpc.aio.ServicerContext[pb.PlanRequest, pb.PlanResponse],
    ) -> pb.PlanResponse:
        plan = await self._orchestrator.plan_request(plan_params(request))
        return plan_response(plan)

    @grpc_errors
    async def ListExperts(
        self,
        request: pb.ListExpertsRequest,
        context: grpc.aio.ServicerContext[pb.ListExpertsRequest, pb.ListExpertsResponse],
    ) -> pb.ListExpertsResponse:
        orchestrator = self._orchestrator
        return pb.ListExpertsResponse(
            experts=[_status(e, orchestrator) for e in orchestrator.registry.all()],
            gate_trained=orchestrator.gating.trained,
            gate=orchestrator.gating.description,
            categories=orchestrator.categories(),
        )

    @grpc_errors
    async def RegisterNode(
        self,
        request: pb.RegisterNodeRequest,
        context: grpc.aio.ServicerContext[pb.RegisterNodeRequest, pb.RegisterNodeResponse],
    ) -> pb.RegisterNodeResponse:
        from orchestrator.config import NodeEntry

        try:
            entry = NodeEntry(name=request.name, address=request.address)
        except ValidationError as err:
            raise InvalidAskError(f"node: {err.errors()[0]['msg']}") from None
        expert = await self._orchestrator.registry.add(entry.name, entry.address)
        await self._orchestrator.registry.wait_settled(2.0)
        return pb.RegisterNodeResponse(expert=_status(expert, self._orchestrator))

    @grpc_errors
    async def DeregisterNode(
        self,
        request: pb.DeregisterNodeRequest,
        context: grpc.aio.ServicerContext[pb.DeregisterNodeRequest, pb.DeregisterNodeResponse],
    ) -> pb.DeregisterNodeResponse:
        if not await self._orchestrator.registry.remove(request.name):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"name: no node {request.name!r}")
        return pb.DeregisterNodeResponse()
