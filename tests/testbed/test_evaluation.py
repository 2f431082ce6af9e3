"""Budget grids and gated fusion, on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer import Problem
from optimizer.fine import gate_weights as gated_weights
from orchestrator.planner import OutOfFoldHits
from testbed.categories import Item
from testbed.evaluation import PointContext, SplitData, budget_grid, evaluate_method, moe2_plan


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


def _routing_point(routing_right: int) -> PointContext:
    """Two experts on 50 planning prompts, 1 J and 0.1 s each, no budget binding: a alone is
    right on 30 out of fold, b on the other 20, both answering (top_k 2) on a's 30, one of
    them per prompt (top_k 1) on the first ``routing_right``."""
    right, wrong = [0.9, 0.1], [0.1, 0.9]
    a_right = np.arange(50) < 30
    probs = np.array([[right, wrong] if r else [wrong, right] for r in a_right])
    planning = SplitData(
        items=tuple(Item("qa", f"{n:016x}", "Q?", (" yes", " no"), 0, "sum") for n in range(50)),
        categories=np.array(["qa"] * 50),
        labels=np.zeros(50, dtype=np.int64),
        option_probs=probs,
        correct=np.stack([a_right, ~a_right], axis=1),
        latency_s=np.full((50, 2), 0.1),
        energy_j=np.ones((50, 2)),
    )
    hits = np.zeros((3, 2, 50), dtype=bool)  # [subset, top_k (1, 2), prompt]
    hits[0, :, :30] = True
    hits[1, :, 30:] = True
    hits[2, 1, :30] = True
    hits[2, 0, :routing_right] = True
    oof = OutOfFoldHits(
        subsets=np.array([[True, False], [False, True], [True, True]]),
        top_ks=np.array([1, 2]),
        hits=hits,
    )
    problem = Problem.build(experts=["a", "b"], energy_j=[1.0, 1.0], energy_budget_j=2.0, top_k=2)
    logits = np.where(a_right[:, None], [[2.0, 0.0]], [[0.0, 2.0]])
    return PointContext(
        problem, ("a", "b"), planning, planning, logits, logits, 2, 0, out_of_fold=oof
    )


def test_the_offline_plan_routes_to_one_of_two_experts_where_both_answering_does_not_pay() -> None:
    assert moe2_plan(_routing_point(45))[0].subset == (0, 1)
    assert moe2_plan(_routing_point(45))[1] == 1
    row = evaluate_method(_routing_point(45), "moe2")
    assert (row["subset"], row["plan_top_k"], row["accuracy"]) == (["a", "b"], 1, 1.0)
    assert row["predicted_energy_j"] == pytest.approx(1.0)  # one answer's worst case
    # where routing does not clearly pay either: the best single expert with the asked top_k
    plan, k = moe2_plan(_routing_point(30))
    assert (plan.subset, k) == ((0,), 2)
