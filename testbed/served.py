"""What the orchestrator serves, scored offline on a finished sweep (``moe2 served-report``).

The sweep's ``moe2`` rows score the paper's coarse level: one subset S for every category,
planned on every planning prompt under every category's delay budget. The orchestrator plans
per request, under the request's category's delay budget (with the same planning prompts and
energy figures; :class:`orchestrator.planner.Planner`). This module runs that planner itself,
built from the sweep's files the way ``moe2 serve`` builds it (the live phase's cluster), at
every ``moe2`` budget point and for every category, and scores each category's plan on that
category's test prompts with the fine level the orchestrator answers with. The figures are
what ``Ask`` would answer at those budgets (with the profile as recorded: live observations
would move it), next to the sweep's ``moe2`` and ``best-single`` on the same test prompts, and
next to the planner's own ``best-single`` method per category (one expert per request
category under the same budgets, answering as the fine level answers it alone): the
like-for-like baseline of a per-request plan.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from testbed.results import ResultRow, load_results

__all__ = ["CategoryPlan", "ServedPoint", "served_points", "served_text"]


@dataclass(frozen=True, slots=True)
class CategoryPlan:
    """The orchestrator's plan for one category at one budget point, scored on its test prompts.

    Attributes:
        category: The request category.
        subset: The planned experts S; empty when the planner refused (no feasible S).
        top_k: The experts per prompt the plan uses (at most the requested top_k).
        n_prompts: The category's test prompts.
        hits: How many of them the served answer got right (0 when refused).
        predicted_energy_j: The plan's worst-case energy per request, joules.
        predicted_latency_s: The plan's worst-case latency for the category, seconds.
    """

    category: str
    subset: tuple[str, ...]
    top_k: int
    n_prompts: int
    hits: int
    predicted_energy_j: float | None = None
    predicted_latency_s: float | None = None


@dataclass(frozen=True, slots=True)
class ServedPoint:
    """One ``moe2`` budget point: the served plans and accuracy against the sweep's methods.

    Attributes:
        point, top_k, energy_budget_j, delay_budget_s: The sweep's budget point.
        plans: One plan per category.
        accuracy: Served test accuracy in [0, 1]; a refused category's prompts count as wrong.
        refused: Categories the planner found no feasible S for.
        sweep_accuracy: The sweep's ``moe2`` accuracy at the point (None if infeasible).
        best_single_accuracy: The sweep's ``best-single`` accuracy (None if infeasible).
        gain_points, low_points, high_points: Served minus ``best-single``, in points, with a
            95 % paired-bootstrap interval over the test prompts (NaN without a baseline).
        served_single: The planner's own best single expert per category (method
            ``best-single``, what ``Ask`` with that method serves under the same budgets): the
            like-for-like baseline, since a request's category's delay budget may admit an
            expert the sweep's one-expert-for-every-category ``best-single`` may not use.
        served_single_accuracy: Its test accuracy (a refused category's prompts count wrong).
        served_gain_points, served_low_points, served_high_points: Served minus that, in
            points, with a 95 % paired-bootstrap interval.
    """

    point: int
    top_k: int
    energy_budget_j: float
    delay_budget_s: float
    plans: tuple[CategoryPlan, ...]
    accuracy: float
    refused: tuple[str, ...] = ()
    sweep_accuracy: float | None = None
    best_single_accuracy: float | None = None
    gain_points: float = math.nan
    low_points: float = math.nan
    high_points: float = math.nan
    served_single: tuple[CategoryPlan, ...] = ()
    served_single_accuracy: float = math.nan
    served_gain_points: float = math.nan
    served_low_points: float = math.nan
    served_high_points: float = math.nan
    test_hits: tuple[int, ...] = field(default=(), repr=False)


def served_points(out_dir: Path) -> list[ServedPoint]:
    """Plan and score every ``moe2`` budget point of a finished sweep as the orchestrator would.

    Raises:
        SweepConfigError, RecordingError, GateFileError, StartupError, OSError: a file of the
        sweep is missing or unusable (the message names it).
    """
    from optimizer.fine import gate_weights
    from orchestrator.budgets import Budgets
    from orchestrator.planner import PlanError
    from orchestrator.profiles import ProfileBook
    from orchestrator.server import build_planner, load_files
    from testbed.evaluation import fused_hits, take_rows
    from testbed.live import sweep_cluster
    from testbed.sweep import gate_features, load_recorded

    config, experts, data = load_recorded(out_dir)
    categories = list(config.categories)
    # The live phase's cluster; the node addresses are never dialled (nothing is served).
    cluster = sweep_cluster(
        config, out_dir, {e: f"127.0.0.1:{1 + i}" for i, e in enumerate(experts)}
    )
    profile, selection, gating = load_files(cluster)
    if gating.gate is None:
        raise FileNotFoundError(f"{out_dir / 'gate.npz'}: the sweep has no trained gate")
    gate = gating.gate
    book = ProfileBook(profile, statistic=config.statistic)
    planner = build_planner(cluster, book, selection, gating)
    overhead_s = float(json.loads((out_dir / "env.json").read_text()).get("gate_overhead_s", 0.0))
    features, _, _ = gate_features(data, categories, out_dir)
    test = data["test"]
    columns = [list(gate.experts).index(e) for e in experts]
    logits = gate.logits(features["test"])[:, columns]
    rows = load_results(out_dir)
    cells = {(r.point, r.method): r for r in rows}

    def serve(row: ResultRow, method: str) -> tuple[list[CategoryPlan], list[str], np.ndarray]:
        """Every category planned as a request of it would be, with ``method``, and scored."""
        budgets = Budgets(energy_budget_j=row.energy_budget_j, delay_budget_s=row.delay_budget_s)
        hits = np.zeros(test.size, dtype=np.int64)
        plans: list[CategoryPlan] = []
        refused: list[str] = []
        for category in categories:
            rows_c = test.categories == category
            try:
                plan, _ = planner.planned(
                    experts,
                    budgets=budgets,
                    categories=[category],
                    top_k=row.top_k,
                    fleet_version=0,
                    method=method,
                    overhead_s=overhead_s,
                )
            except PlanError:
                refused.append(category)
                plans.append(CategoryPlan(category, (), row.top_k, int(rows_c.sum()), 0))
                continue
            mask = np.isin(np.asarray(experts), plan.subset)
            weights = gate_weights(logits[rows_c], mask, plan.top_k)
            right = fused_hits(gate.fusion, weights, take_rows(test, rows_c))
            hits[rows_c] = right
            plans.append(
                CategoryPlan(
                    category,
                    tuple(plan.subset),
                    plan.top_k,
                    int(rows_c.sum()),
                    int(right.sum()),
                    plan.predicted_energy_j,
                    max(plan.predicted_latency_s.values(), default=None),
                )
            )
        return plans, refused, hits

    out: list[ServedPoint] = []
    for row in sorted((r for r in rows if r.method == "moe2"), key=lambda r: r.point):
        plans, refused, hits = serve(row, "dmo")
        single_plans, _, single_hits = serve(row, "best-single")
        single = cells.get((row.point, "best-single"))
        out.append(_point(row, plans, refused, hits, single, single_plans, single_hits))
    return out


def _point(
    row: ResultRow,
    plans: Sequence[CategoryPlan],
    refused: Sequence[str],
    hits: np.ndarray,
    single: ResultRow | None,
    single_plans: Sequence[CategoryPlan],
    single_hits: np.ndarray,
) -> ServedPoint:
    """One point's figures: the served hits against the sweep's and the planner's best single."""
    from testbed.story import paired_bootstrap

    gain = (math.nan, math.nan, math.nan)
    if single is not None and single.feasible and len(single.test_hits) == len(hits):
        gain = paired_bootstrap(hits.tolist(), list(single.test_hits))
    served_gain = paired_bootstrap(hits.tolist(), single_hits.tolist())
    return ServedPoint(
        point=row.point,
        top_k=row.top_k,
        energy_budget_j=row.energy_budget_j,
        delay_budget_s=row.delay_budget_s,
        plans=tuple(plans),
        accuracy=float(hits.mean()) if len(hits) else math.nan,
        refused=tuple(refused),
        sweep_accuracy=row.accuracy,
        best_single_accuracy=single.accuracy if single is not None else None,
        gain_points=gain[0],
        low_points=gain[1],
        high_points=gain[2],
        served_single=tuple(single_plans),
        served_single_accuracy=float(single_hits.mean()) if len(single_hits) else math.nan,
        served_gain_points=served_gain[0],
        served_low_points=served_gain[1],
        served_high_points=served_gain[2],
        test_hits=tuple(int(h) for h in hits),
    )


def served_json(points: Sequence[ServedPoint]) -> dict[str, Any]:
    """The report as JSON-ready data (``served.json``)."""
    return {"points": [asdict(p) for p in points]}


def _percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _interval(gain: float, low: float, high: float) -> str:
    return "-" if math.isnan(gain) else f"{gain:+.1f} [{low:+.1f}, {high:+.1f}]"


def served_text(points: Sequence[ServedPoint]) -> str:
    """One table per top_k: budgets, the sweep's moe2 and best-single, served, gains, plans.

    Two baselines: the sweep's ``best-single`` (one expert for every category) and the
    planner's own best single expert per request category (``served best-single``).
    """
    blocks = []
    for top_k in sorted({p.top_k for p in points}):
        lines = [
            f"top_k={top_k}: served (the orchestrator's plan per request category) vs the sweep",
            "E budget (J)  T budget (s)  moe2  best-single  served  served - best-single"
            "  served best-single  served - it  plans (category: S/k)",
        ]
        for p in (q for q in points if q.top_k == top_k):
            plans = "; ".join(
                f"{c.category}: "
                + ("refused" if not c.subset else f"{'+'.join(c.subset)}/{c.top_k}")
                for c in p.plans
            )
            gain = _interval(p.gain_points, p.low_points, p.high_points)
            served_gain = _interval(p.served_gain_points, p.served_low_points, p.served_high_points)
            lines.append(
                f"{p.energy_budget_j:12.3g}  {p.delay_budget_s:12.3g}  "
                f"{_percent(p.sweep_accuracy):>4}  {_percent(p.best_single_accuracy):>11}  "
                f"{_percent(p.accuracy):>6}  {gain:>20}  "
                f"{_percent(p.served_single_accuracy):>18}  {served_gain:>20}  {plans}"
            )
        blocks.append("\n".join(lines))
    compared = [(p, p.best_single_accuracy) for p in points if p.best_single_accuracy is not None]
    below = [p for p, single in compared if p.accuracy < single - 1e-9]
    worst = min((p.gain_points for p in below), default=0.0)
    served = [p for p in points if not math.isnan(p.served_single_accuracy)]
    below_served = [p for p in served if p.accuracy < p.served_single_accuracy - 1e-9]
    worst_served = min((p.served_gain_points for p in below_served), default=0.0)
    blocks.append(
        f"served below the best single feasible expert at {len(below)} of {len(compared)} "
        f"points (worst {worst:+.1f}); below the planner's own best single expert per "
        f"category at {len(below_served)} of {len(served)} (worst {worst_served:+.1f}); "
        f"refused categories at {sum(1 for p in points if p.refused)} points"
    )
    return "\n\n".join(blocks)
