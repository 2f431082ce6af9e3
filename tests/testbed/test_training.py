"""Choosing the fine level on validation (testbed.training): ties and their tie-break."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.fine import LinearPool
from testbed.categories import Item
from testbed.evaluation import SplitData
from testbed.training import choose_candidate, mean_subset_scores


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
