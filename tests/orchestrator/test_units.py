"""Fusion, profile drift and planning on hand-computed cases (no network)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.budgets import Budgets
from orchestrator.core import Gating
from orchestrator.fusion import fuse_texts, normalise_answer
from orchestrator.planner import OutOfFoldHits, PlanError, Planner, SelectionData
from orchestrator.profiles import CategoryStats, ExpertProfile, Profile, ProfileBook


def test_distributions_are_fused_with_weights_renormalised_over_who_answered() -> None:
    weights = {"a": 0.5, "b": 0.3, "c": 0.2}
    answered = {"a": [1.0, 0.0], "c": [0.0, 1.0]}
    kept = {name: weights[name] for name in answered}
    kept = {name: value / sum(kept.values()) for name, value in kept.items()}
    fused = Gating().fuse(kept, answered, "")
    assert fused.tolist() == pytest.approx([0.5 / 0.7, 0.2 / 0.7])


def test_open_answers_vote_by_normalised_text() -> None:
    answer, expert = fuse_texts(
        {"a": 0.4, "b": 0.35, "c": 0.25}, {"a": "Paris", "b": " paris.", "c": "Lyon"}
    )
    assert normalise_answer(" Paris. ") == normalise_answer("paris") == "paris"
    assert answer == "Paris"  # a and b pool 0.75 of the weight; a's own text is returned
    assert expert == "a"
    answer, _ = fuse_texts({"a": 0.2, "b": 0.3, "c": 0.5}, {"a": "x", "b": "y", "c": "z"})
    assert answer == "z"


def _profile(latency: dict[str, float], energy: dict[str, float]) -> Profile:
    return Profile(
        experts={
            name: ExpertProfile(
                categories={
                    "qa": CategoryStats(
                        samples=5,
                        latency_s=dict.fromkeys(("p50", "p95", "max"), latency[name]),
                        energy_j=dict.fromkeys(("p50", "p95", "max"), energy[name]),
                    )
                }
            )
            for name in latency
        }
    )


def test_live_observations_that_drift_change_the_profile_version() -> None:
    book = ProfileBook(_profile({"a": 1.0}, {"a": 1.0}), window=16, min_live_samples=4)
    for _ in range(4):
        book.observe("a", "qa", 1.0, 1.0)
    settled = book.version
    assert book.latency_s("a", "qa") == pytest.approx(1.0)
    for _ in range(3):
        book.observe("a", "qa", 1.05, 1.0)  # within the drift ratio: no new plan needed
    assert book.version == settled
    for _ in range(16):
        book.observe("a", "qa", 2.0, 1.0)  # the node slowed down: plans must be redone
    assert book.version > settled
    # plans use the statistic of the last re-plan: within the drift ratio (10 %) of the truth
    assert 0.9 * 2.0 <= (book.latency_s("a", "qa") or 0.0) <= 2.0


def test_a_drift_is_replanned_and_can_make_an_expert_infeasible() -> None:
    book = ProfileBook(
        _profile({"a": 0.1, "b": 0.2}, {"a": 1.0, "b": 1.0}), window=8, min_live_samples=4
    )
    planner = Planner(book, aggregation_s=0.0)
    kwargs: dict[str, Any] = {
        "budgets": Budgets.of(category_delay_budget_s={"qa": 0.5}),
        "categories": ["qa"],
        "top_k": 2,
        "fleet_version": 0,
    }
    assert set(planner.planned(["a", "b"], **kwargs)[0].subset) == {"a", "b"}
    for _ in range(8):
        book.observe("b", "qa", 0.9, 1.0)
    assert planner.planned(["a", "b"], **kwargs)[0].subset == ("a",)
    with pytest.raises(PlanError, match=r"^delay_budget_s 0\.05 s cannot be met for category qa"):
        planner.planned(["a", "b"], **{**kwargs, "budgets": Budgets(delay_budget_s=0.05)})[0]


_QA_TOP_2: dict[str, Any] = {
    "budgets": Budgets(),
    "categories": ["qa"],
    "top_k": 2,
    "fleet_version": 0,
}
"""Planner.planned's arguments for a "qa" request with top_k 2 and no budgets."""


def _selection(held_out: bool) -> SelectionData:
    """Two experts on 50 recorded prompts (label 0 of 2 options).

    Rows 0-39 (the fitted rows): a and b take turns being right and the gate knows which, so
    the pair answers all 40. Rows 40-49 (held out): a is right, but the gate trusts b.
    Planning accuracy: pair 0.8, a 0.6, b 0.4.
    """
    right, wrong = [0.9, 0.1], [0.1, 0.9]
    probs, logits = [], []
    for row in range(50):
        a_right = row >= 40 or row % 2 == 0
        probs.append([right if a_right else wrong, wrong if a_right else right])
        logits.append([2.0, 0.0] if a_right and row < 40 else [0.0, 2.0])
    return SelectionData(
        experts=("a", "b"),
        categories=np.array(["qa"] * 50),
        gate_logits=np.array(logits),
        option_probs=np.array(probs),
        labels=np.zeros(50, dtype=np.int64),
        held_out=np.arange(50) >= 40 if held_out else None,
    )


def test_the_planner_keeps_a_pair_only_if_held_out_prompts_clearly_favour_it(
    tmp_path: Path,
) -> None:
    book = ProfileBook(_profile({"a": 0.1, "b": 0.1}, {"a": 1.0, "b": 1.0}))
    kwargs = _QA_TOP_2
    unguarded = Planner(book, aggregation_s=0.0, selection=_selection(held_out=False))
    plan = unguarded.planned(["a", "b"], **kwargs)[0]
    assert plan.subset == ("a", "b")
    assert plan.value == pytest.approx(0.8)
    _selection(held_out=True).save(tmp_path / "selection.npz")
    loaded = SelectionData.load(tmp_path / "selection.npz")
    assert loaded.held_out is not None
    assert loaded.held_out.tolist() == [False] * 40 + [True] * 10
    guarded = Planner(book, aggregation_s=0.0, selection=loaded)
    plan = guarded.planned(["a", "b"], **kwargs)[0]
    assert plan.subset == ("a",)  # the pair loses every held-out prompt a gets right
    assert plan.value == pytest.approx(0.6)
    # the exhaustive method is the exact optimum on the planning rows: no guard
    exact = guarded.planned(["a", "b"], **kwargs, method="exhaustive")[0]
    assert exact.subset == ("a", "b")


def test_out_of_fold_evidence_decides_the_guard_and_survives_the_file(tmp_path: Path) -> None:
    """With out-of-fold hits in the file the guard reads them (all planning rows), not the
    validation rows: here they say the pair loses, so the plan is the best single expert."""
    selection = _selection(held_out=True)
    pair_wins_on_validation = dataclasses.replace(selection, held_out=np.arange(50) < 40)
    subsets = np.array([[True, False], [False, True], [True, True]])
    hits = np.zeros((3, 1, 50), dtype=bool)
    hits[0, 0, :] = True  # a alone: right everywhere out of fold
    hits[2, 0, :25] = True  # the pair: right on half
    oof = OutOfFoldHits(subsets=subsets, top_ks=np.array([2]), hits=hits)
    pair_wins_on_validation = dataclasses.replace(pair_wins_on_validation, out_of_fold=oof)
    pair_wins_on_validation.save(tmp_path / "selection.npz")
    loaded = SelectionData.load(tmp_path / "selection.npz")
    assert loaded.out_of_fold is not None
    assert loaded.out_of_fold.hits.tolist() == hits.tolist()
    book = ProfileBook(_profile({"a": 0.1, "b": 0.1}, {"a": 1.0, "b": 1.0}))
    kwargs = _QA_TOP_2
    plan = Planner(book, aggregation_s=0.0, selection=loaded).planned(["a", "b"], **kwargs)[0]
    assert plan.subset == ("a",)
    # the same file without out-of-fold hits: the validation rows (where the pair is perfect)
    without = dataclasses.replace(loaded, out_of_fold=None)
    plan = Planner(book, aggregation_s=0.0, selection=without).planned(["a", "b"], **kwargs)[0]
    assert plan.subset == ("a", "b")


def _routing_selection(routing_right: int) -> SelectionData:
    """:func:`_selection` with out-of-fold hits for top_k 1 and 2: a alone is right on 30 of
    50, b alone on the other 20, both answering (top_k 2) on a's 30, the gate sending each
    prompt to one of them (top_k 1) on the first ``routing_right``."""
    subsets = np.array([[True, False], [False, True], [True, True]])
    hits = np.zeros((3, 2, 50), dtype=bool)  # [subset, top_k (1, 2), prompt]
    hits[0, :, :30] = True
    hits[1, :, 30:] = True
    hits[2, 1, :30] = True
    hits[2, 0, :routing_right] = True
    oof = OutOfFoldHits(subsets=subsets, top_ks=np.array([1, 2]), hits=hits)
    return dataclasses.replace(_selection(held_out=True), out_of_fold=oof)


def test_the_planner_routes_to_one_of_two_experts_where_two_answers_per_prompt_do_not_pay() -> None:
    """Both answering is no better than a alone out of fold, but one of them per prompt
    clearly is: the plan is the pair with top_k 1, whose worst case is one answer's."""
    book = ProfileBook(_profile({"a": 0.1, "b": 0.1}, {"a": 1.0, "b": 1.0}))
    kwargs = _QA_TOP_2
    routing = Planner(book, aggregation_s=0.0, selection=_routing_selection(45))
    plan = routing.planned(["a", "b"], **kwargs)[0]
    assert (plan.subset, plan.top_k) == (("a", "b"), 1)
    assert plan.predicted_energy_j == pytest.approx(1.0)
    # where routing does not clearly pay either, the guard's choice: a alone
    neither = Planner(book, aggregation_s=0.0, selection=_routing_selection(30))
    plan = neither.planned(["a", "b"], **kwargs)[0]
    assert (plan.subset, plan.top_k) == (("a",), 2)


def _two_category_profile(energy: dict[str, dict[str, float]]) -> Profile:
    """Latency 0.1 s everywhere; ``energy[expert][category]`` joules per request."""
    return Profile(
        experts={
            name: ExpertProfile(
                categories={
                    category: CategoryStats(
                        samples=5,
                        latency_s=dict.fromkeys(("p50", "p95", "max"), 0.1),
                        energy_j=dict.fromkeys(("p50", "p95", "max"), joules),
                    )
                    for category, joules in by_category.items()
                }
            )
            for name, by_category in energy.items()
        }
    )


def test_a_request_is_planned_on_every_categorys_rows_not_its_own_few() -> None:
    """On the 10 "qa" rows only b is right; on the 40 "nli" rows a is right on 30 and b on
    10. Pooled, a is the better expert (0.6 vs 0.4): a "qa" request is planned with a, as
    the sweep's one-subset plan would be, not with b from its own category's 10 rows."""
    right, wrong = [0.9, 0.1], [0.1, 0.9]
    probs = [[wrong, right]] * 10 + [[right, wrong]] * 30 + [[wrong, right]] * 10
    selection = SelectionData(
        experts=("a", "b"),
        categories=np.array(["qa"] * 10 + ["nli"] * 40),
        gate_logits=np.tile([2.0, 0.0], (50, 1)),
        option_probs=np.array(probs),
        labels=np.zeros(50, dtype=np.int64),
    )
    assert selection.single_accuracy(["a", "b"]).tolist() == pytest.approx([0.6, 0.4])
    flat = {"qa": 1.0, "nli": 1.0}
    book = ProfileBook(_two_category_profile({"a": flat, "b": flat}))
    planner = Planner(book, aggregation_s=0.0, selection=selection)
    plan = planner.planned(
        ["a", "b"],
        budgets=Budgets(energy_budget_j=1.5, delay_budget_s=1.0),  # one expert at top_k 2
        categories=["qa"],
        top_k=2,
        fleet_version=0,
    )[0]
    assert plan.subset == ("a",)


def test_an_experts_energy_figure_is_its_dearest_categorys_whatever_the_request() -> None:
    """a costs 1 J per "qa" request and 3 J per "nli" one; under a 2.5 J budget a "qa"
    request is not planned with a (its worst case is 3 J, the figure the sweep plans with)."""
    book = ProfileBook(
        _two_category_profile({"a": {"qa": 1.0, "nli": 3.0}, "b": {"qa": 2.0, "nli": 2.0}})
    )
    planner = Planner(book, aggregation_s=0.0)
    plan = planner.planned(
        ["a", "b"],
        budgets=Budgets(energy_budget_j=2.5, delay_budget_s=1.0),
        categories=["qa"],
        top_k=1,
        fleet_version=0,
    )[0]
    assert plan.subset == ("b",)
    assert plan.predicted_energy_j == pytest.approx(2.0)
