"""The coarse-level entry point: ``solve(problem, objective, method=...) -> Solution``."""

from __future__ import annotations

import logging
import time
from typing import Literal, get_args

from optimizer.milp import solve_milp
from optimizer.monotonic import DmoMode, solve_dmo
from optimizer.objectives import BestOfObjective, SetObjective
from optimizer.problem import Problem, members_of
from optimizer.reference import (
    solve_best_single,
    solve_exhaustive,
    solve_greedy,
    solve_maximal,
    solve_random,
)
from optimizer.result import SearchResult, Solution

logger = logging.getLogger(__name__)

Method = Literal["dmo", "exhaustive", "greedy", "milp", "best-single", "random", "maximal"]
METHODS: tuple[str, ...] = get_args(Method)


def solve(
    problem: Problem,
    objective: SetObjective,
    method: Method = "dmo",
    *,
    mode: DmoMode | None = None,
    seed: int = 0,
    warm_start: bool | None = None,
    max_nodes: int | None = None,
    time_limit_s: float | None = None,
    reuse_cache: bool = False,
) -> Solution:
    """Pick the expert subset that maximises F under the energy and delay budgets.

    Args:
        problem: Experts, costs and budgets.
        objective: F, defined over the same experts.
        method: ``dmo`` (exact branch-reduce-and-bound), ``exhaustive`` (all feasible subsets),
            ``maximal`` (all maximal feasible subsets), ``milp`` (best-of only), ``greedy``,
            ``best-single`` or ``random``.
        mode: DMO mode, ``"monotone"`` or ``"exact"`` (optimizer.monotonic); None picks
            ``"monotone"`` for a monotone objective and ``"exact"`` otherwise, so the default
            is always exact.
        seed: Seed of the ``random`` method.
        warm_start: DMO only: start from greedy's subset as the incumbent (its evaluations
            are counted). None (default) does so when top_k ≥ 4, where the search tree is
            deep enough for a good early incumbent to pay for greedy's O(N²) evaluations.
        max_nodes: DMO only: node limit (the bound stays valid, the gap may stay open).
        time_limit_s: MILP only: HiGHS time limit (seconds).
        reuse_cache: Keep the objective's memo from earlier calls (evaluations then count only
            new subsets); by default the cache and counter are reset so figures are per call.

    Returns:
        The solution with its certificate and cost figures. When no non-empty subset is
        feasible, ``subset`` is empty, ``feasible`` is False and ``value`` is F(∅).

    Raises:
        ValueError: When the objective's expert count differs from the problem's, or the
            method is unknown.
    """
    if objective.n_experts != problem.n_experts:
        raise ValueError(
            f"objective has {objective.n_experts} experts, problem has {problem.n_experts}"
        )
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if not reuse_cache:
        objective.reset()
    start_evaluations = objective.evaluations
    started = time.perf_counter()
    result = _dispatch(
        problem,
        objective,
        method,
        mode=mode,
        seed=seed,
        warm_start=warm_start,
        max_nodes=max_nodes,
        time_limit_s=time_limit_s,
    )
    seconds = time.perf_counter() - started
    subset = tuple(members_of(result.mask))
    feasible = bool(subset) and problem.is_feasible(subset)
    solution = Solution(
        subset=subset,
        subset_names=tuple(problem.experts[n] for n in subset),
        value=result.value,
        feasible=feasible,
        energy_j=problem.worst_case_energy_j(subset),
        latency_s=problem.worst_case_latency_s(subset),
        upper_bound=result.upper_bound,
        evaluations=objective.evaluations - start_evaluations,
        seconds=seconds,
        method=method,
        nodes=result.nodes,
    )
    logger.info(
        "optimize %s: subset %s value %.6g bound %.6g (%d evaluations, %.3f s)",
        method,
        list(solution.subset_names),
        solution.value,
        solution.upper_bound,
        solution.evaluations,
        seconds,
    )
    return solution


def _dispatch(
    problem: Problem,
    objective: SetObjective,
    method: str,
    *,
    mode: DmoMode | None,
    seed: int,
    warm_start: bool | None,
    max_nodes: int | None,
    time_limit_s: float | None,
) -> SearchResult:
    if method == "dmo":
        chosen_mode: DmoMode = mode or ("monotone" if objective.monotone else "exact")
        if warm_start is None:
            warm_start = problem.top_k >= 4
        incumbent = solve_greedy(problem, objective).mask if warm_start else 0
        return solve_dmo(
            problem, objective, mode=chosen_mode, incumbent_mask=incumbent, max_nodes=max_nodes
        )
    if method == "exhaustive":
        return solve_exhaustive(problem, objective)
    if method == "maximal":
        return solve_maximal(problem, objective)
    if method == "greedy":
        return solve_greedy(problem, objective)
    if method == "best-single":
        return solve_best_single(problem, objective)
    if method == "random":
        return solve_random(problem, objective, seed=seed)
    if not isinstance(objective, BestOfObjective):
        raise ValueError("method 'milp' needs the best-of objective")
    return solve_milp(problem, objective, time_limit_s=time_limit_s)
