"""Discrete monotonic optimisation (DMO) for the coarse level: exact branch-reduce-and-bound.

This is the branch-reduce-and-bound form of Tuy's discrete monotonic optimisation
(docs/method.md §2.4), specialised to the constraint structure of
:class:`optimizer.problem.Problem`:

* **Ground set.** Experts that are infeasible alone are dropped first (the delay constraint is
  per expert, so after this step only the top-k energy sum remains).
* **Boxes.** A node is a box of the lattice, ``[in, in ∪ free]``: experts fixed in, and free
  experts that may still be added. ``in`` is always feasible.
* **Branching** is on the free expert with the largest energy; the include child is explored
  first (depth first towards maximal feasible points), then the exclude child. Because
  experts enter ``in`` in decreasing energy, every free expert has energy ≤ min(in), so
  E^wc(in ∪ {n}) = E(in) + e_n while |in| < k and = E^wc(in) once |in| ≥ k.
* **Reduction.** After an include, free experts that cannot be added to ``in`` without breaking
  the energy budget are dropped: a suffix of the energy order, so reduction is cheap.
* **Bound** (monotone mode): F(in ∪ free) — valid because F is non-decreasing (fact (ii) of
  docs/method.md §2.4). A box whose upper corner is feasible is solved by that corner (it
  attains the bound); a box whose bound does not beat the incumbent is pruned. Once |in| ≥ k
  the upper corner is always feasible, so the include-depth is at most k: the tree is a pruned
  version of the "head enumeration" of docs/method.md §2.5.
* **Certificate.** ``upper_bound`` = max(incumbent, bounds of unexplored boxes). It equals the
  value when the search runs to completion (gap 0), and stays valid if a node limit stops it.

Two modes, and what "exact" means in each:

* ``"monotone"`` — the algorithm above. Exact (returns a global maximiser of F over non-empty
  feasible subsets) **whenever F is non-decreasing on non-empty sets**. For a non-monotone F it
  returns the best *maximal* point it reaches, with a bound that is only valid for the
  monotone closure F̂(S) = max_{T⊆S} F(T) evaluated at maximal points — i.e. a heuristic.
* ``"exact"`` — exact for *any* F. Every feasible ``in`` is itself a candidate (F(in) is
  evaluated at every node), no box is closed early because its corner is feasible, and pruning
  uses :meth:`optimizer.objectives.SetObjective.box_bound`, which must bound F over the whole
  box without monotonicity (:class:`optimizer.objectives.GatedObjective` provides one; an
  objective without one gets ``inf`` and this mode degrades to enumerating every feasible
  subset). For a monotone objective the two modes coincide and ``"exact"`` runs the monotone
  algorithm.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

from optimizer.objectives import SetObjective
from optimizer.problem import BUDGET_RTOL, Problem, mask_of, members_of
from optimizer.result import SearchResult

logger = logging.getLogger(__name__)

DmoMode = Literal["monotone", "exact"]

# One open box: (in mask, |in|, E(in) in joules, free experts in decreasing energy, bound
# inherited from the parent).
_Node = tuple[int, int, float, tuple[int, ...], float]

# Absolute slack added to the cover bound so float rounding never prunes a strictly better box.
_COVER_SLACK = 1e-12


def solve_dmo(
    problem: Problem,
    objective: SetObjective,
    *,
    mode: DmoMode = "monotone",
    incumbent_mask: int = 0,
    max_nodes: int | None = None,
) -> SearchResult:
    """Maximise F over non-empty feasible subsets by branch-reduce-and-bound.

    Args:
        problem: The constraints.
        objective: F; must be monotone for ``mode="monotone"`` to be exact.
        mode: ``"monotone"`` or ``"exact"`` (see the module docstring).
        incumbent_mask: A feasible subset to start from (e.g. greedy's); 0 for none.
        max_nodes: Stop after this many nodes (the bound then stays valid but may not close).

    Returns:
        The best subset found, its value and the certificate bound.
    """
    if mode == "exact" and not objective.monotone:
        return _search(problem, objective, incumbent_mask, max_nodes, exact=True)
    return _search(problem, objective, incumbent_mask, max_nodes, exact=False)


def _search(
    problem: Problem,
    objective: SetObjective,
    incumbent_mask: int,
    max_nodes: int | None,
    *,
    exact: bool,
    order_children: bool = True,
) -> SearchResult:
    energy = [float(e) for e in problem.energy_j]
    budget = problem.energy_budget_j
    limit = budget + BUDGET_RTOL * max(1.0, abs(budget))
    top_k = problem.top_k
    allowed = problem.allowed_mask()
    order = tuple(n for n in problem.energy_order() if allowed >> n & 1)

    best_mask = 0
    best_value = -math.inf
    if incumbent_mask and problem.is_feasible_mask(incumbent_mask):
        best_mask, best_value = incumbent_mask, objective.value(incumbent_mask)

    stack: list[_Node] = [(0, 0, 0.0, order, math.inf)]
    nodes = 0
    while stack:
        if max_nodes is not None and nodes >= max_nodes:
            break
        in_mask, in_count, in_energy_j, free, parent_bound = stack.pop()
        if parent_bound <= best_value:
            continue
        nodes += 1
        free_mask = 0
        for n in free:
            free_mask |= 1 << n
        upper = in_mask | free_mask
        if upper == 0:
            continue
        if exact:
            if in_mask:
                value = objective.value(in_mask)
                if value > best_value:
                    best_mask, best_value = in_mask, value
            if not free:
                continue
            bound = objective.box_bound(in_mask, upper)
        else:
            # The upper corner's worst-case energy: in's energy plus the k - |in| heaviest free
            # experts (all of which are no heavier than any member of in).
            corner_energy_j = in_energy_j + sum(energy[n] for n in free[: max(0, top_k - in_count)])
            bound = objective.value(upper)
            if corner_energy_j <= limit:
                if bound > best_value:
                    best_mask, best_value = upper, bound
                continue
            if objective.submodular and in_count + len(free) <= top_k and bound > best_value:
                bound = min(
                    bound,
                    _cover_bound(
                        objective, in_mask, upper, free, energy, corner_energy_j - limit, bound
                    ),
                )
        if bound <= best_value:
            continue
        branch, rest = free[0], free[1:]
        exclude: _Node = (in_mask, in_count, in_energy_j, rest, bound)
        child_energy_j = in_energy_j + energy[branch]
        if in_count + 1 >= top_k:
            child_free = rest
        else:
            child_free = tuple(n for n in rest if child_energy_j + energy[n] <= limit)
        include: _Node = (in_mask | 1 << branch, in_count + 1, child_energy_j, child_free, bound)
        if exact or not order_children:
            stack += (exclude, include)
            continue
        # Monotone mode: bound both children now (their corners are evaluated when they are
        # popped anyway, and the memo makes that free) and explore the more promising first.
        exclude_bound = objective.value(in_mask | (free_mask & ~(1 << branch)))
        include_bound = objective.value(include[0] | mask_of(child_free))
        exclude = (*exclude[:4], exclude_bound)
        include = (*include[:4], include_bound)
        if include_bound >= exclude_bound:
            stack += (exclude, include)
        else:
            stack += (include, exclude)

    open_bound = max((node[4] for node in stack), default=-math.inf)
    upper_bound = max(best_value, open_bound)
    if best_mask == 0:
        logger.debug("dmo: no non-empty feasible subset")
        return SearchResult(0, objective.empty_value, max(objective.empty_value, open_bound), nodes)
    logger.debug("dmo: %d nodes, value %.6g, bound %.6g", nodes, best_value, upper_bound)
    return SearchResult(best_mask, best_value, upper_bound, nodes)


def _cover_bound(
    objective: SetObjective,
    in_mask: int,
    upper: int,
    free: tuple[int, ...],
    energy: list[float],
    excess_j: float,
    corner_value: float,
) -> float:
    """Knapsack-cover bound for a submodular F when E(S) is a plain sum over the box.

    A feasible S in the box drops a set D ⊆ free with Σ_D e ≥ excess_j, and submodularity
    gives F(U ∖ D) ≤ F(U) − Σ_{j∈D} (F(U) − F(U ∖ {j})). The cheapest such D in the
    fractional (LP) relaxation lower-bounds the loss, so the result bounds F over the box.
    """
    losses = objective.removal_losses(upper)
    if losses is None:
        return corner_value
    position = {n: i for i, n in enumerate(members_of(upper))}
    items = sorted(
        ((max(0.0, float(losses[position[n]])), energy[n]) for n in free),
        key=lambda item: item[0] / item[1] if item[1] > 0 else math.inf,
    )
    needed_j = excess_j
    min_loss = 0.0
    for loss, weight_j in items:
        if weight_j <= 0:
            continue
        if weight_j >= needed_j:
            min_loss += loss * needed_j / weight_j
            needed_j = 0.0
            break
        min_loss += loss
        needed_j -= weight_j
    if needed_j > 0:
        return -math.inf  # no way to drop enough energy: the box holds no feasible point
    _ = in_mask
    return corner_value - min_loss + _COVER_SLACK
