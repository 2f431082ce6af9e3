"""Evaluate MoE² and the baselines at one budget point from the recorded response matrix.

Everything here is offline and cheap: the LLMs answered once (recording); the gate was trained
once on the training split; each method picks its subset S from the validation split and is
scored on the test split. ``moe2`` is DMO on the gated objective (the method of the paper);
``greedy`` is greedy on the same objective; ``best-single`` is the feasible expert with the best
validation accuracy; ``random-k`` a random feasible subset with k random experts per prompt;
``uniform-ensemble`` the largest feasible subset with equal weights; ``oracle`` the best-of
upper bound on the test split (some expert of S answers correctly).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from optimizer import BestOfObjective, GatedObjective, Problem, Solution, solve
from orchestrator.fusion import option_distribution
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


def budget_grid(
    values: FloatArray, top_k: int, points: int, *, add: float = 0.0, combine: str = "sum"
) -> list[float]:
    """Budgets at the breakpoints where the feasible family changes, cheapest to all experts.

    For a delay budget (``combine="max"``) the breakpoints are each expert's worst case (plus
    ``add``): each step admits one more expert. For an energy budget (``combine="sum"``, top-k
    worst case) they are each expert's own figure and the sums of the j largest for j = 2..k,
    the last of which admits every expert. At most ``points`` budgets are kept, evenly by rank,
    always including the cheapest and the loosest; each is raised by 0.01 % so that a subset
    exactly at its budget is feasible.
    """
    ordered = np.sort(values)[::-1]
    candidates = {float(v) + add for v in ordered}
    if combine == "sum":
        candidates.update(float(ordered[:j].sum()) + add for j in range(2, top_k + 1))
    # A budget must be positive; an expert estimated at ~0 J is admitted by a tiny one.
    chosen = sorted(max(v, 1e-6) for v in candidates)
    if len(chosen) > points:
        keep = np.unique(np.round(np.linspace(0, len(chosen) - 1, points)).astype(int))
        chosen = [chosen[i] for i in keep]
    return [round(v * 1.0001, 6) for v in chosen]


def gated_weights(logits: FloatArray, mask: BoolArray, top_k: int) -> FloatArray:
    """Softmax restricted to S, top-k of S per prompt, renormalised ([P, N]; ties by index)."""
    masked = np.where(mask[None, :], logits, -np.inf)
    keep_count = min(top_k, int(mask.sum()))
    order = np.argsort(-masked, axis=1, kind="stable")[:, :keep_count]
    keep = np.zeros_like(mask[None, :].repeat(len(logits), axis=0))
    np.put_along_axis(keep, order, True, axis=1)
    kept = np.where(keep, masked, -np.inf)
    kept = kept - kept.max(axis=1, keepdims=True)
    weights = np.where(keep, np.exp(kept), 0.0)
    out: FloatArray = weights / weights.sum(axis=1, keepdims=True)
    return out


def fused_accuracy(weights: FloatArray, data: SplitData) -> tuple[float, dict[str, float]]:
    """Accuracy of the weighted fusion, overall and per category."""
    fused = np.einsum("pn,pno->po", weights, data.option_probs)
    hits = fused.argmax(axis=1) == data.labels
    by_category = {
        c: float(hits[data.categories == c].mean()) for c in sorted(set(data.categories.tolist()))
    }
    return float(hits.mean()), by_category


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
        accuracy, by_category = fused_accuracy(weights, ctx.test)
        row["accuracy"] = accuracy
        row["accuracy_by_category"] = by_category
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
    gated = GatedObjective(ctx.logits_validation, val.option_probs, val.labels, top_k=k)
    if method in ("moe2", "greedy"):
        solution = solve(ctx.problem, gated, "dmo" if method == "moe2" else "greedy")
        if not solution.feasible:
            return _row(ctx, method, None, None)
        weights = gated_weights(ctx.logits_test, _mask(solution, n), k)
        return _row(ctx, method, solution, weights)
    if method == "best-single":
        accuracy = BestOfObjective(val.correct.astype(np.float64))
        solution = solve(ctx.problem, accuracy, "best-single")
        if not solution.feasible:
            return _row(ctx, method, None, None)
        weights = np.zeros((test.size, n))
        weights[:, solution.subset[0]] = 1.0
        return _row(ctx, method, solution, weights)
    if method == "random-k":
        solution = solve(ctx.problem, gated, "random", seed=ctx.seed)
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
