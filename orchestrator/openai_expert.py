"""Any OpenAI-compatible HTTP server (llama-server, Ollama, vLLM) as an expert.

A cluster entry ``kind = "openai"`` with ``base_url`` and ``model`` (orchestrator.config) makes
that server an expert. :class:`OpenAIExpertClient` has the interface the core uses for edge
nodes (``orchestrator.registry.ExpertClient``) and returns the same result types:

- open prompts: ``POST {base_url}/completions`` (or ``/chat/completions`` with
  ``endpoint = "chat"``), greedy unless the request says otherwise, streamed (server-sent
  events) when the caller takes the text as it is generated;
- multiple choice with ``multiple_choice = "logprobs"`` (or ``"auto"`` where the server
  supports it): one ``/completions`` request per choice, in parallel, with ``prompt + choice``
  and ``echo = true, logprobs = 1, max_tokens = 1``; a choice's log-probability is the sum of the
  echoed log-probabilities of the tokens that end past the prompt (the generated token is
  ignored), so the fusion sees the same option distribution as from an edge node's Score;
- multiple choice by generation (``"generate"``, or ``"auto"`` once the server has refused
  echo or returned no prompt log-probabilities): greedy generation, then the choice the answer
  matches (:func:`match_choice`) gets the whole mass (one-hot up to ``exp(MISS_LOGPROB)``),
  and no match gives the uniform distribution;
- energy: unknown (``joules`` None, source ``unavailable``) unless ``power_w`` is configured,
  then ``power_w`` x the wall latency, labelled ``estimated`` with a scope that says it is a
  configured model (never ``measured-*``);
- health: ``GET {root}/health`` (llama-server, vLLM; 503 while a model loads), or
  ``GET {base_url}/models`` where there is no ``/health`` (Ollama);
- failures become ``grpc.aio.AioRpcError`` with the code the core accounts: a missed client
  deadline DEADLINE_EXCEEDED, connection refused / reset and HTTP 502/503/504 UNAVAILABLE
  (the expert is marked down), 429 RESOURCE_EXHAUSTED, 400/422 INVALID_ARGUMENT, 401
  UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 NOT_FOUND, other 5xx INTERNAL, and an answer
  that is not an OpenAI response INTERNAL. Details are one line, never a traceback or a key.

Which servers return prompt log-probabilities (docs/openai-experts.md): vLLM does (``echo``
with ``logprobs``; it refuses ``max_tokens = 0``, hence 1); llama-server refuses ``echo``
("Only no echo is supported", llama.cpp issues #8942 and #27174; PRs #15189 and #17935 were not
merged); Ollama returns no prompt log-probabilities. ``"auto"`` therefore scores by
log-probabilities on vLLM and by generation on llama-server and Ollama.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import grpc
import httpx

from edge_node.client import Energy, GenerateResult, Latency, NodeInfo, ScoreResult, TokenChunk
from edge_node.limits import DEFAULT_LIMITS
from orchestrator.fusion import normalise_answer

logger = logging.getLogger(__name__)

MultipleChoice = Literal["auto", "logprobs", "generate"]
Endpoint = Literal["completions", "chat"]

MISS_LOGPROB = -30.0
"""Log-probability given to the choices a generated answer does not match (nats)."""
MATCH_MAX_TOKENS = 16
"""Tokens generated to answer a multiple-choice prompt by generation."""
_MAX_KEY_BYTES = 4096

_HTTP_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.UNAVAILABLE,
}


def status_for_http(status: int) -> grpc.StatusCode:
    """The gRPC status an HTTP error status is accounted as."""
    if status in _HTTP_CODES:
        return _HTTP_CODES[status]
    return grpc.StatusCode.INTERNAL if status >= 500 else grpc.StatusCode.FAILED_PRECONDITION


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """An error the core handles as it handles a node's."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class NoPromptLogprobsError(Exception):
    """The server's answer has no log-probabilities for the echoed prompt."""


def load_api_key(path: Path) -> str:
    """The API key in ``path`` (surrounding whitespace stripped).

    Raises:
        ValueError: the file is missing, unreadable, empty, too large or not one line.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except OSError as err:
        raise ValueError(f"{path} cannot be read: {err.strerror}") from None
    if len(raw) > _MAX_KEY_BYTES:
        raise ValueError(f"{path} is larger than {_MAX_KEY_BYTES} bytes")
    try:
        key = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8") from None
    if not key:
        raise ValueError(f"{path} is empty")
    if any(c.isspace() for c in key) or not key.isprintable():
        raise ValueError(f"{path} must hold one key on one line")
    return key


def match_choice(answer: str, choices: Sequence[str]) -> int | None:
    """The choice a generated answer gives, or None when it gives none (or is ambiguous).

    Compared normalised (``orchestrator.fusion.normalise_answer``: case, accents, punctuation,
    whitespace): the answer equals a choice or starts with it followed by a word break (the
    longest such choice wins); failing that, an answer cut short that is a prefix of exactly
    one choice picks it.
    """
    said = normalise_answer(answer)
    if not said:
        return None
    options = [normalise_answer(c) for c in choices]
    starts = [
        (len(option), i)
        for i, option in enumerate(options)
        if option and (said == option or said.startswith(option + " "))
    ]
    if starts:
        longest = max(length for length, _ in starts)
        winners = [i for length, i in starts if length == longest]
        return winners[0] if len(set(options[i] for i in winners)) == 1 else None
    prefixed = [i for i, option in enumerate(options) if option.startswith(said)]
    return prefixed[0] if len(prefixed) == 1 else None


def _softmax(values: Sequence[float]) -> tuple[float, ...]:
    peak = max(values)
    weights = [math.exp(v - peak) for v in values]
    total = sum(weights)
    return tuple(w / total for w in weights)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def echo_logprobs(prompt: str, choice: str, entry: object) -> tuple[float, int, int]:
    """(summed log-probability of the choice's tokens, their count, prompt tokens).

    ``entry`` is one element of a ``/completions`` answer's ``choices`` with legacy
    ``logprobs`` (``tokens``, ``token_logprobs``, ``text_offset``). A token belongs to the
    choice when it ends past the prompt and starts before the end of ``prompt + choice``.

    Raises:
        NoPromptLogprobsError: the prompt was not echoed with log-probabilities.
    """
    if not isinstance(entry, dict):
        raise NoPromptLogprobsError("a choice is not an object")
    full = prompt + choice
    text = entry.get("text")
    if not isinstance(text, str) or not text.startswith(full):
        raise NoPromptLogprobsError("the prompt was not echoed")
    logprobs = entry.get("logprobs")
    if not isinstance(logprobs, dict):
        raise NoPromptLogprobsError("no legacy logprobs object")
    tokens = logprobs.get("tokens")
    values = logprobs.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values):
        raise NoPromptLogprobsError("no tokens with token_logprobs")
    if not all(isinstance(t, str) for t in tokens):
        raise NoPromptLogprobsError("tokens are not strings")
    offsets = logprobs.get("text_offset")
    if not (
        isinstance(offsets, list)
        and len(offsets) == len(tokens)
        and all(_count(o) == o for o in offsets)
    ):
        offsets, position = [], 0
        for token in tokens:
            offsets.append(position)
            position += len(token)
    if not tokens or offsets[0] != 0:
        raise NoPromptLogprobsError("the echoed tokens do not start at the prompt")
    total, count, prompt_tokens = 0.0, 0, 0
    for token, value, offset in zip(tokens, values, offsets, strict=True):
        end = offset + len(token)
        if end <= len(prompt):
            prompt_tokens += 1
        elif offset < len(full):
            number = _number(value)
            if number is None:
                raise NoPromptLogprobsError("a choice token has no log-probability")
            total += number
            count += 1
    if count == 0 or prompt_tokens == 0:
        raise NoPromptLogprobsError("no prompt or choice tokens among the echoed ones")
    return total, count, prompt_tokens


class OpenAIExpertClient:
    """An OpenAI-compatible server as an expert (see the module docstring).

    ``transport`` replaces the network (tests); ``api_key`` is sent as a bearer token.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        power_w: float | None = None,
        multiple_choice: MultipleChoice = "auto",
        endpoint: Endpoint = "completions",
        device: str = "",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.power_w = power_w
        self.multiple_choice: MultipleChoice = multiple_choice
        self.endpoint: Endpoint = endpoint
        self.device = device
        root = self.base_url.removesuffix("/v1")
        self._health_url = f"{root}/health"
        self._models_url = f"{self.base_url}/models"
        self._health_via_models = False  # set once /health turns out not to exist
        self.echo_supported: bool | None = None  # auto: None until the server has shown which
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(60.0),
            transport=transport,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # health and info

    async def check(self, *, timeout_s: float) -> str:
        """Return "" when the server serves; otherwise why not (one line)."""
        if not self._health_via_models:
            try:
                response = await self._http.get(self._health_url, timeout=timeout_s)
            except httpx.HTTPError as err:
                return f"/health: {_describe(err)}"
            if response.status_code == 200:
                return ""
            if response.status_code not in (404, 405, 501):
                return f"/health answered HTTP {response.status_code}"
            self._health_via_models = True  # Ollama: no /health; /v1/models answers
        try:
            response = await self._http.get(self._models_url, timeout=timeout_s)
        except httpx.HTTPError as err:
            return f"/v1/models: {_describe(err)}"
        if response.status_code != 200:
            return f"/v1/models answered HTTP {response.status_code}"
        return ""

    async def info(self, *, timeout_s: float | None = 10.0) -> NodeInfo:
        """What the server serves: the model name, with its context size where listed."""
        context_tokens = 0
        owned_by = ""
        try:
            response = await self._http.get(self._models_url, timeout=timeout_s)
            listed = response.json().get("data", []) if response.status_code == 200 else []
        except (httpx.HTTPError, ValueError, AttributeError):
            listed = []
        for entry in listed if isinstance(listed, list) else []:
            if isinstance(entry, dict) and entry.get("id") == self.model:
                meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
                context_tokens = _count(entry.get("max_model_len")) or _count(
                    (meta or {}).get("n_ctx_train")
                )
                owned_by = str(entry.get("owned_by", ""))[:64]
        estimated = self.power_w is not None
        return NodeInfo(
            model_id=self.model,
            family="",
            quantization="",
            context_tokens=context_tokens,
            device_kind=self.device,
            device_name="",
            energy_source="estimated" if estimated else "unavailable",
            energy_scope=self._energy_scope(),
            energy_resolution_s=0.0,
            energy_rejected=(),
            state="serving",
            engine="openai",
            chat_template=self.endpoint == "chat",
            n_gpu_layers=0,
            n_threads=0,
            max_queue_depth=0,
            version=owned_by,
            model_size_bytes=0,
            model_sha256="",
        )

    # requests

    async def generate(
        self,
        prompt: str,
        *,
        timeout_s: float | None = None,
        on_chunk: Callable[[TokenChunk], None] | None = None,
        **options: Any,
    ) -> GenerateResult:
        """One generation; with ``on_chunk`` it is streamed (server-sent events) to it."""
        started = time.monotonic()
        request_id = str(options.get("request_id") or "")
        max_tokens = options.get("max_tokens") or DEFAULT_LIMITS.default_max_tokens
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": int(max_tokens),
            "temperature": float(options.get("temperature") or 0.0),
        }
        if options.get("seed") is not None:
            body["seed"] = int(options["seed"])
        if options.get("stop"):
            body["stop"] = list(options["stop"])
        chat = self.endpoint == "chat"
        path = "chat/completions" if chat else "completions"
        if chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if on_chunk is not None:
            return await self._stream(path, body, timeout_s, request_id, on_chunk, started)
        data = await self._post(path, body, timeout_s, request_id)
        first = _first_choice(data)
        if chat:
            message = first.get("message")
            text = message.get("content") if isinstance(message, dict) else None
        else:
            text = first.get("text")
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise rpc_error(grpc.StatusCode.INTERNAL, "the server's answer has no text")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        elapsed = time.monotonic() - started
        return GenerateResult(
            text=text,
            finish_reason="length" if first.get("finish_reason") == "length" else "stop",
            prompt_tokens=_count((usage or {}).get("prompt_tokens")),
            completion_tokens=_count((usage or {}).get("completion_tokens")),
            latency=_latency(data, elapsed),
            energy=self._energy(elapsed),
        )

    async def _stream(
        self,
        path: str,
        body: dict[str, Any],
        timeout_s: float | None,
        request_id: str,
        on_chunk: Callable[[TokenChunk], None],
        started: float,
    ) -> GenerateResult:
        """``stream = true``: each text piece to ``on_chunk`` as it arrives, usage at the end."""
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        pieces: list[str] = []
        chunks: list[TokenChunk] = []
        usage: dict[str, Any] = {}
        last: dict[str, Any] = {}
        finish: object = None
        async with (
            self._calling(path, timeout_s),
            self._http.stream(
                "POST",
                f"{self.base_url}/{path}",
                json=body,
                timeout=timeout_s,
                headers=_id_header(request_id),
            ) as response,
        ):
            if response.status_code >= 400:
                await response.aread()
                raise _http_error(path, response)
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                try:
                    event = json.loads(payload)
                except ValueError:
                    raise rpc_error(
                        grpc.StatusCode.INTERNAL, f"/{path}: a streamed event is not JSON"
                    ) from None
                if not isinstance(event, dict):
                    continue
                last = event
                if isinstance(event.get("usage"), dict):
                    usage = event["usage"]
                for choice in event.get("choices") or []:
                    if not isinstance(choice, dict):
                        continue
                    delta = choice.get("delta")
                    piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
                    finish = choice.get("finish_reason") or finish
                    if isinstance(piece, str) and piece:
                        pieces.append(piece)
                        chunk = TokenChunk(piece, 1, time.monotonic() - started)
                        chunks.append(chunk)
                        on_chunk(chunk)
        elapsed = time.monotonic() - started
        return GenerateResult(
            text="".join(pieces),
            finish_reason="length" if finish == "length" else "stop",
            prompt_tokens=_count(usage.get("prompt_tokens")),
            completion_tokens=_count(usage.get("completion_tokens")) or len(chunks),
            latency=_latency(last, elapsed),
            energy=self._energy(elapsed),
            chunks=tuple(chunks),
        )

    async def score(
        self,
        prompt: str,
        choices: Sequence[str],
        *,
        chat_template: bool = False,
        timeout_s: float | None = None,
        request_id: str = "",
    ) -> ScoreResult:
        """Score the choices by prompt log-probabilities or by generation (module docstring).

        ``chat_template`` is not applied to log-probability scoring (the completions endpoint
        takes raw text); generation uses the configured endpoint.
        """
        started = time.monotonic()
        mode = self.multiple_choice
        if mode == "logprobs" or (mode == "auto" and self.echo_supported is not False):
            try:
                result = await self._score_echo(prompt, choices, timeout_s, started, request_id)
            except NoPromptLogprobsError as err:
                if mode == "logprobs":
                    raise rpc_error(
                        grpc.StatusCode.UNIMPLEMENTED,
                        f"the server returned no prompt log-probabilities ({err}); "
                        'set multiple_choice = "generate"',
                    ) from None
                self._echo_refused(str(err))
            except grpc.aio.AioRpcError as err:
                refused = err.code() in (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.UNIMPLEMENTED,
                ) or (err.code() == grpc.StatusCode.INTERNAL and "echo" in (err.details() or ""))
                if mode == "logprobs" or self.echo_supported or not refused:
                    raise
                self._echo_refused(err.details() or err.code().name)
            else:
                self.echo_supported = True
                return result
        if timeout_s is not None:
            timeout_s = timeout_s - (time.monotonic() - started)
            if timeout_s <= 0:
                raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "no time left to generate")
        return await self._score_generate(prompt, choices, timeout_s, started, request_id)

    def _echo_refused(self, why: str) -> None:
        self.echo_supported = False
        logger.warning(
            "%s (%s): no prompt log-probabilities (%s); multiple choice by generation from now on",
            self.base_url,
            self.model,
            why,
        )

    async def _score_echo(
        self,
        prompt: str,
        choices: Sequence[str],
        timeout_s: float | None,
        started: float,
        request_id: str = "",
    ) -> ScoreResult:
        """One echo request per choice, in parallel (a prompt list is not served everywhere)."""

        async def one(choice: str) -> tuple[dict[str, Any], tuple[float, int, int]]:
            body = {
                "model": self.model,
                "prompt": prompt + choice,
                "echo": True,
                "logprobs": 1,
                "max_tokens": 1,
                "temperature": 0.0,
            }
            data = await self._post("completions", body, timeout_s, request_id)
            entries = data.get("choices")
            if not isinstance(entries, list) or len(entries) != 1:
                raise NoPromptLogprobsError("expected one choice in the answer")
            return data, echo_logprobs(prompt, choice, entries[0])

        tasks = [asyncio.ensure_future(one(choice)) for choice in choices]
        try:
            answers = await asyncio.gather(*tasks)
        except BaseException:  # the first failure is the answer; stop the others
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        sums = [total for _, (total, _, _) in answers]
        elapsed = time.monotonic() - started
        return ScoreResult(
            choices=tuple(choices),
            logprobs=tuple(sums),
            probs=_softmax(sums),
            choice_tokens=tuple(count for _, (_, count, _) in answers),
            prompt_tokens=min(in_prompt for _, (_, _, in_prompt) in answers),
            latency=_latency(answers[0][0], elapsed),
            energy=self._energy(elapsed),
        )

    async def _score_generate(
        self,
        prompt: str,
        choices: Sequence[str],
        timeout_s: float | None,
        started: float,
        request_id: str = "",
    ) -> ScoreResult:
        generated = await self.generate(
            prompt, timeout_s=timeout_s, max_tokens=MATCH_MAX_TOKENS, request_id=request_id
        )
        index = match_choice(generated.text, choices)
        logprobs = [
            0.0 if index is None or i == index else MISS_LOGPROB for i in range(len(choices))
        ]
        elapsed = time.monotonic() - started
        return ScoreResult(
            choices=tuple(choices),
            logprobs=tuple(logprobs),
            probs=_softmax(logprobs),
            choice_tokens=(1,) * len(choices),
            prompt_tokens=generated.prompt_tokens,
            latency=Latency(0.0, generated.latency.prefill_s, generated.latency.decode_s, elapsed),
            energy=self._energy(elapsed),
        )

    async def _post(
        self, path: str, body: dict[str, Any], timeout_s: float | None, request_id: str = ""
    ) -> dict[str, Any]:
        """POST JSON; ``request_id`` goes along as ``x-request-id`` (printable ASCII only)."""
        async with self._calling(path, timeout_s):
            response = await self._http.post(
                f"{self.base_url}/{path}",
                json=body,
                timeout=timeout_s,
                headers=_id_header(request_id),
            )
        if response.status_code >= 400:
            raise _http_error(path, response)
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise rpc_error(grpc.StatusCode.INTERNAL, f"/{path}: the answer is not a JSON object")
        return data

    @contextlib.asynccontextmanager
    async def _calling(self, path: str, timeout_s: float | None) -> AsyncIterator[None]:
        """The client deadline over a whole call; transport failures as the core's codes."""
        try:
            async with asyncio.timeout(timeout_s):
                yield
        except TimeoutError:
            raise rpc_error(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"/{path}: no answer within {timeout_s:g} s"
            ) from None
        except httpx.TimeoutException:
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, f"/{path}: timed out") from None
        except httpx.HTTPError as err:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"/{path}: {_describe(err)}") from None

    # accounting

    def _energy_scope(self) -> str:
        if self.power_w is None:
            return "not reported by an OpenAI-compatible server"
        return (
            f"configured power model: power_w = {self.power_w:g} W x wall latency at the "
            "orchestrator (not measured)"
        )

    def _energy(self, latency_s: float) -> Energy:
        """Unknown energy, or the configured power model's estimate (labelled so)."""
        estimated = self.power_w is not None
        return Energy(
            energy_j=self.power_w * latency_s if self.power_w is not None else None,
            source="estimated" if estimated else "unavailable",
            method="configured-power-model" if estimated else "",
            scope=self._energy_scope(),
            window_s=latency_s,
            resolution_s=0.0,
            approximate=estimated,
            uncertainty_j=None,
            emulated=False,
        )


def _id_header(request_id: str) -> dict[str, str] | None:
    """``x-request-id`` for the server's logs: printable ASCII, at most 128 characters."""
    safe = "".join(c for c in request_id if c.isascii() and c.isprintable())[:128]
    return {"x-request-id": safe} if safe.strip() else None


def _http_error(path: str, response: httpx.Response) -> grpc.aio.AioRpcError:
    return rpc_error(
        status_for_http(response.status_code),
        f"/{path} answered HTTP {response.status_code}{_server_message(response)}",
    )


def _first_choice(data: dict[str, Any]) -> dict[str, Any]:
    entries = data.get("choices")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        raise rpc_error(grpc.StatusCode.INTERNAL, "the server's answer has no choices")
    first: dict[str, Any] = entries[0]
    return first


def _latency(data: dict[str, Any], elapsed_s: float) -> Latency:
    """Wall latency, with llama-server's ``timings`` (prompt / predicted ms) where present."""
    timings = data.get("timings")
    prefill_s = decode_s = 0.0
    if isinstance(timings, dict):
        prefill_s = (_number(timings.get("prompt_ms")) or 0.0) / 1000.0
        decode_s = (_number(timings.get("predicted_ms")) or 0.0) / 1000.0
    return Latency(0.0, max(0.0, prefill_s), max(0.0, decode_s), elapsed_s)


def _describe(err: httpx.HTTPError) -> str:
    """One line naming the transport failure (no URL credentials, no traceback)."""
    if isinstance(err, httpx.ConnectError):
        return "cannot connect"
    if isinstance(err, httpx.TimeoutException):
        return "timed out"
    return type(err).__name__


def _server_message(response: httpx.Response) -> str:
    """``: message`` from an OpenAI error body, one line and short; "" if none."""
    try:
        body = response.json()
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    if not isinstance(message, str) or not message.strip():
        return ""
    line = " ".join(message.split())
    return f": {line[:200]}"
