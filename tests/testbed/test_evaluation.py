"""Budget grids and gated fusion, on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.fine import gate_weights as gated_weights
from testbed.evaluation import budget_grid


def test_energy_grid_steps_through_every_breakpoint_to_all_experts() -> None:
    energies = np.array([1.0, 4.0, 2.0])
    grid = budget_grid(energies, top_k=2, points=10)
    # Breakpoints 1, 2, 4 and 6 (= 4 + 2: both largest); each budget sits halfway to the next
    # breakpoint, the loosest 20 % above the last: never on a knife edge.
    assert grid == pytest.approx([1.5, 3.0, 5.0, 7.2])


def test_delay_grid_adds_aggregation_and_keeps_the_ends_when_thinned() -> None:
    latencies = np.array([0.5, 0.2, 0.9, 0.3, 0.7])
    grid = budget_grid(latencies, top_k=1, points=3, add=0.1, combine="max")
    assert grid == pytest.approx([0.35, 0.7, 1.2])  # of 0.35, 0.5, 0.7, 0.9, 1.2: ends kept


def test_gated_weights_restrict_to_the_subset_then_keep_the_top_k() -> None:
    logits = np.log(np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]))
    mask = np.array([True, False, True])
    top1 = gated_weights(logits, mask, 1)
    assert top1.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    both = gated_weights(logits, mask, 2)
    assert both[0] == pytest.approx([0.5 / 0.7, 0.0, 0.2 / 0.7])
    assert both[1] == pytest.approx([0.1 / 0.9, 0.0, 0.8 / 0.9])
