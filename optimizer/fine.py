"""The fine level of MoE², written once: top-k of S per prompt, gate weights, and fusion.

Every place that decides which experts of a coarse-level subset S answer a prompt, with what
weight, and how their answers are combined calls this module: the orchestrator (one prompt at
a time), the gate (`orchestrator.gate.Gate.weights`), the sweep's offline evaluation, and the
coarse level's gated objective (`optimizer.objectives.GatedObjective`). So the sweep scores the
code that serves. Pure numpy, no I/O.

Arrays: P prompts, N experts (in the gate's order), O answer options (rows of prompts with fewer
options are padded; ``n_options`` says how many are real).

**Top-k** (docs/method.md §4.1): the gate logits restricted to S; the ``top_k`` highest
are kept per prompt (ties: the lower expert index wins; logits, not weights, are ranked so
weights that underflow to 0 still rank); their softmax is the weight vector.

**Fusion rules** (:data:`FusionRule`):

* :class:`LinearPool` — the paper's mixture p(y|x) = Σ_{n∈K} w_n f_n(y|x).
* :class:`LogLinearPool` — a product of calibrated experts (log-linear pooling):
  ``log q_n(y|x) = log_softmax_y(a[c,n] · log f_n(y|x) + b[c,n,y])`` (per-category temperature
  and per-option bias: calibration) and
  ``p(y|x) ∝ exp(Σ_{n∈K} β[c,n] · (|K| w_n)^γ · log q_n(y|x))``.
  Each expert's calibrated log-probabilities are evidence that adds up; a weak expert gets a
  small β instead of pulling a strong one's probabilities towards its own. Row ``c = C`` of the
  parameters (one past the last category) is the fit over all categories, used for prompts of
  an unknown category. Restricting to any S is valid with the parameters trained once: the sum
  runs over whoever is in K (and whoever answered).

**Early exit** (dynamic k, :func:`early_exit`): the experts of K answer one at a time, in the
:class:`ExitOrder` (fewest expected joules per final answer first, per category); after each
stage a *stop score* of the answers so far is compared with the threshold chosen on validation.
The score starts from the fused answer's confidence (its top probability), or, with an
:class:`AgreementModel`, the modelled probability p that running the rest of K leaves the fused
answer as it is (:func:`exit_scores`). Where the order knows what each expert costs, the score
weighs the risk 1 − p against the joules the rest of K would spend *on this prompt* (R, as a
share of a mean prompt's K: :meth:`ExitOrder.rest_share`): s = 1 − (1 − p) / R. Stopping when
s ≥ τ is stopping when (1 − p) ≤ (1 − τ) · R — the Lagrangian of "fewest joules for a bounded
risk of changing the answer": a long prompt, whose remaining experts cost several times a short
one's, stops at a lower confidence, a short one runs on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

PROBABILITY_FLOOR = 1e-6
"""Expert probabilities are clipped at this floor before the log (log-linear pool)."""

RuleName = Literal["linear", "log-linear"]
RULE_NAMES: tuple[RuleName, ...] = ("linear", "log-linear")


def gate_ranks(logits: npt.ArrayLike) -> IntArray:
    """``[P, N]`` rank of each expert in each prompt's gate order (0 = highest logit).

    Equal logits keep index order (a stable sort of the negated logits), so the lower expert
    index wins a tie; logits, not weights, are ranked so weights that underflow to 0 still rank.
    """
    scores = np.asarray(logits, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"logits must be [P, N], got shape {scores.shape}")
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :], axis=1)
    return ranks.astype(np.int64)


def top_k_members(ranks: npt.ArrayLike, members: npt.ArrayLike, top_k: int | None) -> IntArray:
    """The experts that answer each prompt: the ``top_k`` best-ranked members of S.

    Args:
        ranks: ``[P, N]`` from :func:`gate_ranks`.
        members: Expert indices of S (non-empty).
        top_k: Experts kept per prompt; None (or ≥ |S|) keeps all of S.

    Returns:
        ``[P, min(top_k, |S|)]`` expert indices (a set per row, in no particular order).
    """
    rank = np.asarray(ranks)
    chosen_from = np.asarray(members, dtype=np.int64)
    if chosen_from.size == 0:
        raise ValueError("subset_mask selects no expert")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    keep = chosen_from.size if top_k is None else min(top_k, chosen_from.size)
    member_ranks = rank[:, chosen_from]  # ranks are distinct within a row: no ties left
    if keep == chosen_from.size:
        local = np.argsort(member_ranks, axis=1)
    elif keep == 1:
        local = np.argmin(member_ranks, axis=1)[:, None]
    else:
        local = np.argpartition(member_ranks, keep - 1, axis=1)[:, :keep]
    out: IntArray = chosen_from[local]
    return out


def top_k_mask(logits: npt.ArrayLike, subset_mask: npt.ArrayLike, top_k: int | None) -> BoolArray:
    """``[P, N]`` booleans: True for the experts of :func:`top_k_members`."""
    scores = np.asarray(logits, dtype=np.float64)
    mask = np.asarray(subset_mask, dtype=np.bool_)
    if scores.ndim != 2 or mask.shape != (scores.shape[1],):
        raise ValueError(f"subset_mask must have shape ({scores.shape[-1]},), got {mask.shape}")
    chosen = top_k_members(gate_ranks(scores), np.flatnonzero(mask), top_k)
    keep = np.zeros(scores.shape, dtype=np.bool_)
    np.put_along_axis(keep, chosen, True, axis=1)
    return keep


def gate_weights(
    logits: npt.ArrayLike, subset_mask: npt.ArrayLike, top_k: int | None
) -> FloatArray:
    """Softmax of the logits over the top-k of S, 0 elsewhere (``[P, N]``, rows sum to 1)."""
    scores = np.asarray(logits, dtype=np.float64)
    keep = top_k_mask(scores, subset_mask, top_k)
    return softmax_kept(scores, keep)


def softmax_kept(logits: npt.ArrayLike, keep: npt.ArrayLike) -> FloatArray:
    """Softmax of each row's kept logits (weights renormalised over K), 0 elsewhere."""
    scores = np.asarray(logits, dtype=np.float64)
    kept_mask = np.asarray(keep, dtype=np.bool_)
    kept = np.where(kept_mask, scores, -np.inf)
    kept = kept - kept.max(axis=1, keepdims=True)
    raw = np.where(kept_mask, np.exp(kept), 0.0)
    out: FloatArray = raw / raw.sum(axis=1, keepdims=True)
    return out


def option_mask(n_options: npt.ArrayLike, width: int) -> BoolArray:
    """``[P, O]`` booleans: True for the real (not padded) options of each prompt."""
    counts = np.asarray(n_options, dtype=np.int64)
    out: BoolArray = np.arange(width)[None, :] < counts[:, None]
    return out


def category_index(categories: Sequence[str], prompt_categories: Sequence[str | None]) -> IntArray:
    """Each prompt's row among ``categories``; ``len(categories)`` for unknown or none."""
    index = {c: i for i, c in enumerate(categories)}
    unknown = len(categories)
    return np.array([index.get(c or "", unknown) for c in prompt_categories], dtype=np.int64)


@dataclass(frozen=True, slots=True)
class LinearPool:
    """The paper's weighted mixture of the experts' option distributions."""

    name: RuleName = "linear"

    def fuse(
        self,
        weights: npt.ArrayLike,
        option_probs: npt.ArrayLike,
        n_options: npt.ArrayLike | None = None,
        category_rows: npt.ArrayLike | None = None,
        experts: npt.ArrayLike | None = None,
    ) -> FloatArray:
        """``[P, O]`` fused distributions; experts with weight 0 are ignored.

        Args:
            weights: ``[P, M]`` gate weights of the M columns of ``option_probs``.
            option_probs: ``[P, M, O]`` the experts' option distributions.
            n_options: ``[P]`` real options per prompt (default: all O).
            category_rows: ``[P]`` parameter rows (unused by the linear pool).
            experts: ``[P, M]`` or ``[M]`` expert index of each column (default: column m is
                expert m); lets callers pass only the experts that answered.
        """
        w, probs, valid, _, _ = _check(
            weights, option_probs, n_options, category_rows, experts, None
        )
        fused = np.einsum("pn,pno->po", w, probs)
        if n_options is not None:
            fused = np.where(valid, fused, 0.0)
        total = fused.sum(axis=1, keepdims=True)
        if np.all(total > 0):
            out: FloatArray = fused / total
            return out
        # A prompt whose weighted experts all gave every option 0 gets the uniform answer.
        uniform = valid / np.maximum(valid.sum(axis=1, keepdims=True), 1)
        out = np.where(total > 0, fused / np.where(total > 0, total, 1.0), uniform)
        return out


@dataclass(frozen=True, eq=False)
class LogLinearPool:
    """Product of calibrated experts (module docstring); parameters are read-only arrays.

    Attributes:
        categories: The categories of rows 0..C-1; row C is the all-category fit.
        temperature: ``[C+1, N]`` a[c, n] (multiplies log f).
        option_bias: ``[C+1, N, B]`` b[c, n, y] for the first B options (0 beyond).
        expert_weight: ``[C+1, N]`` β[c, n] ≥ 0.
        gate_power: γ: 0 ignores the gate's weights inside K, 1 scales β by |K|·w_n.
        raw_when_alone: ``[N]`` booleans: an expert that answers a prompt alone gives its raw
            distribution instead of its calibrated one (calibration fitted for pooling need
            not help an expert on its own); None: never.
    """

    categories: tuple[str, ...]
    temperature: FloatArray
    option_bias: FloatArray
    expert_weight: FloatArray
    gate_power: float = 0.0
    raw_when_alone: BoolArray | None = None
    name: RuleName = field(default="log-linear")

    def __post_init__(self) -> None:
        rows = len(self.categories) + 1
        a = np.array(self.temperature, dtype=np.float64)
        b = np.array(self.option_bias, dtype=np.float64)
        beta = np.array(self.expert_weight, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] != rows:
            raise ValueError(f"temperature must be [{rows}, N], got shape {a.shape}")
        if beta.shape != a.shape:
            raise ValueError(f"expert_weight must have shape {a.shape}, got {beta.shape}")
        if b.ndim != 3 or b.shape[:2] != a.shape:
            raise ValueError(f"option_bias must be [{rows}, {a.shape[1]}, B], got {b.shape}")
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b)) and np.all(np.isfinite(beta))):
            raise ValueError("log-linear pool parameters must be finite")
        if beta.min(initial=0.0) < 0:
            raise ValueError("expert_weight must be >= 0")
        if not math.isfinite(self.gate_power) or self.gate_power < 0:
            raise ValueError(f"gate_power must be >= 0, got {self.gate_power}")
        raw = (
            np.zeros(a.shape[1], dtype=np.bool_)
            if self.raw_when_alone is None
            else np.array(self.raw_when_alone, dtype=np.bool_)
        )
        if raw.shape != (a.shape[1],):
            raise ValueError(f"raw_when_alone must have shape ({a.shape[1]},), got {raw.shape}")
        arrays = (("temperature", a), ("option_bias", b), ("expert_weight", beta))
        for name, value in (*arrays, ("raw_when_alone", raw)):
            value.setflags(write=False)
            object.__setattr__(self, name, value)

    @property
    def n_experts(self) -> int:
        """N: the experts the parameters cover (the gate's order)."""
        return int(self.temperature.shape[1])

    def restrict(self, columns: Sequence[int]) -> LogLinearPool:
        """The same pool over a subset (or reordering) of its experts, by index."""
        cols = list(columns)
        return LogLinearPool(
            categories=self.categories,
            temperature=self.temperature[:, cols],
            option_bias=self.option_bias[:, cols],
            expert_weight=self.expert_weight[:, cols],
            gate_power=self.gate_power,
            raw_when_alone=None if self.raw_when_alone is None else self.raw_when_alone[cols],
        )

    def category_rows(self, prompt_categories: Sequence[str | None]) -> IntArray:
        """Parameter row of each prompt's category (the all-category row for unknown ones)."""
        return category_index(self.categories, prompt_categories)

    def calibrated_log_probs(
        self,
        option_probs: npt.ArrayLike,
        n_options: npt.ArrayLike | None = None,
        category_rows: npt.ArrayLike | None = None,
        experts: npt.ArrayLike | None = None,
    ) -> FloatArray:
        """``[P, M, O]`` log q_n(y|x) (arguments as in :meth:`fuse`); padded options: -inf."""
        _, probs, valid, rows, cols = _check(
            None, option_probs, n_options, category_rows, experts, self
        )
        return _calibrate(self, probs, valid, rows, cols)

    def fuse(
        self,
        weights: npt.ArrayLike,
        option_probs: npt.ArrayLike,
        n_options: npt.ArrayLike | None = None,
        category_rows: npt.ArrayLike | None = None,
        experts: npt.ArrayLike | None = None,
    ) -> FloatArray:
        """``[P, O]`` fused distributions over the experts with weight > 0.

        Arguments as in :meth:`LinearPool.fuse`; ``category_rows`` (default: the
        all-category row) picks each prompt's parameter row.
        """
        w, probs, valid, rows, cols = _check(
            weights, option_probs, n_options, category_rows, experts, self
        )
        log_q = _calibrate(self, probs, valid, rows, cols)
        active = w > 0
        scale = np.where(active, self.expert_weight[rows[:, None], cols], 0.0)
        if self.gate_power:
            size = active.sum(axis=1, keepdims=True)
            scale = scale * np.where(active, (size * w) ** self.gate_power, 0.0)
        scores = np.einsum("pn,pno->po", scale, np.where(valid[:, None, :], log_q, 0.0))
        fused = _softmax_valid(scores, valid)
        alone = active.sum(axis=1) == 1
        if self.raw_when_alone is not None and alone.any():
            column = np.argmax(active, axis=1)
            expert = cols[np.arange(len(cols)), column]
            raw = alone & self.raw_when_alone[expert]
            if raw.any():
                own = np.where(valid, probs[np.arange(len(cols)), column], 0.0)
                total = own.sum(axis=1, keepdims=True)
                own = np.where(total > 0, own / np.where(total > 0, total, 1.0), valid / 1.0)
                fused = np.where(raw[:, None], own / own.sum(axis=1, keepdims=True), fused)
        return fused


FusionRule = LinearPool | LogLinearPool
"""A fine-level fusion rule; both have ``name`` and ``fuse(weights, option_probs, ...)``."""


def _check(
    weights: npt.ArrayLike | None,
    option_probs: npt.ArrayLike,
    n_options: npt.ArrayLike | None,
    category_rows: npt.ArrayLike | None,
    experts: npt.ArrayLike | None,
    pool: LogLinearPool | None,
) -> tuple[FloatArray, FloatArray, BoolArray, IntArray, IntArray]:
    probs = np.asarray(option_probs, dtype=np.float64)
    if probs.ndim != 3:
        raise ValueError(f"option_probs must be [P, N, O], got shape {probs.shape}")
    n_prompts, n_experts, width = probs.shape
    w = (
        np.ones((n_prompts, n_experts))
        if weights is None
        else np.asarray(weights, dtype=np.float64)
    )
    if w.shape != (n_prompts, n_experts):
        raise ValueError(f"weights {w.shape} do not match option_probs {probs.shape}")
    counts = _per_prompt(n_options, n_prompts, width, 1, width, "n_options")
    if experts is None:
        if pool is not None and n_experts != pool.n_experts:
            raise ValueError(f"option_probs has {n_experts} experts, the pool has {pool.n_experts}")
        cols = np.broadcast_to(np.arange(n_experts, dtype=np.int64), (n_prompts, n_experts))
    else:
        cols = np.broadcast_to(np.asarray(experts, dtype=np.int64), (n_prompts, n_experts))
        if pool is not None and cols.size and (cols.min() < 0 or cols.max() >= pool.n_experts):
            raise ValueError(f"experts must be indices in [0, {pool.n_experts})")
    unknown = 0 if pool is None else len(pool.categories)
    rows = _per_prompt(category_rows, n_prompts, unknown, 0, unknown, "category_rows")
    return w, probs, option_mask(counts, width), rows, cols


def _per_prompt(
    values: npt.ArrayLike | None, n_prompts: int, default: int, low: int, high: int, name: str
) -> IntArray:
    """One integer per prompt in [low, high], or ``default`` for every prompt when None."""
    if values is None:
        return np.full(n_prompts, default, dtype=np.int64)
    out = np.asarray(values, dtype=np.int64)
    if out.shape != (n_prompts,) or (n_prompts and (out.min() < low or out.max() > high)):
        raise ValueError(f"{name} must be {n_prompts} integers in [{low}, {high}]")
    return out


def _calibrate(
    pool: LogLinearPool, probs: FloatArray, valid: BoolArray, rows: IntArray, cols: IntArray
) -> FloatArray:
    width = probs.shape[2]
    log_f = np.log(np.maximum(probs, PROBABILITY_FLOOR))
    bias = pool.option_bias[rows[:, None], cols]  # [P, M, B]
    if bias.shape[2] < width:
        bias = np.pad(bias, ((0, 0), (0, 0), (0, width - bias.shape[2])))
    temperature = pool.temperature[rows[:, None], cols]
    z = temperature[:, :, None] * log_f + bias[:, :, :width]
    z = np.where(valid[:, None, :], z, -np.inf)
    peak = z.max(axis=2, keepdims=True)
    out: FloatArray = z - (peak + np.log(np.exp(z - peak).sum(axis=2, keepdims=True)))
    return out


def _softmax_valid(scores: FloatArray, valid: BoolArray) -> FloatArray:
    z = np.where(valid, scores, -np.inf)
    z = z - z.max(axis=1, keepdims=True)
    raw = np.where(valid, np.exp(z), 0.0)
    out: FloatArray = raw / raw.sum(axis=1, keepdims=True)
    return out


def fused_answers(
    rule: FusionRule,
    logits: npt.ArrayLike,
    subset_mask: npt.ArrayLike,
    top_k: int | None,
    option_probs: npt.ArrayLike,
    n_options: npt.ArrayLike | None = None,
    category_rows: npt.ArrayLike | None = None,
) -> tuple[FloatArray, FloatArray]:
    """The whole fine level on recorded answers: gate weights ``[P, N]`` and fused ``[P, O]``."""
    weights = gate_weights(logits, subset_mask, top_k)
    return weights, rule.fuse(weights, option_probs, n_options, category_rows)


def cheapest_first(chosen: npt.ArrayLike, cost: npt.ArrayLike) -> IntArray:
    """Each prompt's experts in run order for early exit: cheapest first (ties: lower index).

    Args:
        chosen: ``[P, k]`` expert indices (from :func:`top_k_members`).
        cost: ``[N]`` each expert's cost, or ``[P, N]`` one row per prompt
            (:meth:`ExitOrder.order`).
    """
    members = np.asarray(chosen, dtype=np.int64)
    price = np.asarray(cost, dtype=np.float64)
    if price.ndim == 1:
        price = np.broadcast_to(price, (members.shape[0], price.shape[0]))
    if price.ndim != 2 or price.shape[0] != members.shape[0]:
        raise ValueError(f"cost must be [N] or [{members.shape[0]}, N], got {np.shape(cost)}")
    order = np.lexsort((members, np.take_along_axis(price, members, axis=1)), axis=1)
    out: IntArray = np.take_along_axis(members, order, axis=1)
    return out


@dataclass(frozen=True, eq=False)
class ExitOrder:
    """Early exit's stage order and costs: per category, each expert's joules per final answer.

    ``priority_j[c, n]`` is expert n's mean energy per request in category c divided by the
    share of prompts on which its answer alone is already the answer of all of K (learnt on
    the training split, ``orchestrator.exit_training.fit_exit_order``). Running the expert with
    the lowest figure first minimises the expected joules of a two-stage exit (an exchange
    argument: A before B iff p_A / e_A > p_B / e_B), so a cheap expert that is rarely final can
    go after a dearer one that usually is. Any S restricts it: the order is among whoever is in
    K. A single row with no categories is the plain cheapest-first order by planned energy.

    With ``energy_j`` (each expert's mean joules per request in each category) and
    ``reference_j`` (a mean training prompt's joules for all of K) it also says what the rest
    of K would cost on a given prompt (:meth:`rest_share`), which the stop score weighs.

    Attributes:
        categories: Categories of rows 0..C-1; row C is for unknown ones.
        priority_j: ``[C+1, N]`` non-negative figures (J per final answer), read-only.
        energy_j: ``[C+1, N]`` positive mean joules per request, read-only; None: unknown.
        reference_j: Positive joules of all of K on a mean training prompt; None: unknown.
    """

    categories: tuple[str, ...]
    priority_j: FloatArray
    energy_j: FloatArray | None = None
    reference_j: float | None = None

    def __post_init__(self) -> None:
        priority = np.array(self.priority_j, dtype=np.float64)
        rows = len(self.categories) + 1
        if priority.ndim != 2 or priority.shape[0] != rows:
            raise ValueError(f"exit priority_j must be [{rows}, N], got shape {priority.shape}")
        if not np.all(np.isfinite(priority)) or np.any(priority < 0):
            raise ValueError("exit priority_j must be finite and non-negative")
        priority.setflags(write=False)
        object.__setattr__(self, "priority_j", priority)
        if (self.energy_j is None) != (self.reference_j is None):
            raise ValueError("exit energy_j and reference_j come together")
        if self.energy_j is not None and self.reference_j is not None:
            energy = np.array(self.energy_j, dtype=np.float64)
            if energy.shape != priority.shape:
                raise ValueError(
                    f"exit energy_j must be {list(priority.shape)}, got shape {energy.shape}"
                )
            if not np.all(np.isfinite(energy)) or np.any(energy <= 0):
                raise ValueError("exit energy_j must be finite and positive")
            reference = float(self.reference_j)
            if not math.isfinite(reference) or reference <= 0:
                raise ValueError(f"exit reference_j must be finite and positive, got {reference}")
            energy.setflags(write=False)
            object.__setattr__(self, "energy_j", energy)
            object.__setattr__(self, "reference_j", reference)

    @classmethod
    def cheapest(cls, cost_j: npt.ArrayLike) -> ExitOrder:
        """Plain cheapest-first by each expert's planned energy ``[N]`` (J), for any category."""
        return cls((), np.asarray(cost_j, dtype=np.float64)[None, :])

    @property
    def n_experts(self) -> int:
        """N: the experts (the gate's order) it covers."""
        return int(self.priority_j.shape[1])

    def costs(self, prompt_categories: Sequence[str | None]) -> FloatArray:
        """``[P, N]`` each prompt's row of figures (row C for unknown categories)."""
        rows = category_index(self.categories, prompt_categories)
        out: FloatArray = self.priority_j[rows]
        return out

    def order(self, chosen: npt.ArrayLike, prompt_categories: Sequence[str | None]) -> IntArray:
        """``[P, k]`` each prompt's chosen experts in run order (lowest figure first)."""
        return cheapest_first(chosen, self.costs(prompt_categories))

    def rest_share(
        self,
        order: npt.ArrayLike,
        stage: int,
        spent_j: npt.ArrayLike,
        prompt_categories: Sequence[str | None],
    ) -> FloatArray | None:
        """``[P]`` the joules the experts after ``stage`` would spend, per :attr:`reference_j`.

        Each pending expert's mean joules in the prompt's category, times how much this prompt
        cost the experts that answered against their means (the experts' joules on a prompt
        move together: its tokens set them; 1 where none of them reported energy).

        Args:
            order: ``[P, k]`` expert indices in run order.
            stage: How many of them answered (1..k).
            spent_j: ``[P, N]`` joules each expert spent on each prompt (NaN: unknown; only
                the answered experts' are read).
            prompt_categories: Each prompt's category.

        Returns:
            None when the order knows no energies (:attr:`energy_j` is None).
        """
        if self.energy_j is None or self.reference_j is None:
            return None
        run_order = np.asarray(order, dtype=np.int64)
        mean_j = np.take_along_axis(
            self.energy_j[category_index(self.categories, prompt_categories)], run_order, axis=1
        )
        answered_j = np.take_along_axis(
            np.asarray(spent_j, dtype=np.float64), run_order[:, :stage], axis=1
        )
        known = np.isfinite(answered_j)
        expected_j = np.where(known, mean_j[:, :stage], 0.0).sum(axis=1)
        actual_j = np.where(known, answered_j, 0.0).sum(axis=1)
        scale = np.where(known.any(axis=1), actual_j / np.maximum(expected_j, 1e-300), 1.0)
        out: FloatArray = scale * mean_j[:, stage:].sum(axis=1) / self.reference_j
        return out


AGREEMENT_FLOOR = 1e-12
"""Fused probabilities are clipped at this floor before the log (the agreement features)."""


def agreement_features(
    fused: npt.ArrayLike,
    order: npt.ArrayLike,
    stage: int,
    category_rows: npt.ArrayLike,
    n_rows: int,
    n_experts: int,
) -> FloatArray:
    """``[P, F]`` what :class:`AgreementModel` reads about a stage's fused answers.

    ``order`` (``[P, k]`` expert indices in run order) says who answered (its first ``stage``
    columns) and who would run next. Per prompt: 1 (intercept); the log-margin
    m = log p₁ − log p₂ of the top two options; the top probability p₁; the share
    r = 1 − stage/k of K still to run and r·m; the category's one-hot (``n_rows`` rows, the last
    for unknown categories) and the one-hot times m (a margin slope per category); which of the
    ``n_experts`` experts answered, and which are still to run.
    """
    probs = np.asarray(fused, dtype=np.float64)
    run_order = np.asarray(order, dtype=np.int64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"fused must be [P, O] with O >= 2, got shape {probs.shape}")
    if run_order.ndim != 2 or run_order.shape[0] != probs.shape[0]:
        raise ValueError(f"order must be [{probs.shape[0]}, k], got shape {run_order.shape}")
    stages = run_order.shape[1]
    if not 1 <= stage <= stages:
        raise ValueError(f"stage must be in [1, {stages}], got {stage}")
    n_prompts = len(probs)
    top = np.sort(np.log(np.maximum(probs, AGREEMENT_FLOOR)), axis=1)
    margin = top[:, -1] - top[:, -2]
    rest = np.full(n_prompts, 1.0 - stage / stages)
    onehot = np.zeros((n_prompts, n_rows))
    onehot[np.arange(n_prompts), np.asarray(category_rows, dtype=np.int64)] = 1.0
    answered = np.zeros((n_prompts, n_experts))
    pending = np.zeros((n_prompts, n_experts))
    np.put_along_axis(answered, run_order[:, :stage], 1.0, axis=1)
    if stage < stages:
        np.put_along_axis(pending, run_order[:, stage:], 1.0, axis=1)
    columns = [np.ones(n_prompts), margin, probs.max(axis=1), rest, rest * margin]
    return np.concatenate(
        [np.stack(columns, axis=1), onehot, onehot * margin[:, None], answered, pending], axis=1
    )


def agreement_width(n_categories: int, n_experts: int) -> int:
    """F: the number of :func:`agreement_features` (``n_categories`` known categories)."""
    return 5 + 2 * (n_categories + 1) + 2 * n_experts


@dataclass(frozen=True, eq=False)
class AgreementModel:
    """Early exit's stop score: P(the rest of K leaves the fused answer as it is).

    A logistic model over :func:`agreement_features`, trained once on the training split over
    every subset S and top_k (stages in the :class:`ExitOrder`, each labelled by whether its
    fused answer is the answer of all of K), so it serves any S the coarse level picks.

    Attributes:
        categories: Categories of rows 0..C-1 of the one-hot; row C is for unknown ones.
        n_experts: N, the experts (the gate's order) the answered/pending indicators cover.
        coef: ``[F]`` weights (:func:`agreement_width`), read-only.
    """

    categories: tuple[str, ...]
    n_experts: int
    coef: FloatArray

    def __post_init__(self) -> None:
        coef = np.array(self.coef, dtype=np.float64)
        width = agreement_width(len(self.categories), self.n_experts)
        if coef.shape != (width,) or not np.all(np.isfinite(coef)):
            raise ValueError(f"agreement coef must be {width} finite numbers, got {coef.shape}")
        coef.setflags(write=False)
        object.__setattr__(self, "coef", coef)

    def category_rows(self, prompt_categories: Sequence[str | None]) -> IntArray:
        """One-hot row of each prompt's category (row C for unknown ones)."""
        return category_index(self.categories, prompt_categories)

    def agreement(
        self, fused: npt.ArrayLike, order: npt.ArrayLike, stage: int, category_rows: npt.ArrayLike
    ) -> FloatArray:
        """``[P]`` the modelled probability that the fused answer after ``stage`` is final."""
        x = agreement_features(
            fused, order, stage, category_rows, len(self.categories) + 1, self.n_experts
        )
        out: FloatArray = 1.0 / (1.0 + np.exp(-np.clip(x @ self.coef, -500.0, 500.0)))
        return out


def exit_scores(
    fused: npt.ArrayLike,
    order: npt.ArrayLike,
    stage: int,
    model: AgreementModel | None = None,
    model_rows: npt.ArrayLike | None = None,
    rest_share: npt.ArrayLike | None = None,
) -> FloatArray:
    """``[P]`` early exit's stop score once the first ``stage`` experts of ``order`` answered.

    p is the agreement ``model``'s probability (``model_rows``: its category rows), or without
    one the fused answer's confidence (its top probability). With ``rest_share`` (``[P]``, what
    the rest of K would spend on each prompt, :meth:`ExitOrder.rest_share`) the score is
    1 − (1 − p) / rest_share before the last stage (a prompt whose rest costs nothing never
    stops early), else p. A prompt stops once its score reaches the threshold.
    """
    probs = np.asarray(fused, dtype=np.float64)
    if probs.shape[1] < 2:  # one option: nothing left to decide
        return np.ones(len(probs))
    if model is None:
        p: FloatArray = probs.max(axis=1)
    else:
        rows = (
            np.full(len(probs), len(model.categories), dtype=np.int64)
            if model_rows is None
            else model_rows
        )
        p = model.agreement(probs, order, stage, rows)
    if rest_share is None or stage >= np.shape(order)[1]:
        return p
    share = np.asarray(rest_share, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = 1.0 - (1.0 - p) / share
    out: FloatArray = np.where(share > 0, scaled, -np.inf)
    return out


def staged_answers(
    rule: FusionRule,
    order: npt.ArrayLike,
    logits: npt.ArrayLike,
    option_probs: npt.ArrayLike,
    n_options: npt.ArrayLike | None = None,
    category_rows: npt.ArrayLike | None = None,
) -> list[FloatArray]:
    """Each stage's fused answers ``[P, O]`` when the experts of ``order`` answer in turn.

    Stage j fuses the first j experts of each prompt's ``order`` (``[P, k]``) with their gate
    weights renormalised over them, as when an expert drops out; the last stage is all of K.
    """
    run_order = np.asarray(order, dtype=np.int64)
    scores = np.asarray(logits, dtype=np.float64)
    probs = np.asarray(option_probs, dtype=np.float64)
    rows = np.arange(run_order.shape[0])
    out = []
    for stage in range(1, run_order.shape[1] + 1):
        members = run_order[:, :stage]
        weights = softmax_kept(scores[rows[:, None], members], np.ones(members.shape, bool))
        out.append(
            rule.fuse(weights, probs[rows[:, None], members], n_options, category_rows, members)
        )
    return out


def early_exit(
    rule: FusionRule,
    order: npt.ArrayLike,
    logits: npt.ArrayLike,
    option_probs: npt.ArrayLike,
    threshold: float,
    n_options: npt.ArrayLike | None = None,
    category_rows: npt.ArrayLike | None = None,
    model: AgreementModel | None = None,
    model_rows: npt.ArrayLike | None = None,
    *,
    exit_order: ExitOrder | None = None,
    energy_j: npt.ArrayLike | None = None,
    prompt_categories: Sequence[str | None] | None = None,
) -> tuple[FloatArray, IntArray]:
    """Dynamic k: experts answer in ``order``; stop once the stop score reaches ``threshold``.

    After each stage the answers so far are fused (gate weights renormalised over them, as when
    an expert drops out); the prompt stops at the first stage whose :func:`exit_scores` (the
    agreement ``model``'s, else the fused confidence; weighed against what the rest of K would
    cost when ``exit_order`` knows energies and ``energy_j`` says what the answered experts
    spent) is at least ``threshold``, or after the last expert.

    Args:
        rule: The fusion rule.
        order: ``[P, k]`` expert indices in run order (:meth:`ExitOrder.order`).
        logits: ``[P, N]`` gate logits.
        option_probs: ``[P, N, O]``.
        threshold: Confidence to stop at; > 1 never stops early.
        n_options: ``[P]`` real options per prompt.
        category_rows: ``[P]`` parameter rows of a log-linear pool.
        model: The agreement model (None: stop on the fused confidence).
        model_rows: ``[P]`` the model's category rows (:meth:`AgreementModel.category_rows`).
        exit_order: The order's costs (:meth:`ExitOrder.rest_share`); None: not weighed.
        energy_j: ``[P, N]`` each expert's recorded joules per prompt (NaN: unknown).
        prompt_categories: Each prompt's category (for the order's cost rows).

    Returns:
        ``[P, O]`` fused answers and ``[P]`` how many experts ran (1..k).
    """
    answers = staged_answers(rule, order, logits, option_probs, n_options, category_rows)
    n_prompts, stages = np.shape(order)
    result = np.zeros_like(answers[0])
    ran = np.full(n_prompts, stages, dtype=np.int64)
    open_rows = np.ones(n_prompts, dtype=bool)
    for stage, fused in enumerate(answers, start=1):
        share = None
        if exit_order is not None and energy_j is not None and prompt_categories is not None:
            share = exit_order.rest_share(order, stage, energy_j, prompt_categories)
        score = exit_scores(fused, order, stage, model, model_rows, share)
        done = open_rows & ((score >= threshold) | (stage == stages))
        result[done] = fused[done]
        ran[done] = stage
        open_rows &= ~done
    return result, ran
