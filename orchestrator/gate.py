"""The MoE² gating head: logits, subset restriction, top-k, fusion, its loss and the gate file.

docs/method.md §3 and §4. The gate maps prompt features x (a prompt embedding, optionally with a
one-hot of the application category) to one logit per expert, h(x; θ) ∈ ℝ^N. For a coarse-level
subset S the weights are the softmax renormalised over S (§3.2), of which the fine level keeps the
top k per prompt and renormalises again (§4.1); expert answers are fused by the gate's fusion
rule, the weighted mixture of their option distributions or a log-linear pool (§4.2).

Training (§3.3) uses the recorded response matrix: for every training prompt, each expert's
normalised distribution over the prompt's answer options, plus the correct option. Two losses:

* ``"posterior"`` (default): the gate is a classifier over experts. Its target is the expert
  posterior q_n(x) ∝ f_n(y|x)^β, the probability expert n gives the correct answer, sharpened
  (β > 1) or softened (β < 1); loss −Σ_n q_n log g_n. This is the variant for which the
  optimality-preserving property (§3.4) holds exactly when the gate can represent q: the target
  for a subset S is q conditioned on S, and softmax restriction is conditioning, so the
  full-set optimum restricted to S is the optimum for S. It is also convex for the linear head.
* ``"mixture"``: the likelihood of the fused prediction, −log Σ_n g_n f_n(y|x). Its gradient
  with respect to the logits is g − r with r_n ∝ g_n f_n(y|x) (the posterior under the current
  gate), so it chases its own posterior and tends to collapse onto one correct expert; the
  property then holds only approximately (§3.4).

Probabilities f_n(y|x) are floored at ``probability_floor`` before use, so an expert that gives
the correct answer probability 0 (hard one-hot answers) does not make a target undefined: a
prompt that every expert in S gets wrong gets the uniform target over S, for S = 𝒩 and for
every subset alike, which keeps the restriction argument intact.

Heads: ``"linear"`` (softmax regression, convex) or ``"mlp"`` (one tanh hidden layer). Both are
trained once (:mod:`orchestrator.gate_training`) with scipy's L-BFGS-B on the analytic gradient,
with an L2 penalty on the weight matrices (not the biases) and a seeded initialisation. The
optimality-preserving check (§3.5) is an experiment of the testbed (:mod:`testbed.optimality`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, cast, get_args

import numpy as np
import numpy.typing as npt
from scipy.special import logsumexp

from edge_node.files import atomic_writer
from optimizer.fine import (
    AgreementModel,
    ExitOrder,
    FusionRule,
    LinearPool,
    LogLinearPool,
    gate_weights,
)

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

Variant = Literal["posterior", "mixture"]
TrainableHead = Literal["linear", "mlp"]
HeadKind = Literal["linear", "mlp", "uniform"]
Split = Literal["train", "heldout"]

GATE_FORMAT_VERSION = 2
"""Version of the gate file layout written by :meth:`Gate.save`; bumped on any change.

Version 2 added the fusion rule (``fusion`` in the metadata, ``fusion_*`` arrays); version 1
files are still read, as gates with the linear mixture."""

_READABLE_VERSIONS = (1, 2)
_FUSION_PREFIX = "fusion_"

_METADATA_KEY = "metadata_json"
_PARAM_PREFIX = "param_"
_HEAD_PARAMS: Mapping[HeadKind, tuple[str, ...]] = {
    "linear": ("w", "b"),
    "mlp": ("w1", "b1", "w2", "b2"),
    "uniform": (),
}
HEAD_WEIGHT_MATRICES: Mapping[HeadKind, tuple[str, ...]] = {
    "linear": ("w",),
    "mlp": ("w1", "w2"),
    "uniform": (),
}


class GateFileError(Exception):
    """A gate file cannot be used; the message is one line naming the file and the problem."""


@dataclass(frozen=True, slots=True)
class GateConfig:
    """Hyper-parameters of gate training.

    Attributes:
        variant: Training loss, ``"posterior"`` or ``"mixture"`` (module docstring).
        head: ``"linear"`` (softmax regression) or ``"mlp"`` (one tanh hidden layer).
        hidden_units: Width of the MLP's hidden layer.
        l2: L2 penalty coefficient on weight matrices: the objective adds
            ``0.5 * l2 * ||W||²`` to the mean per-prompt loss.
        target_sharpness: Exponent β in q_n ∝ f_n(y|x)^β (posterior variant only); β = 1 is
            the Bayes posterior under a uniform prior over experts.
        probability_floor: Lower clip applied to f_n(y|x) before logs and powers.
        max_iter: L-BFGS-B iteration cap.
        gradient_tolerance: L-BFGS-B ``gtol`` (max projected-gradient component).
        seed: Seed of the parameter initialisation.
    """

    variant: Variant = "posterior"
    head: TrainableHead = "linear"
    hidden_units: int = 16
    l2: float = 1e-4
    target_sharpness: float = 1.0
    probability_floor: float = 1e-6
    max_iter: int = 2000
    gradient_tolerance: float = 1e-8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.variant not in get_args(Variant):
            raise ValueError(f"variant must be one of {get_args(Variant)}, got {self.variant!r}")
        if self.head not in get_args(TrainableHead):
            raise ValueError(f"head must be one of {get_args(TrainableHead)}, got {self.head!r}")
        if self.hidden_units < 1:
            raise ValueError("hidden_units must be >= 1")
        if self.l2 < 0:
            raise ValueError("l2 must be >= 0")
        if self.target_sharpness <= 0:
            raise ValueError("target_sharpness must be > 0")
        if not 0 < self.probability_floor < 1:
            raise ValueError("probability_floor must be in (0, 1)")
        if self.max_iter < 1 or self.gradient_tolerance <= 0:
            raise ValueError("max_iter must be >= 1 and gradient_tolerance > 0")


@dataclass(frozen=True, slots=True)
class GateMetadata:
    """What a gate was trained on and how; stored as JSON inside the gate file.

    Attributes:
        experts: Expert names, in logit order (𝒩).
        encoder_name: Name of the prompt encoder whose output the gate reads
            (``"static"``, ``"minilm"``, ``"hashing"``, or ``"none"``).
        encoder_dim: Length of the encoder's vectors.
        categories: Application categories, in the order of the one-hot block appended to the
            embedding; empty when the gate ignores categories.
        variant: Training loss variant, or ``"none"`` for an untrained (uniform) gate.
        head: Head kind.
        hyperparameters: The :class:`GateConfig` fields used for training.
        training_loss: Mean per-prompt training loss (without the L2 term) at the optimum.
        train_size: Number of training prompts.
        created_utc: ISO-8601 UTC creation time.
        format_version: Gate file format version.
    """

    experts: tuple[str, ...]
    encoder_name: str
    encoder_dim: int
    categories: tuple[str, ...] = ()
    variant: str = "none"
    head: HeadKind = "uniform"
    hyperparameters: Mapping[str, float | int | str] = field(default_factory=dict)
    training_loss: float | None = None
    train_size: int = 0
    created_utc: str = ""
    format_version: int = GATE_FORMAT_VERSION

    @property
    def feature_dim(self) -> int:
        """Input width of the head: encoder dimension plus one column per category."""
        return self.encoder_dim + len(self.categories)


def make_features(
    embeddings: npt.ArrayLike,
    prompt_categories: Sequence[str | None] | None,
    categories: Sequence[str],
) -> FloatArray:
    """Builds gate input features: embeddings with a category one-hot appended.

    Args:
        embeddings: Encoder output, shape ``[P, encoder_dim]``.
        prompt_categories: Category of each prompt, or None for all unknown. An unknown or
            unlisted category gets an all-zero one-hot (the gate then falls back on the text).
        categories: The category list of the gate (its one-hot order); empty for none.

    Returns:
        float64 array ``[P, encoder_dim + len(categories)]``.
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be 2-D, got shape {emb.shape}")
    onehot = np.zeros((emb.shape[0], len(categories)), dtype=np.float64)
    if prompt_categories is not None and categories:
        if len(prompt_categories) != emb.shape[0]:
            raise ValueError(
                f"{len(prompt_categories)} categories given for {emb.shape[0]} embeddings"
            )
        column = {c: i for i, c in enumerate(categories)}
        for row, category in enumerate(prompt_categories):
            if category is not None and category in column:
                onehot[row, column[category]] = 1.0
    return np.concatenate([emb, onehot], axis=1)


def correct_option_probs(option_probs: npt.ArrayLike, labels: npt.ArrayLike) -> FloatArray:
    """f_n(y|x): the probability each expert gives the correct option, shape ``[P, N]``.

    Args:
        option_probs: ``[P, N, O]`` per-prompt, per-expert distributions over answer options
            (padded with zeros where a prompt has fewer than O options).
        labels: ``[P]`` index of the correct option.
    """
    probs, label_idx = check_responses(option_probs, labels)
    return probs[np.arange(probs.shape[0]), :, label_idx]


def check_responses(
    option_probs: npt.ArrayLike, labels: npt.ArrayLike
) -> tuple[FloatArray, IntArray]:
    """The response matrix and labels as arrays, checked (ValueError on bad shapes or values)."""
    probs = np.asarray(option_probs, dtype=np.float64)
    label_idx = np.asarray(labels)
    if probs.ndim != 3:
        raise ValueError(f"option_probs must be [P, N, O], got shape {probs.shape}")
    if label_idx.shape != (probs.shape[0],):
        raise ValueError(f"labels must have shape ({probs.shape[0]},), got {label_idx.shape}")
    if not np.issubdtype(label_idx.dtype, np.integer):
        raise ValueError("labels must be integers")
    if label_idx.size and (label_idx.min() < 0 or label_idx.max() >= probs.shape[2]):
        raise ValueError(f"labels must lie in [0, {probs.shape[2]})")
    if not np.all(np.isfinite(probs)) or (probs.size and probs.min() < 0):
        raise ValueError("option_probs must be finite and non-negative")
    return probs, label_idx.astype(np.int64)


def _log_softmax(logits: FloatArray) -> FloatArray:
    out: FloatArray = logits - logsumexp(logits, axis=1, keepdims=True)
    return out


def per_prompt_loss_and_dlogits(
    logits: FloatArray, correct: FloatArray, variant: Variant, sharpness: float, floor: float
) -> tuple[FloatArray, FloatArray]:
    """Per-prompt loss ``[P]`` and its gradient with respect to the logits ``[P, N]``.

    ``correct`` is f_n(y|x) for the experts that ``logits`` cover; the softmax over those
    columns is the (restricted) gate.
    """
    log_gate = _log_softmax(logits)
    gate = np.exp(log_gate)
    log_f = np.log(np.maximum(correct, floor))
    if variant == "posterior":
        log_target = sharpness * log_f
        log_target = log_target - logsumexp(log_target, axis=1, keepdims=True)
        target = np.exp(log_target)
        loss = -np.sum(target * log_gate, axis=1)
        return loss, gate - target
    joint = log_gate + log_f
    log_mix = logsumexp(joint, axis=1, keepdims=True)
    responsibility = np.exp(joint - log_mix)
    return -log_mix[:, 0], gate - responsibility


def head_shapes(
    head: HeadKind, feature_dim: int, n_experts: int, hidden: int
) -> dict[str, tuple[int, ...]]:
    """The parameter arrays of a head and their shapes."""
    if head == "linear":
        return {"w": (feature_dim, n_experts), "b": (n_experts,)}
    if head == "mlp":
        return {
            "w1": (feature_dim, hidden),
            "b1": (hidden,),
            "w2": (hidden, n_experts),
            "b2": (n_experts,),
        }
    return {}


def head_logits(
    head: HeadKind, params: Mapping[str, FloatArray], features: FloatArray, n_experts: int
) -> tuple[FloatArray, FloatArray | None]:
    """Logits ``[P, N]`` and, for the MLP, the hidden activations (for the backward pass)."""
    if head == "linear":
        return features @ params["w"] + params["b"], None
    if head == "mlp":
        hidden = np.tanh(features @ params["w1"] + params["b1"])
        return hidden @ params["w2"] + params["b2"], hidden
    return np.zeros((features.shape[0], n_experts), dtype=np.float64), None


def _readonly(array: FloatArray) -> FloatArray:
    out = np.array(array, dtype=np.float64)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class Gate:
    """A trained (or uniform) gate: logits, subset restriction, top-k weights, fusion.

    Immutable: the parameter arrays are read-only, so one gate can serve concurrent requests.

    Attributes:
        metadata: Experts, encoder, categories, training details.
        params: Head parameters by name (``w``, ``b`` for linear; ``w1``, ``b1``, ``w2``, ``b2``
            for the MLP; none for the uniform gate).
        fusion: How the answers of the experts it picks are combined (optimizer.fine).
        exit_threshold: Early exit's stop-score threshold (chosen on validation); None when
            the gate was trained without one (early exit then never stops before the last).
        exit_model: Early exit's stop score, the probability that the rest of K leaves the
            answer as it is (``optimizer.fine.AgreementModel``); None: the fused confidence.
        exit_order: The order early exit runs its stages in (``optimizer.fine.ExitOrder``: per
            category, expected joules per final answer; and each expert's mean joules, which
            the stop score weighs), as the sweep evaluated it; None: the live plan's energy,
            cheapest first.
    """

    metadata: GateMetadata
    params: Mapping[str, FloatArray]
    fusion: FusionRule = field(default_factory=LinearPool)
    exit_threshold: float | None = None
    exit_order: ExitOrder | None = None
    exit_model: AgreementModel | None = None

    def __post_init__(self) -> None:
        meta = self.metadata
        if self.exit_order is not None and self.exit_order.n_experts != len(meta.experts):
            raise ValueError(
                f"the exit order covers {self.exit_order.n_experts} experts, the gate "
                f"{len(meta.experts)}"
            )
        if self.exit_threshold is not None and not 0 < self.exit_threshold <= 1.0 + 1e-12:
            raise ValueError(f"exit_threshold must be in (0, 1], got {self.exit_threshold}")
        if self.exit_model is not None and self.exit_model.n_experts != len(meta.experts):
            raise ValueError(
                f"the agreement model covers {self.exit_model.n_experts} experts, the gate "
                f"{len(meta.experts)}"
            )
        if isinstance(self.fusion, LogLinearPool) and self.fusion.n_experts != len(meta.experts):
            raise ValueError(
                f"the fusion rule covers {self.fusion.n_experts} experts, the gate "
                f"{len(meta.experts)}"
            )
        hidden = 0
        if meta.head == "mlp":
            # The hidden width is whatever w1 says; hyperparameters may be absent or stale.
            w1_shape = np.shape(self.params.get("w1", ()))
            hidden = int(w1_shape[-1]) if w1_shape else 0
        expected = head_shapes(meta.head, meta.feature_dim, len(meta.experts), hidden)
        if set(self.params) != set(expected):
            raise ValueError(
                f"{meta.head} head needs parameters {sorted(expected)}, got {sorted(self.params)}"
            )
        for name, shape in expected.items():
            if tuple(np.shape(self.params[name])) != shape:
                raise ValueError(
                    f"parameter {name!r} has shape {tuple(np.shape(self.params[name]))}, "
                    f"expected {shape} ({len(meta.experts)} experts, feature dim "
                    f"{meta.feature_dim})"
                )
        if len(set(meta.experts)) != len(meta.experts) or not meta.experts:
            raise ValueError("experts must be a non-empty list of distinct names")
        frozen = {name: _readonly(np.asarray(value)) for name, value in self.params.items()}
        if not all(np.all(np.isfinite(v)) for v in frozen.values()):
            raise ValueError("gate parameters must be finite")
        object.__setattr__(self, "params", frozen)

    @property
    def experts(self) -> tuple[str, ...]:
        """Expert names in logit order."""
        return self.metadata.experts

    @classmethod
    def uniform(
        cls,
        experts: Sequence[str],
        *,
        encoder_name: str = "none",
        encoder_dim: int = 0,
        categories: Sequence[str] = (),
    ) -> Gate:
        """A gate with all-zero logits: equal weights over any subset (no trained gate).

        Args:
            experts: Expert names.
            encoder_name: Recorded for symmetry with trained gates; the uniform gate ignores
                its input values and only reads the number of rows.
            encoder_dim: As above.
            categories: As above.
        """
        return cls(
            metadata=GateMetadata(
                experts=tuple(experts),
                encoder_name=encoder_name,
                encoder_dim=encoder_dim,
                categories=tuple(categories),
                created_utc=utc_timestamp(),
            ),
            params={},
        )

    def features(
        self, embeddings: npt.ArrayLike, prompt_categories: Sequence[str | None] | None = None
    ) -> FloatArray:
        """Gate inputs from encoder output and categories (see :func:`make_features`)."""
        return make_features(embeddings, prompt_categories, self.metadata.categories)

    def mask(self, subset: Iterable[str]) -> BoolArray:
        """Boolean mask over :attr:`experts` for a set of expert names.

        Raises:
            KeyError: A name is not one of the gate's experts.
        """
        index = {name: i for i, name in enumerate(self.experts)}
        out = np.zeros(len(self.experts), dtype=np.bool_)
        for name in subset:
            if name not in index:
                raise KeyError(f"expert {name!r} is not in the gate ({', '.join(self.experts)})")
            out[index[name]] = True
        return out

    def logits(self, features: npt.ArrayLike) -> FloatArray:
        """Gate logits h(x; θ), shape ``[P, N]``.

        Args:
            features: ``[P, feature_dim]`` (see :meth:`features`); for the uniform gate only
                the row count is used.
        """
        x = np.asarray(features, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2:
            raise ValueError(f"features must be [P, d], got shape {x.shape}")
        if self.metadata.head != "uniform" and x.shape[1] != self.metadata.feature_dim:
            raise ValueError(
                f"features have width {x.shape[1]}, gate expects {self.metadata.feature_dim} "
                f"({self.metadata.encoder_name} dim {self.metadata.encoder_dim} + "
                f"{len(self.metadata.categories)} categories)"
            )
        logits, _ = head_logits(self.metadata.head, self.params, x, len(self.experts))
        return logits

    def weights(
        self,
        features: npt.ArrayLike,
        subset_mask: npt.ArrayLike | None = None,
        top_k: int | None = None,
    ) -> FloatArray:
        """Fine-level gate weights for subset S with top-k (docs/method.md §3.2, §4.1).

        The softmax is renormalised over S; of S the ``top_k`` experts with the largest weight
        are kept per prompt and renormalised; all other entries are 0. Ties are broken by the
        lower expert index, so results are deterministic.

        Args:
            features: ``[P, feature_dim]`` gate inputs.
            subset_mask: ``[N]`` booleans, True for experts in S; None means all experts.
            top_k: Experts kept per prompt; None or a value ≥ |S| keeps all of S.

        Returns:
            ``[P, N]`` weights; each row sums to 1 over at most ``top_k`` experts of S.
        """
        logits = self.logits(features)
        n_experts = len(self.experts)
        mask = (
            np.ones(n_experts, dtype=np.bool_)
            if subset_mask is None
            else np.asarray(subset_mask, dtype=np.bool_)
        )
        if mask.shape != (n_experts,):
            raise ValueError(f"subset_mask must have shape ({n_experts},), got {mask.shape}")
        return gate_weights(logits, mask, top_k)

    def fuse(
        self,
        weights: npt.ArrayLike,
        option_probs: npt.ArrayLike,
        n_options: npt.ArrayLike | None = None,
        prompt_categories: Sequence[str | None] | None = None,
    ) -> FloatArray:
        """Fused option distributions ``[P, O]`` by the gate's fusion rule.

        Args:
            weights: ``[P, N]`` gate weights (rows sum to 1; experts with 0 are ignored).
            option_probs: ``[P, N, O]`` expert option distributions.
            n_options: ``[P]`` real options per prompt (default: all O).
            prompt_categories: Category of each prompt (a log-linear pool's parameter rows).
        """
        rows = None
        if isinstance(self.fusion, LogLinearPool) and prompt_categories is not None:
            rows = self.fusion.category_rows(prompt_categories)
        return self.fusion.fuse(weights, option_probs, n_options, rows)

    def subset_loss(
        self,
        features: npt.ArrayLike,
        option_probs: npt.ArrayLike,
        labels: npt.ArrayLike,
        subset_mask: npt.ArrayLike | None = None,
        *,
        variant: Variant | None = None,
    ) -> float:
        """Mean per-prompt loss L(S, θ) of the gate restricted to S (no L2 term, no top-k).

        Args:
            features: ``[P, feature_dim]``.
            option_probs: ``[P, N, O]``.
            labels: ``[P]``.
            subset_mask: ``[N]`` booleans for S; None means all experts.
            variant: Loss variant; defaults to the one the gate was trained with.
        """
        loss_variant, sharpness, floor = self._loss_settings(variant)
        mask = (
            np.ones(len(self.experts), dtype=np.bool_)
            if subset_mask is None
            else np.asarray(subset_mask, dtype=np.bool_)
        )
        if not mask.any():
            raise ValueError("subset_mask selects no expert")
        correct = correct_option_probs(option_probs, labels)
        if correct.shape[1] != len(self.experts):
            raise ValueError(
                f"option_probs has {correct.shape[1]} experts, gate has {len(self.experts)}"
            )
        logits = self.logits(features)
        loss, _ = per_prompt_loss_and_dlogits(
            logits[:, mask], correct[:, mask], loss_variant, sharpness, floor
        )
        return float(np.mean(loss))

    def _loss_settings(self, variant: Variant | None) -> tuple[Variant, float, float]:
        hyper = self.metadata.hyperparameters
        if variant is None:
            trained = self.metadata.variant
            variant = cast(Variant, trained) if trained in get_args(Variant) else "posterior"
        defaults = GateConfig()
        sharpness = float(hyper.get("target_sharpness", defaults.target_sharpness))
        floor = float(hyper.get("probability_floor", defaults.probability_floor))
        return variant, sharpness, floor

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Writes the gate as one ``.npz`` file, atomically.

        The archive holds ``param_<name>`` arrays and ``metadata_json`` (a 0-d string array
        with :class:`GateMetadata` as JSON). It is written to a temporary file in the target
        folder and moved into place with ``os.replace``, so a reader never sees a partial file
        and a crash leaves the previous gate intact.

        Args:
            path: Destination file (conventionally ``*.npz``).

        Returns:
            The path written.
        """
        target = Path(path)
        meta = dataclasses.asdict(self.metadata)
        meta["experts"] = list(self.metadata.experts)
        meta["categories"] = list(self.metadata.categories)
        meta["hyperparameters"] = dict(self.metadata.hyperparameters)
        arrays: dict[str, npt.NDArray[np.generic]] = {
            _PARAM_PREFIX + name: np.asarray(value) for name, value in self.params.items()
        }
        meta["fusion"] = {
            "rule": self.fusion.name,
            "exit_threshold": self.exit_threshold,
        }
        if self.exit_order is not None:
            meta["fusion"]["exit_order_categories"] = list(self.exit_order.categories)
            arrays[_FUSION_PREFIX + "exit_priority_j"] = self.exit_order.priority_j
            if self.exit_order.energy_j is not None:
                meta["fusion"]["exit_reference_j"] = self.exit_order.reference_j
                arrays[_FUSION_PREFIX + "exit_energy_j"] = self.exit_order.energy_j
        if self.exit_model is not None:
            meta["fusion"]["exit_categories"] = list(self.exit_model.categories)
            meta["fusion"]["exit_experts"] = self.exit_model.n_experts
            arrays[_FUSION_PREFIX + "exit_coef"] = self.exit_model.coef
        if isinstance(self.fusion, LogLinearPool):
            meta["fusion"].update(
                categories=list(self.fusion.categories), gate_power=self.fusion.gate_power
            )
            arrays[_FUSION_PREFIX + "temperature"] = self.fusion.temperature
            arrays[_FUSION_PREFIX + "option_bias"] = self.fusion.option_bias
            arrays[_FUSION_PREFIX + "expert_weight"] = self.fusion.expert_weight
            if self.fusion.raw_when_alone is not None:
                arrays[_FUSION_PREFIX + "raw_when_alone"] = self.fusion.raw_when_alone
        arrays[_METADATA_KEY] = np.array(json.dumps(meta, sort_keys=True))
        with atomic_writer(target) as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]
        logger.info(
            "saved gate (%s head, %d experts) to %s", self.metadata.head, len(self.experts), target
        )
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Gate:
        """Reads a gate written by :meth:`save`.

        Raises:
            GateFileError: The file is missing, is not a gate file, has another format version,
                or its parameters do not match its metadata. The message is one line that
                names the file, so it can go straight into a CLI error or a log.
        """
        source = Path(path)
        if not source.is_file():
            raise GateFileError(f"{source}: gate file not found")
        try:
            with np.load(source, allow_pickle=False) as archive:
                contents = {key: np.asarray(archive[key]) for key in archive.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            raise GateFileError(f"{source}: not a gate file (unreadable .npz: {exc})") from exc
        if _METADATA_KEY not in contents:
            raise GateFileError(f"{source}: not a gate file (no {_METADATA_KEY} entry)")
        try:
            raw = json.loads(str(contents[_METADATA_KEY][()]))
        except json.JSONDecodeError as exc:
            raise GateFileError(f"{source}: metadata is not valid JSON ({exc.msg})") from exc
        if not isinstance(raw, dict):
            raise GateFileError(f"{source}: metadata is not a JSON object")
        version = raw.get("format_version")
        if version not in _READABLE_VERSIONS:
            raise GateFileError(
                f"{source}: gate format version {version!r}, this code reads versions "
                f"{', '.join(map(str, _READABLE_VERSIONS))} (writes {GATE_FORMAT_VERSION})"
            )
        try:
            head = raw["head"]
            if head not in get_args(HeadKind):
                raise GateFileError(f"{source}: unknown gate head {head!r}")
            training_loss = raw.get("training_loss")
            metadata = GateMetadata(
                experts=tuple(str(e) for e in raw["experts"]),
                encoder_name=str(raw["encoder_name"]),
                encoder_dim=int(raw["encoder_dim"]),
                categories=tuple(str(c) for c in raw.get("categories", [])),
                variant=str(raw.get("variant", "none")),
                head=head,
                hyperparameters=dict(raw.get("hyperparameters", {})),
                training_loss=None if training_loss is None else float(training_loss),
                train_size=int(raw.get("train_size", 0)),
                created_utc=str(raw.get("created_utc", "")),
                format_version=GATE_FORMAT_VERSION,
            )
        except KeyError as exc:
            raise GateFileError(f"{source}: metadata lacks field {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise GateFileError(f"{source}: malformed metadata ({exc})") from exc
        params = {
            key[len(_PARAM_PREFIX) :]: value
            for key, value in contents.items()
            if key.startswith(_PARAM_PREFIX)
        }
        try:
            spec = raw.get("fusion", {"rule": "linear"})
            fusion = _load_fusion(spec, contents)
            threshold = spec.get("exit_threshold")
            return cls(
                metadata=metadata,
                params=params,
                fusion=fusion,
                exit_threshold=None if threshold is None else float(threshold),
                exit_order=_load_exit_order(spec, contents),
                exit_model=_load_exit_model(spec, contents),
            )
        except KeyError as exc:
            raise GateFileError(f"{source}: fusion lacks {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise GateFileError(f"{source}: {exc}") from exc


def _load_fusion(spec: object, contents: Mapping[str, npt.NDArray[np.generic]]) -> FusionRule:
    if not isinstance(spec, dict):
        raise ValueError("fusion metadata is not a JSON object")
    rule = spec.get("rule")
    if rule == "linear":
        return LinearPool()
    if rule != "log-linear":
        raise ValueError(f"unknown fusion rule {rule!r}")
    return LogLinearPool(
        categories=tuple(str(c) for c in spec["categories"]),
        temperature=np.asarray(contents[_FUSION_PREFIX + "temperature"], dtype=np.float64),
        option_bias=np.asarray(contents[_FUSION_PREFIX + "option_bias"], dtype=np.float64),
        expert_weight=np.asarray(contents[_FUSION_PREFIX + "expert_weight"], dtype=np.float64),
        gate_power=float(spec.get("gate_power", 0.0)),
        raw_when_alone=(
            np.asarray(contents[_FUSION_PREFIX + "raw_when_alone"], dtype=np.bool_)
            if _FUSION_PREFIX + "raw_when_alone" in contents
            else None
        ),
    )


def _load_exit_model(
    spec: Mapping[str, object], contents: Mapping[str, npt.NDArray[np.generic]]
) -> AgreementModel | None:
    key = _FUSION_PREFIX + "exit_coef"
    if key not in contents:
        return None
    categories = spec["exit_categories"]
    if not isinstance(categories, list):
        raise ValueError("exit_categories is not a list")
    return AgreementModel(
        tuple(str(c) for c in categories),
        int(cast(int, spec["exit_experts"])),
        np.asarray(contents[key], dtype=np.float64),
    )


def _load_exit_order(
    spec: Mapping[str, object], contents: Mapping[str, npt.NDArray[np.generic]]
) -> ExitOrder | None:
    key = _FUSION_PREFIX + "exit_priority_j"
    if key in contents:
        categories = spec["exit_order_categories"]
        if not isinstance(categories, list):
            raise ValueError("exit_order_categories is not a list")
        energy = contents.get(_FUSION_PREFIX + "exit_energy_j")  # earlier files: no costs
        reference = spec.get("exit_reference_j")
        return ExitOrder(
            tuple(str(c) for c in categories),
            np.asarray(contents[key], dtype=np.float64),
            None if energy is None else np.asarray(energy, dtype=np.float64),
            None if reference is None else float(cast(float, reference)),
        )
    costs = spec.get("exit_cost_j")  # earlier gate files: planned energy, cheapest first
    if costs is None:
        return None
    if not isinstance(costs, list):
        raise ValueError("exit_cost_j is not a list")
    return ExitOrder.cheapest([float(c) for c in costs])


def utc_timestamp() -> str:
    """Now, in UTC, to the second (ISO 8601): a gate's ``created_utc``."""
    return datetime.now(UTC).isoformat(timespec="seconds")
