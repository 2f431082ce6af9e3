"""Set-function objectives F(S) for the coarse level, with memoisation and an evaluation counter.

Two objectives (docs/method.md §2.2; instance kinds: docs/architecture.md §5):

* :class:`BestOfObjective` — F(S) = mean over prompts of max over n∈S of ``scores[i, n]``
  (the oracle-router value). Non-decreasing in S on non-empty sets; F(∅) = 0 by contract.
* :class:`GatedObjective` — the MoE² objective replayed from a recorded response matrix. For
  prompt i: restrict the gate logits to S and renormalise the softmax, keep the top-k experts
  of S (ties: lower logit index order, see below), renormalise their weights, fuse their option
  distributions and score the fused distribution against the label (accuracy, or mean
  log-likelihood). With a finite-capacity gate this F can violate monotonicity slightly
  (docs/method.md §2.3); :func:`check_monotonicity` measures by how much.

Subsets are passed as integer bitmasks (bit n set ⇔ expert n ∈ S) or index collections. All
evaluation is numpy-vectorised over prompts: one F(S) over thousands of prompts costs tens of
microseconds. ``evaluations`` counts distinct subsets actually computed (cache misses).
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from optimizer.fine import FusionRule, LinearPool, LogLinearPool, gate_ranks, top_k_members
from optimizer.problem import mask_of, members_of

logger = logging.getLogger(__name__)

GatedMetric = Literal["accuracy", "log_likelihood"]

PROBABILITY_FLOOR = 1e-12
"""Fused probabilities are clipped at this floor before the log (log-likelihood metric)."""

_BOUND_SLACK = 1e-9


class SetObjective(ABC):
    """A set function F over subsets of N experts, memoised, counting its evaluations.

    Subclasses implement :meth:`_evaluate` (one non-empty subset) and may override
    :meth:`_evaluate_batch` with a vectorised version. ``monotone`` declares whether F is
    non-decreasing on non-empty sets; solvers rely on it only in their "monotone" mode.
    """

    monotone: bool = False
    submodular: bool = False

    def __init__(self, n_experts: int) -> None:
        self._n_experts = n_experts
        self._cache: dict[int, float] = {}
        self._evaluations = 0

    @property
    def n_experts(self) -> int:
        """Number of experts N the objective is defined over."""
        return self._n_experts

    @property
    def evaluations(self) -> int:
        """Number of distinct subsets evaluated so far (cache misses, batches included)."""
        return self._evaluations

    @property
    @abstractmethod
    def empty_value(self) -> float:
        """F(∅): the value of selecting no expert."""

    def record_evaluations(self, count: int) -> None:
        """Charge ``count`` evaluations computed outside :meth:`value` (lattice enumeration)."""
        self._evaluations += count

    def reset(self) -> None:
        """Clear the cache and the evaluation counter."""
        self._cache.clear()
        self._evaluations = 0

    def value(self, subset: int | Iterable[int]) -> float:
        """F(S), memoised.

        Args:
            subset: A bitmask, or a collection of expert indices.

        Returns:
            The objective value.
        """
        mask = subset if isinstance(subset, int) else mask_of(subset)
        cached = self._cache.get(mask)
        if cached is not None:
            return cached
        if mask == 0:
            result = self.empty_value
        else:
            members = np.asarray(members_of(mask), dtype=np.intp)
            if members[-1] >= self._n_experts:
                raise ValueError(f"subset names expert {members[-1]} of {self._n_experts}")
            result = float(self._evaluate(members))
            self._evaluations += 1
        self._cache[mask] = result
        return result

    def values(self, masks: NDArray[np.bool_]) -> NDArray[np.float64]:
        """F for many subsets at once, given as a boolean matrix (one row per subset).

        Not memoised (batches are used by enumeration, which never repeats a subset); every
        non-empty row counts as one evaluation.

        Args:
            masks: Shape (B, N) booleans.

        Returns:
            Shape (B,) values.
        """
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 2 or masks.shape[1] != self._n_experts:
            raise ValueError(f"masks must have shape (B, {self._n_experts})")
        out = np.full(masks.shape[0], self.empty_value, dtype=np.float64)
        nonempty = masks.any(axis=1)
        if np.any(nonempty):
            out[nonempty] = self._evaluate_batch(masks[nonempty])
            self._evaluations += int(nonempty.sum())
        return out

    def box_bound(self, lower: int, upper: int) -> float:
        """An upper bound on F(S) over every non-empty S with lower ⊆ S ⊆ upper.

        The default is F(upper), valid only for a monotone F; non-monotone objectives return
        ``inf`` unless they override this with a bound of their own.

        Args:
            lower: Bitmask of experts fixed in.
            upper: Bitmask of experts that may be in (a superset of lower).

        Returns:
            The bound.
        """
        if self.monotone:
            return self.value(upper)
        return math.inf

    def removal_losses(self, upper: int) -> NDArray[np.float64] | None:
        """F(U) - F(U ∖ {j}) for every member j of U (ascending index order), or None.

        Solvers use it only when ``submodular`` is True, for a knapsack-cover bound. The
        default returns None (not available). One call counts as one evaluation.
        """
        return None

    @abstractmethod
    def _evaluate(self, members: NDArray[np.intp]) -> float:
        """F of one non-empty subset given by its ascending indices."""

    def _evaluate_batch(self, masks: NDArray[np.bool_]) -> NDArray[np.float64]:
        """F of many non-empty subsets; the default loops over :meth:`_evaluate`."""
        return np.array(
            [self._evaluate(np.flatnonzero(row).astype(np.intp)) for row in masks],
            dtype=np.float64,
        )


def _as_matrix(values: ArrayLike, name: str, ndim: int) -> NDArray[np.float64]:
    array = np.array(values, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    array.flags.writeable = False
    return array


class BestOfObjective(SetObjective):
    """F(S) = mean_i max_{n∈S} scores[i, n]; F(∅) = 0 (docs/method.md §2.2, ``best-of``).

    Monotone on non-empty sets for any scores, and submodular.
    """

    monotone = True
    submodular = True

    def __init__(self, scores: ArrayLike) -> None:
        """Wrap a score matrix.

        Args:
            scores: Shape (P, N); quality of expert n on prompt i.
        """
        matrix = _as_matrix(scores, "scores", 2)
        if matrix.shape[0] == 0:
            raise ValueError("scores must have at least one prompt")
        super().__init__(matrix.shape[1])
        self.scores = matrix
        # Expert-major copy: gathering a column set is contiguous.
        self._columns = np.ascontiguousarray(matrix.T)

    @property
    def n_prompts(self) -> int:
        """Number of prompts P."""
        return int(self.scores.shape[0])

    @property
    def empty_value(self) -> float:
        return 0.0

    def _evaluate(self, members: NDArray[np.intp]) -> float:
        if members.size == 1:
            return float(self._columns[members[0]].mean())
        return float(self._columns[members].max(axis=0).mean())

    def _evaluate_batch(self, masks: NDArray[np.bool_]) -> NDArray[np.float64]:
        out = np.empty(masks.shape[0], dtype=np.float64)
        # Chunk so that the (chunk, P) working matrix stays around 8 MB.
        chunk = max(1, 1_000_000 // max(1, self.n_prompts))
        for start in range(0, masks.shape[0], chunk):
            block = masks[start : start + chunk]
            best = np.full((block.shape[0], self.n_prompts), -np.inf)
            for n in range(self.n_experts):
                rows = block[:, n]
                if np.any(rows):
                    best[rows] = np.maximum(best[rows], self._columns[n])
            out[start : start + block.shape[0]] = best.mean(axis=1)
        return out

    def removal_losses(self, upper: int) -> NDArray[np.float64] | None:
        """Loss of dropping each member of U, from each prompt's best and second-best score."""
        members = np.asarray(members_of(upper), dtype=np.intp)
        self._evaluations += 1
        columns = self._columns[members]
        if members.size == 1:
            return np.array([float(columns[0].mean()) - self.empty_value])
        prompts = np.arange(self.n_prompts)
        best = columns.argmax(axis=0)
        top = columns[best, prompts]
        others = columns.copy()
        others[best, prompts] = -np.inf
        drop = top - others.max(axis=0)
        return np.bincount(best, weights=drop, minlength=members.size) / self.n_prompts

    def lattice_values(self, ground: list[int], fixed_mask: int) -> NDArray[np.float64]:
        """F of fixed ∪ T for every T ⊆ ground, indexed by T's bitmask over ``ground``.

        Dynamic programming over the lattice: each subset costs one elementwise max over the
        prompts instead of |S| of them. Used by exhaustive enumeration. The memory is
        2^len(ground) × P floats, so callers keep ``len(ground)`` around 12.

        Args:
            ground: Expert indices that vary (bit j of the result index ⇔ ground[j] ∈ T).
            fixed_mask: Bitmask of experts always included (disjoint from ground).

        Returns:
            Shape (2^len(ground),); entry 0 is F(fixed) (F(∅) = 0 when fixed is empty).
        """
        fixed = members_of(fixed_mask)
        table = np.empty((1 << len(ground), self.n_prompts), dtype=np.float64)
        if fixed:
            table[0] = self._columns[fixed].max(axis=0)
        else:
            table[0] = -np.inf
        for j, n in enumerate(ground):
            size = 1 << j
            np.maximum(table[:size], self._columns[n], out=table[size : 2 * size])
        values: NDArray[np.float64] = table.mean(axis=1)
        if not fixed:
            values[0] = self.empty_value
        return values


class GatedObjective(SetObjective):
    """The MoE² objective from a recorded response matrix (docs/method.md §2.2).

    For prompt i and subset S: the gate softmax restricted to S, its top-k experts K(x_i; S)
    (ranked by logit, ties broken by lower expert index), weights renormalised over K (equal to
    a softmax over K's logits), fused distribution ``p = Σ_{n∈K} w_n · option_probs[i, n]``.
    ``accuracy``: mean of ``argmax p == label`` (ties go to the lower option index).
    ``log_likelihood``: mean of ``log max(p[label], PROBABILITY_FLOOR)``.
    F(∅) is 0 for accuracy and ``log(PROBABILITY_FLOOR)`` for log-likelihood, the lowest values
    either metric can take. With the linear mixture F is not guaranteed monotone
    (``monotone = False``) and :meth:`box_bound` gives a valid bound for the exact solver mode;
    with a log-linear pool F is treated as monotone (see ``__init__``).
    """

    monotone = False

    def __init__(
        self,
        gate_logits: ArrayLike,
        option_probs: ArrayLike,
        labels: ArrayLike,
        top_k: int,
        metric: GatedMetric = "accuracy",
        *,
        fusion: FusionRule | None = None,
        n_options: ArrayLike | None = None,
        category_rows: ArrayLike | None = None,
    ) -> None:
        """Wrap a recorded response matrix.

        Args:
            gate_logits: Shape (P, N); gate logits h_n(x_i; θ*) of the gate trained on 𝒩.
            option_probs: Shape (P, N, O); expert n's distribution over the options of prompt i
                (rows padded with 0 for prompts with fewer than O options).
            labels: Shape (P,); index of the correct option of each prompt.
            top_k: Fine-level k (experts activated per prompt).
            metric: ``"accuracy"`` or ``"log_likelihood"``.
            fusion: The fine level's fusion rule (default: the linear mixture).
            n_options: Shape (P,); real options per prompt (default: all O).
            category_rows: Shape (P,); each prompt's parameter row of a log-linear pool.

        Raises:
            ValueError: On inconsistent shapes, non-finite or negative values, bad labels.
        """
        logits = _as_matrix(gate_logits, "gate_logits", 2)
        probs = _as_matrix(option_probs, "option_probs", 3)
        label_array = np.asarray(labels)
        n_prompts, n_experts = logits.shape
        if n_prompts == 0:
            raise ValueError("gate_logits must have at least one prompt")
        if probs.shape[:2] != (n_prompts, n_experts) or probs.shape[2] == 0:
            raise ValueError(
                f"option_probs must have shape ({n_prompts}, {n_experts}, O), got {probs.shape}"
            )
        if np.any(probs < 0):
            raise ValueError("option_probs must be non-negative")
        if label_array.shape != (n_prompts,) or not np.issubdtype(label_array.dtype, np.integer):
            raise ValueError(f"labels must be {n_prompts} integers")
        if np.any(label_array < 0) or np.any(label_array >= probs.shape[2]):
            raise ValueError(f"labels must lie in [0, {probs.shape[2]})")
        if top_k < 1:
            raise ValueError("top_k must be >= 1")
        if metric not in ("accuracy", "log_likelihood"):
            raise ValueError(f"unknown metric {metric!r}")
        super().__init__(n_experts)
        self.gate_logits = logits
        self.option_probs = probs
        self.labels = label_array.astype(np.intp)
        self.top_k = int(top_k)
        self.metric: GatedMetric = metric
        self._rows = np.arange(n_prompts)
        # rank[i, n]: position of expert n in prompt i's gate order (0 = highest logit); int16
        # halves the memory traffic of the per-evaluation top-k selection.
        self._rank = gate_ranks(logits).astype(np.int16 if n_experts < 2**15 else np.int64)
        self._row_offsets = (self._rows * n_experts)[:, None]
        self._flat_logits = logits.reshape(-1)
        self._flat_probs = probs.reshape(n_prompts * n_experts, probs.shape[2])
        self._label_probs = probs[self._rows, :, self.labels]  # (P, N): f_n(label_i | x_i)
        self.fusion: FusionRule = fusion if fusion is not None else LinearPool()
        # A product of calibrated experts, its weights trained over every subset, is built so
        # that one more expert's evidence does not hurt in expectation: it is treated as
        # monotone, so DMO returns the best maximal feasible subset (its monotone mode). On a
        # few hundred recorded prompts F still wobbles by a point between subsets; the exact
        # mode would chase that noise towards smaller subsets. The linear mixture has no such
        # property (a weak expert drags a strong one down): exact mode, as before.
        self.monotone = isinstance(self.fusion, LogLinearPool) and self.top_k >= n_experts
        self.n_options = (
            np.full(n_prompts, probs.shape[2], dtype=np.int64)
            if n_options is None
            else np.asarray(n_options, dtype=np.int64)
        )
        self.category_rows = None if category_rows is None else np.asarray(category_rows)

    @property
    def n_prompts(self) -> int:
        """Number of prompts P."""
        return int(self.gate_logits.shape[0])

    @property
    def empty_value(self) -> float:
        return 0.0 if self.metric == "accuracy" else math.log(PROBABILITY_FLOOR)

    def _fused(self, members: NDArray[np.intp]) -> NDArray[np.float64]:
        # The fine level itself (optimizer.fine), on the gathered columns of K(x; S).
        chosen = top_k_members(self._rank, members, self.top_k)  # (P, k)
        flat = self._row_offsets + chosen  # index into the (P*N, ...) views
        logits = self._flat_logits[flat]
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)  # softmax over K (optimizer.fine)
        return self.fusion.fuse(
            weights, self._flat_probs[flat], self.n_options, self.category_rows, chosen
        )

    def hits(self, members: Sequence[int]) -> NDArray[np.bool_]:
        """Per prompt: whether the fine level over S = ``members`` answers it correctly."""
        if not len(members):
            return np.zeros(self.n_prompts, dtype=bool)
        fused = self._fused(np.asarray(sorted(members), dtype=np.intp))
        return np.asarray(np.argmax(fused, axis=1) == self.labels)

    def _evaluate(self, members: NDArray[np.intp]) -> float:
        fused = self._fused(members)
        if self.metric == "accuracy":
            return float(np.mean(np.argmax(fused, axis=1) == self.labels))
        picked = fused[self._rows, self.labels]
        return float(np.mean(np.log(np.maximum(picked, PROBABILITY_FLOOR))))

    def box_bound(self, lower: int, upper: int) -> float:
        """A valid upper bound on F over the box [lower, upper], monotone or not.

        Per prompt, K(x; S) ⊆ C = experts of ``upper`` ranked at least as high as the k-th
        best member of ``lower`` (all of ``upper`` when |lower| < k), because S ⊇ lower. The
        fused p is a convex combination over K, so p(label) ≤ max_{n∈C} f_n(label) and
        p(y) ≥ min_{n∈C} f_n(y). Accuracy: the prompt can be right only if the first bound
        reaches every option's second bound. Log-likelihood: log of the first bound.
        """
        if upper == 0:
            return -math.inf
        if not isinstance(self.fusion, LinearPool):
            # The convex-combination argument below is the linear pool's; a product of
            # experts has no such cheap bound, so the trivial one keeps the search exact.
            return 1.0 if self.metric == "accuracy" else 0.0
        upper_flags = np.zeros(self.n_experts, dtype=bool)
        upper_flags[members_of(upper)] = True
        lower_members = members_of(lower)
        if len(lower_members) >= self.top_k:
            ranks = self._rank[:, lower_members]
            threshold = np.partition(ranks, self.top_k - 1, axis=1)[:, self.top_k - 1]
            candidates = (self._rank <= threshold[:, None]) & upper_flags[None, :]
        else:
            candidates = np.broadcast_to(upper_flags, (self.n_prompts, self.n_experts))
        best_label = np.where(candidates, self._label_probs, -np.inf).max(axis=1)
        if self.metric == "log_likelihood":
            return float(np.mean(np.log(np.maximum(best_label, PROBABILITY_FLOOR))))
        floor = np.where(candidates[:, :, None], self.option_probs, np.inf).min(axis=1)
        floor[self._rows, self.labels] = -np.inf
        rival = floor.max(axis=1)
        return float(np.mean(best_label + _BOUND_SLACK >= rival))


@dataclass(frozen=True, slots=True)
class MonotonicityReport:
    """How often and by how much F(S ∪ {n}) < F(S) on sampled chains.

    Attributes:
        pairs: Number of (S, S ∪ {n}) pairs checked (S non-empty).
        violations: Pairs with F(S ∪ {n}) < F(S) - tolerance.
        violation_rate: violations / pairs.
        max_violation: Largest F(S) - F(S ∪ {n}) seen (0 when none).
        mean_violation: Mean size of the violating drops (0 when none).
        tolerance: The tolerance used.
    """

    pairs: int
    violations: int
    violation_rate: float
    max_violation: float
    mean_violation: float
    tolerance: float


def check_monotonicity(
    objective: SetObjective,
    *,
    chains: int = 200,
    seed: int = 0,
    tolerance: float = 1e-12,
) -> MonotonicityReport:
    """Sample random maximal chains ∅ ⊂ {n1} ⊂ {n1,n2} ⊂ … ⊂ 𝒩 and count drops of F.

    Each chain is a random permutation of the experts; every step from a non-empty S to
    S ∪ {n} is one checked pair, so a chain gives N - 1 pairs.

    Args:
        objective: The set function to check (its cache and counter are used).
        chains: Number of random chains.
        seed: Seed of the permutation generator.
        tolerance: Drops up to this size are not counted.

    Returns:
        The violation statistics.
    """
    rng = np.random.default_rng(seed)
    drops: list[float] = []
    pairs = 0
    for _ in range(chains):
        order = rng.permutation(objective.n_experts)
        mask = 1 << int(order[0])
        previous = objective.value(mask)
        for n in order[1:]:
            mask |= 1 << int(n)
            current = objective.value(mask)
            pairs += 1
            if current < previous - tolerance:
                drops.append(previous - current)
            previous = current
    return MonotonicityReport(
        pairs=pairs,
        violations=len(drops),
        violation_rate=len(drops) / pairs if pairs else 0.0,
        max_violation=max(drops, default=0.0),
        mean_violation=float(np.mean(drops)) if drops else 0.0,
        tolerance=tolerance,
    )
