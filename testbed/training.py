"""Training the fine level once per sweep: the gate and its fusion rule, chosen on validation.

Candidates (all trained on the training split, on the full expert set):

* ``linear``: the paper's mixture; the gate learns from the experts' raw option distributions.
* ``log-linear``: a product of calibrated experts (:mod:`orchestrator.pool_training`), at a few
  shrinkage strengths; the gate learns from the calibrated distributions (which expert is right
  after calibration), and the pool's gate power γ ∈ {0, 1} decides whether the gate's weights
  also scale each expert's evidence.

Each candidate gate is trained over a small grid (L2 strength, target sharpness). The winner is
the candidate with the best mean validation accuracy over every expert subset S (all non-empty
subsets, or a seeded sample of them) and every ``top_k`` of the sweep: the coarse level may pick
any S, so the fine level is judged on all of them. Accuracies less than one validation prompt
apart are ties, broken by the mean log-likelihood of the labels under the fused answers
(:func:`choose_candidate`). Nothing is ever chosen on the test split and nothing per category
by hand.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from optimizer.evidence import clearly_better
from optimizer.fine import (
    ExitOrder,
    FusionRule,
    LinearPool,
    LogLinearPool,
    early_exit,
    fused_answers,
    gate_ranks,
    top_k_members,
)
from orchestrator.exit_training import SplitAnswers, fit_agreement_model, fit_exit_order
from orchestrator.gate import Gate, GateConfig
from orchestrator.gate_training import train_gate
from orchestrator.planner import OutOfFoldHits
from orchestrator.pool_training import fit_log_linear_pool, training_subsets
from testbed.evaluation import SplitData, realised_energy_j, take_rows

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

GATE_L2_GRID = (1e-4, 1e-2, 1e-1)
GATE_SHARPNESS_GRID = (1.0, 4.0)
POOL_L2_GRID = (0.1, 0.3, 1.0, 3.0)
GATE_POWER_GRID = (0.0, 1.0)
GATE_INPUTS = ("prompt+category", "category")
"""What a candidate gate reads: the prompt embedding and category, or the category alone (its
embedding weights are zero: a learnt per-category preference, robust on small training sets)."""
LOG_LIKELIHOOD_FLOOR = 1e-12
"""Fused probabilities are floored here before the log (the candidates' tie-break)."""
EXIT_THRESHOLDS = (*(round(0.5 + 0.01 * i, 2) for i in range(50)), 0.995)
"""The stop-score thresholds early exit chooses among on validation."""
EXIT_LOSS_TOLERANCE = 0.01
"""Early exit may lose a right answer of all of K on at most this share of validation prompts:
a bound on the accuracy it may cost there (the issue's bar: at most 1 point) that credits none
of the answers it happens to put right."""
OUT_OF_FOLD_FOLDS = 5
"""Folds of the planning split for the guard's out-of-fold answers."""
MAX_OUT_OF_FOLD_EXPERTS = 10
"""Out-of-fold answers are recorded for every subset (2^N - 1 of them) up to this many experts."""


@dataclass(frozen=True, slots=True)
class FineLevel:
    """The trained gate (with its fusion rule) and how it was chosen.

    Attributes:
        gate: The chosen gate; ``gate.fusion`` is the chosen rule.
        validation_accuracy: Its mean validation accuracy over subsets and top_k.
        choice: The chosen hyper-parameters (rule, gate L2, sharpness, pool L2, γ).
        candidates: Every candidate's hyper-parameters and validation accuracy.
    """

    gate: Gate
    validation_accuracy: float
    choice: dict[str, Any]
    candidates: tuple[dict[str, Any], ...]


def subset_masks(n_experts: int, seed: int = 0) -> list[npt.NDArray[np.bool_]]:
    """The subsets a candidate is judged on, as boolean masks."""
    masks = []
    for subset in training_subsets(n_experts, seed=seed):
        mask = np.zeros(n_experts, dtype=bool)
        mask[list(subset)] = True
        masks.append(mask)
    return masks


def mean_subset_scores(
    fusion: FusionRule,
    logits: FloatArray,
    data: SplitData,
    top_ks: Sequence[int],
    masks: Sequence[npt.NDArray[np.bool_]],
) -> tuple[float, float]:
    """Mean accuracy and mean log-likelihood of the fine level over subsets and top_k values.

    The log-likelihood is of the label under the fused answer (probabilities floored at
    :data:`LOG_LIKELIHOOD_FLOOR`), the tie-break between candidates of equal accuracy.
    """
    rows = data.category_rows(fusion)
    accuracy: list[float] = []
    likelihood: list[float] = []
    seen: set[tuple[bytes, int]] = set()
    for top_k in top_ks:
        for mask in masks:
            key = (mask.tobytes(), min(top_k, int(mask.sum())))
            if key in seen:
                continue  # a k that keeps all of S is the same configuration: counted once
            seen.add(key)
            _, fused = fused_answers(
                fusion, logits, mask, top_k, data.option_probs, data.n_options, rows
            )
            accuracy.append(float(np.mean(fused.argmax(axis=1) == data.labels)))
            picked = fused[np.arange(data.size), data.labels]
            likelihood.append(float(np.mean(np.log(np.maximum(picked, LOG_LIKELIHOOD_FLOOR)))))
    return float(np.mean(accuracy)), float(np.mean(likelihood))


def choose_candidate(candidates: Sequence[dict[str, Any]], validation_size: int) -> int:
    """Index of the chosen candidate: the best validation accuracy, ties by log-likelihood.

    Accuracies less than one validation prompt (1 / ``validation_size``) below the best are
    ties: so small a difference is no evidence, and the candidate whose fused answers give the
    labels the highest mean log-likelihood (a proper score, far less noisy than accuracy) wins
    among them. Each candidate has ``validation_accuracy`` and ``validation_log_likelihood``.
    """
    if not candidates:
        raise ValueError("no candidate to choose from")
    best = max(c["validation_accuracy"] for c in candidates)
    tie = 1.0 / max(validation_size, 1)
    tied = [i for i, c in enumerate(candidates) if c["validation_accuracy"] > best - tie]
    return max(tied, key=lambda i: (candidates[i]["validation_log_likelihood"], -i))


def train_fine_level(
    features: dict[str, FloatArray],
    data: dict[str, SplitData],
    experts: Sequence[str],
    categories: Sequence[str],
    *,
    top_ks: Sequence[int],
    encoder_name: str,
    encoder_dim: int,
    seed: int = 0,
    rules: Sequence[str] = ("linear", "log-linear"),
    cost_j: npt.ArrayLike | None = None,
) -> FineLevel:
    """Train every candidate on the training split; keep the best on validation.

    With ``cost_j`` (each expert's planned energy per request), also learn early exit's stage
    order and agreement model on the training split and choose its threshold on validation
    (:func:`choose_exit_threshold`).
    """
    train, validation = data["train"], data["validation"]
    masks = subset_masks(len(experts), seed)
    pools: list[tuple[dict[str, Any], FusionRule, FloatArray]] = []
    if "linear" in rules:
        pools.append(({"rule": "linear"}, LinearPool(), train.option_probs))
    if "log-linear" in rules:
        for pool_l2 in POOL_L2_GRID:
            pool = fit_pool(train, categories, l2=pool_l2, seed=seed)
            calibrated = calibrated_targets(pool, train)
            pools.append(({"rule": "log-linear", "pool_l2": pool_l2}, pool, calibrated))
    tried: list[dict[str, Any]] = []
    gates: list[Gate] = []
    for pool_params, fusion, gate_targets in pools:
        for l2, sharpness, inputs in itertools.product(
            GATE_L2_GRID, GATE_SHARPNESS_GRID, GATE_INPUTS
        ):
            gate = _train_candidate_gate(
                features["train"],
                gate_targets,
                train.labels,
                experts,
                GateConfig(seed=seed, l2=l2, target_sharpness=sharpness),
                encoder_name,
                encoder_dim,
                categories,
                inputs,
            )
            logits = gate.logits(features["validation"])
            powers = GATE_POWER_GRID if isinstance(fusion, LogLinearPool) else (0.0,)
            for power in powers:
                rule = (
                    dataclasses.replace(fusion, gate_power=power)
                    if isinstance(fusion, LogLinearPool)
                    else fusion
                )
                score, likelihood = mean_subset_scores(rule, logits, validation, top_ks, masks)
                tried.append(
                    {
                        **pool_params,
                        "gate_l2": l2,
                        "target_sharpness": sharpness,
                        "gate_inputs": inputs,
                        **({"gate_power": power} if isinstance(rule, LogLinearPool) else {}),
                        "validation_accuracy": score,
                        "validation_log_likelihood": likelihood,
                    }
                )
                gates.append(dataclasses.replace(gate, fusion=rule))
    if not tried:
        raise ValueError(f"no fusion rule to train among {list(rules)}")
    chosen = choose_candidate(tried, validation.size)
    gate, choice = gates[chosen], dict(tried[chosen])
    score = choice["validation_accuracy"]
    if cost_j is not None:
        gate = fit_early_exit(
            gate, train, gate.logits(features["train"]), categories, cost_j, top_ks, seed=seed
        )
        threshold = choose_exit_threshold(
            exit_outcomes(gate, gate.logits(features["validation"]), validation, max(top_ks))
        )
        gate = dataclasses.replace(gate, exit_threshold=threshold)
        choice = {
            **choice,
            "exit_threshold": threshold,
            "exit_rule": "confidence" if gate.exit_model is None else "agreement",
        }
    logger.info(
        "fine level: %s (mean validation accuracy over %d subsets %.3f)",
        {k: v for k, v in choice.items() if k != "validation_accuracy"},
        len(masks),
        score,
    )
    return FineLevel(gate, score, choice, tuple(tried))


def fit_early_exit(
    gate: Gate,
    train: SplitData,
    logits: FloatArray,
    categories: Sequence[str],
    cost_j: npt.ArrayLike,
    top_ks: Sequence[int],
    *,
    seed: int = 0,
) -> Gate:
    """``gate`` with early exit's stage order and agreement model fitted on ``train``.

    ``logits`` are the gate's on ``train``; ``cost_j`` each expert's planned energy per
    request (the order's fallback where no energy was recorded). The threshold is left as it
    is: it is chosen on prompts the fit has not seen (:func:`choose_exit_threshold`).
    """
    answers = SplitAnswers(
        gate.fusion,
        logits,
        train.option_probs,
        train.categories.tolist(),
        train.n_options,
        train.category_rows(gate.fusion),
    )
    exit_order = fit_exit_order(answers, categories, train.energy_j, cost_j, max(top_ks))
    model = fit_agreement_model(answers, categories, exit_order, top_ks, seed=seed)
    return dataclasses.replace(gate, exit_model=model, exit_order=exit_order)


@dataclass(frozen=True, slots=True)
class ExitOutcomes:
    """Early exit at every threshold of :data:`EXIT_THRESHOLDS`, prompt by prompt.

    Attributes:
        lost: ``[T, P]`` whether early exit at threshold t turned prompt p's right answer (that
            of all of K) wrong.
        spent_j: ``[T, P]`` the recorded joules of the experts that ran on prompt p
            (:func:`testbed.evaluation.realised_energy_j`).
    """

    lost: npt.NDArray[np.bool_]
    spent_j: FloatArray

    @staticmethod
    def concat(parts: Sequence[ExitOutcomes]) -> ExitOutcomes:
        """Several prompt sets' outcomes as one."""
        return ExitOutcomes(
            np.concatenate([p.lost for p in parts], axis=1),
            np.concatenate([p.spent_j for p in parts], axis=1),
        )


def exit_outcomes(gate: Gate, logits: FloatArray, split: SplitData, top_k: int) -> ExitOutcomes:
    """Early exit's outcomes on ``split`` at every threshold, where it matters most.

    Every expert in S, the sweep's largest top_k, stages in the gate's exit order (index order
    without one), with the gate's stop score (its agreement model, else the fused confidence).
    ``logits`` are the gate's on ``split``, a split the gate and its exit model never saw.
    """
    n_experts = len(gate.experts)
    everyone = np.ones(n_experts, dtype=bool)
    rows = split.category_rows(gate.fusion)
    _, full = fused_answers(
        gate.fusion, logits, everyone, top_k, split.option_probs, split.n_options, rows
    )
    full_hits = full.argmax(axis=1) == split.labels
    exit_order = gate.exit_order or ExitOrder.cheapest(np.zeros(n_experts))
    order = exit_order.order(
        top_k_members(gate_ranks(logits), np.arange(n_experts), top_k),
        split.categories.tolist(),
    )
    model = gate.exit_model
    model_rows = None if model is None else model.category_rows(split.categories.tolist())
    lost, spent = [], []
    for threshold in EXIT_THRESHOLDS:
        fused, ran = early_exit(
            gate.fusion,
            order,
            logits,
            split.option_probs,
            threshold,
            split.n_options,
            rows,
            model,
            model_rows,
            exit_order=exit_order,
            energy_j=split.energy_j,
            prompt_categories=split.categories.tolist(),
        )
        lost.append(full_hits & (fused.argmax(axis=1) != split.labels))
        spent.append(realised_energy_j(order, ran, split.energy_j))
    return ExitOutcomes(np.array(lost), np.array(spent, dtype=np.float64))


def choose_exit_threshold(outcomes: ExitOutcomes) -> float:
    """The early-exit threshold that spends least, losing few right answers.

    Among :data:`EXIT_THRESHOLDS`, the one with the fewest mean realised joules that loses a
    right answer of all of K on at most :data:`EXIT_LOSS_TOLERANCE` of the prompts; 1.0 (never
    stop early) when none does. Lost answers are counted, not the accuracy difference, so a
    lucky threshold whose losses happen to be cancelled by answers it puts right is not chosen.
    """
    best = (math.inf, 1.0)
    for threshold, lost, spent in zip(
        EXIT_THRESHOLDS, outcomes.lost, outcomes.spent_j, strict=True
    ):
        mean_j = float(np.mean(spent))
        if float(np.mean(lost)) <= EXIT_LOSS_TOLERANCE + 1e-12 and mean_j < best[0]:
            best = (mean_j, threshold)
    logger.info("early exit: threshold %.3f over %d prompts", best[1], outcomes.lost.shape[1])
    return best[1]


def _train_candidate_gate(
    features: FloatArray,
    targets: FloatArray,
    labels: npt.ArrayLike,
    experts: Sequence[str],
    config: GateConfig,
    encoder_name: str,
    encoder_dim: int,
    categories: Sequence[str],
    inputs: str,
) -> Gate:
    """One candidate gate; a category-only gate is trained with, and keeps, zero text weights."""
    x = np.array(features, dtype=np.float64)
    if inputs == "category":
        x[:, :encoder_dim] = 0.0
    gate = train_gate(
        x,
        targets,
        labels,
        experts,
        config=config,
        encoder_name=encoder_name,
        encoder_dim=encoder_dim,
        categories=categories,
    )
    if inputs != "category" or "w" not in gate.params:
        return gate
    weights = np.array(gate.params["w"])
    weights[:encoder_dim] = 0.0
    return dataclasses.replace(gate, params={**gate.params, "w": weights})


def fit_pool(
    train: SplitData,
    categories: Sequence[str],
    *,
    l2: float,
    seed: int = 0,
    calibrated_alone: Sequence[int] = (),
) -> LogLinearPool:
    """The log-linear pool fitted on a recorded split (:func:`fit_log_linear_pool`).

    Its calibration is for pooling: an expert that answers a prompt alone gives its raw
    distribution (``raw_when_alone``), so a single-expert plan is exactly that expert — but for
    the experts of ``calibrated_alone`` (indices), whose calibration out of fold clearly beat
    their raw answers (:func:`calibrated_alone`).
    """
    pool = fit_log_linear_pool(
        train.option_probs,
        train.labels,
        train.n_options,
        train.categories.tolist(),
        categories,
        l2=l2,
        seed=seed,
    )
    raw = np.ones(pool.n_experts, dtype=bool)
    raw[list(calibrated_alone)] = False
    return dataclasses.replace(pool, raw_when_alone=raw)


def folds_apply(n_experts: int, size: int, folds: int = OUT_OF_FOLD_FOLDS) -> bool:
    """Whether the planning prompts are answered out of fold (few enough experts, prompts)."""
    return n_experts <= MAX_OUT_OF_FOLD_EXPERTS and size >= 2 * folds


def fold_assignment(size: int, *, seed: int = 0, folds: int = OUT_OF_FOLD_FOLDS) -> IntArray:
    """Each planning prompt's fold (0..folds-1): a seeded permutation, so folds are balanced."""
    out: IntArray = np.random.default_rng(seed).permutation(size) % folds
    return out


def calibrated_alone(
    choice: dict[str, Any],
    planning: SplitData,
    experts: Sequence[str],
    categories: Sequence[str],
    *,
    seed: int = 0,
    folds: int = OUT_OF_FOLD_FOLDS,
) -> list[str]:
    """The experts that answer alone calibrated: where the calibration clearly pays out of fold.

    Each planning prompt is answered by each expert's calibrated distribution (the chosen
    log-linear pool's calibration, refitted without the prompt's fold) and by its raw one; an
    expert answers alone calibrated only if the first clearly beats the second
    (:func:`optimizer.evidence.clearly_better`: by one paired standard error). A few hundred
    prompts often cannot tell a calibration's gain from noise (in the earlier sweeps a
    calibrated lone expert chosen on the validation split alone lost on test about as often
    as it won); then the expert answers raw. None for the linear pool (it calibrates nothing)
    or where nothing is answered out of fold (:func:`folds_apply`).
    """
    if choice["rule"] != "log-linear" or not folds_apply(len(experts), planning.size, folds):
        return []
    fold_of = fold_assignment(planning.size, seed=seed, folds=folds)
    hits = np.zeros((len(experts), planning.size), dtype=bool)
    for fold in range(folds):
        held = fold_of == fold
        pool = fit_pool(take_rows(planning, ~held), categories, l2=choice["pool_l2"], seed=seed)
        part = take_rows(planning, held)
        log_q = pool.calibrated_log_probs(
            part.option_probs, part.n_options, part.category_rows(pool)
        )
        hits[:, held] = (log_q.argmax(axis=2) == part.labels[:, None]).T
    chosen = [
        name for n, name in enumerate(experts) if clearly_better(hits[n], planning.correct[:, n])
    ]
    logger.info(
        "calibrated alone (out of fold): %s",
        {
            name: round(float(hits[n].mean() - planning.correct[:, n].mean()), 4)
            for n, name in enumerate(experts)
        },
    )
    return chosen


def calibrated_targets(pool: LogLinearPool, train: SplitData) -> FloatArray:
    """What a pool's gate learns from: each expert's calibrated distributions on ``train``."""
    return np.exp(
        pool.calibrated_log_probs(train.option_probs, train.n_options, train.category_rows(pool))
    )


def refit_choice(
    choice: dict[str, Any],
    train: SplitData,
    features: FloatArray,
    experts: Sequence[str],
    categories: Sequence[str],
    *,
    encoder_name: str,
    encoder_dim: int,
    seed: int = 0,
) -> Gate:
    """The chosen fine level (its hyper-parameters, ``FineLevel.choice``) fitted on ``train``."""
    fusion: FusionRule
    if choice["rule"] == "log-linear":
        alone = [list(experts).index(name) for name in choice.get("calibrated_alone", [])]
        pool = fit_pool(train, categories, l2=choice["pool_l2"], seed=seed, calibrated_alone=alone)
        fusion = dataclasses.replace(pool, gate_power=choice.get("gate_power", 0.0))
        targets = calibrated_targets(pool, train)
    else:
        fusion = LinearPool()
        targets = train.option_probs
    gate = _train_candidate_gate(
        features,
        targets,
        train.labels,
        experts,
        GateConfig(seed=seed, l2=choice["gate_l2"], target_sharpness=choice["target_sharpness"]),
        encoder_name,
        encoder_dim,
        categories,
        choice["gate_inputs"],
    )
    return dataclasses.replace(gate, fusion=fusion)


@dataclass(frozen=True, slots=True)
class OutOfFold:
    """Every planning prompt answered by the chosen fine level refitted without its fold.

    Attributes:
        hits: The single-expert guard's evidence, for every subset S and top_k.
        exit: Early exit's outcomes at every threshold (its order and agreement model also
            refitted without the fold), for choosing the threshold of the fine level refitted
            on every planning prompt; None without planned energies.
    """

    hits: OutOfFoldHits
    exit: ExitOutcomes | None


def out_of_fold(
    choice: dict[str, Any],
    planning: SplitData,
    features: FloatArray,
    experts: Sequence[str],
    categories: Sequence[str],
    top_ks: Sequence[int],
    *,
    encoder_name: str,
    encoder_dim: int,
    cost_j: npt.ArrayLike | None = None,
    seed: int = 0,
    folds: int = OUT_OF_FOLD_FOLDS,
) -> OutOfFold | None:
    """Every planning prompt answered by the chosen fine level refitted without its fold.

    For every subset S and top_k: the evidence of the single-expert guard
    (``optimizer.evidence``), on all the planning prompts (train + validation) instead of the
    validation split alone, none of them flattering the fit that answers them. With ``cost_j``
    (each expert's planned energy), early exit's outcomes too, so that its threshold is chosen
    on every planning prompt. None beyond :data:`MAX_OUT_OF_FOLD_EXPERTS` experts (the guard
    then uses the validation split).
    """
    n_experts = len(experts)
    if not folds_apply(n_experts, planning.size, folds):
        return None
    masks = np.array(
        [[(index >> n) & 1 == 1 for n in range(n_experts)] for index in range(1, 2**n_experts)]
    )
    fold_of = fold_assignment(planning.size, seed=seed, folds=folds)
    hits = np.zeros((len(masks), len(top_ks), planning.size), dtype=bool)
    exits: list[ExitOutcomes] = []
    for fold in range(folds):
        held = fold_of == fold
        rest = take_rows(planning, ~held)
        gate = refit_choice(
            choice,
            rest,
            features[~held],
            experts,
            categories,
            encoder_name=encoder_name,
            encoder_dim=encoder_dim,
            seed=seed,
        )
        part = take_rows(planning, held)
        logits = gate.logits(features[held])
        rows = part.category_rows(gate.fusion)
        for i, mask in enumerate(masks):
            for j, top_k in enumerate(top_ks):
                _, fused = fused_answers(
                    gate.fusion, logits, mask, top_k, part.option_probs, part.n_options, rows
                )
                hits[i, j, held] = fused.argmax(axis=1) == part.labels
        if cost_j is not None:
            gate = fit_early_exit(
                gate, rest, gate.logits(features[~held]), categories, cost_j, top_ks, seed=seed
            )
            exits.append(exit_outcomes(gate, logits, part, max(top_ks)))
    order = np.concatenate([np.flatnonzero(fold_of == fold) for fold in range(folds)])
    exit_pooled = None
    if exits:
        pooled = ExitOutcomes.concat(exits)
        inverse = np.argsort(order)  # back to planning order
        exit_pooled = ExitOutcomes(pooled.lost[:, inverse], pooled.spent_j[:, inverse])
    return OutOfFold(
        OutOfFoldHits(subsets=masks, top_ks=np.array(list(top_ks), dtype=np.int64), hits=hits),
        exit_pooled,
    )
