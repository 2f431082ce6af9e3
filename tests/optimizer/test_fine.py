"""The fine level (optimizer.fine): top-k, weights and both fusion rules, on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optimizer import GatedObjective
from optimizer.fine import (
    LinearPool,
    LogLinearPool,
    fused_answers,
    gate_ranks,
    gate_weights,
    top_k_mask,
    top_k_members,
)


def _pool(n_experts: int, width: int, categories: tuple[str, ...] = ()) -> LogLinearPool:
    rows = len(categories) + 1
    return LogLinearPool(
        categories=categories,
        temperature=np.ones((rows, n_experts)),
        option_bias=np.zeros((rows, n_experts, width)),
        expert_weight=np.ones((rows, n_experts)),
    )


def test_top_k_keeps_the_highest_logits_of_s_and_breaks_ties_by_lower_index() -> None:
    logits = np.array([[0.0, 2.0, 2.0, 5.0], [1.0, 1.0, 1.0, 1.0]])
    subset = np.array([True, True, True, False])
    assert top_k_mask(logits, subset, 1).tolist() == [
        [False, True, False, False],  # expert 3 is outside S; 1 and 2 tie, 1 wins
        [True, False, False, False],
    ]
    assert top_k_mask(logits, subset, 2).sum(axis=1).tolist() == [2, 2]
    assert top_k_mask(logits, subset, 9).tolist() == [subset.tolist()] * 2
    with pytest.raises(ValueError, match="no expert"):
        top_k_mask(logits, np.zeros(4, dtype=bool), 1)
    with pytest.raises(ValueError, match="top_k"):
        top_k_mask(logits, subset, 0)


def test_weights_are_the_softmax_over_the_kept_experts() -> None:
    logits = np.log(np.array([[0.5, 0.3, 0.2]]))
    both = gate_weights(logits, np.array([True, False, True]), 2)
    assert both[0] == pytest.approx([0.5 / 0.7, 0.0, 0.2 / 0.7])


def test_linear_pool_is_the_weighted_mixture() -> None:
    probs = np.array([[[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.2, 0.2, 0.6]]])
    fused = LinearPool().fuse(np.array([[0.5, 0.5, 0.0]]), probs)
    assert fused[0] == pytest.approx([0.5, 0.25, 0.25])


def test_log_linear_pool_multiplies_evidence_so_a_weak_expert_cannot_outvote_a_sure_one() -> None:
    sure = [0.9, 0.1]
    unsure = [0.4, 0.6]
    probs = np.array([[sure, unsure]])
    product = np.array(sure) * np.array(unsure)
    fused = _pool(2, 2).fuse(np.array([[0.5, 0.5]]), probs)
    assert fused[0] == pytest.approx(product / product.sum())
    # The same two answers averaged: the unsure expert drags the sure one from 0.9 to 0.65.
    assert LinearPool().fuse(np.array([[0.5, 0.5]]), probs)[0, 0] == pytest.approx(0.65)


def test_calibration_bias_and_temperature_apply_per_category() -> None:
    pool = LogLinearPool(
        categories=("a", "b"),
        temperature=np.array([[1.0], [2.0], [1.0]]),
        option_bias=np.array([[[0.0, 0.0]], [[0.0, np.log(4.0)]], [[0.0, 0.0]]]),
        expert_weight=np.ones((3, 1)),
    )
    probs = np.array([[[0.5, 0.5]], [[0.5, 0.5]], [[0.75, 0.25]]])
    rows = pool.category_rows(["a", "b", "b"])
    fused = pool.fuse(np.ones((3, 1)), probs, None, rows)
    assert fused[0] == pytest.approx([0.5, 0.5])
    assert fused[1] == pytest.approx([0.2, 0.8])  # bias log 4 on option 1
    # temperature 2: (0.75², 0.25²) · (1, 4) ∝ (0.5625, 0.25)
    assert fused[2] == pytest.approx(np.array([0.5625, 0.25]) / 0.8125)
    assert pool.category_rows(["zzz", None]).tolist() == [2, 2]


def test_padded_options_get_no_probability_under_either_rule() -> None:
    probs = np.array([[[0.6, 0.4, 0.0], [0.3, 0.7, 0.0]]])
    weights = np.array([[0.5, 0.5]])
    for rule in (LinearPool(), _pool(2, 3)):
        fused = rule.fuse(weights, probs, np.array([2]))
        assert fused[0, 2] == 0.0
        assert fused[0].sum() == pytest.approx(1.0)


def test_only_experts_with_weight_contribute_and_columns_may_be_gathered() -> None:
    rng = np.random.default_rng(0)
    pool = LogLinearPool(
        categories=("c",),
        temperature=rng.uniform(0.5, 2.0, size=(2, 4)),
        option_bias=rng.normal(size=(2, 4, 3)),
        expert_weight=rng.uniform(0.0, 2.0, size=(2, 4)),
        gate_power=1.0,
    )
    probs = rng.dirichlet(np.ones(3), size=(5, 4))
    weights = np.zeros((5, 4))
    weights[:, [1, 3]] = [0.25, 0.75]
    rows = np.array([0, 1, 0, 1, 0])
    full = pool.fuse(weights, probs, None, rows)
    gathered = pool.fuse(weights[:, [1, 3]], probs[:, [1, 3]], None, rows, np.array([1, 3]))
    assert np.allclose(full, gathered)
    restricted = pool.restrict([1, 3]).fuse(weights[:, [1, 3]], probs[:, [1, 3]], None, rows)
    assert np.allclose(full, restricted)


def test_pool_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="temperature"):
        LogLinearPool(("a",), np.ones((1, 2)), np.zeros((1, 2, 2)), np.ones((1, 2)))
    with pytest.raises(ValueError, match=">= 0"):
        LogLinearPool((), np.ones((1, 2)), np.zeros((1, 2, 2)), -np.ones((1, 2)))
    with pytest.raises(ValueError, match="experts"):
        _pool(2, 2).fuse(np.ones((1, 3)), np.full((1, 3, 2), 0.5))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    top_k=st.integers(1, 4),
    rule=st.sampled_from(["linear", "log-linear"]),
)
def test_the_gated_objective_scores_exactly_what_the_fine_level_answers(
    seed: int, top_k: int, rule: str
) -> None:
    rng = np.random.default_rng(seed)
    n_prompts, n_experts, width = 30, 5, 4
    logits = rng.normal(size=(n_prompts, n_experts)).round(1)  # rounding makes ties
    probs = rng.dirichlet(np.ones(width), size=(n_prompts, n_experts))
    n_options = rng.integers(2, width + 1, size=n_prompts)
    for row, count in enumerate(n_options):
        probs[row, :, count:] = 0.0
        probs[row] /= probs[row].sum(axis=1, keepdims=True)
    labels = rng.integers(0, 2, size=n_prompts)
    rows = rng.integers(0, 3, size=n_prompts)
    fusion = (
        LinearPool()
        if rule == "linear"
        else LogLinearPool(
            categories=("a", "b"),
            temperature=rng.uniform(0.5, 2, size=(3, n_experts)),
            option_bias=rng.normal(size=(3, n_experts, width)),
            expert_weight=rng.uniform(0, 2, size=(3, n_experts)),
            gate_power=float(rng.integers(0, 2)),
        )
    )
    objective = GatedObjective(
        logits,
        probs,
        labels,
        top_k=top_k,
        fusion=fusion,
        n_options=n_options,
        category_rows=rows if rule != "linear" else None,
    )
    for mask in range(1, 2**n_experts, 3):
        subset = np.array([(mask >> n) & 1 for n in range(n_experts)], dtype=bool)
        _, fused = fused_answers(
            fusion, logits, subset, top_k, probs, n_options, rows if rule != "linear" else None
        )
        assert objective.value(mask) == pytest.approx(np.mean(fused.argmax(axis=1) == labels))


def test_members_match_the_mask() -> None:
    logits = np.array([[3.0, 1.0, 2.0, 0.0]])
    members = top_k_members(gate_ranks(logits), np.array([1, 2, 3]), 2)
    assert sorted(members[0].tolist()) == [1, 2]
