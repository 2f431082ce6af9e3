"""Early exit's stage order and agreement model, trained once (docs/method.md §4.6).

Early exit runs the experts of K one at a time in an :class:`optimizer.fine.ExitOrder` and stops
once the answers so far are very likely the answer all of K would give.

The order (:func:`fit_exit_order`): per category, each expert's mean recorded energy per request
divided by the share of training prompts on which its answer alone is already the answer of
all the experts; the lowest runs first.

The stop likelihood is an
:class:`optimizer.fine.AgreementModel`: a logistic regression over each stage's fused answer
(its log-margin, top probability, the share of K still to run, the category), fitted here by
L2-regularised maximum likelihood with scipy's L-BFGS-B.

Examples: every subset S of the training subsets
(:func:`orchestrator.pool_training.training_subsets`) and every top_k, each prompt's top-k of S
in the exit order, every stage before the last; the label is whether that stage's fused
answer is the answer of all of K. Averaging over subsets is what lets the model trained once
serve whichever S the coarse level picks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize

from optimizer.fine import (
    AgreementModel,
    ExitOrder,
    FusionRule,
    agreement_features,
    category_index,
    fused_answers,
    gate_ranks,
    staged_answers,
    top_k_members,
)
from orchestrator.pool_training import training_subsets

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

AGREEMENT_L2 = 1.0
"""L2 strength on the agreement model's weights (not the intercept), per example."""


@dataclass(frozen=True, slots=True)
class SplitAnswers:
    """One split's recorded answers as the fine level sees them: what early exit learns from.

    Attributes:
        fusion: The fine level's fusion rule.
        logits: ``[P, N]`` the gate's logits on the split.
        option_probs: ``[P, N, O]`` the experts' option distributions.
        prompt_categories: Each prompt's category.
        n_options: ``[P]`` real options per prompt (None: all of O).
        fusion_rows: ``[P]`` the fusion rule's category rows (None: a linear pool's).
    """

    fusion: FusionRule
    logits: npt.ArrayLike
    option_probs: npt.ArrayLike
    prompt_categories: Sequence[str]
    n_options: npt.ArrayLike | None = None
    fusion_rows: npt.ArrayLike | None = None

    def fused(self, subset_mask: npt.ArrayLike, top_k: int) -> FloatArray:
        """``[P, O]`` the fused answers of the top-k of the subset (``optimizer.fine``)."""
        _, out = fused_answers(
            self.fusion,
            self.logits,
            subset_mask,
            top_k,
            self.option_probs,
            self.n_options,
            self.fusion_rows,
        )
        return out


def fit_exit_order(
    answers: SplitAnswers,
    categories: Sequence[str],
    energy_j: npt.ArrayLike,
    planned_energy_j: npt.ArrayLike,
    top_k: int,
) -> ExitOrder:
    """Early exit's stage order learnt on one split's answers.

    For each category c (and row C: every prompt, for unknown categories) and expert n: its
    mean recorded energy per request in c (``energy_j``, NaN where unknown; its planned energy
    ``planned_energy_j`` where none is known) divided by the share of c's prompts on which its
    fused answer alone equals the fused answer of the ``top_k`` of every expert, with one
    pseudo-count each way (so a share is never 0). The mean joules themselves go with it, and
    a mean training prompt's joules for the ``top_k`` of every expert (the gate's), so that the
    stop score can weigh what the rest of K would cost (``ExitOrder.rest_share``); not where
    an expert's mean is 0 J.

    Args:
        answers: The split's answers.
        categories: The categories the order has a row for (the gate's).
        energy_j: ``[P, N]`` recorded energy per response (J).
        planned_energy_j: ``[N]`` each expert's planned energy (J).
        top_k: The largest top_k the coarse level plans for.
    """
    spent = np.asarray(energy_j, dtype=np.float64)
    planned = np.asarray(planned_energy_j, dtype=np.float64)
    n_experts = np.shape(answers.logits)[1]
    final = answers.fused(np.ones(n_experts, dtype=bool), top_k).argmax(axis=1)
    agrees = np.empty_like(spent, dtype=bool)
    for n in range(n_experts):
        agrees[:, n] = answers.fused(np.arange(n_experts) == n, 1).argmax(axis=1) == final
    rows = category_index(categories, list(answers.prompt_categories))
    priority = np.empty((len(categories) + 1, n_experts))
    mean_j = np.empty_like(priority)
    for row in range(len(categories) + 1):
        members = rows == row if row < len(categories) else np.ones(len(rows), dtype=bool)
        count = np.isfinite(spent[members]).sum(axis=0)
        total_j = np.nansum(spent[members], axis=0)
        mean_j[row] = np.where(count > 0, total_j / np.maximum(count, 1), planned)
        share = (agrees[members].sum(axis=0) + 1.0) / (members.sum() + 2.0)
        priority[row] = mean_j[row] / share
    if logger.isEnabledFor(logging.DEBUG):  # one line per fit (the sweep fits once per fold)
        logger.debug(
            "exit order, J per final answer: %s",
            "; ".join(
                f"{name}: {' '.join(f'{value:.3g}' for value in row)}"
                for name, row in zip([*categories, "*"], priority, strict=True)
            ),
        )
    if np.any(mean_j <= 0) or not len(rows):
        return ExitOrder(tuple(categories), priority)  # no unit of cost: the stop is unweighed
    # A mean training prompt's joules for all of K (the gate's top_k of every expert): the unit
    # the rest of K's cost is measured in (ExitOrder.rest_share).
    members = top_k_members(gate_ranks(answers.logits), np.arange(n_experts), top_k)
    recorded = np.take_along_axis(spent, members, axis=1)
    typical = np.take_along_axis(mean_j[rows], members, axis=1)
    reference_j = float(np.where(np.isfinite(recorded), recorded, typical).sum(axis=1).mean())
    return ExitOrder(tuple(categories), priority, mean_j, reference_j)


def fit_agreement_model(
    answers: SplitAnswers,
    categories: Sequence[str],
    exit_order: ExitOrder,
    top_ks: Sequence[int],
    *,
    l2: float = AGREEMENT_L2,
    seed: int = 0,
) -> AgreementModel | None:
    """The agreement model fitted on one split's answers; None where no stage can stop early.

    Args:
        answers: The split's answers.
        categories: The categories the model has a row for (the gate's).
        exit_order: The stage order (:func:`fit_exit_order`).
        top_ks: The top_k values the coarse level plans for.
        l2: L2 strength on the weights.
        seed: Subset sample seed (many experts).
    """
    scores = np.asarray(answers.logits, dtype=np.float64)
    n_experts = scores.shape[1]
    prompt_categories = answers.prompt_categories
    model_rows = category_index(categories, list(prompt_categories))
    ranks = gate_ranks(scores)
    blocks: list[FloatArray] = []
    labels: list[npt.NDArray[np.bool_]] = []
    seen: set[tuple[tuple[int, ...], int]] = set()
    for subset in training_subsets(n_experts, seed=seed):
        for top_k in top_ks:
            size = min(top_k, len(subset))
            if size < 2 or (subset, size) in seen:
                continue
            seen.add((subset, size))
            order = exit_order.order(
                top_k_members(ranks, np.array(subset), size), prompt_categories
            )
            stages = staged_answers(
                answers.fusion,
                order,
                scores,
                answers.option_probs,
                answers.n_options,
                answers.fusion_rows,
            )
            final = stages[-1].argmax(axis=1)
            for stage, fused in enumerate(stages[:-1], start=1):
                blocks.append(
                    agreement_features(
                        fused, order, stage, model_rows, len(categories) + 1, n_experts
                    )
                )
                labels.append(fused.argmax(axis=1) == final)
    if not blocks:
        return None
    x = np.concatenate(blocks)
    y = np.concatenate(labels).astype(np.float64)
    penalty = np.full(x.shape[1], l2 / len(x))
    penalty[0] = 0.0  # the intercept is not shrunk

    def loss(w: FloatArray) -> tuple[float, FloatArray]:
        z = x @ w
        # log(1 + e^z) - y z, stably; its gradient is sigmoid(z) - y
        nll = np.logaddexp(0.0, z) - y * z
        p = 0.5 * (1.0 + np.tanh(0.5 * z))
        grad = x.T @ (p - y) / len(x) + 2 * penalty * w
        return float(nll.mean() + penalty @ (w * w)), grad

    result = minimize(loss, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B")
    logger.info(
        "agreement model: %d stage examples, %.1f %% final, loss %.4f",
        len(x),
        100 * y.mean(),
        float(result.fun),
    )
    return AgreementModel(tuple(categories), n_experts, result.x)
