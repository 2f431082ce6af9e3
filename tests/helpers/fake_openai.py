"""A small OpenAI-compatible server on loopback, in the test process (FastAPI on uvicorn).

It serves ``/v1/completions`` (generation, and ``echo`` + ``logprobs`` with vLLM's legacy
logprobs shape), ``/v1/chat/completions``, ``/health`` and ``/v1/models``. ``FakeOpenAI.state``
decides how it behaves: whether it returns prompt log-probabilities (like vLLM), refuses
``echo`` with a 400 (like llama-server) or ignores it (returning no prompt log-probabilities),
whether ``/health`` exists (Ollama has none), an HTTP status every completion fails with, a
delay, and the generated answer. It can be stopped and started again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

TOKEN = re.compile(r"\s?\w+|\s?[^\w\s]|\s+")
LIKELY_LOGPROB = -0.5
"""Echoed log-probability of a token whose word is in ``state.likely``; others get UNLIKELY."""
UNLIKELY_LOGPROB = -3.0
GENERATED_TOKEN = "!"


@dataclass
class FakeState:
    """How the fake behaves; tests change it while it runs."""

    model: str = "fake-model"
    echo: Literal["logprobs", "refuse", "ignore"] = "logprobs"
    health: Literal["ok", "loading", "absent"] = "ok"
    fail_with: int | None = None
    delay_s: float = 0.0
    answer: str = " yes"
    likely: frozenset[str] = frozenset({"yes"})
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    authorization: list[str] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)


def tokens(text: str) -> list[str]:
    """The fake's tokenizer: words with their leading space, punctuation, whitespace."""
    return TOKEN.findall(text)


def _echoed(state: FakeState, text: str, index: int) -> dict[str, Any]:
    pieces = [*tokens(text), GENERATED_TOKEN]
    offsets, position = [], 0
    for piece in pieces:
        offsets.append(position)
        position += len(piece)
    values: list[float | None] = [
        LIKELY_LOGPROB if piece.strip().lower() in state.likely else UNLIKELY_LOGPROB
        for piece in pieces
    ]
    values[0] = None  # no context for the first token, as vLLM answers
    return {
        "index": index,
        "text": text + GENERATED_TOKEN,
        "finish_reason": "length",
        "logprobs": {
            "tokens": pieces,
            "token_logprobs": values,
            "text_offset": offsets,
            "top_logprobs": None,
        },
    }


def build_app(state: FakeState) -> FastAPI:
    """The fake's routes over ``state``."""
    app = FastAPI()

    async def prelude(request: Request, path: str) -> dict[str, Any] | JSONResponse:
        body = await request.json()
        state.requests.append((path, body))
        state.authorization.append(request.headers.get("authorization", ""))
        state.request_ids.append(request.headers.get("x-request-id", ""))
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        if state.fail_with is not None:
            return JSONResponse(
                {"error": {"message": "the fake fails\non purpose", "type": "server_error"}},
                status_code=state.fail_with,
            )
        if body.get("model") != state.model:
            return JSONResponse({"error": {"message": "model not found"}}, status_code=404)
        return dict(body)

    def usage(prompt: str, completion: str) -> dict[str, int]:
        n_prompt, n_completion = len(tokens(prompt)), len(tokens(completion))
        return {
            "prompt_tokens": n_prompt,
            "completion_tokens": n_completion,
            "total_tokens": n_prompt + n_completion,
        }

    def streamed(prompt: str, chat: bool) -> StreamingResponse:
        """The answer token by token as server-sent events, then usage, then [DONE]."""

        async def events() -> AsyncIterator[str]:
            for piece in tokens(state.answer):
                choice: dict[str, Any] = (
                    {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                    if chat
                    else {"index": 0, "text": piece, "finish_reason": None}
                )
                yield f"data: {json.dumps({'choices': [choice]})}\n\n"
                await asyncio.sleep(0.01)
            final: dict[str, Any] = {"index": 0, "finish_reason": "length"}
            if chat:
                final["delta"] = {}
            else:
                final["text"] = ""
            yield f"data: {json.dumps({'choices': [final]})}\n\n"
            yield f"data: {json.dumps({'choices': [], 'usage': usage(prompt, state.answer)})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await prelude(request, "completions")
        if isinstance(body, JSONResponse):
            return body
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        if body.get("echo"):
            if state.echo == "refuse":
                return JSONResponse(
                    {"error": {"message": "Only no echo is supported", "code": 400}},
                    status_code=400,
                )
            if state.echo == "logprobs":
                return {
                    "object": "text_completion",
                    "model": state.model,
                    "choices": [_echoed(state, p, i) for i, p in enumerate(prompts)],
                    "usage": usage("".join(prompts), GENERATED_TOKEN * len(prompts)),
                }
        if body.get("stream"):
            return streamed(prompts[0], chat=False)
        text = state.answer
        return {
            "object": "text_completion",
            "model": state.model,
            "choices": [
                {"index": i, "text": text, "finish_reason": "stop", "logprobs": None}
                for i in range(len(prompts))
            ],
            "usage": usage(prompts[0], text),
            "timings": {"prompt_ms": 2.0, "predicted_ms": 3.0},  # llama-server's extra
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await prelude(request, "chat/completions")
        if isinstance(body, JSONResponse):
            return body
        prompt = " ".join(str(m.get("content", "")) for m in body["messages"])
        if body.get("stream"):
            return streamed(prompt, chat=True)
        return {
            "object": "chat.completion",
            "model": state.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": state.answer},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage(prompt, state.answer),
        }

    @app.get("/health")
    async def health() -> Any:
        if state.health == "absent":
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        if state.health == "loading":
            return JSONResponse({"error": {"message": "Loading model"}}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> Any:
        return {
            "object": "list",
            "data": [
                {"id": state.model, "object": "model", "owned_by": "fake", "max_model_len": 2048}
            ],
        }

    return app


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the test process keeps its own handlers
        yield


class FakeOpenAI:
    """The fake on 127.0.0.1; ``start`` binds (port 0 first, the same port on a restart)."""

    def __init__(self, state: FakeState | None = None) -> None:
        self.state = state or FakeState()
        self.port = 0
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    @property
    def base_url(self) -> str:
        """The API root, ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> FakeOpenAI:
        """Serve until ``stop``."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.setblocking(False)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            build_app(self.state),
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self._server = _QuietServer(config)
        self._socket = sock
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise OSError("the fake OpenAI server did not start")
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        """Stop serving and close the port (connections are then refused)."""
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._socket is not None:
            self._socket.close()
        self._server = self._task = self._socket = None
