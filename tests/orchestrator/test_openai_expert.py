"""OpenAI-compatible servers as experts: the client against a fake server on loopback."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from orchestrator.openai_expert import (
    MISS_LOGPROB,
    NoPromptLogprobsError,
    OpenAIExpertClient,
    echo_logprobs,
    load_api_key,
    match_choice,
    status_for_http,
)
from tests.helpers.fake_openai import LIKELY_LOGPROB, UNLIKELY_LOGPROB, FakeOpenAI, tokens

PROMPT = "Q: Is the sky blue?\nA:"
CHOICES = (" yes", " no")


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI().start()
    yield server
    await server.stop()


def client_of(fake: FakeOpenAI, **options: object) -> OpenAIExpertClient:
    return OpenAIExpertClient(fake.base_url, fake.state.model, **options)  # type: ignore[arg-type]


def softmax(values: list[float]) -> list[float]:
    peak = max(values)
    weights = [math.exp(v - peak) for v in values]
    return [w / sum(weights) for w in weights]


async def test_multiple_choice_by_echoed_prompt_log_probabilities(fake: FakeOpenAI) -> None:
    client = client_of(fake, multiple_choice="logprobs")
    try:
        result = await client.score(PROMPT, CHOICES, timeout_s=5)
    finally:
        await client.close()
    # each choice is one token; the token generated after it (max_tokens = 1) is not counted
    assert result.logprobs == pytest.approx((LIKELY_LOGPROB, UNLIKELY_LOGPROB))
    assert result.choice_tokens == (1, 1)
    assert result.probs == pytest.approx(softmax([LIKELY_LOGPROB, UNLIKELY_LOGPROB]))
    assert result.prompt_tokens == len(tokens(PROMPT))
    assert result.energy.energy_j is None  # unknown, never 0
    assert result.energy.source == "unavailable"
    assert not result.energy.measured
    assert [path for path, _ in fake.state.requests] == ["completions"] * 2  # one per choice
    bodies = [body for _, body in fake.state.requests]
    assert sorted(body["prompt"] for body in bodies) == sorted(PROMPT + c for c in CHOICES)
    assert all((b["echo"], b["logprobs"], b["max_tokens"]) == (True, 1, 1) for b in bodies)


async def test_auto_falls_back_to_generation_once_echo_is_refused(fake: FakeOpenAI) -> None:
    fake.state.echo = "refuse"  # llama-server: "Only no echo is supported" (400)
    fake.state.answer = " No, it is not."
    client = client_of(fake)
    try:
        first = await client.score(PROMPT, CHOICES, timeout_s=5)
        seen = len(fake.state.requests)
        second = await client.score(PROMPT, CHOICES, timeout_s=5)
    finally:
        await client.close()
    assert client.echo_supported is False
    for result in (first, second):
        assert result.logprobs == (MISS_LOGPROB, 0.0)  # one-hot on the matched " no"
        assert result.probs[1] > 0.999_999
        assert result.choice_tokens == (1, 1)
    assert any(body.get("echo") for _, body in fake.state.requests[:seen])
    later = fake.state.requests[seen:]  # straight to generation
    assert [(path, body.get("echo")) for path, body in later] == [("completions", None)]


async def test_auto_uses_log_probabilities_where_the_server_returns_them(
    fake: FakeOpenAI,
) -> None:
    client = client_of(fake)
    try:
        result = await client.score(PROMPT, CHOICES, timeout_s=5)
    finally:
        await client.close()
    assert client.echo_supported is True
    assert result.logprobs == pytest.approx((LIKELY_LOGPROB, UNLIKELY_LOGPROB))


async def test_an_unmatched_generated_answer_gives_the_uniform_distribution(
    fake: FakeOpenAI,
) -> None:
    fake.state.answer = " Perhaps."
    client = client_of(fake, multiple_choice="generate")
    try:
        result = await client.score(PROMPT, CHOICES, timeout_s=5)
    finally:
        await client.close()
    assert result.probs == pytest.approx((0.5, 0.5))
    assert not any(body.get("echo") for _, body in fake.state.requests)


async def test_logprobs_mode_says_when_the_server_returns_no_prompt_log_probabilities(
    fake: FakeOpenAI,
) -> None:
    fake.state.echo = "ignore"  # answers with generated text only, no echoed prompt
    client = client_of(fake, multiple_choice="logprobs")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await client.score(PROMPT, CHOICES, timeout_s=5)
    finally:
        await client.close()
    assert excinfo.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "no prompt log-probabilities" in (excinfo.value.details() or "")


async def test_open_prompts_through_completions_and_chat(fake: FakeOpenAI) -> None:
    fake.state.answer = " Blue."
    completions = client_of(fake)
    chat = client_of(fake, endpoint="chat", power_w=20.0)
    try:
        plain = await completions.generate(PROMPT, timeout_s=5, max_tokens=8)
        chatted = await chat.generate(PROMPT, timeout_s=5)
    finally:
        await completions.close()
        await chat.close()
    assert plain.text == chatted.text == " Blue."
    assert plain.prompt_tokens == len(tokens(PROMPT))
    assert plain.completion_tokens == len(tokens(" Blue."))
    assert (plain.latency.prefill_s, plain.latency.decode_s) == (0.002, 0.003)  # timings
    assert plain.energy.energy_j is None
    assert chatted.energy.source == "estimated"
    assert chatted.energy.method == "configured-power-model"
    assert "configured power model" in chatted.energy.scope
    assert chatted.energy.energy_j == pytest.approx(20.0 * chatted.latency.total_s)
    assert [path for path, _ in fake.state.requests] == ["completions", "chat/completions"]
    assert fake.state.requests[0][1]["max_tokens"] == 8
    assert fake.state.requests[1][1]["messages"] == [{"role": "user", "content": PROMPT}]


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
async def test_open_prompts_stream_token_by_token(fake: FakeOpenAI, endpoint: str) -> None:
    fake.state.answer = " The sky is blue."
    client = client_of(fake, endpoint=endpoint)
    chunks: list[tuple[str, float]] = []
    try:
        result = await client.generate(
            PROMPT, timeout_s=5, on_chunk=lambda c: chunks.append((c.text, c.elapsed_s))
        )
    finally:
        await client.close()
    assert [text for text, _ in chunks] == tokens(" The sky is blue.")
    assert [t for _, t in chunks] == sorted(t for _, t in chunks)
    assert chunks[-1][1] - chunks[0][1] > 0.02  # as they arrived, not all at the end
    assert result.text == " The sky is blue."
    assert result.finish_reason == "length"
    assert result.completion_tokens == len(tokens(" The sky is blue."))
    assert result.prompt_tokens == len(tokens(PROMPT))
    assert len(result.chunks) == len(chunks)
    ((_, body),) = fake.state.requests
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (500, grpc.StatusCode.INTERNAL),
        (503, grpc.StatusCode.UNAVAILABLE),
        (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (400, grpc.StatusCode.INVALID_ARGUMENT),
        (401, grpc.StatusCode.UNAUTHENTICATED),
    ],
)
async def test_http_errors_map_to_the_statuses_the_core_accounts(
    fake: FakeOpenAI, status: int, code: grpc.StatusCode
) -> None:
    fake.state.fail_with = status
    client = client_of(fake)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await client.generate(PROMPT, timeout_s=5)
    finally:
        await client.close()
    assert excinfo.value.code() == code == status_for_http(status)
    details = excinfo.value.details() or ""
    assert details == f"/completions answered HTTP {status}: the fake fails on purpose"


async def test_a_slow_server_is_a_deadline_within_the_client_deadline(fake: FakeOpenAI) -> None:
    fake.state.delay_s = 3.0
    client = client_of(fake)
    started = time.monotonic()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await client.score(PROMPT, CHOICES, timeout_s=0.3)
    finally:
        await client.close()
    assert excinfo.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.5


async def test_a_refused_connection_is_unavailable() -> None:
    stopped = await FakeOpenAI().start()
    await stopped.stop()
    client = OpenAIExpertClient(stopped.base_url, "fake-model")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await client.generate(PROMPT, timeout_s=2)
        assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE
        assert excinfo.value.details() == "/completions: cannot connect"
        assert await client.check(timeout_s=1) == "/health: cannot connect"
    finally:
        await client.close()


async def test_health_from_health_or_from_models(fake: FakeOpenAI) -> None:
    client = client_of(fake)
    try:
        assert await client.check(timeout_s=1) == ""
        fake.state.health = "loading"
        assert await client.check(timeout_s=1) == "/health answered HTTP 503"
        fake.state.health = "absent"  # Ollama: no /health, /v1/models answers
        assert await client.check(timeout_s=1) == ""
        info = await client.info()
    finally:
        await client.close()
    assert (info.model_id, info.engine, info.context_tokens) == ("fake-model", "openai", 2048)
    assert info.energy_source == "unavailable"


async def test_the_api_key_and_request_id_are_sent_as_headers(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-test-123\n")
    client = client_of(fake, api_key=load_api_key(key_file))
    try:
        await client.generate(PROMPT, timeout_s=5, request_id="req-1\r\nx-evil: 1")
        await client.score(PROMPT, CHOICES, timeout_s=5, request_id="req-2")
    finally:
        await client.close()
    assert fake.state.authorization == ["Bearer sk-test-123"] * 3
    assert fake.state.request_ids == ["req-1x-evil: 1", "req-2", "req-2"]  # no header injection


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), ("", "is empty"), ("two words", "one key on one line")],
)
def test_unusable_api_key_files_are_one_line_errors(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "key"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message) as excinfo:
        load_api_key(path)
    assert "\n" not in str(excinfo.value)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (" yes", 0),
        ("Yes.", 0),
        (" NO, never", 1),
        (" yesterday", None),
        ("", None),
        (" maybe", None),
        (" ye", 0),  # cut short: a prefix of one choice only
    ],
)
def test_generated_answers_match_choices(answer: str, expected: int | None) -> None:
    assert match_choice(answer, CHOICES) == expected


def test_the_longest_matching_choice_wins() -> None:
    choices = (" New York", " New York City", " Boston")
    assert match_choice(" New York City, of course", choices) == 1
    assert match_choice(" New York is", choices) == 0


def test_a_token_across_the_prompt_boundary_counts_for_the_choice() -> None:
    # "A: " + "yes": the tokenizer made one token " yes" that starts inside the prompt
    entry = {
        "text": "A: yes!",
        "logprobs": {
            "tokens": ["A", ":", " yes", "!"],
            "token_logprobs": [None, -0.2, -0.7, -5.0],
            "text_offset": [0, 1, 2, 6],
        },
    }
    total, count, in_prompt = echo_logprobs("A: ", "yes", entry)
    assert total == pytest.approx(-0.7)
    assert (count, in_prompt) == (1, 2)
    with pytest.raises(NoPromptLogprobsError):
        echo_logprobs("A: ", "no", entry)  # not what was sent


async def test_a_streamed_request_that_fails_is_mapped_too(fake: FakeOpenAI) -> None:
    fake.state.fail_with = 500
    client = client_of(fake)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await client.generate(PROMPT, timeout_s=5, on_chunk=lambda _: None)
    finally:
        await client.close()
    assert excinfo.value.code() == grpc.StatusCode.INTERNAL
    assert excinfo.value.details() == "/completions answered HTTP 500: the fake fails on purpose"
