"""Choosing the fine level (testbed.training): ties and their tie-break; lone calibration."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.fine import LinearPool, LogLinearPool
from orchestrator.gate import make_features
from testbed.categories import Item
from testbed.evaluation import SplitData, take_rows
from testbed.training import (
    calibrated_alone,
    choose_candidate,
    fit_pool,
    mean_subset_scores,
    refit_choice,
)


def _candidate(accuracy: float, likelihood: float) -> dict[str, float]:
    return {"validation_accuracy": accuracy, "validation_log_likelihood": likelihood}


def test_accuracy_decides_and_differences_under_one_prompt_are_ties() -> None:
    # 100 validation prompts: one prompt is 0.01 of accuracy.
    clear = [_candidate(0.70, -0.5), _candidate(0.72, -0.9)]
    assert choose_candidate(clear, 100) == 1  # two prompts better: accuracy wins
    tied = [_candidate(0.720, -0.9), _candidate(0.715, -0.6), _candidate(0.70, -0.1)]
    assert choose_candidate(tied, 100) == 1  # within one prompt: the likelihood decides
    same = [_candidate(0.7, -0.6), _candidate(0.7, -0.6)]
    assert choose_candidate(same, 100) == 0  # all equal: the first
    with pytest.raises(ValueError, match="no candidate"):
        choose_candidate([], 100)


def test_scores_are_the_mean_accuracy_and_log_likelihood_over_subsets() -> None:
    # Two prompts, two experts: expert 0 right and sure, expert 1 wrong and unsure.
    probs = np.array([[[0.9, 0.1], [0.4, 0.6]], [[0.8, 0.2], [0.45, 0.55]]])
    data = SplitData(
        items=tuple(Item("sst2", f"{i:016x}", "p", ("a", "b"), 0, "sum") for i in range(2)),
        categories=np.array(["sst2", "sst2"]),
        labels=np.array([0, 0]),
        option_probs=probs,
        correct=probs.argmax(axis=2) == 0,
        latency_s=np.ones((2, 2)),
        energy_j=np.ones((2, 2)),
    )
    masks = [np.array([True, False]), np.array([False, True])]
    accuracy, likelihood = mean_subset_scores(LinearPool(), np.zeros((2, 2)), data, (1,), masks)
    assert accuracy == pytest.approx(0.5)  # expert 0 always right, expert 1 never
    expected = np.mean([np.log(0.9), np.log(0.8), np.log(0.4), np.log(0.45)])
    assert likelihood == pytest.approx(expected)


def _biased_split(n: int, seed: int) -> SplitData:
    """Two-option prompts, two experts with the same evidence for the label (a log-odds of
    ±1.2 plus noise): "biased" adds +2 towards option 0 (so its raw argmax is mostly option 0,
    which its calibration undoes), "fair" adds nothing (nothing for a calibration to fix)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    evidence = np.where(labels == 0, 1.2, -1.2) + rng.normal(0.0, 1.0, n)  # log p0 / p1
    probs = np.zeros((n, 2, 2))
    for expert, bias in enumerate((2.0, 0.0)):
        p0 = 1.0 / (1.0 + np.exp(-(evidence + bias)))
        probs[:, expert, 0], probs[:, expert, 1] = p0, 1.0 - p0
    return SplitData(
        items=tuple(
            Item("sst2", f"{i:016x}", "p", ("a", "b"), int(y), "sum") for i, y in enumerate(labels)
        ),
        categories=np.array(["sst2"] * n),
        labels=labels,
        option_probs=probs,
        correct=probs.argmax(axis=2) == labels[:, None],
        latency_s=np.ones((n, 2)),
        energy_j=np.ones((n, 2)),
    )


def test_an_expert_answers_alone_calibrated_only_where_that_clearly_pays_out_of_fold() -> None:
    planning = _biased_split(400, seed=0)
    experts = ("biased", "fair")
    choice = {"rule": "log-linear", "pool_l2": 0.1}
    assert planning.correct[:, 0].mean() < 0.7 < planning.correct[:, 1].mean()
    assert calibrated_alone(choice, planning, experts, ("sst2",)) == ["biased"]
    assert calibrated_alone({"rule": "linear"}, planning, experts, ("sst2",)) == []
    few = take_rows(planning, np.arange(planning.size) < 9)  # under two prompts per fold
    assert calibrated_alone(choice, few, experts, ("sst2",)) == []
    # The chosen experts answer alone calibrated in the refitted fine level; the others raw.
    pool = fit_pool(planning, ("sst2",), l2=0.1, calibrated_alone=[0])
    assert pool.raw_when_alone is not None and pool.raw_when_alone.tolist() == [False, True]
    alone = pool.fuse(
        np.ones((400, 1)), planning.option_probs[:, [0]], None, None, np.zeros((400, 1), int)
    )
    assert (alone.argmax(axis=1) == planning.labels).mean() > planning.correct[:, 0].mean() + 0.1
    gate = refit_choice(
        {
            **choice,
            "gate_l2": 0.01,
            "target_sharpness": 1.0,
            "gate_inputs": "category",
            "calibrated_alone": ["biased"],
        },
        planning,
        make_features(np.zeros((400, 2)), planning.categories.tolist(), ("sst2",)),
        experts,
        ("sst2",),
        encoder_name="hashing",
        encoder_dim=2,
    )
    assert isinstance(gate.fusion, LogLinearPool) and gate.fusion.raw_when_alone is not None
    assert gate.fusion.raw_when_alone.tolist() == [False, True]
