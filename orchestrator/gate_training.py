"""Training the gate once on the full expert set (docs/method.md §3.3, §3.4).

:class:`GateObjective` is the loss of a head as a function of its flat parameter vector (with its
analytic gradient); :func:`train_gate` minimises it with scipy's L-BFGS-B and returns a
:class:`orchestrator.gate.Gate`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize

from orchestrator.gate import (
    HEAD_WEIGHT_MATRICES,
    FloatArray,
    Gate,
    GateConfig,
    GateMetadata,
    correct_option_probs,
    head_logits,
    head_shapes,
    per_prompt_loss_and_dlogits,
    utc_timestamp,
)

logger = logging.getLogger(__name__)


class GateObjective:
    """Training objective of a gate head as a function of a flat parameter vector.

    ``objective(theta)`` returns ``(loss, gradient)`` where loss is the mean per-prompt loss of
    ``config.variant`` plus ``0.5 * l2 * ||W||²``; this is what L-BFGS-B minimises, exposed so
    tests can check the gradient against finite differences.
    """

    def __init__(
        self,
        features: npt.ArrayLike,
        option_probs: npt.ArrayLike,
        labels: npt.ArrayLike,
        config: GateConfig,
    ) -> None:
        """Binds the training data.

        Args:
            features: ``[P, d]`` gate inputs.
            option_probs: ``[P, N, O]`` expert option distributions.
            labels: ``[P]`` correct option indices.
            config: Training hyper-parameters.
        """
        self.features = np.asarray(features, dtype=np.float64)
        self.correct = correct_option_probs(option_probs, labels)
        if self.features.ndim != 2 or self.features.shape[0] != self.correct.shape[0]:
            raise ValueError(
                f"features must be [P, d] with P = {self.correct.shape[0]}, "
                f"got shape {self.features.shape}"
            )
        if self.correct.shape[0] == 0 or self.correct.shape[1] == 0:
            raise ValueError("need at least one prompt and one expert to train a gate")
        self.config = config
        self.n_experts = int(self.correct.shape[1])
        self.shapes = head_shapes(
            config.head, self.features.shape[1], self.n_experts, config.hidden_units
        )
        self.n_params = sum(math.prod(s) for s in self.shapes.values())

    def unpack(self, theta: FloatArray) -> dict[str, FloatArray]:
        """Splits a flat vector into named parameter arrays (copies)."""
        params: dict[str, FloatArray] = {}
        offset = 0
        for name, shape in self.shapes.items():
            size = math.prod(shape)
            params[name] = np.array(theta[offset : offset + size], dtype=np.float64).reshape(shape)
            offset += size
        return params

    def initial_params(self) -> FloatArray:
        """Seeded initial parameter vector.

        The linear head's objective is convex, so its start only needs to be deterministic
        (small random weights). The MLP's first layer is scaled so hidden pre-activations are
        O(1) whatever the feature scale, and the output layer starts small.
        """
        rng = np.random.default_rng(self.config.seed)
        pieces: list[FloatArray] = []
        mean_sq_norm = float(np.mean(np.sum(self.features**2, axis=1)))
        input_scale = 1.0 / math.sqrt(max(mean_sq_norm, 1e-12))
        for name, shape in self.shapes.items():
            if name == "w1":
                pieces.append(rng.normal(0.0, input_scale, size=shape).ravel())
            elif name.startswith("w"):
                pieces.append(rng.normal(0.0, 0.01, size=shape).ravel())
            else:
                pieces.append(np.zeros(math.prod(shape)))
        return np.concatenate(pieces) if pieces else np.zeros(0)

    def data_loss(self, theta: FloatArray) -> float:
        """Mean per-prompt loss without the L2 term."""
        logits, _ = head_logits(self.config.head, self.unpack(theta), self.features, self.n_experts)
        loss, _ = per_prompt_loss_and_dlogits(
            logits,
            self.correct,
            self.config.variant,
            self.config.target_sharpness,
            self.config.probability_floor,
        )
        return float(np.mean(loss))

    def __call__(self, theta: FloatArray) -> tuple[float, FloatArray]:
        params = self.unpack(theta)
        head = self.config.head
        logits, hidden = head_logits(head, params, self.features, self.n_experts)
        loss, dlogits = per_prompt_loss_and_dlogits(
            logits,
            self.correct,
            self.config.variant,
            self.config.target_sharpness,
            self.config.probability_floor,
        )
        n_prompts = self.features.shape[0]
        dlogits = dlogits / n_prompts
        grads: dict[str, FloatArray] = {}
        if head == "linear":
            grads["w"] = self.features.T @ dlogits
            grads["b"] = dlogits.sum(axis=0)
        else:
            assert hidden is not None
            grads["w2"] = hidden.T @ dlogits
            grads["b2"] = dlogits.sum(axis=0)
            dpre = (dlogits @ params["w2"].T) * (1.0 - hidden * hidden)
            grads["w1"] = self.features.T @ dpre
            grads["b1"] = dpre.sum(axis=0)
        total = float(np.mean(loss))
        l2 = self.config.l2
        for name in HEAD_WEIGHT_MATRICES[head]:
            total += 0.5 * l2 * float(np.sum(params[name] ** 2))
            grads[name] = grads[name] + l2 * params[name]
        return total, np.concatenate([grads[name].ravel() for name in self.shapes])


def train_gate(
    features: npt.ArrayLike,
    option_probs: npt.ArrayLike,
    labels: npt.ArrayLike,
    experts: Sequence[str],
    *,
    config: GateConfig | None = None,
    encoder_name: str = "none",
    encoder_dim: int | None = None,
    categories: Sequence[str] = (),
) -> Gate:
    """Trains the gate once on the full expert set (docs/method.md §3.3, §3.4).

    Runs on the caller's thread; a few seconds for thousands of prompts with a linear head.

    Args:
        features: ``[P, d]`` gate inputs (see :func:`make_features`).
        option_probs: ``[P, N, O]`` recorded option distributions of the N experts.
        labels: ``[P]`` correct option indices.
        experts: The N expert names, in ``option_probs`` order.
        config: Hyper-parameters; defaults to :class:`GateConfig`'s.
        encoder_name: Name of the encoder that produced the embedding part of ``features``.
        encoder_dim: Its dimension; defaults to ``d - len(categories)``.
        categories: Category one-hot order used in ``features`` (empty for none).

    Returns:
        The trained gate. If L-BFGS-B stops without converging (iteration cap), the gate is
        still returned, since its parameters are the best found, and a warning is logged.
    """
    cfg = config if config is not None else GateConfig()
    objective = GateObjective(features, option_probs, labels, cfg)
    if len(experts) != objective.n_experts:
        raise ValueError(
            f"{len(experts)} expert names for {objective.n_experts} experts in option_probs"
        )
    feature_dim = objective.features.shape[1]
    enc_dim = feature_dim - len(categories) if encoder_dim is None else encoder_dim
    if enc_dim + len(categories) != feature_dim or enc_dim < 0:
        raise ValueError(
            f"features have width {feature_dim}, expected encoder_dim {enc_dim} + "
            f"{len(categories)} categories"
        )
    result = minimize(
        objective,
        objective.initial_params(),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": cfg.max_iter, "gtol": cfg.gradient_tolerance, "ftol": 1e-15},
    )
    if not result.success:
        logger.warning("gate training stopped before convergence: %s", result.message)
    theta = np.asarray(result.x, dtype=np.float64)
    data_loss = objective.data_loss(theta)
    logger.debug(
        "trained %s/%s gate on %d prompts x %d experts: loss %.6f (%d iterations)",
        cfg.head,
        cfg.variant,
        objective.features.shape[0],
        objective.n_experts,
        data_loss,
        int(result.nit),
    )
    return Gate(
        metadata=GateMetadata(
            experts=tuple(experts),
            encoder_name=encoder_name,
            encoder_dim=enc_dim,
            categories=tuple(categories),
            variant=cfg.variant,
            head=cfg.head,
            hyperparameters=dataclasses.asdict(cfg),
            training_loss=data_loss,
            train_size=int(objective.features.shape[0]),
            created_utc=utc_timestamp(),
        ),
        params=objective.unpack(theta),
    )
