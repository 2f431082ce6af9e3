"""The Orchestrator wire schema's messages to and from Python values.

The only place orchestrator protobuf is converted: the servicer (``orchestrator.servicer``)
turns requests into the core's values (``orchestrator.core``) and its results into responses;
the SDK (``orchestrator.client``) builds requests and turns responses into
``orchestrator.results``. A node's energy and latency figures travel in the node's own messages
and are converted by the node's converters (``edge_node.wire``). Absent optional fields decode
to ``None``, and ``None`` stays absent (never 0): a protobuf constructor leaves a field given as
``None`` unset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from edge_node import wire as node_wire
from orchestrator.fusion import SCORINGS, Scoring
from orchestrator.results import Answer, ExpertAnswer, ExpertInfo, PlanResult
from protos import orchestrator_pb2 as pb

if TYPE_CHECKING:  # the server half's types; the SDK half must not import the core (numpy)
    from orchestrator.core import AskParams, AskResult, PlanParams
    from orchestrator.planner import Plan
    from orchestrator.registry import Expert

OUTCOME_TO_PB: dict[str, pb.ExpertOutcome.ValueType] = {
    "ok": pb.EXPERT_OUTCOME_OK,
    "deadline": pb.EXPERT_OUTCOME_DEADLINE,
    "error": pb.EXPERT_OUTCOME_ERROR,
}
OUTCOME_FROM_PB: dict[int, str] = {value: name for name, value in OUTCOME_TO_PB.items()}


def ask_request(
    prompt: str,
    *,
    choices: Sequence[str] = (),
    category: str = "",
    energy_budget_j: float | None = None,
    delay_budget_s: float | None = None,
    top_k: int | None = None,
    max_tokens: int | None = None,
    scoring: str = "sum",
    chat_template: bool = False,
    request_id: str = "",
    early_exit: bool | None = None,
) -> pb.AskRequest:
    """Build an AskRequest; None leaves a field to the orchestrator's default."""
    return pb.AskRequest(
        prompt=prompt,
        choices=list(choices),
        category=category,
        energy_budget_j=energy_budget_j,
        delay_budget_s=delay_budget_s,
        top_k=top_k,
        max_tokens=max_tokens,
        scoring=scoring,
        chat_template=chat_template,
        request_id=request_id,
        early_exit=early_exit,
    )


def ask_params(request: pb.AskRequest) -> AskParams:
    """Convert an AskRequest (validation of values happens in the core).

    Raises:
        InvalidAskError: ``scoring`` names no scoring rule.
    """
    # Imported here, not above: the SDK imports this module and must stay free of the core.
    from orchestrator.core import AskParams, InvalidAskError

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
    experts = [
        pb.ExpertResult(
            expert=o.expert,
            gate_weight=o.gate_weight,
            planned_weight=o.planned_weight,
            outcome=OUTCOME_TO_PB[o.outcome],
            status_code=o.status_code,
            latency_s=o.latency_s,
            node_latency=None
            if o.node_latency is None
            else node_wire.latency_to_pb(o.node_latency),
            energy=None if o.energy is None else node_wire.energy_to_pb(o.energy),
            probs=list(o.probs),
            text=o.text,
        )
        for o in result.experts
    ]
    return pb.AskResponse(
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
        choice_index=result.choice_index,
        energy_j=result.energy_j,
        within_energy_budget=result.within_energy_budget,
    )


def answer_from_pb(m: pb.AskResponse) -> Answer:
    """Convert an AskResponse."""
    experts = tuple(
        ExpertAnswer(
            expert=e.expert,
            gate_weight=e.gate_weight,
            planned_weight=e.planned_weight,
            outcome=OUTCOME_FROM_PB.get(e.outcome, "unspecified"),
            status_code=e.status_code,
            latency_s=e.latency_s,
            node_latency=(
                node_wire.latency_from_pb(e.node_latency) if e.HasField("node_latency") else None
            ),
            energy=node_wire.energy_from_pb(e.energy) if e.HasField("energy") else None,
            probs=tuple(e.probs),
            text=e.text,
        )
        for e in m.experts
    )
    return Answer(
        answer=m.answer,
        choice_index=m.choice_index if m.HasField("choice_index") else None,
        fused_probs=tuple(m.fused_probs),
        experts=experts,
        subset=tuple(m.subset),
        category=m.category,
        latency_s=m.latency_s,
        energy_j=m.energy_j if m.HasField("energy_j") else None,
        energy_includes_estimates=m.energy_includes_estimates,
        energy_complete=m.energy_complete,
        predicted_energy_j=m.predicted.energy_j,
        predicted_latency_s=m.predicted.latency_s,
        encode_s=m.encode_s,
        gate_s=m.gate_s,
        gate_trained=m.gate_trained,
        within_delay_budget=m.within_delay_budget,
        within_energy_budget=(
            m.within_energy_budget if m.HasField("within_energy_budget") else None
        ),
        early_exit=m.early_exit,
        experts_skipped=m.experts_skipped,
    )


def plan_request(
    *,
    energy_budget_j: float | None = None,
    delay_budget_s: float | dict[str, float] | None = None,
    top_k: int | None = None,
    method: str = "dmo",
) -> pb.PlanRequest:
    """Build a PlanRequest (a dict gives per-category delay budgets)."""
    return pb.PlanRequest(
        energy_budget_j=energy_budget_j,
        delay_budget_s=None if isinstance(delay_budget_s, dict) else delay_budget_s,
        category_delay_budget_s=delay_budget_s if isinstance(delay_budget_s, dict) else None,
        top_k=top_k,
        method=method,
    )


def plan_params(request: pb.PlanRequest) -> PlanParams:
    """Convert a PlanRequest (validation of values happens in the core)."""
    from orchestrator.core import PlanParams  # see ask_params

    return PlanParams(
        energy_budget_j=request.energy_budget_j if request.HasField("energy_budget_j") else None,
        delay_budget_s=request.delay_budget_s if request.HasField("delay_budget_s") else None,
        category_delay_budget_s=dict(request.category_delay_budget_s),
        top_k=request.top_k if request.HasField("top_k") else None,
        method=request.method,
    )


def plan_response(plan: Plan) -> pb.PlanResponse:
    """Convert a coarse-level plan (an infeasible one is FAILED_PRECONDITION, never a plan)."""
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
        candidates=list(plan.candidates),
    )


def plan_result_from_pb(m: pb.PlanResponse) -> PlanResult:
    """Convert a PlanResponse."""
    return PlanResult(
        subset=tuple(m.subset),
        objective_value=m.objective_value,
        upper_bound=m.upper_bound,
        evaluations=m.evaluations,
        solve_s=m.solve_s,
        predicted_energy_j=m.predicted_energy_j,
        predicted_latency_s=dict(m.predicted_latency_s),
        objective=m.objective,
        top_k=m.top_k,
        method=m.method,
        candidates=tuple(m.candidates),
    )


def expert_status(
    expert: Expert,
    *,
    profile_samples: int,
    profile_age_s: float | None,
    profile_source: str = "",
) -> pb.ExpertStatus:
    """Convert a registry entry with its profile's sample count and age."""
    info = expert.info
    return pb.ExpertStatus(
        name=expert.name,
        address=expert.address,
        health=expert.health,
        model_id=info.model_id if info else "",
        device_kind=(info.device_kind if info else "") or expert.device,
        energy_source=node_wire.source_to_pb(info.energy_source if info else "unspecified"),
        profile_samples=profile_samples,
        last_error=expert.last_error,
        in_flight=expert.in_flight,
        profile_age_s=profile_age_s,
        profile_source=profile_source,
    )


def expert_info_from_pb(e: pb.ExpertStatus) -> ExpertInfo:
    """Convert an ExpertStatus."""
    return ExpertInfo(
        e.name,
        e.address,
        e.health,
        e.model_id,
        e.device_kind,
        node_wire.source_from_pb(e.energy_source),
        e.profile_age_s if e.HasField("profile_age_s") else None,
        e.profile_samples,
        e.last_error,
        e.in_flight,
        e.profile_source,
    )
