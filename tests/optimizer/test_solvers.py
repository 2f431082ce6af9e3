"""DMO against the oracles: hand-computed cases and hypothesis properties."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optimizer import (
    BestOfObjective,
    GatedObjective,
    Problem,
    maximal_feasible_subsets,
    solve,
    solve_dmo,
)
from optimizer.problem import members_of

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _names(count: int) -> list[str]:
    return [f"e{n}" for n in range(count)]


def test_hand_computed_instance_picks_the_two_cheap_experts() -> None:
    problem = Problem.build(
        experts=["smollm2-135m", "gemma3-270m", "qwen2.5-0.5b"],
        energy_j=[0.8, 1.5, 3.9],
        energy_budget_j=2.0,
        top_k=1,
        latency_s={"sst2": [0.2, 0.4, 0.9], "boolq": [0.3, 0.6, 1.4]},
        delay_budget_s={"sst2": 1.0, "boolq": 1.0},
        aggregation_s=0.002,
    )
    objective = BestOfObjective([[0.9, 0.1, 0.4], [0.2, 0.8, 0.3]])
    for method in ("dmo", "exhaustive", "maximal", "milp", "greedy"):
        solution = solve(problem, objective, method)
        assert solution.subset_names == ("smollm2-135m", "gemma3-270m"), method
        assert solution.value == pytest.approx(0.85)
        assert solution.energy_j == pytest.approx(1.5)
        assert solution.latency_s == pytest.approx({"sst2": 0.402, "boolq": 0.602})
    assert solve(problem, objective, "best-single").value == pytest.approx(0.55)


def test_knapsack_case_prefers_two_small_experts_over_one_large() -> None:
    # top_k >= N: energies add. Budget 4: {0,1} (3 J, value 0.75) beats {2} (4 J, value 0.6).
    problem = Problem.build(
        experts=_names(3), energy_j=[1.0, 2.0, 4.0], energy_budget_j=4.0, top_k=3
    )
    objective = BestOfObjective([[1.0, 0.0, 0.6], [0.0, 0.5, 0.6]])
    solution = solve(problem, objective, "dmo")
    assert solution.subset == (0, 1)
    assert solution.value == pytest.approx(0.75)
    assert solution.upper_bound == pytest.approx(solution.value)


def test_infeasible_budget_returns_the_empty_answer() -> None:
    problem = Problem.build(experts=_names(2), energy_j=[1.0, 2.0], energy_budget_j=0.5)
    objective = BestOfObjective([[0.3, 0.4]])
    for method in ("dmo", "exhaustive", "maximal", "milp", "greedy", "best-single", "random"):
        solution = solve(problem, objective, method)
        assert solution.subset == ()
        assert not solution.feasible
        assert solution.value == 0.0


def test_node_limit_keeps_a_valid_but_open_bound() -> None:
    rng = np.random.default_rng(11)
    energy = rng.uniform(0.5, 3.0, 14)
    problem = Problem.build(experts=_names(14), energy_j=energy, energy_budget_j=6.0, top_k=14)
    objective = BestOfObjective(rng.uniform(size=(50, 14)))
    exact = solve(problem, objective, "exhaustive")
    limited = solve(problem, objective, "dmo", max_nodes=3, warm_start=False)
    assert limited.value <= exact.value + 1e-12
    assert limited.upper_bound >= exact.value - 1e-12


def test_maximal_sets_by_heads_equal_maximal_sets_by_enumeration() -> None:
    rng = np.random.default_rng(12)
    for _ in range(30):
        count = int(rng.integers(1, 8))
        top_k = int(rng.integers(1, count + 2))
        energy = np.round(rng.uniform(0, 3, count), 1)
        problem = Problem.build(
            experts=_names(count), energy_j=energy, energy_budget_j=3.0, top_k=top_k
        )
        feasible = [m for m in range(1, 1 << count) if problem.is_feasible(members_of(m))]
        brute = sorted(m for m in feasible if not any(o != m and o & m == m for o in feasible))
        assert maximal_feasible_subsets(problem) == brute


@st.composite
def monotone_instances(draw: st.DrawFn) -> tuple[Problem, BestOfObjective]:
    count = draw(st.integers(1, 12))
    grid = st.sampled_from([0.0, 0.5, 1.0, 1.0, 1.5, 2.0, 3.0, 5.0])  # ties on purpose
    energy = draw(st.lists(grid, min_size=count, max_size=count))
    top_k = draw(st.integers(1, count + 2))
    tightness = draw(st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0, 2.0]))
    budget = tightness * sum(sorted(energy, reverse=True)[:top_k])
    n_prompts = draw(st.integers(1, 6))
    score = st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.5, 0.9, 1.0])
    scores = draw(
        st.lists(
            st.lists(score, min_size=count, max_size=count),
            min_size=n_prompts,
            max_size=n_prompts,
        )
    )
    if draw(st.booleans()) and count > 1:
        # A dominated expert: no better anywhere and no cheaper than expert 0.
        for row in scores:
            row[-1] = min(row[-1], row[0])
        energy[-1] = max(energy[-1], energy[0])
    latency = draw(st.lists(st.sampled_from([0.1, 0.5, 0.9, 2.0]), min_size=count, max_size=count))
    problem = Problem.build(
        experts=_names(count),
        energy_j=energy,
        energy_budget_j=budget,
        top_k=top_k,
        latency_s={"cat": latency},
        delay_budget_s={"cat": draw(st.sampled_from([0.5, 1.0, 3.0]))},
        aggregation_s=0.01,
    )
    return problem, BestOfObjective(scores)


@SETTINGS
@given(monotone_instances())
def test_dmo_equals_exhaustive_and_certifies_it(instance: tuple[Problem, BestOfObjective]) -> None:
    problem, objective = instance
    reference = solve(problem, objective, "exhaustive")
    for warm_start in (False, True):
        solution = solve(problem, objective, "dmo", warm_start=warm_start)
        assert solution.feasible == reference.feasible
        assert solution.value == pytest.approx(reference.value, abs=1e-12)
        assert solution.upper_bound >= solution.value
        assert solution.upper_bound == pytest.approx(solution.value, abs=1e-9)
        if solution.feasible:
            assert problem.is_feasible(solution.subset)
    maximal = solve(problem, objective, "maximal")
    assert maximal.value == pytest.approx(reference.value, abs=1e-12)


@SETTINGS
@given(monotone_instances(), st.floats(0.0, 5.0), st.floats(0.0, 2.0))
def test_optimum_never_drops_when_a_budget_grows(
    instance: tuple[Problem, BestOfObjective], extra_energy_j: float, extra_delay_s: float
) -> None:
    problem, objective = instance
    looser = problem.with_budgets(
        energy_budget_j=problem.energy_budget_j + extra_energy_j,
        delay_budget_s={"cat": float(problem.delay_budget_s[0]) + extra_delay_s},
    )
    tight = solve(problem, objective, "dmo")
    loose = solve(looser, objective, "dmo")
    assert loose.value >= tight.value - 1e-12
    assert loose.feasible or not tight.feasible


@SETTINGS
@given(monotone_instances(), st.integers(0, 5))
def test_every_method_returns_a_feasible_subset(
    instance: tuple[Problem, BestOfObjective], seed: int
) -> None:
    problem, objective = instance
    optimum = solve(problem, objective, "exhaustive").value
    for method in ("greedy", "best-single", "random", "maximal"):
        solution = solve(problem, objective, method, seed=seed)
        assert not solution.feasible or problem.is_feasible(solution.subset)
        assert solution.value <= optimum + 1e-12
        assert solution.upper_bound >= optimum - 1e-12


def test_milp_matches_exhaustive_on_random_instances() -> None:
    rng = np.random.default_rng(13)
    for _ in range(12):
        count = int(rng.integers(2, 11))
        top_k = int(rng.integers(1, count + 1))
        energy = rng.uniform(0.2, 3.0, count)
        budget = float(rng.uniform(0.3, 0.9) * np.sort(energy)[-top_k:].sum())
        problem = Problem.build(
            experts=_names(count), energy_j=energy, energy_budget_j=budget, top_k=top_k
        )
        objective = BestOfObjective(rng.uniform(size=(15, count)))
        milp = solve(problem, objective, "milp")
        reference = solve(problem, objective, "exhaustive")
        assert milp.value == pytest.approx(reference.value, abs=1e-7)
        assert milp.upper_bound >= reference.value - 1e-7


def _gated_instance(seed: int, count: int, top_k: int) -> tuple[Problem, GatedObjective]:
    rng = np.random.default_rng(seed)
    n_prompts = 60
    logits = rng.normal(size=(n_prompts, count))
    # Experts with different skill: correct option gets extra mass.
    labels = rng.integers(0, 4, size=n_prompts)
    probs = rng.dirichlet(np.ones(4), size=(n_prompts, count))
    skill = rng.uniform(0, 2, size=count)
    probs[np.arange(n_prompts), :, labels] += skill
    probs /= probs.sum(axis=2, keepdims=True)
    energy = rng.uniform(0.5, 3.0, count)
    budget = float(0.6 * np.sort(energy)[-top_k:].sum())
    problem = Problem.build(
        experts=_names(count), energy_j=energy, energy_budget_j=budget, top_k=top_k
    )
    return problem, GatedObjective(logits, probs, labels, top_k=top_k)


@pytest.mark.parametrize(
    ("seed", "count", "top_k"), list(itertools.product([1, 2, 3], [7, 10], [1, 2, 3]))
)
def test_exact_mode_matches_exhaustive_on_non_monotone_gated(
    seed: int, count: int, top_k: int
) -> None:
    problem, objective = _gated_instance(seed, count, top_k)
    reference = solve(problem, objective, "exhaustive")
    exact = solve(problem, objective, "dmo", mode="exact")
    assert exact.value == pytest.approx(reference.value, abs=1e-12)
    assert exact.upper_bound == pytest.approx(exact.value, abs=1e-12)
    monotone = solve(problem, objective, "dmo", mode="monotone")
    assert monotone.value <= reference.value + 1e-12
    assert problem.is_feasible(monotone.subset)


def test_solve_dmo_is_usable_without_the_wrapper() -> None:
    problem = Problem.build(
        experts=_names(3), energy_j=[1.0, 1.0, 1.0], energy_budget_j=2.0, top_k=3
    )
    objective = BestOfObjective([[0.1, 0.2, 0.3]])
    result = solve_dmo(problem, objective)
    assert result.value == pytest.approx(0.3)
    assert bin(result.mask).count("1") == 2


def test_objective_size_mismatch_is_rejected() -> None:
    problem = Problem.build(experts=_names(2), energy_j=[1.0, 1.0], energy_budget_j=2.0)
    with pytest.raises(ValueError, match="experts"):
        solve(problem, BestOfObjective([[0.1, 0.2, 0.3]]))
