"""The single-expert guard and its paired test (optimizer.evidence), on hand-computed cases."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from optimizer import BestOfObjective, Problem, solve
from optimizer.evidence import (
    CLEARLY_BETTER_Z,
    best_single,
    clearly_better,
    guard_single,
    guarded_plan,
    paired_z,
)


def test_paired_z_is_the_mean_difference_over_its_standard_error() -> None:
    # d = [1, 0, 0, 1]: mean 0.5, sample sd sqrt(1/3), se sqrt(1/3)/2
    assert paired_z([1, 1, 0, 1], [0, 1, 0, 0]) == pytest.approx(0.5 / (math.sqrt(1 / 3) / 2))
    assert paired_z([1, 0, 1], [1, 0, 1]) == 0.0
    assert paired_z([1, 1], [0, 0]) == math.inf  # a gain on every prompt, no spread
    assert paired_z([0, 0], [1, 1]) == -math.inf
    with pytest.raises(ValueError, match="one length"):
        paired_z([1, 0], [1])


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=2, max_size=60))
def test_paired_z_is_antisymmetric_and_clearly_better_is_never_mutual(
    pairs: list[tuple[bool, bool]],
) -> None:
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    assert paired_z(a, b) == -paired_z(b, a)
    assert not (clearly_better(a, b) and clearly_better(b, a))


def _problem(energy_j: Sequence[float], budget_j: float) -> Problem:
    return Problem.build(
        experts=[f"e{n}" for n in range(len(energy_j))],
        energy_j=list(energy_j),
        energy_budget_j=budget_j,
        top_k=len(energy_j),
    )


def _hits_table(table: dict[tuple[int, ...], list[int]]) -> object:
    def hits(members: Sequence[int]) -> npt.NDArray[np.bool_]:
        return np.array(table[tuple(sorted(members))], dtype=bool)

    return hits


def test_a_pair_that_is_not_clearly_better_on_held_out_prompts_falls_back_to_the_best_single() -> (
    None
):
    problem = _problem([1.0, 1.0, 1.0], budget_j=2.0)
    pair = solve(problem, BestOfObjective(np.eye(3)), "dmo")  # two experts (coverage)
    assert len(pair.subset) == 2
    accuracy = np.array([0.6, 0.7, 0.5])  # e1 is the best single on the planning prompts
    same = [1, 0, 1, 1, 0, 1, 0, 1]
    hits = _hits_table({pair.subset: same, (1,): same})
    guarded = guard_single(problem, pair, accuracy, hits)  # type: ignore[arg-type]
    assert guarded.subset == (1,)
    assert guarded.subset_names == ("e1",)
    assert guarded.value == pytest.approx(0.7)
    assert guarded.energy_j == pytest.approx(1.0)
    assert math.isinf(guarded.upper_bound)


def test_a_pair_that_is_clearly_better_is_kept() -> None:
    problem = _problem([1.0, 1.0, 1.0], budget_j=2.0)
    pair = solve(problem, BestOfObjective(np.eye(3)), "dmo")
    accuracy = np.array([0.6, 0.7, 0.5])
    single = [1, 0, 1, 0, 0, 1, 0, 0, 1, 0]
    better = [1, 1, 1, 1, 0, 1, 1, 1, 1, 0]  # +4 of 10, never worse
    hits = _hits_table({pair.subset: better, (1,): single})
    assert paired_z(better, single) >= CLEARLY_BETTER_Z
    assert guard_single(problem, pair, accuracy, hits) is pair  # type: ignore[arg-type]


def test_the_guard_uses_the_best_single_feasible_expert_and_leaves_it_alone() -> None:
    # e1 would be the best single but does not fit: e0 is the baseline
    problem = _problem([1.0, 5.0, 1.0], budget_j=2.0)
    assert best_single(problem, [0.6, 0.9, 0.5]) == 0
    pair = solve(problem, BestOfObjective(np.eye(3)), "dmo")
    assert pair.subset == (0, 2)
    hits = _hits_table({(0, 2): [1, 0, 1, 0], (0,): [1, 0, 1, 0]})
    assert guard_single(problem, pair, [0.6, 0.9, 0.5], hits).subset == (0,)  # type: ignore[arg-type]
    alone = solve(problem, BestOfObjective(np.array([[1.0, 0.0, 0.0]])), "best-single")
    assert alone.subset == (0,)
    assert guard_single(problem, alone, [0.6, 0.9, 0.5], hits) is alone  # type: ignore[arg-type]
    # another single expert than the baseline needs the same evidence as a pair
    other = solve(problem, BestOfObjective(np.array([[0.0, 0.0, 1.0]])), "best-single")
    assert other.subset == (2,)
    hits = _hits_table({(2,): [1, 0, 1, 0], (0,): [1, 0, 1, 1]})
    assert guard_single(problem, other, [0.6, 0.9, 0.5], hits).subset == (0,)  # type: ignore[arg-type]


def test_nothing_feasible_is_returned_unchanged() -> None:
    problem = _problem([3.0, 3.0], budget_j=1.0)
    nothing = solve(problem, BestOfObjective(np.eye(2)), "dmo")
    assert not nothing.feasible
    assert guard_single(problem, nothing, [0.5, 0.5], _hits_table({})) is nothing  # type: ignore[arg-type]


def _solver(energy_j: Sequence[float], budget_j: float, calls: list[int]) -> object:
    """solve_at for guarded_plan: coverage DMO (as many experts as fit) under each k."""

    def solve_at(k: int) -> tuple[Problem, object]:
        calls.append(k)
        problem = Problem.build(
            experts=[f"e{n}" for n in range(len(energy_j))],
            energy_j=list(energy_j),
            energy_budget_j=budget_j,
            top_k=k,
        )
        return problem, solve(problem, BestOfObjective(np.eye(len(energy_j))), "dmo")

    return solve_at


def _evidence(by_k: dict[int, dict[tuple[int, ...], list[int]]]) -> object:
    return lambda k: _hits_table(by_k[k]) if k in by_k else None


SINGLE = [1, 0, 1, 0, 0, 1, 0, 0, 1, 0]
BETTER = [1, 1, 1, 1, 0, 1, 1, 1, 1, 0]  # +4 of 10 over SINGLE, never worse


def test_guarded_plan_plans_fewer_experts_per_prompt_where_top_k_does_not_clearly_pay() -> None:
    calls: list[int] = []
    # 1 J each, 2 J budget: at top_k 3 only a pair fits; at top_k 1 all three (1 J worst case)
    solve_at = _solver([1.0, 1.0, 1.0], 2.0, calls)
    evidence = _evidence({3: {(0, 1): SINGLE, (1,): SINGLE}, 1: {(0, 1, 2): BETTER, (1,): SINGLE}})
    problem, plan, k = guarded_plan(solve_at, 3, [0.6, 0.7, 0.5], evidence)  # type: ignore[arg-type]
    assert (plan.subset, k, problem.top_k) == ((0, 1, 2), 1, 1)
    assert plan.energy_j == pytest.approx(1.0)  # the worst case of one answer per prompt
    assert calls == [3, 1]  # k = 2 has no evidence: not even solved


def test_guarded_plan_keeps_top_k_when_it_clearly_pays_and_otherwise_the_best_single() -> None:
    calls: list[int] = []
    solve_at = _solver([1.0, 1.0, 1.0], 2.0, calls)
    kept = _evidence({2: {(0, 1, 2): BETTER, (1,): SINGLE}, 1: {(0, 1, 2): BETTER, (1,): SINGLE}})
    _, plan, k = guarded_plan(solve_at, 2, [0.6, 0.7, 0.5], kept)  # type: ignore[arg-type]
    assert (plan.subset, k, calls) == ((0, 1, 2), 2, [2])
    calls.clear()
    neither = _evidence(
        {2: {(0, 1, 2): SINGLE, (1,): SINGLE}, 1: {(0, 1, 2): SINGLE, (1,): SINGLE}}
    )
    problem, plan, k = guarded_plan(solve_at, 2, [0.6, 0.7, 0.5], neither)  # type: ignore[arg-type]
    assert (plan.subset, k, problem.top_k, calls) == ((1,), 2, 2, [2, 1])
    assert math.isinf(plan.upper_bound)


def test_guarded_plan_without_evidence_is_the_solvers_plan() -> None:
    calls: list[int] = []
    solve_at = _solver([1.0, 1.0, 1.0], 2.0, calls)
    _, plan, k = guarded_plan(solve_at, 2, [0.6, 0.7, 0.5], lambda _k: None)  # type: ignore[arg-type]
    assert (plan.subset, k, calls) == ((0, 1, 2), 2, [2])
