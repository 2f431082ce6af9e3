"""Evaluate MoE² and the baselines at one budget point from the recorded response matrix.

Everything here is offline and cheap: the LLMs answered once (recording); the gate was trained
once on the training split (its hyper-parameters chosen on validation); each method picks its
subset S from the training and validation answers together (``PointContext.validation`` holds
both: the planning split) and is scored on the test split. ``moe2`` is DMO on the gated
objective (the method of the paper); ``moe2-exit`` the same S with early exit; ``greedy`` is
greedy on the same objective; ``best-single`` is the feasible expert with the best planning
accuracy; ``random-k`` a random feasible subset with k random experts per prompt;
``uniform-ensemble`` the largest feasible subset with equal weights; ``category-best`` the
feasible expert with the best planning accuracy in each category (a per-category router);
``oracle`` the best-of upper bound on the test split (some expert of S answers correctly).

The gate weights and the fused answers come from :mod:`optimizer.fine`, the same code the
orchestrator serves with, with the fusion rule recorded in the gate.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from optimizer import BestOfObjective, GatedObjective, Problem, Solution, solve
from optimizer.evidence import HitsFunction, guarded_plan
from optimizer.fine import (
    AgreementModel,
    ExitOrder,
    FusionRule,
    LinearPool,
    LogLinearPool,
    early_exit,
    gate_ranks,
    gate_weights,
    top_k_members,
)
from orchestrator.fusion import option_distribution
from orchestrator.planner import OutOfFoldHits
from testbed.categories import Item
from testbed.recording import Response
from testbed.sweep_config import Method

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class SplitData:
    """One split's recorded responses as arrays (P prompts, N experts, O options, padded)."""

    items: tuple[Item, ...]
    categories: npt.NDArray[np.str_]
    labels: npt.NDArray[np.int64]
    option_probs: FloatArray  # [P, N, O]
    correct: BoolArray  # [P, N]: the expert's argmax is the label
    latency_s: FloatArray  # [P, N], wall time at the caller
    energy_j: FloatArray  # [P, N], NaN where unknown

    @property
    def size(self) -> int:
        """Number of prompts."""
        return len(self.items)

    @property
    def n_options(self) -> npt.NDArray[np.int64]:
        """Real (not padded) options of each prompt."""
        return np.array([len(item.choices) for item in self.items], dtype=np.int64)

    def category_rows(self, fusion: FusionRule) -> npt.NDArray[np.int64] | None:
        """Each prompt's parameter row of a log-linear pool (None for the linear pool)."""
        if isinstance(fusion, LogLinearPool):
            return fusion.category_rows(self.categories.tolist())
        return None


def build_split(
    items: Sequence[Item], experts: Sequence[str], matrix: Mapping[str, Mapping[str, Response]]
) -> SplitData:
    """Arrays of one split from the recorded responses (all must be recorded)."""
    width = max((len(item.choices) for item in items), default=1)
    probs = np.zeros((len(items), len(experts), width))
    latency = np.zeros((len(items), len(experts)))
    energy = np.full((len(items), len(experts)), np.nan)
    for i, item in enumerate(items):
        for n, expert in enumerate(experts):
            response = matrix[expert][item.item_id]
            distribution = option_distribution(
                response.logprobs, response.choice_tokens, item.choices, item.scoring
            )
            probs[i, n, : len(distribution)] = distribution
            latency[i, n] = response.latency_s
            if response.energy_j is not None:
                energy[i, n] = response.energy_j
    labels = np.array([item.label for item in items], dtype=np.int64)
    correct = (
        probs.argmax(axis=2) == labels[:, None] if items else np.zeros((0, len(experts)), bool)
    )
    return SplitData(
        items=tuple(items),
        categories=np.array([item.category for item in items], dtype=str),
        labels=labels,
        option_probs=probs,
        correct=correct,
        latency_s=latency,
        energy_j=energy,
    )


def worst_case_costs(
    data: SplitData, experts: Sequence[str], categories: Sequence[str], statistic: str
) -> tuple[FloatArray, dict[str, FloatArray]]:
    """Per-expert worst-case energy (J, over categories) and per-category latency (s)."""
    q = {"p50": 0.5, "p95": 0.95, "max": 1.0}[statistic]
    latency: dict[str, FloatArray] = {}
    energy = np.zeros(len(experts))
    for category in categories:
        rows = data.categories == category
        latency[category] = np.quantile(data.latency_s[rows], q, axis=0)
        with np.errstate(all="ignore"):
            per_category = np.nanquantile(data.energy_j[rows], q, axis=0)
        energy = np.fmax(energy, per_category)
    if np.any(~np.isfinite(energy)):
        unknown = [e for e, v in zip(experts, energy, strict=True) if not math.isfinite(v)]
        raise ValueError(f"energy is unknown for {', '.join(unknown)}: cannot plan under it")
    return energy, latency


LOOSEST_MARGIN = 0.2
"""The loosest budget lies this fraction above the last breakpoint (all experts admitted)."""


def budget_grid(
    values: FloatArray, top_k: int, points: int, *, add: float = 0.0, combine: str = "sum"
) -> list[float]:
    """Budgets between the breakpoints where the feasible family changes, never on one.

    For a delay budget (``combine="max"``) the breakpoints are each expert's worst case (plus
    ``add``): each step admits one more expert. For an energy budget (``combine="sum"``, top-k
    worst case) they are each expert's own figure and the sums of the j largest for j = 2..k,
    the last of which admits every expert. Each budget is the midpoint between a breakpoint and
    the next one (the loosest: :data:`LOOSEST_MARGIN` above the last), so every point admits
    the same subsets as its breakpoint with half a step of slack on each side: estimates that
    differ by a little between the offline plan and the live one cannot flip feasibility. At
    most ``points`` budgets are kept, evenly by rank, always the cheapest and the loosest.
    """
    ordered = np.sort(values)[::-1]
    candidates = {float(v) + add for v in ordered}
    if combine == "sum":
        candidates.update(float(ordered[:j].sum()) + add for j in range(2, top_k + 1))
    # A budget must be positive; an expert estimated at ~0 J is admitted by a tiny one.
    breakpoints = sorted(max(v, 1e-6) for v in candidates)
    chosen = [(low + high) / 2 for low, high in itertools.pairwise(breakpoints)] + [
        breakpoints[-1] * (1 + LOOSEST_MARGIN)
    ]
    if len(chosen) > points:
        keep = np.unique(np.round(np.linspace(0, len(chosen) - 1, points)).astype(int))
        chosen = [chosen[i] for i in keep]
    return [float(f"{v:.3g}") if _rounding_keeps_order(v, breakpoints) else v for v in chosen]


def _rounding_keeps_order(value: float, breakpoints: Sequence[float]) -> bool:
    """Whether 3 significant digits leave ``value`` between the same two breakpoints."""
    rounded = float(f"{value:.3g}")
    return all((b < value) == (b < rounded) for b in breakpoints)


def fused_hits(fusion: FusionRule, weights: FloatArray, data: SplitData) -> BoolArray:
    """``[P]`` whether the fused answer of the weighted experts is right, per prompt."""
    fused = fusion.fuse(weights, data.option_probs, data.n_options, data.category_rows(fusion))
    out: BoolArray = fused.argmax(axis=1) == data.labels
    return out


def hit_fields(hits: BoolArray, data: SplitData) -> dict[str, Any]:
    """A result row's accuracy fields from per-prompt hits: overall, per category, per prompt."""
    return {
        "accuracy": float(hits.mean()),
        "accuracy_by_category": {
            c: float(hits[data.categories == c].mean())
            for c in sorted(set(data.categories.tolist()))
        },
        # Per test prompt, for paired comparisons between methods (bootstrap intervals).
        "test_hits": hits.astype(int).tolist(),
    }


def realised_energy_j(order: npt.ArrayLike, ran: npt.ArrayLike, energy_j: FloatArray) -> FloatArray:
    """``[P]`` recorded joules of the experts that ran (the first ``ran`` of each order)."""
    run_order = np.asarray(order, dtype=np.int64)
    stages = np.arange(run_order.shape[1])[None, :] < np.asarray(ran)[:, None]
    spent = np.take_along_axis(np.nan_to_num(energy_j, nan=0.0), run_order, axis=1)
    out: FloatArray = np.where(stages, spent, 0.0).sum(axis=1)
    return out


def gated_objective(
    fusion: FusionRule, logits: FloatArray, data: SplitData, top_k: int
) -> GatedObjective:
    """The coarse level's gated objective F(S) on one split, with the fine level's rule."""
    return GatedObjective(
        logits,
        data.option_probs,
        data.labels,
        top_k=top_k,
        fusion=fusion,
        n_options=data.n_options,
        category_rows=data.category_rows(fusion),
    )


def usage(
    weights: FloatArray, data: SplitData, experts: Sequence[str]
) -> dict[str, dict[str, int]]:
    """How many test prompts of each category each expert was dispatched to."""
    out: dict[str, dict[str, int]] = {}
    used = weights > 0
    for category in sorted(set(data.categories.tolist())):
        rows = used[data.categories == category]
        counts = rows.sum(axis=0)
        out[category] = {e: int(c) for e, c in zip(experts, counts, strict=True) if c > 0}
    return out


@dataclass(frozen=True, slots=True)
class PointContext:
    """What every method at one budget point shares."""

    problem: Problem
    experts: tuple[str, ...]
    validation: SplitData
    test: SplitData
    logits_validation: FloatArray
    logits_test: FloatArray
    top_k: int
    seed: int
    fusion: FusionRule = dataclasses.field(default_factory=LinearPool)
    exit_threshold: float | None = None
    exit_order: ExitOrder | None = None  # early exit's stage order (None: index order)
    held_out: BoolArray | None = None  # planning rows the fine level was not fitted on
    out_of_fold: OutOfFoldHits | None = None  # every planning row answered without its fold
    exit_model: AgreementModel | None = None  # early exit's stop score (None: confidence)


def take_rows(data: SplitData, rows: BoolArray) -> SplitData:
    """The prompts of ``data`` where ``rows`` is True, every array cut alike."""
    return SplitData(
        items=tuple(item for item, keep in zip(data.items, rows, strict=True) if keep),
        categories=data.categories[rows],
        labels=data.labels[rows],
        option_probs=data.option_probs[rows],
        correct=data.correct[rows],
        latency_s=data.latency_s[rows],
        energy_j=data.energy_j[rows],
    )


def moe2_plan(ctx: PointContext) -> tuple[Solution, int]:
    """MoE²'s coarse level: DMO on the gated objective, the single-expert guard, and k' ≤ top_k.

    :func:`optimizer.evidence.guarded_plan`: a plan other than the ``best-single`` baseline's
    expert is kept only if it clearly beats that expert on prompts the fine level was not
    fitted on (every planning prompt answered out of fold when the sweep recorded that,
    ``ctx.out_of_fold``, else the validation rows); where the plan for ``top_k`` does not,
    the plans for fewer experts per prompt are tried. Returns the plan and its k.
    """
    single_accuracy = ctx.validation.correct.mean(axis=0)  # as best-single chooses
    oof = ctx.out_of_fold
    n = len(ctx.experts)

    def solve_at(k: int) -> tuple[Problem, Solution]:
        problem = ctx.problem if k == ctx.top_k else dataclasses.replace(ctx.problem, top_k=k)
        gated = gated_objective(ctx.fusion, ctx.logits_validation, ctx.validation, k)
        return problem, solve(problem, gated, "dmo")

    def evidence_at(k: int) -> HitsFunction | None:
        if oof is not None:  # a k it does not cover has no evidence (the rows were fitted)
            if not oof.covers(n, k):
                return None
            every = np.ones(ctx.validation.size, dtype=bool)

            def out_of_fold(members: Sequence[int]) -> BoolArray:
                found = oof.lookup(members, k, every)
                if found is None:  # covers() said every subset is there
                    raise ValueError(f"no out-of-fold answers for subset {list(members)}")
                return found

            return out_of_fold
        if ctx.held_out is None or not ctx.held_out.any():
            return None
        return gated_objective(
            ctx.fusion,
            ctx.logits_validation[ctx.held_out],
            take_rows(ctx.validation, ctx.held_out),
            k,
        ).hits

    _, solution, k = guarded_plan(solve_at, ctx.top_k, single_accuracy, evidence_at)
    return solution, k


def _row(
    ctx: PointContext,
    method: Method,
    solution: Solution | None,
    weights: FloatArray | None,
    *,
    accuracy_override: float | None = None,
) -> dict[str, Any]:
    if solution is None or not solution.feasible or not solution.subset:
        return {
            "method": method,
            "feasible": False,
            "subset": [],
            "n_experts": 0,
            "accuracy": None,
            "accuracy_by_category": {},
            "expert_usage": {},
        }
    row: dict[str, Any] = {
        "method": method,
        "feasible": True,
        "subset": list(solution.subset_names),
        "n_experts": len(solution.subset),
        "validation_objective": solution.value,
        "upper_bound": None if math.isinf(solution.upper_bound) else solution.upper_bound,
        "evaluations": solution.evaluations,
        "solve_s": solution.seconds,
        "predicted_energy_j": solution.energy_j,
        "predicted_latency_s": max(solution.latency_s.values(), default=0.0),
        "predicted_latency_by_category_s": dict(solution.latency_s),
    }
    if weights is not None:
        # Baselines that route to one expert, or average, use the paper's linear mixture; a
        # single expert's answer is its own argmax either way.
        fusion = ctx.fusion if method in ("moe2", "greedy") else LinearPool()
        row.update(hit_fields(fused_hits(fusion, weights, ctx.test), ctx.test))
        row["expert_usage"] = usage(weights, ctx.test, ctx.experts)
    else:
        row["accuracy"] = accuracy_override
        row["accuracy_by_category"] = {}
        row["expert_usage"] = {}
    return row


def _mask(solution: Solution, n: int) -> BoolArray:
    mask = np.zeros(n, dtype=bool)
    mask[list(solution.subset)] = True
    return mask


def evaluate_method(ctx: PointContext, method: Method) -> dict[str, Any]:
    """One result row (without the budget fields) for one method at one budget point."""
    n = len(ctx.experts)
    val, test, k = ctx.validation, ctx.test, ctx.top_k
    if method in ("moe2", "greedy", "moe2-exit"):
        solution, k = (
            (solve(ctx.problem, _gated(ctx), "greedy"), k) if method == "greedy" else moe2_plan(ctx)
        )
        if not solution.feasible:
            return _row(ctx, method, None, None)
        if method == "moe2-exit":
            return _early_exit_row(ctx, solution, k)
        weights = gate_weights(ctx.logits_test, _mask(solution, n), k)
        result = _row(ctx, method, solution, weights)
        result["plan_top_k"] = k
        result["realised_energy_j"] = float(
            np.mean(np.nansum(np.where(weights > 0, test.energy_j, 0.0), axis=1))
        )
        return result
    if method == "category-best":
        return _category_best(ctx)
    if method == "best-single":
        accuracy = BestOfObjective(val.correct.astype(np.float64))
        solution = solve(ctx.problem, accuracy, "best-single")
        if not solution.feasible:
            return _row(ctx, method, None, None)
        weights = np.zeros((test.size, n))
        weights[:, solution.subset[0]] = 1.0
        return _row(ctx, method, solution, weights)
    if method == "random-k":
        solution = solve(ctx.problem, _gated(ctx), "random", seed=ctx.seed)
        if not solution.feasible:
            return _row(ctx, method, None, None)
        rng = np.random.default_rng(ctx.seed)
        members = np.array(solution.subset)
        weights = np.zeros((test.size, n))
        for row in range(test.size):
            chosen = rng.choice(members, size=min(k, len(members)), replace=False)
            weights[row, chosen] = 1.0 / len(chosen)
        return _row(ctx, method, solution, weights)
    if method == "uniform-ensemble":
        solution = solve(ctx.problem, BestOfObjective(np.eye(n)), "dmo")
        if not solution.feasible:
            return _row(ctx, method, None, None)
        by_accuracy = sorted(solution.subset, key=lambda e: (-val.correct[:, e].mean(), e))
        weights = np.zeros((test.size, n))
        best = list(by_accuracy[:k])
        weights[:, best] = 1.0 / len(best)
        return _row(ctx, method, solution, weights)
    # oracle: best-of on the test split (an upper bound no router can beat)
    solution = solve(ctx.problem, BestOfObjective(test.correct.astype(np.float64)), "dmo")
    if not solution.feasible:
        return _row(ctx, method, None, None)
    return _row(ctx, method, solution, None, accuracy_override=solution.value)


def _gated(ctx: PointContext) -> GatedObjective:
    """The gated objective of the point's top_k on the planning prompts."""
    return gated_objective(ctx.fusion, ctx.logits_validation, ctx.validation, ctx.top_k)


def _category_best(ctx: PointContext) -> dict[str, Any]:
    """The best feasible single expert of each category (validation accuracy), one per prompt.

    Each chosen expert must be feasible on its own, since it alone answers its category's
    prompts; the worst case of the union is therefore its most expensive member's.
    """
    problem = ctx.problem
    feasible = [e for e in range(len(ctx.experts)) if problem.is_feasible([e])]
    if not feasible:
        return _row(ctx, "category-best", None, None)
    val, test = ctx.validation, ctx.test
    choice: dict[str, int] = {}
    for category in sorted(set(val.categories.tolist()) | set(test.categories.tolist())):
        rows = val.categories == category
        scores = val.correct[rows].mean(axis=0) if rows.any() else val.correct.mean(axis=0)
        choice[category] = max(feasible, key=lambda e: (scores[e], -e))
    members = tuple(sorted(set(choice.values())))
    per_expert = [
        (problem.worst_case_energy_j([e]), problem.worst_case_latency_s([e])) for e in members
    ]
    latency = {c: max(lat[c] for _, lat in per_expert) for c in per_expert[0][1]}
    solution = Solution(
        subset=members,
        subset_names=tuple(ctx.experts[e] for e in members),
        value=float(
            np.mean(
                [
                    val.correct[val.categories == c, e].mean()
                    for c, e in choice.items()
                    if (val.categories == c).any()
                ]
            )
        ),
        feasible=True,
        energy_j=max(energy for energy, _ in per_expert),
        latency_s=latency,
        upper_bound=math.inf,
        evaluations=len(ctx.experts),
        seconds=0.0,
        method="category-best",
    )
    weights = np.zeros((test.size, len(ctx.experts)))
    for row, category in enumerate(test.categories.tolist()):
        weights[row, choice[category]] = 1.0
    return _row(ctx, "category-best", solution, weights)


def _early_exit_row(ctx: PointContext, solution: Solution, k: int) -> dict[str, Any]:
    """MoE² with dynamic k: the top-k of S answer in the exit order until the answer looks final.

    ``k``: the plan's (at most ``ctx.top_k``). The worst case is the plan's (all of K may
    run); the row adds the realised joules (the recorded energy of the experts that ran) and
    how many ran on average.
    """
    test = ctx.test
    exit_order = ctx.exit_order or ExitOrder.cheapest(np.zeros(len(ctx.experts)))
    chosen = top_k_members(gate_ranks(ctx.logits_test), np.array(solution.subset), k)
    order = exit_order.order(chosen, test.categories.tolist())
    threshold = ctx.exit_threshold if ctx.exit_threshold is not None else 1.0
    model = ctx.exit_model
    fused, ran = early_exit(
        ctx.fusion,
        order,
        ctx.logits_test,
        test.option_probs,
        threshold,
        test.n_options,
        test.category_rows(ctx.fusion),
        model,
        None if model is None else model.category_rows(test.categories.tolist()),
        exit_order=exit_order,
        energy_j=test.energy_j,
        prompt_categories=test.categories.tolist(),
    )
    row = _row(ctx, "moe2-exit", solution, None)
    row.update(hit_fields(fused.argmax(axis=1) == test.labels, test))
    row["realised_energy_j"] = float(np.mean(realised_energy_j(order, ran, test.energy_j)))
    row["mean_experts_run"] = float(ran.mean())
    row["exit_threshold"] = threshold
    row["plan_top_k"] = k
    return row


def concat(first: SplitData, second: SplitData) -> SplitData:
    """Two splits as one (for profiling on train + validation)."""
    return SplitData(
        items=first.items + second.items,
        categories=np.concatenate([first.categories, second.categories]),
        labels=np.concatenate([first.labels, second.labels]),
        option_probs=np.concatenate(
            [_pad(first.option_probs, second), _pad(second.option_probs, first)]
        ),
        correct=np.concatenate([first.correct, second.correct]),
        latency_s=np.concatenate([first.latency_s, second.latency_s]),
        energy_j=np.concatenate([first.energy_j, second.energy_j]),
    )


def _pad(probs: np.ndarray, other: SplitData) -> np.ndarray:
    width = max(probs.shape[2], other.option_probs.shape[2])
    out = np.zeros((probs.shape[0], probs.shape[1], width))
    out[:, :, : probs.shape[2]] = probs
    return out


def pad_to(data: SplitData, width: int) -> np.ndarray:
    """Option distributions padded to ``width`` options."""
    out = np.zeros((data.size, data.option_probs.shape[1], width))
    out[:, :, : data.option_probs.shape[2]] = data.option_probs
    return out
