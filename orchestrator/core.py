"""The orchestrator's request path: plan (coarse), gate top-k (fine), dispatch, fuse.

Protobuf-free: plain dataclasses in and out; ``orchestrator.servicer`` converts protobuf. It is
not transport-agnostic: its errors carry gRPC status codes (which the HTTP API maps to HTTP
statuses), and it reads the status of a failed expert call from gRPC's error.
Runs on the event loop; the encoder, gate and optimizer run in worker threads so a slow plan
never stalls other requests' dispatch.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

import grpc
import numpy as np
import numpy.typing as npt

from edge_node.client import GenerateResult, Latency, ScoreResult
from edge_node.errors import InvalidRequestError
from edge_node.limits import DEFAULT_LIMITS, RequestLimits, check_choices, check_prompt
from edge_node.results import EnergyReading
from optimizer import METHODS
from optimizer.fine import FusionRule, LinearPool, LogLinearPool, exit_scores, gate_weights
from orchestrator.budgets import Budgets, BudgetValueError, check_plan_work
from orchestrator.config import ClusterConfig
from orchestrator.encoder import PromptEncoder
from orchestrator.fusion import SCORINGS, Scoring, fuse_texts
from orchestrator.fusion import option_distribution as to_distribution
from orchestrator.gate import Gate
from orchestrator.planner import Plan, PlanError, Planner
from orchestrator.probe import ProbeError, probe_expert
from orchestrator.profiles import ANY_CATEGORY, ProfileBook
from orchestrator.registry import Expert, Registry

logger = logging.getLogger(__name__)

Outcome = Literal["ok", "deadline", "error"]
TextSink = Callable[[str], None]
"""Receives an open answer's text as it is generated (event loop; must not block)."""


class OrchestratorError(Exception):
    """An error with the gRPC status it maps to."""

    status_code = grpc.StatusCode.INTERNAL


class InvalidAskError(OrchestratorError):
    """The request can never succeed as sent."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT


class BudgetError(OrchestratorError):
    """No expert subset meets the budgets (do not retry until budgets or fleet change)."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION


class UnknownExpertError(OrchestratorError):
    """The request names an expert the fleet does not have."""

    status_code = grpc.StatusCode.NOT_FOUND


class NoExpertUpError(OrchestratorError):
    """No expert (or not the one asked for) is up; retrying once the fleet recovers may work."""

    status_code = grpc.StatusCode.UNAVAILABLE


class NoAnswerError(OrchestratorError):
    """Every dispatched expert failed or missed the deadline.

    UNAVAILABLE in general; DEADLINE_EXCEEDED when every expert was late; RESOURCE_EXHAUSTED
    when every expert refused for a full queue (overload: back off, do not retry at once).
    """

    status_code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, *, all_deadline: bool, all_busy: bool = False) -> None:
        super().__init__(message)
        if all_deadline:
            self.status_code = grpc.StatusCode.DEADLINE_EXCEEDED
        elif all_busy:
            self.status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


@dataclass(frozen=True, slots=True)
class AskParams:
    """One request, validated by ``validate``."""

    prompt: str
    category: str = ""
    choices: tuple[str, ...] = ()
    energy_budget_j: float | None = None
    delay_budget_s: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    scoring: Scoring = "sum"
    chat_template: bool = False
    request_id: str = ""
    early_exit: bool | None = None  # None: the cluster default
    expert: str = ""  # one expert alone (planned, dispatched and accounted as any request)


@dataclass(frozen=True, slots=True)
class PlanParams:
    """One Plan request, as received (validated by ``Orchestrator.plan_request``)."""

    energy_budget_j: float | None = None
    delay_budget_s: float | None = None
    category_delay_budget_s: Mapping[str, float] = field(default_factory=dict)
    top_k: int | None = None
    method: str = "dmo"


@dataclass(frozen=True, slots=True)
class ExpertOutcome:
    """What one dispatched expert did."""

    expert: str
    planned_weight: float
    gate_weight: float
    outcome: Outcome
    status_code: str
    latency_s: float
    node_latency: Latency | None
    energy: EnergyReading | None
    probs: tuple[float, ...] = ()
    text: str = ""
    prompt_tokens: int | None = None  # None: the expert did not answer
    completion_tokens: int | None = None  # generated tokens, or the choices' scored tokens
    finish_reason: str = ""  # open prompts: the node's "stop" / "length"


@dataclass(frozen=True, slots=True)
class AskResult:
    """The fused answer and everything that went into it."""

    request_id: str
    answer: str
    choice_index: int | None
    fused_probs: tuple[float, ...]
    experts: tuple[ExpertOutcome, ...]
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
    early_exit: bool = False
    experts_skipped: int = 0
    energy_budget_j: float | None = None  # the budgets applied (request, else cluster default)
    delay_budget_s: float | None = None
    top_k: int = 0  # the k the plan used: at most the request's (optimizer.evidence.guarded_plan)
    plan_s: float = 0.0  # seconds spent getting the coarse-level plan (cache hit or solve)
    finish_reason: str = "stop"  # "length" when the answering top expert ran out of max_tokens


class Observer(Protocol):
    """Receives what the request path did (metrics); called on the event loop, must not block."""

    def planned(self, seconds: float, *, recomputed: bool) -> None:
        """One coarse-level plan: its seconds and whether it was solved (not a cache hit)."""
        ...

    def answered(self, result: AskResult) -> None:
        """One answered request."""
        ...


@dataclass(slots=True)
class Gating:
    """The fine level: prompt encoder + gate, or uniform weights when no gate is trained."""

    gate: Gate | None = None
    encoder: PromptEncoder | None = None
    description: str = "no gate file: uniform weights"
    categories: tuple[str, ...] = field(default=())

    @property
    def trained(self) -> bool:
        """Whether a trained gate is loaded."""
        return self.gate is not None

    @property
    def fusion(self) -> FusionRule:
        """The fusion rule the gate was trained with (the linear mixture without a gate)."""
        return self.gate.fusion if self.gate is not None else LinearPool()

    def order(self, experts: Sequence[str]) -> list[str]:
        """Experts in the gate's index order (its tie-break order), unknown ones after, by name."""
        known = self.gate.experts if self.gate is not None else ()
        position = {name: i for i, name in enumerate(known)}
        return sorted(experts, key=lambda name: (position.get(name, len(known)), name))

    def logits(
        self, prompt: str, category: str, experts: Sequence[str]
    ) -> tuple[dict[str, float], float]:
        """Gate logits for the experts and the encoder's seconds (called in a worker thread).

        Experts unknown to the gate get the lowest logit the gate produced for this prompt, so
        they are picked only when no known expert is left in S.
        """
        if self.gate is None or self.encoder is None:
            return dict.fromkeys(experts, 0.0), 0.0
        gate = self.gate
        started = time.perf_counter()
        embedding = self.encoder.encode([prompt])
        encode_s = time.perf_counter() - started
        known_category = category if category in gate.metadata.categories else None
        features = gate.features(embedding, [known_category])
        row = gate.logits(features)[0]
        by_name = dict(zip(gate.experts, (float(v) for v in row), strict=True))
        floor = min(by_name.values())
        return {name: by_name.get(name, floor) for name in experts}, encode_s

    def weights(
        self, logits: dict[str, float], subset: Sequence[str], top_k: int
    ) -> dict[str, float]:
        """The fine level's top-k of S and its weights (optimizer.fine), by expert name."""
        names = self.order(subset)
        row = np.array([[logits[name] for name in names]])
        weights = gate_weights(row, np.ones(len(names), dtype=bool), max(1, top_k))[0]
        return {name: float(w) for name, w in zip(names, weights, strict=True) if w > 0}

    def fuse(
        self,
        weights: dict[str, float],
        probs: Mapping[str, Sequence[float]],
        category: str,
    ) -> npt.NDArray[np.float64]:
        """Fused option distribution of the experts that answered (optimizer.fine).

        The gate's log-linear pool applies when it covers every answering expert; otherwise
        (an expert the gate was not trained with) the linear mixture does.
        """
        names = self.order(list(weights))
        fusion = self.fusion
        known = self.gate.experts if self.gate is not None else ()
        if isinstance(fusion, LogLinearPool) and not set(names) <= set(known):
            fusion = LinearPool()
        width = max(len(probs[name]) for name in names)
        option_probs = np.zeros((1, len(names), width))
        for column, name in enumerate(names):
            option_probs[0, column, : len(probs[name])] = probs[name]
        row_weights = np.array([[weights[name] for name in names]])
        if isinstance(fusion, LogLinearPool):
            columns = np.array([known.index(name) for name in names])
            rows = fusion.category_rows([category or None])
            fused = fusion.fuse(row_weights, option_probs, None, rows, columns)
        else:
            fused = fusion.fuse(row_weights, option_probs)
        out: npt.NDArray[np.float64] = fused[0]
        return out


def request_budgets(
    energy_budget_j: float | None,
    delay_budget_s: float | None,
    category_delay_budget_s: Mapping[str, float] | None = None,
) -> Budgets:
    """A request's budgets, built and validated once (InvalidAskError names the field)."""
    try:
        return Budgets.of(
            energy_budget_j=energy_budget_j,
            delay_budget_s=delay_budget_s,
            category_delay_budget_s=category_delay_budget_s,
        )
    except BudgetValueError as err:
        raise InvalidAskError(str(err)) from None


def check_top_k(top_k: int | None) -> None:
    """Refuse a top_k below 1 (None: the cluster default)."""
    if top_k is not None and top_k < 1:
        raise InvalidAskError(f"top_k: must be >= 1, got {top_k}")


def validate(params: AskParams, limits: RequestLimits = DEFAULT_LIMITS) -> Budgets:
    """Reject requests that can never succeed, naming the field; returns the request's budgets.

    Prompt and choice sizes follow the nodes' rule (edge_node.limits, their defaults), so a
    request every node would refuse is INVALID_ARGUMENT here instead of a fan-out that ends in
    UNAVAILABLE; budgets follow orchestrator.budgets.
    """
    try:
        check_prompt(params.prompt, limits)
        if params.choices:
            check_choices(params.choices, limits)
    except InvalidRequestError as err:
        raise InvalidAskError(str(err)) from None
    budgets = request_budgets(params.energy_budget_j, params.delay_budget_s)
    check_top_k(params.top_k)
    if params.max_tokens is not None and params.max_tokens <= 0:
        raise InvalidAskError(f"max_tokens: must be positive, got {params.max_tokens}")
    if params.scoring not in SCORINGS:
        raise InvalidAskError(f"scoring: must be one of {', '.join(SCORINGS)}")
    return budgets


class Orchestrator:
    """Ask / Plan / ListExperts over a registry, a profile book, a planner and a gate."""

    def __init__(
        self,
        config: ClusterConfig,
        registry: Registry,
        book: ProfileBook,
        planner: Planner,
        gating: Gating,
    ) -> None:
        self.config = config
        self.registry = registry
        self.book = book
        self.planner = planner
        self.gating = gating
        # The orchestrator's own per-request time (encoder + gate), planned for like T^agg.
        self._overhead_s: deque[float] = deque(maxlen=64)
        self.observer: Observer | None = None
        self._probing: dict[str, asyncio.Task[None]] = {}

    def probe_unmeasured(self) -> list[asyncio.Task[None]]:
        """Probe, in the background, every expert that is up and has no figures.

        Returns the tasks of the probes running (new or already under way). Called at start-up
        and whenever the fleet changes (a node joins or comes up), so a budgeted request never
        needs a hand-made profile: an expert is planned with under budgets as soon as its probe
        is in (orchestrator.probe).
        """
        if not self.config.probe:
            return []
        for expert in self.registry.up():
            if expert.name in self._probing or self.book.has_figures(expert.name):
                continue
            task = asyncio.get_running_loop().create_task(
                self._probe(expert), name=f"probe-figures-{expert.name}"
            )
            self._probing[expert.name] = task
            task.add_done_callback(functools.partial(self._probe_done, expert.name))
        return list(self._probing.values())

    def _probe_done(self, name: str, _: asyncio.Task[None]) -> None:
        self._probing.pop(name, None)

    async def close(self) -> None:
        """Stop the probes still running."""
        tasks = list(self._probing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _probe(self, expert: Expert) -> None:
        try:
            figures = await probe_expert(expert.client, self.categories())
        except ProbeError as err:
            logger.warning(
                "probe of %s failed (%s): not planned with under budgets until it answers",
                expert.name,
                err,
            )
            return
        self.book.add_probed(expert.name, figures)
        stats = next(iter(figures.categories.values()))
        logger.info(
            "probed %s: latency p95 %.3f s, energy p95 %s",
            expert.name,
            stats.latency_s["p95"],
            "unknown" if stats.energy_j is None else f"{stats.energy_j['p95']:.3f} J",
        )

    def record_overhead(self, seconds: float) -> None:
        """Add one measured encoder + gate time."""
        self._overhead_s.append(seconds)

    def overhead_s(self) -> float:
        """p95 of the recent encoder + gate times, rounded up to 5 ms (stable plan cache keys)."""
        if not self._overhead_s:
            return 0.0
        ordered = sorted(self._overhead_s)
        p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
        return math.ceil(p95 / 0.005) * 0.005

    def categories(self) -> list[str]:
        """Categories known from the profile, the config and the gate."""
        return sorted(
            set(self.book.categories()) | set(self.config.categories) | set(self.gating.categories)
        )

    def budget_categories(self, category: str = "") -> list[str]:
        """The categories a request's delay budget applies to.

        Its own; else every known one; else any category (``*``: figures measured without
        one, such as a probe's), so a delay budget is never silently ignored.
        """
        if category:
            return [category]
        return self.categories() or [ANY_CATEGORY]

    async def plan_request(self, params: PlanParams) -> Plan:
        """A Plan request: validated here, then ``plan`` over every expert that is up.

        Per-category delay budgets name the categories planned for; else every known one.

        Raises:
            InvalidAskError: a budget, top_k or method out of bounds (the message names it).
        """
        budgets = request_budgets(
            params.energy_budget_j, params.delay_budget_s, params.category_delay_budget_s
        )
        check_top_k(params.top_k)
        method = params.method or "dmo"
        if method not in METHODS:
            raise InvalidAskError(f"method: must be one of {', '.join(METHODS)}")
        return await self.plan(
            budgets=budgets,
            categories=budgets.categories(self.budget_categories()),
            top_k=params.top_k,
            method=method,
        )

    async def plan(
        self,
        *,
        budgets: Budgets,
        categories: Sequence[str],
        top_k: int | None,
        method: str = "dmo",
        expert: str = "",
    ) -> Plan:
        """The coarse-level plan over the experts that are up (worker thread).

        ``expert`` restricts the candidates to that one expert (it must be up).

        Raises:
            UnknownExpertError: ``expert`` names no registered expert.
            NoExpertUpError: no expert (or not ``expert``) is up.
            BudgetError: no subset meets the budgets.
        """
        up = [e.name for e in self.registry.up()]
        if expert:
            if expert not in self.registry:
                raise UnknownExpertError(f"expert: no expert {expert!r}")
            if expert not in up:
                raise NoExpertUpError(f"expert: {expert!r} is not up")
            candidates = [expert]
        elif not up:
            raise NoExpertUpError(f"no expert is up (0 of {len(self.registry.all())})")
        else:
            candidates = up
        started = time.monotonic()
        try:
            check_plan_work(method, len(candidates))
        except BudgetValueError as err:
            raise InvalidAskError(str(err)) from None
        try:
            plan, recomputed = await asyncio.to_thread(
                self.planner.planned,
                candidates,
                budgets=budgets,
                categories=list(categories),
                top_k=top_k or self.config.top_k,
                fleet_version=self.registry.version,
                method=method,
                overhead_s=self.overhead_s(),
            )
        except PlanError as err:
            raise BudgetError(str(err)) from None
        if self.observer is not None:
            self.observer.planned(time.monotonic() - started, recomputed=recomputed)
        return plan

    async def ask(self, params: AskParams, on_text: TextSink | None = None) -> AskResult:
        """Answer one request under its budgets (see module docstring).

        ``on_text`` receives the answer's text as it is generated when that is the answer
        already: an open prompt dispatched to one expert alone. Otherwise (fusion needs every
        answer) it is never called and the answer comes with the result.
        """
        received = time.monotonic()
        budgets = validate(params).or_defaults(self.config.budgets)
        known = self.categories()
        if params.category and known and params.category not in known:
            raise InvalidAskError(
                f"category: unknown {params.category!r}; known: {', '.join(known)}"
            )
        categories = self.budget_categories(params.category)
        top_k = params.top_k or self.config.top_k
        if params.expert:
            top_k = 1
        plan_started = time.monotonic()
        plan = await self.plan(
            budgets=budgets,
            categories=categories,
            top_k=top_k,
            expert=params.expert,
        )
        plan_s = time.monotonic() - plan_started
        gate_started = time.monotonic()
        if self.gating.trained:
            logits, encode_s = await asyncio.to_thread(
                self.gating.logits, params.prompt, params.category, plan.subset
            )
        else:  # uniform weights need no thread hop
            logits, encode_s = self.gating.logits(params.prompt, params.category, plan.subset)
        weights = self.gating.weights(logits, plan.subset, plan.top_k)
        gate_s = time.monotonic() - gate_started - encode_s
        self.record_overhead(encode_s + gate_s)
        deadline_s = self._deadline_s(budgets, received)
        if deadline_s <= 0:
            raise NoAnswerError("the delay budget was spent before dispatch", all_deadline=True)
        wants_exit = params.early_exit if params.early_exit is not None else self.config.early_exit
        run_order: list[str] = []
        sequential = 0
        if wants_exit and params.choices and len(weights) > 1:
            run_order = self._run_order(plan, weights, params.category)
            sequential = self._sequential_stages(
                plan, run_order, params.category, categories, deadline_s
            )
        staged = sequential > 0
        if staged:
            outcomes = await self._staged(params, weights, run_order, sequential, received, budgets)
        else:
            streams = on_text is not None and not params.choices and len(weights) == 1
            outcomes = await self._dispatch(
                params, weights, deadline_s, on_text if streams else None
            )
        answered = [o for o in outcomes if o.outcome == "ok"]
        if not answered:
            reasons = ", ".join(f"{o.expert}: {o.status_code}" for o in outcomes)
            raise NoAnswerError(
                f"no expert answered ({reasons})",
                all_deadline=all(o.outcome == "deadline" for o in outcomes),
                all_busy=all(o.status_code == "RESOURCE_EXHAUSTED" for o in outcomes),
            )
        final_weights = {o.expert: weights[o.expert] for o in answered}
        total = sum(final_weights.values())
        final_weights = {k: v / total for k, v in final_weights.items()}
        outcomes = [_with_weight(o, final_weights.get(o.expert, 0.0)) for o in outcomes]
        finish_reason = "stop"
        if params.choices:
            fused = self.gating.fuse(
                final_weights, {o.expert: o.probs for o in answered}, params.category
            )
            index = int(np.argmax(fused))
            answer, choice_index, fused_probs = params.choices[index], index, tuple(fused)
        else:
            answer, _ = fuse_texts(final_weights, {o.expert: o.text for o in answered})
            choice_index, fused_probs = None, ()
            top = max(answered, key=lambda o: final_weights[o.expert])
            finish_reason = top.finish_reason or "stop"
        latency_s = time.monotonic() - received
        known_energy = [
            o.energy.energy_j for o in outcomes if o.energy and o.energy.energy_j is not None
        ]
        complete = len(known_energy) == len(outcomes)
        energy_j = sum(known_energy) if known_energy else None
        estimates = any(o.energy is not None and not o.energy.measured for o in outcomes)
        category_key = params.category or (categories[0] if categories else "")
        predicted_latency = (
            max(plan.predicted_latency_s.values()) if plan.predicted_latency_s else 0.0
        )
        if params.category and params.category in plan.predicted_latency_s:
            predicted_latency = plan.predicted_latency_s[params.category]
        result = AskResult(
            request_id=params.request_id,
            answer=answer,
            choice_index=choice_index,
            fused_probs=fused_probs,
            experts=tuple(outcomes),
            subset=plan.subset,
            category=category_key if params.category else "",
            latency_s=latency_s,
            energy_j=energy_j,
            energy_includes_estimates=estimates,
            energy_complete=complete,
            predicted_energy_j=plan.predicted_energy_j,
            predicted_latency_s=predicted_latency,
            encode_s=encode_s,
            gate_s=gate_s,
            gate_trained=self.gating.trained,
            within_delay_budget=budgets.within_delay(latency_s),
            within_energy_budget=budgets.within_energy(energy_j if complete else None),
            early_exit=staged,
            experts_skipped=len(weights) - len(outcomes),
            energy_budget_j=budgets.energy_budget_j,
            delay_budget_s=budgets.delay_budget_s,
            top_k=plan.top_k,
            plan_s=plan_s,
            finish_reason=finish_reason,
        )
        if self.observer is not None:
            self.observer.answered(result)
        return result

    def _deadline_s(self, budgets: Budgets, received: float) -> float:
        """What a call dispatched now may take (``Budgets.dispatch_deadline_s``)."""
        return budgets.dispatch_deadline_s(
            time.monotonic() - received,
            margin_s=self.config.deadline_margin_s,
            default_s=self.config.default_timeout_s,
        )

    def _run_order(self, plan: Plan, weights: dict[str, float], category: str) -> list[str]:
        """Early exit's stage order: the gate's exit order for the category, as swept.

        That is ``optimizer.fine.ExitOrder`` (expected joules per final answer, lowest first).
        Without one, or for an expert the gate does not cover, the plan's energy decides
        (cheapest first). Ties: the gate's order.
        """
        position = {name: i for i, name in enumerate(self.gating.order(list(weights)))}
        cost = dict(plan.energy_j)
        gate = self.gating.gate
        if gate is not None and gate.exit_order is not None:
            row = gate.exit_order.costs([category or None])[0]
            cost.update(zip(gate.experts, row.tolist(), strict=True))
        return sorted(weights, key=lambda name: (cost.get(name, 0.0), position[name]))

    def _sequential_stages(
        self,
        plan: Plan,
        run_order: Sequence[str],
        category: str,
        categories: Sequence[str],
        deadline_s: float,
    ) -> int:
        """How many experts of ``run_order`` may answer one at a time, the rest then together.

        The largest j < k whose worst case — the first j experts' worst-case latencies in turn,
        then the slowest of the rest — fits what is left of the delay budget, for the prompt's
        category (every category when it has none); j = k − 1 is every expert in turn. 0: none
        fits (dispatch in parallel). Without delay figures there is no delay budget to keep.
        """
        stages = len(run_order)
        keys = [category] if category else list(categories)
        fits = set(range(1, stages))
        for key in keys:
            per_expert = plan.latency_s.get(key)
            if per_expert is None or any(name not in per_expert for name in run_order):
                if plan.latency_s:
                    return 0
                continue
            worst = [per_expert[name] for name in run_order]
            fits &= {j for j in fits if sum(worst[:j]) + max(worst[j:]) <= deadline_s}
        return max(fits, default=0)

    async def _staged(
        self,
        params: AskParams,
        weights: dict[str, float],
        run_order: Sequence[str],
        sequential: int,
        received: float,
        budgets: Budgets,
    ) -> list[ExpertOutcome]:
        """Early exit: one expert at a time, in the exit order, until the answer looks final.

        After each expert the stop score of the answers so far (``optimizer.fine.exit_scores``:
        the gate's agreement model, else the fused confidence, weighed against what the rest
        would cost on this prompt from the joules the answered experts reported) is compared
        with the gate's threshold, as the sweep evaluated it. After the first ``sequential``
        experts (:meth:`_sequential_stages`) the rest answer together, in parallel.
        """
        gate = self.gating.gate
        threshold = gate.exit_threshold if gate is not None and gate.exit_threshold else 1.0
        known = list(gate.experts) if gate is not None else []
        # An expert the gate was not trained with: the fused confidence decides, unweighed.
        covered = gate is not None and set(run_order) <= set(known)
        model = gate.exit_model if gate is not None and covered else None
        exit_order = gate.exit_order if gate is not None and covered else None
        model_rows = None if model is None else model.category_rows([params.category])
        order = np.array([[known.index(n) for n in run_order]] if covered else [[0]])
        spent_j = np.full((1, len(known)), np.nan)  # unknown energy stays NaN, never 0
        outcomes: list[ExpertOutcome] = []
        for stage, name in enumerate(run_order):
            deadline_s = self._deadline_s(budgets, received)
            if deadline_s <= 0:
                break
            if stage == sequential:  # the rest together: their slowest fits, in turn they don't
                rest = {n: weights[n] for n in run_order[stage:]}
                return [*outcomes, *await self._dispatch(params, rest, deadline_s)]
            outcome = await self._call(params, name, weights[name], deadline_s)
            outcomes.append(outcome)
            if covered and outcome.energy is not None and outcome.energy.energy_j is not None:
                spent_j[0, known.index(name)] = outcome.energy.energy_j
            answered = {o.expert: o for o in outcomes if o.outcome == "ok"}
            if not answered:
                continue
            total = sum(weights[n] for n in answered)
            fused = self.gating.fuse(
                {n: weights[n] / total for n in answered},
                {n: o.probs for n, o in answered.items()},
                params.category,
            )
            share = (
                exit_order.rest_share(order, len(outcomes), spent_j, [params.category or None])
                if exit_order is not None
                else None
            )
            stop = exit_scores(
                np.asarray(fused)[None, :], order, len(outcomes), model, model_rows, share
            )
            if float(stop[0]) >= threshold:
                break
        return outcomes

    async def _dispatch(
        self,
        params: AskParams,
        weights: dict[str, float],
        deadline_s: float,
        on_text: TextSink | None = None,
    ) -> list[ExpertOutcome]:
        """Call every weighted expert in parallel; failures and late experts become values."""
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self._call(params, name, weight, deadline_s, on_text))
                for name, weight in weights.items()
            ]
        return [task.result() for task in tasks]

    async def _call(
        self,
        params: AskParams,
        name: str,
        weight: float,
        deadline_s: float,
        on_text: TextSink | None = None,
    ) -> ExpertOutcome:
        expert = self.registry.get(name)
        started = time.monotonic()
        if expert is None:
            return ExpertOutcome(name, weight, 0.0, "error", "NOT_FOUND", 0.0, None, None)
        expert.in_flight += 1
        try:
            if params.choices:
                scored = await expert.client.score(
                    params.prompt,
                    params.choices,
                    chat_template=params.chat_template,
                    timeout_s=deadline_s,
                    request_id=params.request_id,
                )
                return self._scored(params, expert, weight, started, scored)
            generated = await expert.client.generate(
                params.prompt,
                timeout_s=deadline_s,
                max_tokens=params.max_tokens,
                on_chunk=None if on_text is None else (lambda chunk: on_text(chunk.text)),
            )
            return self._generated(params, expert, weight, started, generated)
        except grpc.aio.AioRpcError as err:
            code = err.code()
            outcome: Outcome = "deadline" if code == grpc.StatusCode.DEADLINE_EXCEEDED else "error"
            logger.warning("expert %s dropped: %s %s", name, code.name, err.details())
            self.registry.mark_failed(expert, code)
            return ExpertOutcome(
                name, weight, 0.0, outcome, code.name, time.monotonic() - started, None, None
            )
        finally:
            expert.in_flight -= 1

    def _scored(
        self, params: AskParams, expert: Expert, weight: float, started: float, r: ScoreResult
    ) -> ExpertOutcome:
        latency = time.monotonic() - started
        self.book.observe(expert.name, params.category or "*", latency, r.energy.energy_j)
        probs = to_distribution(r.logprobs, r.choice_tokens, params.choices, params.scoring)
        return ExpertOutcome(
            expert.name,
            weight,
            weight,
            "ok",
            "OK",
            latency,
            r.latency,
            r.energy,
            tuple(probs),
            prompt_tokens=r.prompt_tokens,
            completion_tokens=sum(r.choice_tokens),
        )

    def _generated(
        self, params: AskParams, expert: Expert, weight: float, started: float, r: GenerateResult
    ) -> ExpertOutcome:
        latency = time.monotonic() - started
        self.book.observe(expert.name, params.category or "*", latency, r.energy.energy_j)
        return ExpertOutcome(
            expert.name,
            weight,
            weight,
            "ok",
            "OK",
            latency,
            r.latency,
            r.energy,
            text=r.text,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            finish_reason=r.finish_reason,
        )


def _with_weight(outcome: ExpertOutcome, weight: float) -> ExpertOutcome:
    return replace(outcome, gate_weight=weight)
