"""When the evidence is strong enough to prefer something over a simpler choice.

One rule, used wherever MoE² might trade a plain choice for a fancier one on a few hundred
recorded prompts: a paired, one-sided test on held-out per-prompt hits. The fancier choice must
be better on average *and* by at least ``z`` standard errors of the paired difference; ties and
noise keep the plain choice.

* The coarse level (:func:`guard_single`): a plan other than the best single feasible expert
  (the ``best-single`` baseline's choice: a subset of two or more, or another expert) is used
  only if, on prompts the fine level was not fitted on, it clearly beats that expert.
  Otherwise the plan is that expert, so MoE² is not worse than the best single expert for
  noise the planning split could not see through (near-chance experts, small samples, a
  calibration that flatters the prompts it was fitted on).
* The number of experts per prompt (:func:`guarded_plan`): ``top_k`` is the most a plan may
  use. Where the plan for ``top_k`` does not clearly beat the best single expert, the plans
  for ``top_k - 1, …, 1`` (each solved under its own worst case, which is cheaper) are tried
  in turn by the same rule, so a budget too tight for two answers per prompt can still route
  each prompt to one of several experts.
* The fine level's calibration (``testbed.training.calibrated_alone``): an expert answering
  alone gives its calibrated distribution only if that clearly beats its raw one out of fold.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from optimizer.objectives import BestOfObjective
from optimizer.problem import Problem, members_of
from optimizer.reference import solve_best_single
from optimizer.result import Solution

logger = logging.getLogger(__name__)

HitsFunction = Callable[[Sequence[int]], npt.NDArray[np.bool_]]
"""Per-prompt hits (answered correctly) of the fine level over a subset given by its indices."""

SolveAt = Callable[[int], tuple[Problem, Solution]]
"""The coarse level's problem and plan when at most ``k`` experts answer each prompt."""

EvidenceAt = Callable[[int], HitsFunction | None]
"""Held-out hits of the fine level with ``k`` experts per prompt; None where none are recorded."""

CLEARLY_BETTER_Z = 1.0
"""The one-standard-error rule: the paired mean gain must exceed one standard error."""


def paired_z(hits: npt.ArrayLike, baseline_hits: npt.ArrayLike) -> float:
    """The paired gain of ``hits`` over ``baseline_hits`` in standard errors (per-prompt 0/1).

    ``inf`` when every prompt differs the same way (a gain with no spread), 0 when nothing
    differs, and ``-inf`` for a loss with no spread.
    """
    a = np.asarray(hits, dtype=np.float64)
    b = np.asarray(baseline_hits, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"hits must be two vectors of one length, got {a.shape} and {b.shape}")
    if a.size == 0:
        return 0.0
    difference = a - b
    mean = float(difference.mean())
    if a.size < 2:
        return 0.0
    spread = float(difference.std(ddof=1))
    if spread == 0.0:
        return 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    return mean / (spread / math.sqrt(a.size))


def clearly_better(
    hits: npt.ArrayLike, baseline_hits: npt.ArrayLike, z: float = CLEARLY_BETTER_Z
) -> bool:
    """Whether ``hits`` beats ``baseline_hits`` by at least ``z`` paired standard errors."""
    return paired_z(hits, baseline_hits) >= z


def best_single(problem: Problem, accuracy: npt.ArrayLike) -> int | None:
    """The feasible expert with the highest accuracy (ties: the lower index); None if none.

    ``accuracy``: each expert's own (raw) accuracy on the planning prompts, shape (N,): the
    ``best-single`` baseline's choice.
    """
    scores = np.asarray(accuracy, dtype=np.float64).reshape(1, -1)
    found = members_of(solve_best_single(problem, BestOfObjective(scores)).mask)
    return found[0] if found else None


def guard_single(
    problem: Problem,
    solution: Solution,
    single_accuracy: npt.ArrayLike,
    held_out_hits: HitsFunction,
    z: float = CLEARLY_BETTER_Z,
) -> Solution:
    """Keep a plan other than the best single expert only if held-out prompts clearly favour it.

    Args:
        problem: The budgets and costs the plan was solved under.
        solution: The solver's plan (value: its F on the planning prompts).
        single_accuracy: Each expert's own accuracy on the planning prompts (:func:`best_single`).
        held_out_hits: Per-prompt hits of the fine level over a subset, on prompts the fine
            level was not fitted on.
        z: The margin in paired standard errors (:func:`clearly_better`).

    Returns:
        ``solution`` when it is the best single feasible expert or clearly beats it on the
        held-out prompts; otherwise that expert's plan (F and certificate dropped: ``value``
        is its planning accuracy, the bound unknown).
    """
    only = problem.top_k
    return guarded_plan(
        lambda _k: (problem, solution),
        only,
        single_accuracy,
        lambda k: held_out_hits if k == only else None,
        z,
    )[1]


def guarded_plan(
    solve_at: SolveAt,
    top_k: int,
    single_accuracy: npt.ArrayLike,
    evidence_at: EvidenceAt,
    z: float = CLEARLY_BETTER_Z,
) -> tuple[Problem, Solution, int]:
    """MoE²'s coarse level: the plan for ``top_k`` or fewer experts per prompt, guarded.

    The plan solved for ``top_k`` is kept if it is the best single feasible expert or clearly
    beats it on held-out prompts (:func:`guard_single`). Otherwise the plans for ``top_k - 1``
    down to 1 are tried in turn, each solved under its own (cheaper) worst case, and the first
    that clearly beats the best single expert is the plan; k values without held-out evidence
    are skipped; a plan that is the best single expert ends the search. If none does, the plan
    is the best single expert. Without evidence for ``top_k`` the plan is the solver's (no
    guard), as before.

    Args:
        solve_at: The problem and the solver's plan for a given k.
        top_k: The most experts that may answer a prompt (the request's or the sweep's k).
        single_accuracy: Each expert's own accuracy on the planning prompts (:func:`best_single`).
        evidence_at: Held-out hits of the fine level for a given k, or None.
        z: The margin in paired standard errors (:func:`clearly_better`).

    Returns:
        The problem, the plan and the k it was solved for (``top_k`` for a single expert).
    """
    problem, solution = solve_at(top_k)
    evidence = evidence_at(top_k)
    single = best_single(problem, single_accuracy)
    if evidence is None or not solution.feasible or single is None or solution.subset == (single,):
        return problem, solution, top_k
    z_top = paired_z(evidence(solution.subset), evidence((single,)))
    if z_top >= z:
        return problem, solution, top_k
    for k in range(min(top_k, len(problem.experts)) - 1, 0, -1):
        fewer = evidence_at(k)
        if fewer is None:
            continue
        problem_k, solution_k = solve_at(k)
        if not solution_k.feasible or solution_k.subset == (single,):
            break
        if clearly_better(fewer(solution_k.subset), fewer((single,)), z):
            logger.info(
                "plan %s for top_k %d is not clearly better than %s alone; with at most %d "
                "expert(s) per prompt %s is: planning with it",
                list(solution.subset_names),
                top_k,
                problem.experts[single],
                k,
                list(solution_k.subset_names),
            )
            return problem_k, solution_k, k
    return problem, _alone(problem, solution, single, single_accuracy, z_top, z), top_k


def _alone(
    problem: Problem,
    solution: Solution,
    single: int,
    single_accuracy: npt.ArrayLike,
    z_seen: float,
    z: float,
) -> Solution:
    """``solution`` replaced by the plan of expert ``single`` alone (the guard's fallback)."""
    logger.info(
        "plan %s is not clearly better than %s alone on held-out prompts (%.2f < %.2f "
        "standard errors): planning with %s",
        list(solution.subset_names),
        problem.experts[single],
        z_seen,
        z,
        problem.experts[single],
    )
    return replace(
        solution,
        subset=(single,),
        subset_names=(problem.experts[single],),
        value=float(np.asarray(single_accuracy, dtype=np.float64)[single]),
        energy_j=problem.worst_case_energy_j([single]),
        latency_s=problem.worst_case_latency_s([single]),
        upper_bound=math.inf,
    )
