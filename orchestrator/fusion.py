"""Fusion of the experts' answers with the gate's weights (docs/method.md §1.2, §4).

Multiple choice: each expert's summed log-probabilities become an option distribution (with a
length normalisation chosen per category); the fine level (``optimizer.fine``, through
``orchestrator.core.Gating.fuse``) combines the distributions of the experts that answered, with
weights renormalised over them (the deadline-aware partial aggregation). Open prompts: weighted
vote over normalised answers.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Literal

Scoring = Literal["sum", "mean_token", "mean_char"]
SCORINGS: tuple[Scoring, ...] = ("sum", "mean_token", "mean_char")


def option_distribution(
    logprobs: Sequence[float],
    choice_tokens: Sequence[int],
    choices: Sequence[str],
    scoring: Scoring = "sum",
) -> list[float]:
    """Softmax over the choices of their (optionally length-normalised) log-probabilities.

    The Score RPC returns, per choice, the summed log-probability (nats) of its tokens and the
    number of those tokens. The score of choice ``i`` is ``logprobs[i]`` (``sum``: right for
    single-token labels), ``logprobs[i] / choice_tokens[i]`` (``mean_token``) or
    ``logprobs[i] / len(choices[i])`` (``mean_char``, leading space included): the usual
    normalisations for answer-text continuations of different lengths.

    Raises:
        ValueError: empty input, mismatched lengths, non-positive token counts or empty choices
            under a normalised scoring, non-finite log-probabilities, or an unknown scoring.
    """
    n = len(logprobs)
    if n == 0 or len(choice_tokens) != n or len(choices) != n:
        raise ValueError(
            f"need one logprob, token count and choice per option; got "
            f"{n}, {len(choice_tokens)}, {len(choices)}"
        )
    if not all(math.isfinite(v) for v in logprobs):
        raise ValueError(f"log-probabilities must be finite: {list(logprobs)}")
    if scoring == "sum":
        scores = [float(v) for v in logprobs]
    elif scoring == "mean_token":
        if any(t <= 0 for t in choice_tokens):
            raise ValueError(f"token counts must be positive: {list(choice_tokens)}")
        scores = [v / t for v, t in zip(logprobs, choice_tokens, strict=True)]
    elif scoring == "mean_char":
        if any(not c for c in choices):
            raise ValueError("choices must be non-empty for mean_char scoring")
        scores = [v / len(c) for v, c in zip(logprobs, choices, strict=True)]
    else:
        raise ValueError(f"unknown scoring {scoring!r}")
    peak = max(scores)
    weights = [math.exp(v - peak) for v in scores]
    total = sum(weights)
    return [w / total for w in weights]


def renormalise(weights: Mapping[str, float], present: Sequence[str]) -> dict[str, float]:
    """Weights restricted to the experts present, summing to 1 (uniform if all are 0)."""
    kept = {name: max(0.0, weights.get(name, 0.0)) for name in present}
    total = sum(kept.values())
    if total <= 0:
        return {name: 1.0 / len(kept) for name in kept} if kept else {}
    return {name: value / total for name, value in kept.items()}


def normalise_answer(text: str) -> str:
    """Case-, accent-, punctuation- and whitespace-insensitive form of an open answer."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c)).lower()
    words = re.findall(r"[\w]+", stripped)
    return " ".join(words)


def fuse_texts(weights: Mapping[str, float], texts: Mapping[str, str]) -> tuple[str, str]:
    """Weighted vote over normalised answers; returns (answer, expert whose text is returned).

    Answers that normalise equally pool their weights; the group with the largest total wins
    (ties: the group holding the single highest-weight expert, then expert name). The returned
    text is the winning group's highest-weight member's answer, unnormalised. With one expert
    this is that expert's answer; with distinct answers it is the highest-weighted one.
    """
    if not texts:
        raise ValueError("no expert answered")
    normalised = renormalise(weights, list(texts))
    groups: dict[str, list[str]] = {}
    for name in texts:
        groups.setdefault(normalise_answer(texts[name]), []).append(name)

    def rank(members: list[str]) -> tuple[float, float, str]:
        best = max(members, key=lambda n: (normalised[n], n))
        return (sum(normalised[n] for n in members), normalised[best], best)

    winner = max(groups.values(), key=rank)
    chosen = max(winner, key=lambda n: (normalised[n], n))
    return texts[chosen], chosen
