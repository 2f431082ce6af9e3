"""A real OpenAI-compatible server over llama.cpp as an expert: llama-cpp-python's own server.

``python -m llama_cpp.server`` (llama-cpp-python's OpenAI-compatible server, not the C++
``llama-server``, which refuses ``echo``) with the built-in Gemma-3-270M model. Its echoed
prompt log-probabilities must give the same choice scores as the edge node's own Score on
the same model file. Gemma adds a BOS token; for a model without one (SmolLM2) this server's
echoed log-probabilities are shifted by one token (llama-cpp-python 0.3.36; see
docs/openai-experts.md), so that model is not used here.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from edge_node import models
from edge_node.llama_engine import LlamaEngine, LlamaOptions
from orchestrator.openai_expert import OpenAIExpertClient

pytestmark = pytest.mark.model

MODEL = "gemma3-270m"
PROMPT = "Review: a gorgeous, witty, seductive movie.\nSentiment (positive or negative):"
CHOICES = (" positive", " negative")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    if not models.is_installed(MODEL):
        pytest.skip(f"{MODEL} is not installed")
    for module in ("sse_starlette", "starlette_context"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"llama_cpp.server needs {module} (the dev extra)")
    _, path = models.resolve(MODEL)
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(path),
        "--n_ctx",
        "512",
        "--n_threads",
        "2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, "llama_cpp.server exited"
            assert time.monotonic() < deadline, "llama_cpp.server did not start"
            try:
                if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_echoed_log_probabilities_score_like_the_edge_node(base_url: str) -> None:
    client = OpenAIExpertClient(base_url, MODEL, multiple_choice="logprobs")
    try:
        assert await client.check(timeout_s=2) == ""  # no /health here: /v1/models answers
        scored = await client.score(PROMPT, CHOICES, timeout_s=60)
    finally:
        await client.close()
    model_id, path = models.resolve(MODEL)
    engine = LlamaEngine.load(path, model_id=model_id, options=LlamaOptions(n_ctx=512))
    try:
        reference = engine.score(PROMPT, CHOICES, False, threading.Event())
    finally:
        engine.close()
    assert scored.choice_tokens == reference.choice_tokens
    assert scored.logprobs == pytest.approx(reference.logprobs, abs=0.05)
    assert scored.energy.energy_j is None


async def test_open_prompts_and_multiple_choice_by_generation(base_url: str) -> None:
    client = OpenAIExpertClient(base_url, MODEL, multiple_choice="generate", power_w=15.0)
    try:
        generated = await client.generate(PROMPT, timeout_s=60, max_tokens=4)
        pieces: list[str] = []
        streamed = await client.generate(
            PROMPT, timeout_s=60, max_tokens=4, on_chunk=lambda c: pieces.append(c.text)
        )
        scored = await client.score(PROMPT, CHOICES, timeout_s=60)
        info = await client.info()
    finally:
        await client.close()
    assert 0 < generated.completion_tokens <= 4
    assert streamed.text == "".join(pieces) == generated.text  # greedy: the same text
    assert len(pieces) >= 1
    assert generated.prompt_tokens > 10
    assert generated.energy.source == "estimated"
    assert sum(scored.probs) == pytest.approx(1.0)
    assert max(scored.probs) > 0.999 or scored.probs == pytest.approx((0.5, 0.5))
    assert info.engine == "openai"
