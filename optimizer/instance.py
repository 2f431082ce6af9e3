"""Coarse-level instance document (docs/architecture.md §5): validation in, JSON-ready dict out.

This module never opens files: the CLI adapter reads the JSON and hands the parsed object to
:func:`parse_instance`. Every problem is reported as :class:`InstanceError` naming the field.

Top-level fields (all required unless marked optional; unknown keys are errors):

* ``experts``: list of N unique non-empty strings.
* ``categories``: list of unique strings (may be empty).
* ``top_k``: integer ≥ 1 (``top_k ≥ |S|`` means every selected expert answers every request).
* ``energy_j``: N finite numbers ≥ 0 (worst-case joules per request of each expert).
* ``latency_s``: object with exactly the categories as keys, each N finite numbers ≥ 0 (seconds).
* ``aggregation_s``: optional finite number ≥ 0, default 0 (seconds).
* ``energy_budget_j``: finite number ≥ 0 (joules).
* ``delay_budget_s``: object with exactly the categories as keys, finite numbers ≥ 0 (seconds).
* ``objective``: one of the objects below.
* ``description``: optional free-text string, ignored.

Objective ``{"kind": "best-of", "scores": [[...N numbers...] per prompt]}``: F(S) = mean over
prompts of the best score in S; at least one prompt; all scores finite.

Objective ``{"kind": "gated", "metric": "accuracy" | "log_likelihood", "gate_logits": P×N,
"option_probs": P×N×O, "labels": P integers}``:

* ``gate_logits[i][n]``: logit of expert n for prompt i from the gate trained on all experts.
* ``option_probs[i][n][o]``: expert n's probability of option o on prompt i, each ≥ 0; prompts
  with fewer than O options pad with 0.
* ``labels[i]``: index in [0, O) of prompt i's correct option.
* ``metric``: optional, default ``"accuracy"``.
* The fine-level k is the instance's ``top_k``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from optimizer.objectives import BestOfObjective, GatedMetric, GatedObjective, SetObjective
from optimizer.problem import Problem
from optimizer.result import Solution

logger = logging.getLogger(__name__)

_TOP_LEVEL_REQUIRED = (
    "experts",
    "categories",
    "top_k",
    "energy_j",
    "latency_s",
    "energy_budget_j",
    "delay_budget_s",
    "objective",
)
_TOP_LEVEL_OPTIONAL = ("aggregation_s", "description")
_BEST_OF_KEYS = {"kind", "scores"}
_GATED_KEYS = {"kind", "metric", "gate_logits", "option_probs", "labels"}


class InstanceError(ValueError):
    """A malformed instance document; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        """Record the field and build the one-line message."""
        super().__init__(f"instance field '{field}': {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class Instance:
    """A parsed instance: the constraints and the objective."""

    problem: Problem
    objective: SetObjective


def _number(value: object, field: str, *, minimum: float | None = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InstanceError(field, f"expected a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise InstanceError(field, f"must be finite, got {number}")
    if minimum is not None and number < minimum:
        raise InstanceError(field, f"must be >= {minimum:g}, got {number:g}")
    return number


def _list(value: object, field: str, length: int | None = None) -> list[Any]:
    if not isinstance(value, list):
        raise InstanceError(field, f"expected a list, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise InstanceError(field, f"expected {length} entries, got {len(value)}")
    return value


def _numbers(
    value: object, field: str, length: int | None, *, minimum: float | None = 0.0
) -> list[float]:
    items = _list(value, field, length)
    return [_number(item, f"{field}[{i}]", minimum=minimum) for i, item in enumerate(items)]


def _names(value: object, field: str) -> list[str]:
    items = _list(value, field)
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item:
            raise InstanceError(f"{field}[{i}]", "expected a non-empty string")
    if len(set(items)) != len(items):
        raise InstanceError(field, "names must be unique")
    return cast(list[str], items)


def _per_category(
    value: object, field: str, categories: Sequence[str], length: int | None
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InstanceError(
            field, f"expected an object keyed by category, got {type(value).__name__}"
        )
    for category in categories:
        if category not in value:
            raise InstanceError(f"{field}.{category}", "missing category")
    for key in value:
        if key not in categories:
            raise InstanceError(f"{field}.{key}", "unknown category (not in 'categories')")
    if length is None:
        return {c: _number(value[c], f"{field}.{c}") for c in categories}
    return {c: _numbers(value[c], f"{field}.{c}", length) for c in categories}


def _check_keys(
    data: Mapping[str, object], required: Sequence[str], optional: Sequence[str], prefix: str
) -> None:
    for key in data:
        if key not in required and key not in optional:
            raise InstanceError(f"{prefix}{key}", "unknown key")
    for key in required:
        if key not in data:
            raise InstanceError(f"{prefix}{key}", "missing required field")


def _matrix(value: object, field: str, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    """A nested list of finite numbers with the given shape (-1: any length ≥ 1)."""
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InstanceError(field, "expected a rectangular array of numbers") from None
    if array.dtype == object or array.ndim != len(shape):
        raise InstanceError(field, f"expected a {len(shape)}-dimensional rectangular array")
    for axis, (got, want) in enumerate(zip(array.shape, shape, strict=True)):
        if (want >= 0 and got != want) or got == 0:
            expected = f"{want}" if want >= 0 else "at least 1"
            raise InstanceError(field, f"axis {axis} has length {got}, expected {expected}")
    if not np.all(np.isfinite(array)):
        raise InstanceError(field, "contains a value that is not finite (NaN or infinity)")
    if _has_bool(value):
        raise InstanceError(field, "contains a boolean, expected numbers")
    return array


def _has_bool(value: object) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, list):
        return any(_has_bool(item) for item in value)
    return False


def _objective(value: object, n_experts: int, top_k: int) -> SetObjective:
    if not isinstance(value, dict):
        raise InstanceError("objective", f"expected an object, got {type(value).__name__}")
    kind = value.get("kind")
    if kind == "best-of":
        _check_keys(value, ("kind", "scores"), (), "objective.")
        scores = _matrix(value["scores"], "objective.scores", (-1, n_experts))
        return BestOfObjective(scores)
    if kind == "gated":
        _check_keys(
            value, ("kind", "gate_logits", "option_probs", "labels"), ("metric",), "objective."
        )
        metric = value.get("metric", "accuracy")
        if metric not in ("accuracy", "log_likelihood"):
            raise InstanceError(
                "objective.metric", f"expected 'accuracy' or 'log_likelihood', got {metric!r}"
            )
        logits = _matrix(value["gate_logits"], "objective.gate_logits", (-1, n_experts))
        n_prompts = logits.shape[0]
        probs = _matrix(value["option_probs"], "objective.option_probs", (n_prompts, n_experts, -1))
        if np.any(probs < 0):
            raise InstanceError("objective.option_probs", "probabilities must be >= 0")
        labels = _list(value["labels"], "objective.labels", n_prompts)
        for i, label in enumerate(labels):
            if isinstance(label, bool) or not isinstance(label, int):
                raise InstanceError(f"objective.labels[{i}]", "expected an integer")
            if not 0 <= label < probs.shape[2]:
                raise InstanceError(
                    f"objective.labels[{i}]", f"must lie in [0, {probs.shape[2]}), got {label}"
                )
        return GatedObjective(
            logits, probs, np.array(labels, dtype=np.intp), top_k, cast(GatedMetric, metric)
        )
    if kind is None:
        raise InstanceError("objective.kind", "missing required field")
    raise InstanceError("objective.kind", f"expected 'best-of' or 'gated', got {kind!r}")


def parse_instance(data: object) -> Instance:
    """Validate an instance document (already decoded from JSON) and build its parts.

    Args:
        data: The decoded JSON value.

    Returns:
        The problem and the objective.

    Raises:
        InstanceError: On the first malformed field, naming it.
    """
    if not isinstance(data, dict):
        raise InstanceError("<root>", f"expected a JSON object, got {type(data).__name__}")
    _check_keys(data, _TOP_LEVEL_REQUIRED, _TOP_LEVEL_OPTIONAL, "")
    experts = _names(data["experts"], "experts")
    if not experts:
        raise InstanceError("experts", "at least one expert is required")
    categories = _names(data["categories"], "categories")
    n_experts = len(experts)
    top_k = data["top_k"]
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InstanceError("top_k", f"expected an integer >= 1, got {top_k!r}")
    energy_j = _numbers(data["energy_j"], "energy_j", n_experts)
    latency_s = _per_category(data["latency_s"], "latency_s", categories, n_experts)
    delay_budget_s = _per_category(data["delay_budget_s"], "delay_budget_s", categories, None)
    aggregation_s = _number(data.get("aggregation_s", 0.0), "aggregation_s")
    energy_budget_j = _number(data["energy_budget_j"], "energy_budget_j")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise InstanceError("description", "expected a string")
    problem = Problem(
        experts=tuple(experts),
        categories=tuple(categories),
        top_k=top_k,
        energy_j=np.array(energy_j, dtype=np.float64),
        latency_s=np.array([latency_s[c] for c in categories], dtype=np.float64).reshape(
            len(categories), n_experts
        ),
        aggregation_s=aggregation_s,
        energy_budget_j=energy_budget_j,
        delay_budget_s=np.array([delay_budget_s[c] for c in categories], dtype=np.float64),
    )
    return Instance(problem, _objective(data["objective"], n_experts, top_k))


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def solution_to_dict(solution: Solution) -> dict[str, object]:
    """The ``moe2 optimize --json`` document (docs/architecture.md §5) for a solution.

    Keys: subset (names), value, feasible, energy_j, latency_s, upper_bound (null when the
    method cannot bound the optimum), evaluations, seconds, and method.
    """
    return {
        "subset": list(solution.subset_names),
        "value": solution.value,
        "feasible": solution.feasible,
        "energy_j": solution.energy_j,
        "latency_s": dict(solution.latency_s),
        "upper_bound": _finite_or_none(solution.upper_bound),
        "evaluations": solution.evaluations,
        "seconds": solution.seconds,
        "method": solution.method,
    }
