"""Training the fine level's log-linear pool once, on the training split (docs/method.md §4.4).

Two convex stages, each a small L-BFGS-B problem per parameter row (one row per category plus
the all-category row used for unknown categories):

1. **Calibration** per (category, expert): temperature a and per-option biases b minimise the
   mean negative log-likelihood of ``softmax(a · log f + b)`` plus ``l2 · ((a - 1)² + ||b||²)``.
   A near-chance expert that always says " positive" gets its bias corrected; an over-confident
   one gets a < 1.
2. **Pooling weights** per category: β ≥ 0 minimise the NLL of ``softmax(Σ_{n∈S} β_n log q_n)``
   averaged over the training subsets S (every non-empty subset when there are few experts, a
   seeded sample otherwise) plus ``l2 · ||β - 1||²``. Averaging over subsets is what makes the
   parameters trained once valid for whichever S the coarse level picks.

Options beyond the widest training prompt get no bias (0).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize

from optimizer.fine import PROBABILITY_FLOOR, LogLinearPool, option_mask

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

MAX_TRAINING_SUBSETS = 64
"""Subsets averaged over in stage 2; all non-empty subsets when 2^N - 1 is at most this."""


def training_subsets(n_experts: int, *, seed: int = 0) -> list[tuple[int, ...]]:
    """The subsets stage 2 averages over: all non-empty ones, or a seeded sample of them."""
    if n_experts < 1:
        raise ValueError("need at least one expert")
    if 2**n_experts - 1 <= MAX_TRAINING_SUBSETS:
        return [
            combo
            for size in range(1, n_experts + 1)
            for combo in itertools.combinations(range(n_experts), size)
        ]
    rng = np.random.default_rng(seed)
    chosen: set[tuple[int, ...]] = {(n,) for n in range(n_experts)}
    chosen.add(tuple(range(n_experts)))
    while len(chosen) < MAX_TRAINING_SUBSETS:
        size = int(rng.integers(2, n_experts + 1))
        chosen.add(tuple(sorted(int(v) for v in rng.choice(n_experts, size, replace=False))))
    return sorted(chosen, key=lambda s: (len(s), s))


def _calibration_row(
    log_f: FloatArray, labels: IntArray, valid: BoolArray, l2: float
) -> tuple[FloatArray, FloatArray]:
    """Temperatures [N] and biases [N, O] of one row, fitted jointly (independent per expert)."""
    n_prompts, n_experts, width = log_f.shape
    onehot = np.zeros((n_prompts, width))
    onehot[np.arange(n_prompts), labels] = 1.0
    log_f = np.where(valid[:, None, :], log_f, 0.0)
    # An option that no prompt of this row has gets no bias (its gradient is 0; keep it at 0).
    present: BoolArray = np.asarray(valid.any(axis=0), dtype=np.bool_)

    def objective(theta: FloatArray) -> tuple[float, FloatArray]:
        a = theta[:n_experts]
        b = theta[n_experts:].reshape(n_experts, width) * present[None, :]
        z = a[None, :, None] * log_f + b[None, :, :]
        z = np.where(valid[:, None, :], z, -np.inf)
        peak = z.max(axis=2, keepdims=True)
        log_p = z - (peak + np.log(np.exp(z - peak).sum(axis=2, keepdims=True)))
        p = np.where(valid[:, None, :], np.exp(log_p), 0.0)
        nll = -np.sum(np.where(onehot[:, None, :] > 0, log_p, 0.0)) / n_prompts
        dz = (p - onehot[:, None, :]) / n_prompts
        grad_a = np.sum(dz * log_f, axis=(0, 2)) + 2 * l2 * (a - 1.0)
        grad_b = dz.sum(axis=0) * present[None, :] + 2 * l2 * b
        loss = nll + l2 * (np.sum((a - 1.0) ** 2) + np.sum(b**2))
        return float(loss), np.concatenate([grad_a, grad_b.ravel()])

    start = np.concatenate([np.ones(n_experts), np.zeros(n_experts * width)])
    bounds = [(0.0, None)] * n_experts + [(None, None)] * (n_experts * width)
    result = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds)
    theta = np.asarray(result.x, dtype=np.float64)
    return theta[:n_experts], theta[n_experts:].reshape(n_experts, width) * present[None, :]


def _pooling_row(
    log_q: FloatArray,
    labels: IntArray,
    valid: npt.NDArray[np.bool_],
    subsets: Sequence[tuple[int, ...]],
    l2: float,
) -> FloatArray:
    """β [N] ≥ 0 of one row: NLL of the pooled distribution averaged over the subsets."""
    n_prompts, n_experts, width = log_q.shape
    members = np.zeros((len(subsets), n_experts))
    for row, subset in enumerate(subsets):
        members[row, list(subset)] = 1.0
    onehot = np.zeros((n_prompts, width))
    onehot[np.arange(n_prompts), labels] = 1.0
    evidence = np.where(valid[:, None, :], log_q, 0.0)  # [P, N, O]

    def objective(beta: FloatArray) -> tuple[float, FloatArray]:
        scale = members * beta[None, :]  # [S, N]
        scores = np.einsum("sn,pno->spo", scale, evidence)
        scores = np.where(valid[None, :, :], scores, -np.inf)
        peak = scores.max(axis=2, keepdims=True)
        log_p = scores - (peak + np.log(np.exp(scores - peak).sum(axis=2, keepdims=True)))
        p = np.where(valid[None, :, :], np.exp(log_p), 0.0)
        count = len(subsets) * n_prompts
        nll = -np.sum(np.where(onehot[None, :, :] > 0, log_p, 0.0)) / count
        dscores = (p - onehot[None, :, :]) / count  # [S, P, O]
        grad = np.einsum("spo,pno,sn->n", dscores, evidence, members) + 2 * l2 * (beta - 1.0)
        return float(nll + l2 * np.sum((beta - 1.0) ** 2)), grad

    result = minimize(
        objective, np.ones(n_experts), jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * n_experts
    )
    return np.asarray(result.x, dtype=np.float64)


def fit_log_linear_pool(
    option_probs: npt.ArrayLike,
    labels: npt.ArrayLike,
    n_options: npt.ArrayLike,
    prompt_categories: Sequence[str],
    categories: Sequence[str],
    *,
    l2: float = 0.01,
    gate_power: float = 0.0,
    subsets: Sequence[tuple[int, ...]] | None = None,
    seed: int = 0,
) -> LogLinearPool:
    """Fits the calibration and pooling weights of a :class:`LogLinearPool` (module docstring).

    Args:
        option_probs: ``[P, N, O]`` training answers (zero-padded).
        labels: ``[P]`` correct options.
        n_options: ``[P]`` real options per prompt.
        prompt_categories: ``[P]`` category of each training prompt.
        categories: The pool's category rows, in order (each prompt's category must be one).
        l2: Strength of both stages' shrinkage (towards a = 1, b = 0, β = 1).
        gate_power: γ of the returned pool (not fitted; chosen on validation by the caller).
        subsets: Stage-2 subsets (default :func:`training_subsets`).
        seed: Seed of the subset sample when there are many experts.

    Returns:
        The fitted pool.
    """
    probs = np.asarray(option_probs, dtype=np.float64)
    label_idx = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 3 or label_idx.shape != (probs.shape[0],):
        raise ValueError(f"option_probs [P, N, O] and labels [P] disagree: {probs.shape}")
    n_prompts, n_experts, width = probs.shape
    if n_prompts == 0:
        raise ValueError("need at least one training prompt")
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    valid = option_mask(n_options, width)
    names = list(categories)
    unknown = [c for c in set(prompt_categories) if c not in names]
    if unknown:
        raise ValueError(f"training prompts of categories not in the pool: {sorted(unknown)}")
    cats = np.asarray(list(prompt_categories))
    chosen_subsets = (
        list(subsets) if subsets is not None else training_subsets(n_experts, seed=seed)
    )
    log_f = np.log(np.maximum(probs, PROBABILITY_FLOOR))
    rows = len(names) + 1
    temperature = np.ones((rows, n_experts))
    bias = np.zeros((rows, n_experts, width))
    beta = np.ones((rows, n_experts))
    for row in range(rows):
        select = np.ones(n_prompts, dtype=bool) if row == len(names) else cats == names[row]
        if not select.any():
            continue
        a, b = _calibration_row(log_f[select], label_idx[select], valid[select], l2)
        temperature[row], bias[row] = a, b
        z = a[None, :, None] * log_f[select] + b[None, :, :]
        z = np.where(valid[select][:, None, :], z, -np.inf)
        peak = z.max(axis=2, keepdims=True)
        log_q = z - (peak + np.log(np.exp(z - peak).sum(axis=2, keepdims=True)))
        beta[row] = _pooling_row(log_q, label_idx[select], valid[select], chosen_subsets, l2)
    logger.debug(
        "fitted a log-linear pool on %d prompts x %d experts (%d category rows, l2=%g)",
        n_prompts,
        n_experts,
        len(names),
        l2,
    )
    return LogLinearPool(
        categories=tuple(names),
        temperature=temperature,
        option_bias=bias,
        expert_weight=beta,
        gate_power=gate_power,
    )
