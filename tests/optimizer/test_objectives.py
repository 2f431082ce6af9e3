"""Problem feasibility and the objectives, on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optimizer import BestOfObjective, GatedObjective, Problem, check_monotonicity
from optimizer.objectives import PROBABILITY_FLOOR
from optimizer.problem import members_of


def _problem(top_k: int = 1, energy_budget_j: float = 2.0) -> Problem:
    return Problem.build(
        experts=["a", "b", "c"],
        energy_j=[0.8, 1.5, 3.9],
        energy_budget_j=energy_budget_j,
        top_k=top_k,
        latency_s={"sst2": [0.2, 0.4, 0.9], "boolq": [0.3, 0.6, 1.4]},
        delay_budget_s={"sst2": 1.0, "boolq": 1.0},
        aggregation_s=0.002,
    )


def test_worst_case_energy_sums_the_top_k_largest() -> None:
    problem = _problem(top_k=2, energy_budget_j=10.0)
    assert problem.worst_case_energy_j([0, 1, 2]) == pytest.approx(5.4)
    assert problem.worst_case_energy_j([0]) == pytest.approx(0.8)
    assert problem.worst_case_energy_j([]) == 0.0


def test_worst_case_latency_is_slowest_member_plus_aggregation() -> None:
    latency = _problem().worst_case_latency_s([0, 1])
    assert latency == pytest.approx({"sst2": 0.402, "boolq": 0.602})


def test_delay_budget_excludes_a_slow_expert_whatever_the_energy() -> None:
    problem = _problem(top_k=1, energy_budget_j=100.0)
    assert problem.allowed_mask() == 0b011  # c needs 1.402 s on boolq
    assert not problem.is_feasible([2])
    assert problem.is_feasible([0, 1])


def test_top_k_one_makes_energy_a_per_expert_limit() -> None:
    problem = _problem(top_k=1, energy_budget_j=1.5)
    assert problem.is_feasible([0, 1])
    assert not problem.with_budgets(energy_budget_j=1.4).is_feasible([0, 1])


def test_vectorised_feasibility_matches_the_scalar_check() -> None:
    problem = _problem(top_k=2, energy_budget_j=2.3)
    masks = np.arange(8, dtype=np.int64)
    expected = [problem.is_feasible(members_of(int(m))) for m in masks]
    assert problem.feasible_masks(masks).tolist() == expected


def test_problem_rejects_negative_energy() -> None:
    with pytest.raises(ValueError, match="energy_j"):
        Problem.build(experts=["a"], energy_j=[-1.0], energy_budget_j=1.0)


def test_best_of_value_is_mean_of_row_maxima_and_memoised() -> None:
    objective = BestOfObjective([[0.9, 0.1, 0.4], [0.2, 0.8, 0.3]])
    assert objective.value([0, 1]) == pytest.approx(0.85)
    assert objective.value([2]) == pytest.approx(0.35)
    assert objective.value([]) == 0.0
    assert objective.value(0b011) == pytest.approx(0.85)
    assert objective.evaluations == 2  # the repeat and the empty set are free
    flags = np.array([[True, True, False], [False, False, True]])
    assert objective.values(flags) == pytest.approx([0.85, 0.35])


def test_best_of_lattice_values_match_single_evaluations() -> None:
    rng = np.random.default_rng(3)
    objective = BestOfObjective(rng.uniform(size=(40, 6)))
    table = objective.lattice_values([1, 3, 4], fixed_mask=0b100001)
    for local in range(8):
        mask = 0b100001
        for bit, expert in enumerate([1, 3, 4]):
            if local >> bit & 1:
                mask |= 1 << expert
        assert table[local] == pytest.approx(objective.value(mask))


def test_best_of_removal_losses_match_definition() -> None:
    rng = np.random.default_rng(4)
    objective = BestOfObjective(rng.uniform(size=(30, 5)))
    upper = 0b11011
    losses = objective.removal_losses(upper)
    assert losses is not None
    for position, expert in enumerate(members_of(upper)):
        expected = objective.value(upper) - objective.value(upper & ~(1 << expert))
        assert losses[position] == pytest.approx(expected, abs=1e-12)


def _gated() -> GatedObjective:
    # Two prompts, three experts, two options. Gate order prompt 0: b > a > c; prompt 1: c > a > b.
    logits = [[1.0, 2.0, 0.0], [0.0, -1.0, 1.0]]
    probs = [
        [[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]],
        [[0.2, 0.8], [0.6, 0.4], [0.45, 0.55]],
    ]
    return GatedObjective(logits, probs, [0, 1], top_k=1)


def test_gated_top_1_follows_the_gate_within_the_subset() -> None:
    objective = _gated()
    # S = {a, b}: prompt 0 routes to b (wrong), prompt 1 routes to a (right).
    assert objective.value([0, 1]) == pytest.approx(0.5)
    # S = {a}: both prompts go to a: right, right.
    assert objective.value([0]) == pytest.approx(1.0)
    # S = {a, b, c}: prompt 0 -> b (wrong), prompt 1 -> c (right, 0.55).
    assert objective.value([0, 1, 2]) == pytest.approx(0.5)


def test_gated_top_2_fuses_with_renormalised_softmax_weights() -> None:
    logits = [[1.0, 2.0, 0.0], [0.0, -1.0, 1.0]]
    probs = [
        [[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]],
        [[0.2, 0.8], [0.6, 0.4], [0.45, 0.55]],
    ]
    objective = GatedObjective(logits, probs, [0, 1], top_k=2, metric="log_likelihood")
    weight_b = math.exp(2.0) / (math.exp(2.0) + math.exp(1.0))
    prompt0 = weight_b * 0.3 + (1 - weight_b) * 0.9  # K = {b, a}
    weight_c = math.exp(1.0) / (math.exp(1.0) + 1.0)
    prompt1 = weight_c * 0.55 + (1 - weight_c) * 0.8  # K = {c, a}
    expected = (math.log(prompt0) + math.log(prompt1)) / 2
    assert objective.value([0, 1, 2]) == pytest.approx(expected)
    assert objective.empty_value == pytest.approx(math.log(PROBABILITY_FLOOR))


def test_gated_box_bound_is_above_every_subset_in_the_box() -> None:
    rng = np.random.default_rng(5)
    n_experts = 6
    logits = rng.normal(size=(50, n_experts))
    probs = rng.dirichlet(np.ones(4), size=(50, n_experts))
    labels = rng.integers(0, 4, size=50)
    for metric in ("accuracy", "log_likelihood"):
        objective = GatedObjective(logits, probs, labels, top_k=2, metric=metric)
        for lower, upper in [(0, 0b111111), (0b000011, 0b110111), (0b100101, 0b101101)]:
            bound = objective.box_bound(lower, upper)
            free = upper & ~lower
            subset = free
            while True:  # every subset of free, joined with lower
                mask = lower | subset
                if mask:
                    assert objective.value(mask) <= bound + 1e-12
                if subset == 0:
                    break
                subset = (subset - 1) & free


def test_monotonicity_checker_finds_no_violation_for_best_of() -> None:
    rng = np.random.default_rng(7)
    report = check_monotonicity(BestOfObjective(rng.uniform(size=(20, 8))), chains=30)
    assert report.pairs == 30 * 7
    assert report.violations == 0
    assert report.max_violation == 0.0


def test_monotonicity_checker_reports_gated_violations() -> None:
    report = check_monotonicity(_gated(), chains=20, seed=1)
    # Adding b to {a} drops accuracy from 1.0 to 0.5 (see the hand-computed case above).
    assert report.violations > 0
    assert report.max_violation == pytest.approx(0.5)
    assert 0 < report.violation_rate <= 1
