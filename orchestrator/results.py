"""What the orchestrator SDK returns: answers, plans and the fleet (frozen dataclasses, no gRPC).

``orchestrator.wire`` builds them from protobuf; ``orchestrator.client`` re-exports them. An
expert's energy is the node's own figure type (``edge_node.results.EnergyReading``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edge_node.results import EnergyReading, Latency, SourceLabel


@dataclass(frozen=True, slots=True)
class ExpertAnswer:
    """One dispatched expert: its weight, outcome, latency and energy."""

    expert: str
    gate_weight: float
    planned_weight: float
    outcome: str
    status_code: str
    latency_s: float
    node_latency: Latency | None
    energy: EnergyReading | None
    probs: tuple[float, ...]
    text: str


@dataclass(frozen=True, slots=True)
class Answer:
    """The fused answer of one Ask."""

    answer: str
    choice_index: int | None
    fused_probs: tuple[float, ...]
    experts: tuple[ExpertAnswer, ...]
    subset: tuple[str, ...]
    category: str
    latency_s: float
    energy_j: float | None
    energy_includes_estimates: bool
    energy_complete: bool
    predicted_energy_j: float
    predicted_latency_s: float
    encode_s: float
    gate_s: float
    gate_trained: bool
    within_delay_budget: bool
    within_energy_budget: bool | None
    early_exit: bool = False  # the experts answered in stages, in the gate's exit order
    experts_skipped: int = 0  # top-k experts early exit did not need to ask

    def to_json(self) -> dict[str, Any]:
        """The ``moe2 ask --json`` document (an expert's ``energy`` as in ``edge-node --json``)."""
        document = asdict(self)
        for expert, row in zip(self.experts, document["experts"], strict=True):
            row["energy"] = None if expert.energy is None else expert.energy.to_json()
        return document


@dataclass(frozen=True, slots=True)
class PlanResult:
    """A coarse-level plan with its certificate."""

    subset: tuple[str, ...]
    objective_value: float
    upper_bound: float
    evaluations: int
    solve_s: float
    predicted_energy_j: float
    predicted_latency_s: dict[str, float]
    objective: str
    top_k: int
    method: str
    candidates: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ExpertInfo:
    """One fleet member as the orchestrator sees it."""

    name: str
    address: str
    health: str
    model_id: str
    device_kind: str
    energy_source: SourceLabel
    profile_age_s: float | None
    profile_samples: int
    last_error: str
    in_flight: int
    profile_source: str = ""  # "file", "probe", "live"; "" before any figures
