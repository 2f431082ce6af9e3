"""The optimality-preserving check (docs/method.md §3.4, §3.5): an experiment on a trained gate.

For each subset S, the train-once full-set gate restricted to S against a gate trained on S
alone (same configuration), on the training split and optionally a held-out one.
``moe2 gate-report`` prints it for a finished sweep.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
import numpy.typing as npt

from optimizer.fine import PROBABILITY_FLOOR, LogLinearPool
from orchestrator.gate import (
    FloatArray,
    Gate,
    GateConfig,
    IntArray,
    Split,
    Variant,
    check_responses,
)
from orchestrator.gate_training import train_gate
from testbed.evaluation import SplitData
from testbed.training import fit_pool

logger = logging.getLogger(__name__)


def fused_accuracy(
    gate: Gate,
    features: npt.ArrayLike,
    option_probs: npt.ArrayLike,
    labels: npt.ArrayLike,
    subset_mask: npt.ArrayLike | None = None,
    top_k: int | None = None,
) -> float:
    """Accuracy of argmax of the top-k gated fusion restricted to S (ties: lowest option)."""
    probs, label_idx = check_responses(option_probs, labels)
    fused = gate.fuse(gate.weights(features, subset_mask, top_k), probs)
    return float(np.mean(np.argmax(fused, axis=1) == label_idx))


@dataclass(frozen=True, slots=True)
class OptimalityRow:
    """One subset of the optimality-preserving check (docs/method.md §3.4).

    Attributes:
        subset: Expert indices in S.
        experts: Their names.
        split: ``"train"`` or ``"heldout"``.
        restricted_loss: L(S, θ*): the train-once full-set gate, renormalised over S.
        retrained_loss: L(S, θ_S): a gate trained on S only (same config).
        gap: ``restricted_loss - retrained_loss``; ≈ 0 when the property holds. On the
            training split it is ≥ 0 up to optimiser tolerance and the L2 term (both gates
            minimise loss + L2, the reported loss excludes L2).
        restricted_accuracy: Fused top-k accuracy of the restricted full-set gate.
        retrained_accuracy: Same for the retrained gate.
    """

    subset: tuple[int, ...]
    experts: tuple[str, ...]
    split: Split
    restricted_loss: float
    retrained_loss: float
    gap: float
    restricted_accuracy: float
    retrained_accuracy: float


@dataclass(frozen=True, slots=True)
class OptimalityReport:
    """Rows of :func:`optimality_report` with summaries.

    Attributes:
        rows: One row per (subset, split).
        variant: Loss variant of both gates (and of the losses reported).
        top_k: Top-k used for the accuracies (None: all of S).
    """

    rows: tuple[OptimalityRow, ...]
    variant: Variant
    top_k: int | None

    def gaps(self, split: Split = "train") -> FloatArray:
        """Gaps of the rows of one split."""
        return np.array([r.gap for r in self.rows if r.split == split], dtype=np.float64)

    def mean_gap(self, split: Split = "train") -> float:
        """Mean loss gap over subsets (NaN when the split is absent)."""
        gaps = self.gaps(split)
        return float(gaps.mean()) if gaps.size else math.nan

    def max_gap(self, split: Split = "train") -> float:
        """Largest loss gap over subsets (NaN when the split is absent)."""
        gaps = self.gaps(split)
        return float(gaps.max()) if gaps.size else math.nan

    def to_text(self) -> str:
        """A plain-text table plus per-split summary lines."""
        lines = [
            f"optimality-preserving check ({self.variant} loss, top_k={self.top_k or 'all'})",
            f"{'split':8} {'subset':24} {'L(S,θ*)':>10} {'L(S,θ_S)':>10} {'gap':>10} "
            f"{'acc θ*':>8} {'acc θ_S':>8}",
        ]
        for r in self.rows:
            lines.append(
                f"{r.split:8} {','.join(r.experts)[:24]:24} {r.restricted_loss:10.5f} "
                f"{r.retrained_loss:10.5f} {r.gap:10.2e} {r.restricted_accuracy:8.3f} "
                f"{r.retrained_accuracy:8.3f}"
            )
        for split in get_args(Split):
            if any(r.split == split for r in self.rows):
                lines.append(
                    f"{split}: mean gap {self.mean_gap(split):.2e}, "
                    f"max gap {self.max_gap(split):.2e}"
                )
        return "\n".join(lines)


def optimality_report(
    features: npt.ArrayLike,
    option_probs: npt.ArrayLike,
    labels: npt.ArrayLike,
    subsets: Iterable[Sequence[int]],
    *,
    experts: Sequence[str] | None = None,
    config: GateConfig | None = None,
    full_gate: Gate | None = None,
    top_k: int | None = None,
    heldout: tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike] | None = None,
) -> OptimalityReport:
    """Checks the optimality-preserving property empirically (docs/method.md §3.4, §3.5).

    For each subset S: the loss of the train-once full-set gate restricted to S (renormalised
    softmax) against the loss of a gate retrained on S alone with the same config, and the
    fused accuracy of both. The training split is always reported; ``heldout`` adds the same
    rows on held-out prompts (there the gap may have either sign).

    Args:
        features: ``[P, d]`` training features.
        option_probs: ``[P, N, O]`` training responses.
        labels: ``[P]`` training labels.
        subsets: Subsets as expert-index sequences (each non-empty).
        experts: Expert names (default ``e0``, ``e1``, …).
        config: Training config for the retrained gates (and the full gate if it is trained
            here).
        full_gate: A full-set gate trained on the same data; trained here if None.
        top_k: Top-k for the accuracies (None: all of S); losses never use top-k.
        heldout: Optional ``(features, option_probs, labels)`` of a held-out split.

    Returns:
        The report.
    """
    cfg = config if config is not None else GateConfig()
    probs, label_idx = check_responses(option_probs, labels)
    x = np.asarray(features, dtype=np.float64)
    n_experts = probs.shape[1]
    names = tuple(experts) if experts is not None else tuple(f"e{i}" for i in range(n_experts))
    if full_gate is None:
        full_gate = train_gate(x, probs, label_idx, names, config=cfg)
    if len(full_gate.experts) != n_experts:
        raise ValueError("full_gate has a different number of experts than option_probs")
    splits: list[tuple[Split, FloatArray, FloatArray, IntArray]] = [("train", x, probs, label_idx)]
    if heldout is not None:
        h_probs, h_labels = check_responses(heldout[1], heldout[2])
        splits.append(("heldout", np.asarray(heldout[0], dtype=np.float64), h_probs, h_labels))
    rows: list[OptimalityRow] = []
    for subset in subsets:
        members = tuple(sorted({int(i) for i in subset}))
        if not members or members[0] < 0 or members[-1] >= n_experts:
            raise ValueError(
                f"subset {tuple(subset)} must be non-empty indices in [0, {n_experts})"
            )
        mask = np.zeros(n_experts, dtype=np.bool_)
        mask[list(members)] = True
        sub_names = tuple(names[i] for i in members)
        retrained = train_gate(x, probs[:, mask, :], label_idx, sub_names, config=cfg)
        for split, sx, sprobs, slabels in splits:
            restricted_loss = full_gate.subset_loss(sx, sprobs, slabels, mask, variant=cfg.variant)
            retrained_loss = retrained.subset_loss(
                sx, sprobs[:, mask, :], slabels, variant=cfg.variant
            )
            rows.append(
                OptimalityRow(
                    subset=members,
                    experts=sub_names,
                    split=split,
                    restricted_loss=restricted_loss,
                    retrained_loss=retrained_loss,
                    gap=restricted_loss - retrained_loss,
                    restricted_accuracy=fused_accuracy(full_gate, sx, sprobs, slabels, mask, top_k),
                    retrained_accuracy=fused_accuracy(
                        retrained, sx, sprobs[:, mask, :], slabels, None, top_k
                    ),
                )
            )
    report = OptimalityReport(rows=tuple(rows), variant=cfg.variant, top_k=top_k)
    logger.info(
        "optimality check over %d subsets: train mean gap %.3g, max gap %.3g",
        len({r.subset for r in rows}),
        report.mean_gap("train"),
        report.max_gap("train"),
    )
    return report


def _fused_scores(pool: LogLinearPool, split: SplitData, members: list[int]) -> tuple[float, float]:
    """NLL (nats) and accuracy of the pool over every expert of S on one split."""
    probs = split.option_probs[:, members]
    fused = pool.fuse(
        np.full((split.size, len(members)), 1.0 / len(members)),  # equal gate weights over S
        probs,
        split.n_options,
        split.category_rows(pool),
    )
    picked = fused[np.arange(split.size), split.labels]
    nll = float(-np.mean(np.log(np.maximum(picked, PROBABILITY_FLOOR))))
    return nll, float(np.mean(fused.argmax(axis=1) == split.labels))


def pool_report(
    out_dir: Path,
    pool: LogLinearPool,
    data: dict[str, SplitData],
    experts: list[str],
    categories: list[str],
    subsets: list[tuple[int, ...]],
    seed: int,
) -> list[dict[str, Any]]:
    """The pool trained once and restricted to S against the pool refitted on S alone."""
    choice_file = out_dir / "fine_level.json"
    l2 = 0.03
    if choice_file.is_file():
        l2 = float(json.loads(choice_file.read_text())["choice"].get("pool_l2", l2))
    train = data["train"]
    rows = []
    for subset in subsets:
        members = list(subset)
        refitted = fit_pool(
            dataclasses.replace(train, option_probs=train.option_probs[:, members]),
            categories,
            l2=l2,
            seed=seed,
        )
        restricted = pool.restrict(members)
        for split_name, split in (("train", train), ("heldout", data["test"])):
            restricted_nll, restricted_accuracy = _fused_scores(restricted, split, members)
            refitted_nll, refitted_accuracy = _fused_scores(refitted, split, members)
            rows.append(
                {
                    "subset": [experts[e] for e in members],
                    "split": split_name,
                    "restricted_nll": restricted_nll,
                    "refitted_nll": refitted_nll,
                    "gap": restricted_nll - refitted_nll,
                    "restricted_accuracy": restricted_accuracy,
                    "refitted_accuracy": refitted_accuracy,
                }
            )
    return rows


def pool_text(rows: list[dict[str, Any]]) -> str:
    """The pool's rows as a table with per-split mean and max gaps."""
    lines = [
        "log-linear pool: weights trained once, restricted to S, vs refitted on S (all of S)",
        f"{'split':8} {'subset':40} {'NLL once':>9} {'NLL refit':>9} {'gap':>9} "
        f"{'acc once':>8} {'acc refit':>9}",
    ]
    for row in rows:
        lines.append(
            f"{row['split']:8} {','.join(row['subset'])[:40]:40} "
            f"{row['restricted_nll']:9.4f} {row['refitted_nll']:9.4f} {row['gap']:9.2e} "
            f"{row['restricted_accuracy']:8.3f} {row['refitted_accuracy']:9.3f}"
        )
    for split in ("train", "heldout"):
        gaps = [r["gap"] for r in rows if r["split"] == split]
        if gaps:
            lines.append(f"{split}: mean gap {np.mean(gaps):.2e}, max gap {max(gaps):.2e}")
    return "\n".join(lines)
