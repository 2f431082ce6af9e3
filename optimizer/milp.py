"""An independent exact MILP for the best-of objective (scipy.optimize.milp / HiGHS).

Formulation over the allowed experts j (singleton-feasible), prompts i, scores s_ij:

    max   (1/P) Σ_i Σ_j s_ij a_ij
    s.t.  Σ_j a_ij = 1                      ∀i     (each prompt is routed to one selected expert)
          a_ij ≤ z_j                        ∀i,j
          k·t + Σ_j u_j ≤ Ē                        (sum of the k largest e_j z_j ≤ Ē, via
          u_j ≥ e_j z_j − t,  u_j ≥ 0, t ≥ 0        topk(v) = min_t k·t + Σ_j max(0, v_j − t))
          z_j ∈ {0, 1},  0 ≤ a_ij ≤ 1

For a fixed z the assignment polytope is integral, so only z is declared integer. Delay budgets
are per expert and already removed by the allowed set. The returned value is recomputed with
the objective itself, and the upper bound is HiGHS's dual bound.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from optimizer.objectives import BestOfObjective
from optimizer.problem import Problem, members_of
from optimizer.result import SearchResult

logger = logging.getLogger(__name__)


def solve_milp(
    problem: Problem,
    objective: BestOfObjective,
    *,
    time_limit_s: float | None = None,
) -> SearchResult:
    """Solve the best-of coarse-level problem as a MILP.

    Args:
        problem: The constraints.
        objective: The best-of objective (the MILP encodes its max-over-S exactly).
        time_limit_s: HiGHS time limit (seconds); None for none.

    Returns:
        The MILP's subset, F of it, and HiGHS's dual bound as the upper bound.

    Raises:
        TypeError: For an objective other than best-of.
        RuntimeError: When HiGHS reports no solution.
    """
    if not isinstance(objective, BestOfObjective):
        raise TypeError("the MILP cross-check only encodes the best-of objective")
    ground = members_of(problem.allowed_mask())
    if not ground:
        return SearchResult(0, objective.empty_value, objective.empty_value)
    scores = objective.scores[:, ground]
    n_prompts, width = scores.shape
    energy = problem.energy_j[ground]
    # Variable layout: z (width) | a (n_prompts * width, prompt-major) | t (1) | u (width).
    z0, a0 = 0, width
    t0 = a0 + n_prompts * width
    u0 = t0 + 1
    n_vars = u0 + width
    cost = np.zeros(n_vars)
    cost[a0:t0] = -scores.reshape(-1) / n_prompts

    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    data: list[np.ndarray] = []
    prompt_index = np.repeat(np.arange(n_prompts), width)
    a_index = a0 + np.arange(n_prompts * width)
    # (1) assignment rows 0 .. P-1
    rows.append(prompt_index)
    cols.append(a_index)
    data.append(np.ones(n_prompts * width))
    # (2) linking rows P .. P + P*width - 1: a_ij - z_j <= 0
    link_rows = n_prompts + np.arange(n_prompts * width)
    rows += [link_rows, link_rows]
    cols += [a_index, z0 + np.tile(np.arange(width), n_prompts)]
    data += [np.ones(n_prompts * width), -np.ones(n_prompts * width)]
    # (3) energy row: k t + Σ u <= budget
    energy_row = n_prompts + n_prompts * width
    rows.append(np.full(width + 1, energy_row))
    cols.append(np.concatenate([[t0], u0 + np.arange(width)]))
    data.append(np.concatenate([[float(problem.top_k)], np.ones(width)]))
    # (4) top-k linearisation rows: e_j z_j - t - u_j <= 0
    tk_rows = energy_row + 1 + np.arange(width)
    rows += [tk_rows, tk_rows, tk_rows]
    cols += [z0 + np.arange(width), np.full(width, t0), u0 + np.arange(width)]
    data += [energy, -np.ones(width), -np.ones(width)]
    n_rows = energy_row + 1 + width

    matrix = coo_array(
        (np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_rows, n_vars),
    ).tocsr()
    lower = np.full(n_rows, -np.inf)
    upper = np.zeros(n_rows)
    lower[:n_prompts] = 1.0
    upper[:n_prompts] = 1.0
    upper[energy_row] = problem.energy_budget_j
    integrality = np.zeros(n_vars)
    integrality[:width] = 1
    var_upper = np.ones(n_vars)
    var_upper[t0] = float(energy.max())
    var_upper[u0:] = energy
    options: dict[str, float | bool] = {"mip_rel_gap": 1e-9}
    if time_limit_s is not None:
        options["time_limit"] = float(time_limit_s)
    result = milp(
        cost,
        constraints=LinearConstraint(matrix, lower, upper),
        integrality=integrality,
        bounds=Bounds(np.zeros(n_vars), var_upper),
        options=options,
    )
    if result.x is None:
        raise RuntimeError(f"MILP solver found no solution: {result.message}")
    chosen = [ground[j] for j in range(width) if result.x[j] > 0.5]
    mask = 0
    for n in chosen:
        mask |= 1 << n
    value = objective.value(mask)
    dual = getattr(result, "mip_dual_bound", None)
    bound = -float(dual) if dual is not None and math.isfinite(dual) else math.inf
    if not problem.is_feasible_mask(mask):
        logger.warning("MILP subset violates a budget by less than the solver tolerance")
    return SearchResult(mask, value, max(value, bound))
