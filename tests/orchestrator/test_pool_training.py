"""Fitting the log-linear pool (orchestrator.pool_training) on synthetic experts."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.fine import LinearPool, option_mask
from orchestrator.pool_training import (
    MAX_TRAINING_SUBSETS,
    fit_log_linear_pool,
    training_subsets,
)


def _experts(n_prompts: int, seed: int, bias: float = -1.5) -> tuple[np.ndarray, np.ndarray]:
    """Two-option prompts; expert 0 strong, expert 1 biased (to option 0 by default), 2 noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n_prompts)
    sign = np.where(labels == 1, 1.0, -1.0)
    strong = 1 / (1 + np.exp(-(2.0 * sign + rng.normal(0, 1.5, n_prompts))))
    biased = 1 / (1 + np.exp(-(0.8 * sign + bias + rng.normal(0, 1.0, n_prompts))))
    noise = rng.uniform(0.3, 0.7, n_prompts)
    p1 = np.stack([strong, biased, noise], axis=1)  # P(option 1)
    return np.stack([1 - p1, p1], axis=2), labels


def _accuracy(fused: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(fused.argmax(axis=1) == labels))


def test_calibration_removes_an_experts_option_bias() -> None:
    probs, labels = _experts(600, seed=1)
    train, test = slice(0, 300), slice(300, 600)
    pool = fit_log_linear_pool(
        probs[train], labels[train], np.full(300, 2), ["c"] * 300, ["c"], l2=0.001
    )
    raw = _accuracy(probs[test, 1], labels[test])
    calibrated = np.exp(pool.calibrated_log_probs(probs[test], None, np.zeros(300, int)))
    assert _accuracy(calibrated[:, 1], labels[test]) > raw + 0.1  # the bias was costing it
    assert pool.option_bias[0, 1, 1] > pool.option_bias[0, 1, 0]  # towards option 1
    assert pool.expert_weight[0, 2] < pool.expert_weight[0, 0]  # noise gets less weight


def test_the_pool_beats_its_best_expert_where_the_mixture_falls_below_it() -> None:
    probs, labels = _experts(2000, seed=2)
    train, test = slice(0, 1000), slice(1000, 2000)
    pool = fit_log_linear_pool(
        probs[train], labels[train], np.full(1000, 2), ["c"] * 1000, ["c"], l2=0.001
    )
    rows = np.zeros(1000, dtype=int)
    everyone = np.full((1000, 3), 1 / 3)
    best_single = max(_accuracy(probs[test, n], labels[test]) for n in range(3))
    mixture = _accuracy(LinearPool().fuse(everyone, probs[test]), labels[test])
    pooled = _accuracy(pool.fuse(everyone, probs[test], None, rows), labels[test])
    assert mixture < best_single
    assert pooled >= best_single


def test_categories_get_their_own_rows_and_unknown_prompts_the_shared_one() -> None:
    first, labels_a = _experts(400, seed=3, bias=-1.5)
    second, labels_b = _experts(400, seed=4, bias=+1.5)  # expert 1 leans the other way in "b"
    probs = np.concatenate([first, second])
    labels = np.concatenate([labels_a, labels_b])
    cats = ["a"] * 400 + ["b"] * 400
    pool = fit_log_linear_pool(probs, labels, np.full(800, 2), cats, ["a", "b"], l2=0.001)
    assert pool.temperature.shape == (3, 3)
    lean = pool.option_bias[:, 1, 1] - pool.option_bias[:, 1, 0]
    assert lean[0] > 0.5 and lean[1] < -0.5  # each category's bias corrected its own way
    only_expert_1 = np.zeros((800, 3))
    only_expert_1[:, 1] = 1.0
    per_category = pool.fuse(only_expert_1, probs, None, pool.category_rows(cats))
    shared = pool.fuse(only_expert_1, probs, None, pool.category_rows([None] * 800))
    assert _accuracy(per_category, labels) > _accuracy(shared, labels) + 0.05
    with pytest.raises(ValueError, match="not in the pool"):
        fit_log_linear_pool(probs, labels, np.full(800, 2), cats, ["a"])


def test_options_no_training_prompt_has_get_no_bias() -> None:
    probs, labels = _experts(100, seed=4)
    padded = np.concatenate([probs, np.zeros((100, 3, 2))], axis=2)
    pool = fit_log_linear_pool(padded, labels, np.full(100, 2), ["c"] * 100, ["c"])
    assert np.all(pool.option_bias[:, :, 2:] == 0.0)
    assert option_mask(np.array([2, 4]), 4).tolist() == [
        [True, True, False, False],
        [True, True, True, True],
    ]


def test_training_subsets_are_all_subsets_or_a_sample() -> None:
    assert len(training_subsets(3)) == 7
    many = training_subsets(12, seed=1)
    assert len(many) == MAX_TRAINING_SUBSETS
    assert (tuple(range(12))) in many and all((n,) in many for n in range(12))
    assert many == training_subsets(12, seed=1)
