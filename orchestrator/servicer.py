"""gRPC adapter of the orchestrator: protobuf in, ``Orchestrator`` call, protobuf out."""

from __future__ import annotations

import logging

import grpc
from pydantic import ValidationError

from edge_node.boundary import grpc_errors
from edge_node.servicer import SOURCE_TO_PB
from orchestrator.budgets import BudgetValueError, check_delay_budget_s, check_energy_budget_j
from orchestrator.core import (
    AskParams,
    AskResult,
    InvalidAskError,
    Orchestrator,
)
from orchestrator.fusion import SCORINGS, Scoring
from orchestrator.registry import Expert
from protos import edge_node_pb2 as node_pb
from protos import orchestrator_pb2 as pb
from protos import orchestrator_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

OUTCOME_TO_PB = {
    "ok": pb.EXPERT_OUTCOME_OK,
    "deadline": pb.EXPERT_OUTCOME_DEADLINE,
    "error": pb.EXPERT_OUTCOME_ERROR,
}


# Energy sources by their wire-independent names (what the client dataclasses carry).
_SOURCE_BY_NAME: dict[str, node_pb.EnergySource.ValueType] = {
    name: value for name, value in SOURCE_TO_PB.items()
}


def ask_params(request: pb.AskRequest) -> AskParams:
    """Convert an AskRequest (validation of values happens in the core)."""
    scoring = request.scoring or "sum"
    if scoring not in SCORINGS:
        raise InvalidAskError(f"scoring: must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    typed: Scoring = scoring
    return AskParams(
        prompt=request.prompt,
        category=request.category,
        choices=tuple(request.choices),
        energy_budget_j=request.energy_budget_j if request.HasField("energy_budget_j") else None,
        delay_budget_s=request.delay_budget_s if request.HasField("delay_budget_s") else None,
        top_k=request.top_k if request.HasField("top_k") else None,
        max_tokens=request.max_tokens if request.HasField("max_tokens") else None,
        scoring=typed,
        chat_template=request.chat_template,
        request_id=request.request_id,
        early_exit=request.early_exit if request.HasField("early_exit") else None,
    )


def ask_response(result: AskResult) -> pb.AskResponse:
    """Convert an AskResult."""
    experts = []
    for o in result.experts:
        message = pb.ExpertResult(
            expert=o.expert,
            gate_weight=o.gate_weight,
            planned_weight=o.planned_weight,
            outcome=OUTCOME_TO_PB[o.outcome],
            status_code=o.status_code,
            latency_s=o.latency_s,
            probs=list(o.probs),
            text=o.text,
        )
        if o.node_latency is not None:
            message.node_latency.CopyFrom(
                node_pb.Latency(
                    queue_s=o.node_latency.queue_s,
                    prefill_s=o.node_latency.prefill_s,
                    decode_s=o.node_latency.decode_s,
                    total_s=o.node_latency.total_s,
                )
            )
        if o.energy is not None:
            energy = node_pb.Energy(
                source=_SOURCE_BY_NAME.get(o.energy.source, node_pb.ENERGY_SOURCE_UNSPECIFIED),
                method=o.energy.method,
                scope=o.energy.scope,
                window_s=o.energy.window_s,
                resolution_s=o.energy.resolution_s,
                approximate=o.energy.approximate,
                emulated=o.energy.emulated,
            )
            if o.energy.joules is not None:
                energy.energy_j = o.energy.joules
            if o.energy.uncertainty_j is not None:
                energy.uncertainty_j = o.energy.uncertainty_j
            message.energy.CopyFrom(energy)
        experts.append(message)
    response = pb.AskResponse(
        request_id=result.request_id,
        answer=result.answer,
        fused_probs=list(result.fused_probs),
        experts=experts,
        subset=list(result.subset),
        category=result.category,
        latency_s=result.latency_s,
        energy_includes_estimates=result.energy_includes_estimates,
        energy_complete=result.energy_complete,
        predicted=pb.Prediction(
            energy_j=result.predicted_energy_j, latency_s=result.predicted_latency_s
        ),
        encode_s=result.encode_s,
        gate_s=result.gate_s,
        gate_trained=result.gate_trained,
        within_delay_budget=result.within_delay_budget,
        early_exit=result.early_exit,
        experts_skipped=result.experts_skipped,
    )
    if result.choice_index is not None:
        response.choice_index = result.choice_index
    if result.energy_j is not None:
        response.energy_j = result.energy_j
    if result.within_energy_budget is not None:
        response.within_energy_budget = result.within_energy_budget
    return response


def expert_status(expert: Expert, orchestrator: Orchestrator) -> pb.ExpertStatus:
    """Convert a registry entry with its profile age."""
    info = expert.info
    status = pb.ExpertStatus(
        name=expert.name,
        address=expert.address,
        health=expert.health,
        model_id=info.model_id if info else "",
        device_kind=(info.device_kind if info else "") or expert.device,
        energy_source=(
            _SOURCE_BY_NAME.get(info.energy_source, node_pb.ENERGY_SOURCE_UNSPECIFIED)
            if info
            else node_pb.ENERGY_SOURCE_UNSPECIFIED
        ),
        profile_samples=orchestrator.book.samples(expert.name),
        last_error=expert.last_error,
        in_flight=expert.in_flight,
        profile_source=orchestrator.book.source(expert.name) or "",
    )
    age = orchestrator.book.age_s(expert.name)
    if age is not None:
        status.profile_age_s = age
    return status


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
        orchestrator = self._orchestrator
        energy = request.energy_budget_j if request.HasField("energy_budget_j") else None
        categories = list(request.category_delay_budget_s) or orchestrator.budget_categories()
        delay: dict[str, float] | None = None
        if request.category_delay_budget_s:
            delay = dict(request.category_delay_budget_s)
        elif request.HasField("delay_budget_s"):
            delay = dict.fromkeys(categories, request.delay_budget_s)
        try:
            if energy is not None:
                check_energy_budget_j(energy)
            if request.HasField("delay_budget_s"):
                check_delay_budget_s(request.delay_budget_s)
            for name, value in (delay or {}).items():
                check_delay_budget_s(value, f"delay_budget_s[{name}]")
        except BudgetValueError as err:
            raise InvalidAskError(str(err)) from None
        top_k = request.top_k if request.HasField("top_k") else None
        if top_k is not None and top_k < 1:
            raise InvalidAskError("top_k: must be >= 1")
        method = request.method or "dmo"
        from optimizer import METHODS

        if method not in METHODS:
            raise InvalidAskError(f"method: must be one of {', '.join(METHODS)}")
        plan = await orchestrator.plan(
            energy_budget_j=energy,
            delay_budget_s=delay,
            categories=categories,
            top_k=top_k,
            method=method,
        )
        return pb.PlanResponse(
            subset=list(plan.subset),
            objective_value=plan.value,
            upper_bound=plan.upper_bound,
            evaluations=plan.evaluations,
            solve_s=plan.solve_s,
            predicted_energy_j=plan.predicted_energy_j,
            predicted_latency_s=plan.predicted_latency_s,
            objective=plan.objective,
            top_k=plan.top_k,
            method=plan.method,
            feasible=True,
            candidates=list(plan.candidates),
        )

    @grpc_errors
    async def ListExperts(
        self,
        request: pb.ListExpertsRequest,
        context: grpc.aio.ServicerContext[pb.ListExpertsRequest, pb.ListExpertsResponse],
    ) -> pb.ListExpertsResponse:
        orchestrator = self._orchestrator
        return pb.ListExpertsResponse(
            experts=[expert_status(e, orchestrator) for e in orchestrator.registry.all()],
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
        return pb.RegisterNodeResponse(expert=expert_status(expert, self._orchestrator))

    @grpc_errors
    async def DeregisterNode(
        self,
        request: pb.DeregisterNodeRequest,
        context: grpc.aio.ServicerContext[pb.DeregisterNodeRequest, pb.DeregisterNodeResponse],
    ) -> pb.DeregisterNodeResponse:
        if not await self._orchestrator.registry.remove(request.name):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"name: no node {request.name!r}")
        return pb.DeregisterNodeResponse()
