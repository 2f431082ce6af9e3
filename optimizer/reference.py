"""Oracles and baselines for the coarse level: enumeration, maximal sets, greedy, single, random.

* :func:`solve_exhaustive` — exact for any F: evaluates F on every feasible subset (vectorised;
  the reference for N up to about 22).
* :func:`maximal_feasible_subsets` / :func:`solve_maximal` — the maximal feasible family, built
  by the head enumeration of docs/method.md §2.5 (every maximal feasible set is
  H ∪ {n : e_n ≤ min_H e} for a k-subset H, or is smaller than k); exact for monotone F.
* :func:`solve_greedy` — adds the expert with the best marginal gain per joule of worst-case
  energy, then keeps the better of that and the best single expert (the usual fix that gives
  greedy knapsack heuristics a guarantee).
* :func:`solve_best_single` and :func:`solve_random` (a random maximal feasible subset, seeded).
"""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
from numpy.typing import NDArray

from optimizer.objectives import BestOfObjective, SetObjective
from optimizer.problem import Problem, fits_budget, mask_of, members_of
from optimizer.result import SearchResult

logger = logging.getLogger(__name__)

MAX_EXHAUSTIVE_EXPERTS = 30
"""Exhaustive enumeration refuses larger ground sets (2^30 subsets)."""

_LATTICE_BITS = 12
_CHUNK_BITS = 16


def _allowed_members(problem: Problem) -> list[int]:
    return members_of(problem.allowed_mask())


def _bound_over_allowed(problem: Problem, objective: SetObjective) -> float:
    """A valid upper bound on F over every non-empty feasible subset (all lie in allowed)."""
    allowed = problem.allowed_mask()
    if allowed == 0:
        return objective.empty_value
    return objective.box_bound(0, allowed)


def _empty(objective: SetObjective) -> SearchResult:
    return SearchResult(0, objective.empty_value, objective.empty_value)


def _spread(ground: list[int], count_bits: int) -> NDArray[np.int64]:
    """Bitmasks over the N experts for every subset of ``ground[:count_bits]``."""
    local = np.arange(1 << count_bits, dtype=np.int64)
    full = np.zeros_like(local)
    for j in range(count_bits):
        full |= ((local >> j) & 1) << ground[j]
    return full


def solve_exhaustive(problem: Problem, objective: SetObjective) -> SearchResult:
    """Exact maximum of F over non-empty feasible subsets by enumerating them all.

    Every subset of the allowed experts is checked for feasibility (vectorised); F is computed
    on the feasible ones only, and each counts as one evaluation. The best-of objective uses a
    lattice dynamic programme (one elementwise max per subset). Ties keep the subset met first.

    Args:
        problem: The constraints.
        objective: Any F (no monotonicity needed).

    Returns:
        The optimum; its upper bound equals its value.

    Raises:
        ValueError: With more than :data:`MAX_EXHAUSTIVE_EXPERTS` allowed experts.
    """
    ground = _allowed_members(problem)
    if not ground:
        return _empty(objective)
    if len(ground) > MAX_EXHAUSTIVE_EXPERTS:
        raise ValueError(
            f"exhaustive enumeration over {len(ground)} experts is too large "
            f"(limit {MAX_EXHAUSTIVE_EXPERTS})"
        )
    best_mask = 0
    best_value = -math.inf
    if isinstance(objective, BestOfObjective):
        low_bits = min(len(ground), _LATTICE_BITS)
        low = _spread(ground, low_bits)
        high_ground = ground[low_bits:]
        high = _spread(high_ground, len(high_ground))
        for high_mask in high.tolist():
            masks = low | np.int64(high_mask)
            feasible = problem.feasible_masks(masks)
            feasible[masks == 0] = False
            count = int(feasible.sum())
            if count == 0:
                continue
            values = objective.lattice_values(ground[:low_bits], int(high_mask))
            objective.record_evaluations(count)
            candidates = np.where(feasible, values, -np.inf)
            index = int(np.argmax(candidates))
            if candidates[index] > best_value:
                best_mask, best_value = int(masks[index]), float(candidates[index])
    else:
        chunk_bits = min(len(ground), _CHUNK_BITS)
        low = _spread(ground, chunk_bits)
        high_ground = ground[chunk_bits:]
        for high_mask in _spread(high_ground, len(high_ground)).tolist():
            masks = low | np.int64(high_mask)
            feasible = problem.feasible_masks(masks)
            feasible[masks == 0] = False
            chosen = masks[feasible]
            if chosen.size == 0:
                continue
            flags = ((chosen[:, None] >> np.arange(problem.n_experts)) & 1).astype(bool)
            values = objective.values(flags)
            index = int(np.argmax(values))
            if values[index] > best_value:
                best_mask, best_value = int(chosen[index]), float(values[index])
    if best_mask == 0:
        return _empty(objective)
    return SearchResult(best_mask, best_value, best_value)


def maximal_feasible_subsets(problem: Problem) -> list[int]:
    """Every maximal feasible subset, as bitmasks (head enumeration, docs/method.md §2.5).

    A maximal feasible set S with |S| ≥ k is the closure H ∪ {n allowed : e_n ≤ min_H e} of its
    k heaviest members H; a smaller one is its own head. So the family is found by enumerating
    feasible heads of size ≤ k, closing them, and keeping the closures nothing can be added to.
    Cost O(Σ_{j≤k} C(N, j)); meant as an oracle and for small N.

    Args:
        problem: The constraints.

    Returns:
        The maximal feasible subsets (empty list when no expert is feasible alone), sorted.
    """
    ground = sorted(_allowed_members(problem), key=lambda n: (-float(problem.energy_j[n]), n))
    energy = {n: float(problem.energy_j[n]) for n in ground}
    top_k = problem.top_k
    candidates: set[int] = set()
    for size in range(1, min(top_k, len(ground)) + 1):
        for head in itertools.combinations(ground, size):
            if not fits_budget(sum(energy[n] for n in head), problem.energy_budget_j):
                continue
            members = set(head)
            if size == top_k:
                lightest = min(energy[n] for n in head)
                members.update(n for n in ground if energy[n] <= lightest)
            candidates.add(mask_of(members))
    maximal = []
    for mask in candidates:
        if not problem.is_feasible_mask(mask):
            continue
        if all(not problem.is_feasible_mask(mask | 1 << n) for n in ground if not mask >> n & 1):
            maximal.append(mask)
    return sorted(maximal)


def solve_maximal(problem: Problem, objective: SetObjective) -> SearchResult:
    """Best maximal feasible subset: exact for monotone F (some optimum is maximal).

    Args:
        problem: The constraints.
        objective: F.

    Returns:
        The best maximal subset; its upper bound is its value when F is monotone, else the
        objective's bound over the allowed experts.
    """
    maximal = maximal_feasible_subsets(problem)
    if not maximal:
        return _empty(objective)
    flags = np.array(
        [[bool(mask >> n & 1) for n in range(problem.n_experts)] for mask in maximal],
        dtype=bool,
    )
    values = objective.values(flags)
    index = int(np.argmax(values))
    value = float(values[index])
    bound = value if objective.monotone else _bound_over_allowed(problem, objective)
    return SearchResult(maximal[index], value, max(bound, value))


def solve_best_single(problem: Problem, objective: SetObjective) -> SearchResult:
    """The best expert that is feasible alone (baseline ``best-single``)."""
    ground = _allowed_members(problem)
    if not ground:
        return _empty(objective)
    best = max(ground, key=lambda n: (objective.value(1 << n), -n))
    value = objective.value(1 << best)
    return SearchResult(1 << best, value, max(value, _bound_over_allowed(problem, objective)))


def solve_greedy(problem: Problem, objective: SetObjective) -> SearchResult:
    """Greedy by marginal gain per joule of worst-case energy, then max with best single.

    From S = ∅, repeatedly add the feasible expert n maximising
    (F(S ∪ {n}) - F(S)) / (E^wc(S ∪ {n}) - E^wc(S)); a zero energy increase counts as 1e-12 J.
    Stops when no expert can be added or the best ratio is not positive.

    Args:
        problem: The constraints.
        objective: F.

    Returns:
        The better of the greedy set and the best single expert; bound as in the other
        heuristics (F over all allowed experts when F is monotone).
    """
    ground = _allowed_members(problem)
    if not ground:
        return _empty(objective)
    chosen = 0
    chosen_value = objective.empty_value
    chosen_energy_j = 0.0
    while True:
        best_ratio = -math.inf
        best_n = -1
        for n in ground:
            if chosen >> n & 1:
                continue
            trial = chosen | 1 << n
            if not problem.is_feasible_mask(trial):
                continue
            trial_energy_j = problem.worst_case_energy_j(members_of(trial))
            gain = objective.value(trial) - chosen_value
            ratio = gain / max(trial_energy_j - chosen_energy_j, 1e-12)
            if ratio > best_ratio:
                best_ratio, best_n = ratio, n
        if best_n < 0 or (chosen and best_ratio <= 0):
            break
        chosen |= 1 << best_n
        chosen_value = objective.value(chosen)
        chosen_energy_j = problem.worst_case_energy_j(members_of(chosen))
    single = solve_best_single(problem, objective)
    if single.value > chosen_value:
        return single
    return SearchResult(chosen, chosen_value, max(chosen_value, single.upper_bound))


def solve_random(problem: Problem, objective: SetObjective, *, seed: int = 0) -> SearchResult:
    """A random maximal feasible subset: experts in a seeded random order, each kept if it fits."""
    ground = _allowed_members(problem)
    if not ground:
        return _empty(objective)
    rng = np.random.default_rng(seed)
    chosen = 0
    for n in rng.permutation(ground).tolist():
        if problem.is_feasible_mask(chosen | 1 << n):
            chosen |= 1 << n
    value = objective.value(chosen)
    return SearchResult(chosen, value, max(value, _bound_over_allowed(problem, objective)))
