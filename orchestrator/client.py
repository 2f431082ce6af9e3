"""The MoE² client SDK: ``AsyncClient`` and ``Client`` over the Orchestrator service.

Budgets are keyword arguments; results are frozen dataclasses. Only UNAVAILABLE is retried
(once by default, with jittered backoff, while the delay budget allows): every other status
means retrying cannot help (docs/architecture.md §10.1).

    from orchestrator.client import Client

    with Client("127.0.0.1:50100") as moe2:
        answer = moe2.ask("Is the sky blue?", choices=[" yes", " no"], category="boolq",
                          energy_budget_j=5.0, delay_budget_s=2.0)
        print(answer.answer, answer.energy_j, [e.expert for e in answer.experts])

Over a network, pass ``security=ClientSecurity.load(tls_ca=..., token_file=...)``
(``edge_node.security``; docs/security.md).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import grpc

from edge_node import transport
from edge_node.client import SOURCE_NAMES, Energy, Latency
from edge_node.loop_thread import BlockingFacade
from edge_node.security import ClientSecurity, open_channel
from protos import orchestrator_pb2 as pb
from protos import orchestrator_pb2_grpc as pb_grpc

_OUTCOMES = {
    pb.EXPERT_OUTCOME_OK: "ok",
    pb.EXPERT_OUTCOME_DEADLINE: "deadline",
    pb.EXPERT_OUTCOME_ERROR: "error",
}


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
    energy: Energy | None
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
    early_exit: bool = False  # the experts answered in stages, cheapest first
    experts_skipped: int = 0  # top-k experts early exit did not need to ask

    def to_json(self) -> dict[str, Any]:
        """The ``moe2 ask --json`` document."""
        from dataclasses import asdict

        return asdict(self)


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
    energy_source: str
    profile_age_s: float | None
    profile_samples: int
    last_error: str
    in_flight: int
    profile_source: str = ""  # "file", "probe", "live"; "" before any figures


def answer_from_pb(m: pb.AskResponse) -> Answer:
    """Convert an AskResponse."""
    experts = tuple(
        ExpertAnswer(
            expert=e.expert,
            gate_weight=e.gate_weight,
            planned_weight=e.planned_weight,
            outcome=_OUTCOMES.get(e.outcome, "unspecified"),
            status_code=e.status_code,
            latency_s=e.latency_s,
            node_latency=Latency.from_pb(e.node_latency) if e.HasField("node_latency") else None,
            energy=Energy.from_pb(e.energy) if e.HasField("energy") else None,
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


class AsyncClient:
    """Async SDK over one channel. Use ``async with``, or call ``close()``."""

    def __init__(
        self,
        target: str,
        *,
        retries: int = 1,
        backoff_s: float = 0.05,
        security: ClientSecurity | None = None,
    ) -> None:
        self.target = target
        self._channel = open_channel(target, security, transport.CHANNEL_OPTIONS)
        self._stub = pb_grpc.OrchestratorStub(self._channel)
        self._retries = retries
        self._backoff_s = backoff_s

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

    async def ask(
        self,
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
        timeout_s: float | None = None,
        early_exit: bool | None = None,
    ) -> Answer:
        """One request through the orchestrator; UNAVAILABLE is retried, nothing else."""
        request = pb.AskRequest(
            prompt=prompt,
            choices=list(choices),
            category=category,
            scoring=scoring,
            chat_template=chat_template,
            request_id=request_id,
        )
        if early_exit is not None:
            request.early_exit = early_exit
        if energy_budget_j is not None:
            request.energy_budget_j = energy_budget_j
        if delay_budget_s is not None:
            request.delay_budget_s = delay_budget_s
        if top_k is not None:
            request.top_k = top_k
        if max_tokens is not None:
            request.max_tokens = max_tokens
        # The RPC deadline leaves the server room to answer with its own status (a bad budget is
        # INVALID_ARGUMENT from the server, not a client-side DEADLINE_EXCEEDED).
        deadline_s = timeout_s
        if deadline_s is None and delay_budget_s is not None and delay_budget_s > 0:
            deadline_s = delay_budget_s + 1.0
        started = time.monotonic()
        attempt = 0
        while True:
            remaining = None if deadline_s is None else deadline_s - (time.monotonic() - started)
            try:
                return answer_from_pb(await self._stub.Ask(request, timeout=remaining))
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE or attempt >= self._retries:
                    raise
                pause = self._backoff_s * (1 + random.random())
                if remaining is not None and remaining <= pause:
                    raise
                attempt += 1
                await asyncio.sleep(pause)

    async def plan(
        self,
        *,
        energy_budget_j: float | None = None,
        delay_budget_s: float | dict[str, float] | None = None,
        top_k: int | None = None,
        method: str = "dmo",
    ) -> PlanResult:
        """The coarse-level plan for these budgets (a dict gives per-category delay budgets)."""
        request = pb.PlanRequest(method=method)
        if energy_budget_j is not None:
            request.energy_budget_j = energy_budget_j
        if isinstance(delay_budget_s, dict):
            request.category_delay_budget_s.update(delay_budget_s)
        elif delay_budget_s is not None:
            request.delay_budget_s = delay_budget_s
        if top_k is not None:
            request.top_k = top_k
        m = await self._stub.Plan(request, timeout=30)
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

    async def experts(self) -> tuple[list[ExpertInfo], bool, str]:
        """The fleet, whether a gate is trained, and the gate description."""
        m = await self._stub.ListExperts(pb.ListExpertsRequest(), timeout=10)
        return (
            [
                ExpertInfo(
                    e.name,
                    e.address,
                    e.health,
                    e.model_id,
                    e.device_kind,
                    SOURCE_NAMES.get(e.energy_source, "unspecified"),
                    e.profile_age_s if e.HasField("profile_age_s") else None,
                    e.profile_samples,
                    e.last_error,
                    e.in_flight,
                    e.profile_source,
                )
                for e in m.experts
            ],
            m.gate_trained,
            m.gate,
        )


class Client(BlockingFacade[AsyncClient]):
    """Blocking SDK: an AsyncClient on a private event-loop thread."""

    def __init__(
        self, target: str, *, retries: int = 1, security: ClientSecurity | None = None
    ) -> None:
        async def make() -> AsyncClient:
            return AsyncClient(target, retries=retries, security=security)

        super().__init__(make)

    def ask(self, prompt: str, **options: Any) -> Answer:
        """See ``AsyncClient.ask``."""
        return self._run(self._client.ask(prompt, **options))

    def plan(self, **options: Any) -> PlanResult:
        """See ``AsyncClient.plan``."""
        return self._run(self._client.plan(**options))

    def experts(self) -> tuple[list[ExpertInfo], bool, str]:
        """See ``AsyncClient.experts``."""
        return self._run(self._client.experts())
