"""Early exit: its stage order, its stop score (the agreement model), their training, the
threshold, and the gate file that carries them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from optimizer.fine import (
    AgreementModel,
    ExitOrder,
    LinearPool,
    agreement_features,
    agreement_width,
    cheapest_first,
    early_exit,
    exit_scores,
    fused_answers,
    staged_answers,
    top_k_members,
)
from orchestrator.exit_training import SplitAnswers, fit_agreement_model, fit_exit_order
from orchestrator.gate import Gate, GateMetadata, make_features
from testbed.categories import Item
from testbed.evaluation import SplitData, realised_energy_j
from testbed.training import (
    EXIT_LOSS_TOLERANCE,
    EXIT_THRESHOLDS,
    choose_exit_threshold,
    exit_outcomes,
    out_of_fold,
)

CATEGORIES = ("easy", "hard")


def _answers(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Two-option prompts, three experts; the cheapest (0) is sure and right on "easy" prompts
    and a coin toss on "hard" ones, where the two others outvote it (both sure and right)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    categories = [CATEGORIES[i % 2] for i in range(n)]
    probs = np.zeros((n, 3, 2))
    for i, label in enumerate(labels):
        sure = [0.95, 0.6, 0.6] if categories[i] == "easy" else [0.55, 0.97, 0.97]
        for expert in range(3):
            right = sure[expert] if categories[i] == "easy" or expert else rng.uniform(0.4, 0.6)
            guess = label if right >= 0.5 else 1 - label
            p = max(right, 1 - right)
            probs[i, expert, guess] = p
            probs[i, expert, 1 - guess] = 1 - p
    return probs, labels, categories


COST_J = np.array([1.0, 2.0, 3.0])
CHEAPEST = ExitOrder.cheapest(COST_J)


def test_run_order_is_cheapest_first_per_prompt_row() -> None:
    chosen = np.array([[2, 0, 1], [2, 0, 1]])
    assert cheapest_first(chosen, COST_J).tolist() == [[0, 1, 2], [0, 1, 2]]
    per_row = np.array([[1.0, 2.0, 3.0], [5.0, 4.0, 4.0]])
    assert cheapest_first(chosen, per_row).tolist() == [[0, 1, 2], [1, 2, 0]]  # ties: index
    order = ExitOrder(("a",), per_row)
    assert order.order(chosen, ["a", "zzz"]).tolist() == [[0, 1, 2], [1, 2, 0]]  # zzz: row C
    with pytest.raises(ValueError, match="cost must be"):
        cheapest_first(chosen, np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"\[3, N\]"):
        ExitOrder(("a", "b"), per_row)
    with pytest.raises(ValueError, match="non-negative"):
        ExitOrder(("a",), -per_row)


def test_the_order_runs_first_the_expert_likeliest_final_per_joule() -> None:
    probs, _, categories = _answers(400, seed=3)
    energy_j = np.tile([1.0, 1.5, 6.0], (400, 1))
    answers = SplitAnswers(LinearPool(), np.zeros((400, 3)), probs, categories)
    order = fit_exit_order(answers, CATEGORIES, energy_j, COST_J, 3)
    assert order.categories == CATEGORIES
    # easy: the cheapest is always final (1 J per final answer); hard: it is a coin toss
    # (about 2 J), the second always (1.5 J), so the second goes first there.
    easy, hard, unknown = order.priority_j
    assert easy[0] == pytest.approx(1.0 * 202 / 201) and easy.argmin() == 0
    assert 1.6 < hard[0] < 2.6 and hard[1] == pytest.approx(1.5 * 202 / 201)
    chosen = np.tile([0, 1, 2], (3, 1))
    assert order.order(chosen, ["easy", "hard", None]).tolist() == [
        [0, 1, 2],
        [1, 0, 2],
        [0, 1, 2],  # over every prompt the cheapest is final on 3 in 4: it goes first
    ]
    assert unknown[0] < unknown[1]
    # The mean joules go with the order, and a mean prompt's joules for the top_k of all.
    assert order.energy_j is not None and order.energy_j.tolist() == [[1.0, 1.5, 6.0]] * 3
    assert order.reference_j == pytest.approx(8.5)
    assert fit_exit_order(answers, CATEGORIES, energy_j, COST_J, 2).reference_j == pytest.approx(
        2.5  # the gate's top 2 of 3 (zero logits: ties go to the lower index)
    )
    # Energy unknown for an expert: its planned energy stands in.
    energy_j[:, 2] = np.nan
    unplanned = fit_exit_order(answers, CATEGORIES, energy_j, COST_J, 3)
    assert unplanned.priority_j[:, 2] == pytest.approx(order.priority_j[:, 2] * COST_J[2] / 6.0)
    assert np.array_equal(unplanned.priority_j[:, :2], order.priority_j[:, :2])
    assert unplanned.reference_j == pytest.approx(1.0 + 1.5 + 3.0)
    # An expert that costs nothing: no unit to weigh the rest in, the stop is not weighed.
    energy_j[:, 2] = 0.0
    free = fit_exit_order(answers, CATEGORIES, energy_j, COST_J, 3)
    assert free.energy_j is None and free.reference_j is None


def test_features_read_margin_confidence_share_left_and_category() -> None:
    fused = np.array([[0.8, 0.2], [0.5, 0.5]])
    order = np.array([[2, 0, 1, 3], [1, 2, 3, 0]])
    x = agreement_features(fused, order, 1, np.array([1, 2]), 3, 4)
    assert x.shape == (2, agreement_width(2, 4))
    assert x[0, 1] == pytest.approx(np.log(4.0))  # log 0.8 - log 0.2
    assert x[1, 1] == pytest.approx(0.0)
    assert x[:, 2].tolist() == [0.8, 0.5]
    assert x[:, 3].tolist() == [0.75, 0.75]  # three of four experts still to run
    assert x[0, 5:8].tolist() == [0, 1, 0] and x[1, 5:8].tolist() == [0, 0, 1]
    assert x[0, 11:15].tolist() == [0, 0, 1, 0] and x[0, 15:].tolist() == [1, 1, 0, 1]
    assert x[1, 11:15].tolist() == [0, 1, 0, 0] and x[1, 15:].tolist() == [1, 0, 1, 1]
    with pytest.raises(ValueError, match="stage"):
        agreement_features(fused, order, 5, np.array([0, 0]), 3, 4)


def test_stop_score_is_the_confidence_without_a_model() -> None:
    fused = np.array([[0.7, 0.2, 0.1], [0.4, 0.6, 0.0]])
    order = np.array([[0, 1, 2], [2, 1, 0]])
    assert exit_scores(fused, order, 1).tolist() == [0.7, 0.6]
    model = AgreementModel(CATEGORIES, 3, np.zeros(agreement_width(2, 3)))
    assert exit_scores(fused, order, 1, model).tolist() == [0.5, 0.5]  # sigmoid(0)
    assert exit_scores(np.ones((2, 1)), order, 1, model).tolist() == [1.0, 1.0]  # one option
    with pytest.raises(ValueError, match="coef"):
        AgreementModel(CATEGORIES, 3, np.zeros(3))


def test_the_rest_of_k_costs_what_this_prompt_cost_the_experts_that_answered() -> None:
    costs = ExitOrder(("a",), np.ones((2, 3)), np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]]), 6.0)
    order = np.array([[0, 1, 2], [0, 1, 2], [0, 1, 2], [2, 1, 0]])
    spent = np.array([[2.0, 4.0, 9.0], [np.nan, np.nan, 9.0], [0.5, 1.0, 1.5], [np.nan, 1.0, 4.0]])
    # Row 0 cost the first expert twice its mean: the rest (2 + 3 J) is expected at twice too;
    # row 1 reported nothing: the means stand; row 2 at half; row 3 (unknown category: row C)
    # at twice, for the two experts left.
    share = costs.rest_share(order, 1, spent, ["a", "a", "a", None])
    assert share is not None
    assert share.tolist() == pytest.approx([10 / 6, 5 / 6, 2.5 / 6, 8 / 6])
    # After two: the answered experts' joules against their means together.
    two = costs.rest_share(order, 2, spent, ["a", "a", "a", "a"])
    assert two is not None and two.tolist() == pytest.approx([1.0, 0.5, 0.25, 1 / 6])
    last = costs.rest_share(order, 3, spent, ["a"] * 4)
    assert last is not None and last.tolist() == [0.0] * 4
    assert ExitOrder(("a",), np.ones((2, 3))).rest_share(order, 1, spent, ["a"] * 4) is None
    with pytest.raises(ValueError, match="come together"):
        ExitOrder(("a",), np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="positive"):
        ExitOrder(("a",), np.ones((2, 3)), np.zeros((2, 3)), 1.0)
    with pytest.raises(ValueError, match="reference_j"):
        ExitOrder(("a",), np.ones((2, 3)), np.ones((2, 3)), float("nan"))


def test_a_dear_prompt_stops_at_a_lower_confidence_than_a_cheap_one() -> None:
    fused = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])
    order = np.array([[0, 1], [0, 1], [0, 1]])
    share = np.array([2.0, 0.25, 0.0])
    # (1 - p) / share: the risk per unit of what running on would cost; free to run on: never.
    assert exit_scores(fused, order, 1, rest_share=share).tolist() == pytest.approx(
        [0.95, 0.6, -np.inf]
    )
    assert exit_scores(fused, order, 2, rest_share=share).tolist() == pytest.approx([0.9] * 3)
    # Two prompts answered alike, one with four times the tokens: at 0.8 the long one stops
    # after its first expert, the short one runs on, as the Lagrangian of "fewest joules for a
    # bounded risk" says.
    probs = np.array([[[0.85, 0.15], [0.3, 0.7]]] * 2)
    costs = ExitOrder((), np.ones((1, 2)), np.array([[1.0, 1.0]]), 2.0)
    energy_j = np.array([[4.0, 4.0], [1.0, 1.0]])
    _, ran = early_exit(
        LinearPool(),
        np.array([[0, 1], [0, 1]]),
        np.zeros((2, 2)),
        probs,
        0.8,
        exit_order=costs,
        energy_j=energy_j,
        prompt_categories=[None, None],
    )
    assert ran.tolist() == [1, 2]
    _, unweighed = early_exit(
        LinearPool(), np.array([[0, 1], [0, 1]]), np.zeros((2, 2)), probs, 0.8
    )
    assert unweighed.tolist() == [1, 1]


def test_the_model_learns_when_the_cheapest_expert_is_final() -> None:
    probs, _, categories = _answers(400, seed=0)
    logits = np.zeros((400, 3))
    answers = SplitAnswers(LinearPool(), logits, probs, categories)
    model = fit_agreement_model(answers, CATEGORIES, CHEAPEST, (3,), seed=0)
    assert model is not None
    order = cheapest_first(top_k_members(np.tile([0, 1, 2], (400, 1)), np.arange(3), 3), COST_J)
    first = staged_answers(LinearPool(), order, logits, probs)[0]
    final = staged_answers(LinearPool(), order, logits, probs)[-1]
    agree = first.argmax(1) == final.argmax(1)
    score = model.agreement(first, order, 1, model.category_rows(categories))
    easy = np.array(categories) == "easy"
    assert agree[easy].all() and agree[~easy].mean() < 0.8  # what the data says
    assert score[easy].min() > score[~easy].max()  # and what the model learnt from it
    # A lone expert never stops early: nothing to learn.
    assert (
        fit_agreement_model(
            SplitAnswers(LinearPool(), logits[:, :1], probs[:, :1], categories),
            CATEGORIES,
            ExitOrder.cheapest(COST_J[:1]),
            (1,),
        )
        is None
    )


def _split(probs: np.ndarray, labels: np.ndarray, categories: list[str]) -> SplitData:
    n = len(labels)
    fused = probs.argmax(axis=2)
    return SplitData(
        items=tuple(
            Item(c, f"{i:016x}", f"prompt {i}", ("yes", "no"), int(y), "sum")
            for i, (c, y) in enumerate(zip(categories, labels, strict=True))
        ),
        categories=np.array(categories),
        labels=labels,
        option_probs=probs,
        correct=fused == labels[:, None],
        latency_s=np.ones((n, 3)),
        energy_j=np.tile(COST_J, (n, 1)),
    )


def _gate(model: AgreementModel | None) -> Gate:
    meta = GateMetadata(
        experts=("a", "b", "c"), encoder_name="hashing", encoder_dim=2, head="uniform"
    )
    return Gate(meta, {}, LinearPool(), exit_order=CHEAPEST, exit_model=model)


def test_the_threshold_saves_energy_and_loses_at_most_the_tolerance(tmp_path: Path) -> None:
    train = _split(*_answers(400, seed=1))
    validation = _split(*_answers(300, seed=2))
    logits = np.zeros((400, 3))
    answers = SplitAnswers(LinearPool(), logits, train.option_probs, list(train.categories))
    model = fit_agreement_model(answers, CATEGORIES, CHEAPEST, (3,))
    assert model is not None
    gate = _gate(model)
    val_logits = np.zeros((300, 3))
    threshold = choose_exit_threshold(exit_outcomes(gate, val_logits, validation, 3))
    order = cheapest_first(top_k_members(np.tile([0, 1, 2], (300, 1)), np.arange(3), 3), COST_J)
    rows = model.category_rows(list(validation.categories))
    fused, ran = early_exit(
        LinearPool(), order, val_logits, validation.option_probs, threshold, None, None, model, rows
    )
    _, full = fused_answers(LinearPool(), val_logits, np.ones(3, bool), 3, validation.option_probs)
    full_hits = full.argmax(1) == validation.labels
    lost = full_hits & (fused.argmax(1) != validation.labels)
    assert lost.mean() <= EXIT_LOSS_TOLERANCE
    spent = realised_energy_j(order, ran, validation.energy_j).mean()
    assert spent < 0.75 * COST_J.sum()  # the easy half stops after the cheapest expert
    # The file keeps the model: the orchestrator scores stops as the sweep did.
    loaded = Gate.load(dataclasses.replace(gate, exit_threshold=threshold).save(tmp_path / "g.npz"))
    assert loaded.exit_model is not None
    assert loaded.exit_model.categories == CATEGORIES
    assert np.array_equal(loaded.exit_model.coef, model.coef)
    assert loaded.exit_threshold == threshold
    assert loaded.exit_order is not None
    assert np.array_equal(loaded.exit_order.priority_j, CHEAPEST.priority_j)
    assert Gate.load(_gate(None).save(tmp_path / "plain.npz")).exit_model is None


def test_gate_files_keep_their_exit_order_and_earlier_ones_still_load(tmp_path: Path) -> None:
    order = ExitOrder(CATEGORIES, np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0], [2.0, 2.0, 2.0]]))
    gate = dataclasses.replace(_gate(None), exit_order=order)
    loaded = Gate.load(gate.save(tmp_path / "ordered.npz"))
    assert loaded.exit_order is not None and loaded.exit_order.categories == CATEGORIES
    assert np.array_equal(loaded.exit_order.priority_j, order.priority_j)
    assert loaded.exit_order.energy_j is None and loaded.exit_order.reference_j is None
    mean_j = np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0], [1.5, 1.5, 1.5]])
    costed = dataclasses.replace(order, energy_j=mean_j, reference_j=5.5)
    kept = Gate.load(dataclasses.replace(gate, exit_order=costed).save(tmp_path / "costed.npz"))
    assert kept.exit_order is not None and kept.exit_order.energy_j is not None
    assert np.array_equal(kept.exit_order.energy_j, mean_j)
    assert kept.exit_order.reference_j == 5.5
    # A gate file from before the per-category order: its per-expert planned energy.
    old = tmp_path / "old.npz"
    with np.load(gate.save(old)) as contents:
        arrays = {k: contents[k] for k in contents.files if k != "fusion_exit_priority_j"}
    meta = json.loads(str(arrays["metadata_json"]))
    meta["fusion"].pop("exit_order_categories")
    meta["fusion"]["exit_cost_j"] = [3.0, 1.0, 2.0]
    arrays["metadata_json"] = np.array(json.dumps(meta))
    np.savez(old, **arrays)
    earlier = Gate.load(old).exit_order
    assert earlier is not None and earlier.categories == ()
    assert earlier.order(np.array([[0, 1, 2]]), ["easy"]).tolist() == [[1, 2, 0]]
    with pytest.raises(ValueError, match="exit order covers 2"):
        dataclasses.replace(gate, exit_order=ExitOrder.cheapest([1.0, 2.0]))


def test_out_of_fold_outcomes_choose_the_threshold_on_every_planning_prompt() -> None:
    """Each planning prompt's early exit, by a fit (gate, order, agreement model) without its
    fold, lands at that prompt's own place: the cheap "easy" prompts are the ones that stop
    early, and no prompt is lost that all of K did not get right."""
    planning = _split(*_answers(300, seed=4))
    features = make_features(np.zeros((300, 2)), list(planning.categories), CATEGORIES)
    choice = {"rule": "linear", "gate_l2": 1e-2, "target_sharpness": 1.0, "gate_inputs": "category"}
    folds = out_of_fold(
        choice,
        planning,
        features,
        ("a", "b", "c"),
        CATEGORIES,
        (3,),
        encoder_name="hashing",
        encoder_dim=2,
        cost_j=COST_J,
    )
    assert folds is not None and folds.exit is not None
    outcomes = folds.exit
    assert outcomes.lost.shape == outcomes.spent_j.shape == (len(EXIT_THRESHOLDS), 300)
    all_of_k = folds.hits.lookup([0, 1, 2], 3, np.ones(300, dtype=bool))
    assert all_of_k is not None
    assert not (outcomes.lost & ~all_of_k).any()
    threshold = choose_exit_threshold(outcomes)
    at = EXIT_THRESHOLDS.index(threshold)
    assert outcomes.lost[at].mean() <= EXIT_LOSS_TOLERANCE
    easy = planning.categories == "easy"
    assert outcomes.spent_j[at, easy].mean() == pytest.approx(1.0)  # the cheapest alone
    assert outcomes.spent_j[at, ~easy].mean() > 2.0
