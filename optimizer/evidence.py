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
    single = best_single(problem, single_accuracy)
    if not solution.feasible or single is None or solution.subset == (single,):
        return solution
    z_seen = paired_z(held_out_hits(solution.subset), held_out_hits((single,)))
    if z_seen >= z:
        return solution
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
