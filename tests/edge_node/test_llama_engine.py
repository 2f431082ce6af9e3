"""The llama.cpp engine on the real SmolLM2-135M model (installed by make setup)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from edge_node import models
from edge_node.engine import GenerateParams
from edge_node.errors import ContextOverflowError
from edge_node.llama_engine import LlamaEngine, LlamaOptions

pytestmark = pytest.mark.model

PROMPT = "Review: a gorgeous, witty, seductive movie.\nSentiment (positive or negative):"


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaEngine]:
    model_id, path = models.resolve("smollm2-135m")
    loaded = LlamaEngine.load(path, model_id=model_id, options=LlamaOptions(n_ctx=512, n_threads=2))
    yield loaded
    loaded.close()


def reference_logprobs(path: str, prompt: str, choices: list[str]) -> list[float]:
    """Sums of log-probs of each choice's tokens from full logits_all evaluations (no reuse)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_ctx=512, n_threads=2, logits_all=True, verbose=False)
    try:
        return [_reference(llm, prompt, choice) for choice in choices]
    finally:
        llm.close()


def _reference(llm: Any, prompt: str, choice: str) -> float:
    llm.reset()
    context = llm.tokenize(prompt.encode(), add_bos=True)
    whole = llm.tokenize((prompt + choice).encode(), add_bos=True)
    start = (
        next(i for i, (a, b) in enumerate(zip(context, whole, strict=False)) if a != b)
        if any(a != b for a, b in zip(context, whole, strict=False))
        else len(context)
    )
    llm.eval(whole)
    scores = np.asarray(llm.scores[: len(whole)], dtype=np.float64)
    logp = scores - scores.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    return sum(float(logp[i - 1, whole[i]]) for i in range(start, len(whole)))


def test_score_matches_a_full_evaluation_for_single_and_multi_token_choices(
    engine: LlamaEngine,
) -> None:
    choices = [" negative", " positive", " strongly positive, with praise"]
    scores = engine.score(PROMPT, choices, False, threading.Event())
    _, path = models.resolve("smollm2-135m")
    expected = reference_logprobs(str(path), PROMPT, choices)
    assert scores.logprobs == pytest.approx(expected, abs=2e-3)
    assert scores.choice_tokens[0] == 1 and scores.choice_tokens[2] > 3
    # The shared prefix is evaluated once, not once per choice (naively 3 x prompt + choices).
    assert scores.evaluated_tokens <= scores.prompt_tokens + sum(scores.choice_tokens)
    assert scores.evaluated_tokens < 2 * scores.prompt_tokens
    # The sentiment expert prefers the right label on an easy review.
    assert scores.logprobs[1] > scores.logprobs[0]


def test_a_repeated_score_reuses_the_cached_prompt(engine: LlamaEngine) -> None:
    first = engine.score(PROMPT, [" negative", " positive"], False, threading.Event())
    second = engine.score(PROMPT, [" negative", " positive"], False, threading.Event())
    assert second.logprobs == pytest.approx(first.logprobs, abs=1e-4)
    assert second.evaluated_tokens <= 1 + sum(second.choice_tokens)


def test_generate_is_greedy_deterministic_and_streams_the_same_text(engine: LlamaEngine) -> None:
    pieces: list[str] = []
    params = GenerateParams("The capital of France is", max_tokens=12, raw=True)
    first = engine.generate(params, lambda text, n, at: pieces.append(text), threading.Event())
    engine.score(PROMPT, [" a", " b"], False, threading.Event())  # disturb the KV cache
    second = engine.generate(params, lambda text, n, at: None, threading.Event())
    assert "Paris" in first.text
    assert first.text == second.text
    assert "".join(pieces) == first.text
    assert first.completion_tokens == 12 and first.finish_reason == "length"
    assert first.first_token_s is not None


def test_chat_template_is_applied_when_the_gguf_has_one(engine: LlamaEngine) -> None:
    assert engine.info.chat_template
    answer = engine.generate(
        GenerateParams("What is 2+3?", max_tokens=24), lambda *_: None, threading.Event()
    )
    assert "5" in answer.text
    assert answer.finish_reason == "stop"  # the template's end-of-turn token ends it


def test_stop_strings_cut_the_text(engine: LlamaEngine) -> None:
    params = GenerateParams("Count: 1, 2, 3,", max_tokens=20, raw=True, stop=(" 6",))
    result = engine.generate(params, lambda *_: None, threading.Event())
    assert result.finish_reason == "stop"
    assert " 6" not in result.text and "5" in result.text


def test_cancel_stops_generation_at_the_next_token(engine: LlamaEngine) -> None:
    cancel = threading.Event()
    count = 0

    def on_token(text: str, tokens: int, at_s: float) -> None:
        nonlocal count
        count += tokens
        if count >= 3:
            cancel.set()

    result = engine.generate(
        GenerateParams("Once upon a time", max_tokens=100, raw=True), on_token, cancel
    )
    assert result.finish_reason == "cancelled"
    assert result.completion_tokens <= 4


def test_prompt_over_the_context_window_is_refused_with_counts(engine: LlamaEngine) -> None:
    long_prompt = "word " * 600
    with pytest.raises(ContextOverflowError, match=r"prompt is \d+ tokens but the context window"):
        engine.generate(
            GenerateParams(long_prompt, 4, raw=True), lambda *_: None, threading.Event()
        )
    with pytest.raises(ContextOverflowError, match="context window is 512 tokens"):
        engine.score(long_prompt, [" a"], False, threading.Event())


def test_info_reports_the_models_layers_and_what_the_build_can_offload(
    engine: LlamaEngine,
) -> None:
    import llama_cpp

    assert engine.info.model_layers == 30  # SmolLM2-135M: llama.block_count in its GGUF
    assert engine.info.gpu_offload_supported is bool(llama_cpp.llama_supports_gpu_offload())
    assert engine.info.n_gpu_layers == 0
