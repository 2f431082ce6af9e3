"""The OpenAI-compatible HTTP API of the orchestrator (FastAPI on uvicorn, same process and loop).

Routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (``stream: true`` gives
server-sent events ending in ``data: [DONE]``), ``GET /v1/models``, ``GET /health`` and
``GET /metrics``. A request is parsed by pydantic into the core's ``AskParams`` and answered by
the same ``Orchestrator.ask`` the gRPC servicer calls (no gRPC hop); the core validates values
and raises its own errors, which ``ERRORS`` maps to HTTP statuses in one table. The response is
built from the core's ``AskResult`` (no protobuf here). docs/http.md describes the API.

Streaming follows OpenAI's chunk format. An open prompt answered by one expert alone streams
its tokens as they are generated (the core's ``on_text``); otherwise the answer is sent once it
is fused, since fusion needs every selected expert's answer (or its deadline). Errors found
before the first text are plain HTTP errors; after it, an error event ends the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict
from typing import Literal, cast

import grpc
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.exceptions import HTTPException as StarletteHTTPException

from edge_node.security import AUTHORIZATION_KEY, BEARER_PREFIX, ServerSecurity
from orchestrator.core import AskParams, AskResult, ExpertOutcome, Orchestrator
from orchestrator.fusion import Scoring
from orchestrator.metrics import OrchestratorMetrics

logger = logging.getLogger(__name__)

ENSEMBLE_MODEL = "moe2"
JsonValue = str | int | float | bool | None | list["JsonValue"] | dict[str, "JsonValue"]
Json = dict[str, JsonValue]


# The one table from the core's error statuses to HTTP: (HTTP status, OpenAI error type, code).
ERRORS: dict[grpc.StatusCode, tuple[int, str, str | None]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", None),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error", "budget_infeasible"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error", None),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error", None),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error", "model_not_found"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "overloaded"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable", "no_expert_available"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error", "deadline_exceeded"),
}
_INTERNAL = (500, "internal_error", None)
# Core messages start with the field or budget they are about ("top_k: must be >= 1").
_FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?(?:\.[A-Za-z_][A-Za-z0-9_]*)*): ")
_BUDGET = re.compile(r"\b(energy_budget_j|delay_budget_s)\b")


class ApiError(Exception):
    """An HTTP-layer refusal with the OpenAI error fields."""

    def __init__(
        self, status: int, message: str, *, kind: str, param: str | None, code: str | None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code

    @classmethod
    def bad_field(cls, param: str, message: str) -> ApiError:
        """400 naming the field."""
        return cls(400, f"{param}: {message}", kind="invalid_request_error", param=param, code=None)

    @classmethod
    def from_status(cls, status_code: grpc.StatusCode, message: str) -> ApiError:
        """The HTTP form of a core error (its status code and one-line message)."""
        status, kind, code = ERRORS.get(status_code, _INTERNAL)
        match = _FIELD.match(message)
        param = match.group(1) if match else None
        if status_code == grpc.StatusCode.FAILED_PRECONDITION:
            budget = _BUDGET.search(message)
            param = budget.group(1) if budget else param
        return cls(status, message, kind=kind, param=param, code=code)

    def body(self) -> Json:
        """OpenAI's error document."""
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        """The error as an HTTP response (429 and 503 say when to retry)."""
        headers = {"Retry-After": "1"} if self.status in (429, 503) else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    """One content part of a chat message (text only)."""

    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    """One chat message."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text (parts concatenated)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Strict):
    """OpenAI's stream options (usage is always in the last chunk here)."""

    include_usage: StrictBool | None = None


class _Body(_Strict):
    """Fields both completion routes share: OpenAI's, then MoE²'s budgets and options.

    Unknown fields are refused (400 naming them): a misspelt budget must not be served as
    "no budget". Sampling fields are accepted and ignored (experts decode greedily).
    """

    model: str
    max_tokens: int | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    user: str | None = None
    # MoE² extras (docs/http.md); values are checked by the core (orchestrator.core.validate).
    energy_budget_j: float | None = None
    delay_budget_s: float | None = None
    top_k: int | None = None
    category: str | None = None
    choices: list[str] | None = None
    early_exit: StrictBool | None = None
    scoring: str | None = None


class ChatCompletionRequest(_Body):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: StrictBool | None = None


class CompletionRequest(_Body):
    """``POST /v1/completions``."""

    prompt: str | list[str]
    logprobs: int | None = None
    echo: StrictBool | None = None


def chat_prompt(messages: Sequence[ChatMessage]) -> str:
    """One prompt from a conversation (the core takes one prompt).

    A single user message is sent exactly as written (as ``moe2 ask`` would); a longer
    conversation is written out as ``Role: text`` lines ending with ``Assistant:``.
    """
    if len(messages) == 1 and messages[0].role == "user":
        return messages[0].text()
    lines = [f"{m.role.capitalize()}: {m.text()}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


def _unsupported(body: _Body) -> None:
    """Refuse OpenAI features the ensemble cannot honour, naming the field."""
    if body.n is not None and body.n != 1:
        raise ApiError.bad_field("n", f"only 1 completion per request is served, got {body.n}")
    if body.stop:
        raise ApiError.bad_field("stop", "stop sequences are not supported")
    if isinstance(body, ChatCompletionRequest) and body.logprobs:
        raise ApiError.bad_field("logprobs", "not supported; see moe2.fused_probs")
    if isinstance(body, CompletionRequest):
        if body.logprobs:
            raise ApiError.bad_field("logprobs", "not supported; see moe2.fused_probs")
        if body.echo:
            raise ApiError.bad_field("echo", "not supported")


def ask_params(body: _Body, prompt: str, expert: str, request_id: str) -> AskParams:
    """The core's request from a parsed body (the core then validates its values)."""
    _unsupported(body)
    # The core's validate() refuses an unknown scoring (the one rule, the gRPC message).
    typed = cast(Scoring, body.scoring or "sum")
    max_tokens = body.max_tokens
    if isinstance(body, ChatCompletionRequest) and body.max_completion_tokens is not None:
        max_tokens = body.max_completion_tokens
    return AskParams(
        prompt=prompt,
        category=body.category or "",
        choices=tuple(body.choices or ()),
        energy_budget_j=body.energy_budget_j,
        delay_budget_s=body.delay_budget_s,
        top_k=body.top_k,
        max_tokens=max_tokens,
        scoring=typed,
        request_id=request_id,
        early_exit=body.early_exit,
        expert=expert,
    )


def _expert_json(o: ExpertOutcome) -> Json:
    return {
        "expert": o.expert,
        "gate_weight": o.gate_weight,
        "planned_weight": o.planned_weight,
        "outcome": o.outcome,
        "status_code": o.status_code,
        "latency_s": o.latency_s,
        "node_latency": None if o.node_latency is None else dict(asdict(o.node_latency)),
        "energy": None if o.energy is None else o.energy.to_json(),
        "prompt_tokens": o.prompt_tokens,
        "completion_tokens": o.completion_tokens,
        "probs": list(o.probs),
        "text": o.text,
    }


def moe2_json(result: AskResult, choices: Sequence[str]) -> Json:
    """The ``moe2`` object: who answered with what weight, what it cost, what was predicted."""
    return {
        "request_id": result.request_id,
        "subset": list(result.subset),
        "category": result.category,
        "choices": list(choices),
        "choice_index": result.choice_index,
        "fused_probs": list(result.fused_probs),
        "experts": [_expert_json(o) for o in result.experts],
        "totals": {
            "latency_s": result.latency_s,
            "energy_j": result.energy_j,
            "energy_complete": result.energy_complete,
            "energy_includes_estimates": result.energy_includes_estimates,
        },
        "budgets": {
            "energy_budget_j": result.energy_budget_j,
            "delay_budget_s": result.delay_budget_s,
            "top_k": result.top_k,
            "within_delay_budget": result.within_delay_budget,
            "within_energy_budget": result.within_energy_budget,
        },
        "predicted": {
            "energy_j": result.predicted_energy_j,
            "latency_s": result.predicted_latency_s,
        },
        "gate_trained": result.gate_trained,
        "encode_s": result.encode_s,
        "gate_s": result.gate_s,
        "plan_s": result.plan_s,
        "early_exit": result.early_exit,
        "experts_skipped": result.experts_skipped,
    }


def usage_json(result: AskResult) -> Json:
    """Tokens summed over the experts that answered (what the fleet processed)."""
    prompt = sum(o.prompt_tokens or 0 for o in result.experts)
    completion = sum(o.completion_tokens or 0 for o in result.experts)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _sse(document: Json | str) -> bytes:
    data = document if isinstance(document, str) else json.dumps(document)
    return f"data: {data}\n\n".encode()


def _piece(kind: Literal["chat", "text"], text: str, finish_reason: str | None) -> Json:
    """One streamed choice: a delta (chat) or a text fragment (completions)."""
    if kind == "chat":
        delta: Json = {"content": text} if text or finish_reason is None else {}
        return {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}


async def _next_text(texts: asyncio.Queue[str], answering: asyncio.Task[AskResult]) -> str | None:
    """The next streamed text, or None once the answer is done and every text was taken."""
    while True:
        if not texts.empty():
            return texts.get_nowait()
        if answering.done():
            return None
        getter = asyncio.ensure_future(texts.get())
        await asyncio.wait({getter, answering}, return_when=asyncio.FIRST_COMPLETED)
        # No await between this check and the cancel: nothing can complete the getter between.
        if getter.done() and not getter.cancelled():
            return getter.result()
        getter.cancel()


class HttpApi:
    """The FastAPI app over one ``Orchestrator`` (event-loop owned, like the core)."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        metrics: OrchestratorMetrics | None = None,
        security: ServerSecurity | None = None,
        *,
        max_in_flight: int = 256,
    ) -> None:
        self.orchestrator = orchestrator
        self.metrics = metrics
        self.security = security  # the gRPC port's tokens hold here too (one token rule)
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.created = int(time.time())
        self.app = self._build()

    def _build(self) -> FastAPI:
        app = FastAPI(
            title="moe2-edge",
            description="OpenAI-compatible API of the MoE² orchestrator (docs/http.md)",
            docs_url=None,
            redoc_url=None,
            openapi_url=None,
        )

        @app.exception_handler(RequestValidationError)
        async def invalid_body(request: Request, err: RequestValidationError) -> JSONResponse:
            return _validation_error(err).response()

        @app.exception_handler(StarletteHTTPException)
        async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
            kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
            message = "no such route" if err.status_code == 404 else str(err.detail)
            return ApiError(err.status_code, message, kind=kind, param=None, code=None).response()

        @app.exception_handler(Exception)
        async def internal(request: Request, err: Exception) -> JSONResponse:
            logger.error("unexpected error in %s", request.url.path, exc_info=err)
            return ApiError(
                500,
                "internal error; see the server log",
                kind="internal_error",
                param=None,
                code=None,
            ).response()

        @app.middleware("http")
        async def authenticate(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            # /health stays open for probes and /metrics for scrapers, as gRPC health does
            if self.security is None or request.url.path in ("/health", "/metrics"):
                return await call_next(request)
            header = request.headers.get(AUTHORIZATION_KEY)
            presented = None
            if header is not None:
                presented = header[len(BEARER_PREFIX) :] if header.startswith(BEARER_PREFIX) else ""
            refusal = self.security.token_refusal(presented, admin_rpc=False, name="authorization")
            if refusal is None:
                return await call_next(request)
            return ApiError.from_status(*refusal).response()

        @app.middleware("http")
        async def measure(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            if self.metrics is None or request.url.path == "/metrics":
                return await call_next(request)
            instruments = self.metrics.http
            route = f"{request.method} {request.url.path}"
            known = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health"}
            if request.method not in ("GET", "POST") or (
                request.url.path not in known and not request.url.path.startswith("/v1/models/")
            ):
                route = "other"  # bound the label set: no label per unknown path or method
            elif request.url.path.startswith("/v1/models/"):
                route = "GET /v1/models/{model}"
            started = time.monotonic()
            instruments.in_flight.inc()
            status = 500  # a bug escaping the route: the app's handler answers 500
            try:
                response = await call_next(request)
                status = response.status_code
            finally:
                instruments.in_flight.dec()
                instruments.requests.labels(rpc=route, code=str(status)).inc()
                instruments.duration.labels(rpc=route).observe(time.monotonic() - started)
            return response

        @app.post("/v1/chat/completions", response_model=None)
        async def chat_completions(body: ChatCompletionRequest) -> Response:
            return await self._complete("chat", body, chat_prompt(body.messages))

        @app.post("/v1/completions", response_model=None)
        async def completions(body: CompletionRequest) -> Response:
            prompt = body.prompt
            if isinstance(prompt, list):
                if len(prompt) != 1:
                    return ApiError.bad_field(
                        "prompt", f"one prompt per request, got {len(prompt)}"
                    ).response()
                prompt = prompt[0]
            return await self._complete("text", body, prompt)

        @app.get("/v1/models", response_model=None)
        async def models() -> Response:
            data: list[JsonValue] = list(self._models())
            return JSONResponse({"object": "list", "data": data})

        @app.get("/v1/models/{model}", response_model=None)
        async def model(model: str) -> Response:
            for entry in self._models():
                if entry["id"] == model:
                    return JSONResponse(entry)
            return ApiError.from_status(
                grpc.StatusCode.NOT_FOUND, f"model: no model {model!r}; GET /v1/models lists them"
            ).response()

        @app.get("/health", response_model=None)
        async def health() -> Response:
            registry = self.orchestrator.registry
            up = len(registry.up())
            body: Json = {
                "status": "ok" if up else "unavailable",
                "experts_up": up,
                "experts": len(registry.all()),
            }
            return JSONResponse(body, status_code=200 if up else 503)

        @app.get("/metrics", response_model=None)
        async def metrics() -> Response:
            if self.metrics is None:
                return ApiError(
                    404, "metrics are off", kind="not_found_error", param=None, code=None
                ).response()
            payload = await asyncio.to_thread(generate_latest, self.metrics.registry)
            return Response(payload, media_type=CONTENT_TYPE_LATEST)

        return app

    def _models(self) -> list[Json]:
        entries: list[Json] = [
            {
                "id": ENSEMBLE_MODEL,
                "object": "model",
                "created": self.created,
                "owned_by": "moe2-edge",
                "moe2": {"kind": "ensemble", "experts_up": len(self.orchestrator.registry.up())},
            }
        ]
        for expert in self.orchestrator.registry.all():
            entries.append(
                {
                    "id": expert.name,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "moe2-edge",
                    "moe2": {
                        "kind": "expert",
                        "health": expert.health,
                        "model_id": expert.info.model_id if expert.info else "",
                        "profile_source": self.orchestrator.book.source(expert.name),
                        "profile_age_s": self.orchestrator.book.age_s(expert.name),
                    },
                }
            )
        return entries

    async def _complete(self, kind: Literal["chat", "text"], body: _Body, prompt: str) -> Response:
        """Parse, refuse what can never work, ask the core, answer (or stream) the result."""
        try:
            expert = "" if body.model == ENSEMBLE_MODEL else body.model  # the core checks it
            request_id = uuid.uuid4().hex
            params = ask_params(body, prompt, expert, request_id)
            if self.in_flight >= self.max_in_flight:
                raise ApiError.from_status(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"too many requests in flight ({self.in_flight}, at most "
                    f"{self.max_in_flight}); retry later",
                )
        except ApiError as err:
            return err.response()
        head: Json = {
            "id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{request_id}",
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": body.model,
        }
        texts: asyncio.Queue[str] = asyncio.Queue()
        self.in_flight += 1
        answering = asyncio.create_task(
            self.orchestrator.ask(params, on_text=texts.put_nowait if body.stream else None)
        )
        answering.add_done_callback(lambda _: self._release())
        # Wait for the answer, or (streaming one expert's open answer) for its first text, so
        # that a refusal is still an HTTP status rather than an error inside a 200 stream.
        first = await _next_text(texts, answering) if body.stream else None
        if first is None:
            await asyncio.wait({answering})
            refusal = self._refusal(kind, answering)
            if refusal is not None:
                return refusal.response()
        if body.stream:
            return StreamingResponse(
                self._events(kind, head, params, answering, texts, first),
                media_type="text/event-stream",
            )
        result = answering.result()
        choice: Json = {
            "index": 0,
            "finish_reason": result.finish_reason,
            "logprobs": None,
        }
        if kind == "chat":
            head["object"] = "chat.completion"
            choice["message"] = {"role": "assistant", "content": result.answer}
        else:
            choice["text"] = result.answer
        return JSONResponse({**head, "choices": [choice], **_extra(result, params)})

    def _release(self) -> None:
        self.in_flight -= 1

    def _refusal(
        self, kind: Literal["chat", "text"], answering: asyncio.Task[AskResult]
    ) -> ApiError | None:
        """The HTTP form of the core's error, if the answer failed (None when it did not).

        Raises:
            Exception: a bug (an exception without a status): the app's handler logs it and
                answers a generic 500.
        """
        if answering.cancelled():
            return ApiError(
                503, "the request was cancelled", kind="service_unavailable", param=None, code=None
            )
        err = answering.exception()
        if err is None:
            return None
        status = getattr(err, "status_code", None)
        if not isinstance(status, grpc.StatusCode):
            raise err
        logger.info("%s -> %s: %s", kind, status.name, err)
        refusal = ApiError.from_status(status, str(err))
        # Name the field the caller sent: the core's expert is the model, and the chat route's
        # prompt is its messages.
        renamed = {"expert": "model", **({"prompt": "messages"} if kind == "chat" else {})}
        if refusal.param in renamed:
            core_name = refusal.param
            refusal.param = renamed[core_name]
            refusal.message = refusal.param + refusal.message.removeprefix(core_name)
        return refusal

    async def _events(
        self,
        kind: Literal["chat", "text"],
        head: Json,
        params: AskParams,
        answering: asyncio.Task[AskResult],
        texts: asyncio.Queue[str],
        first: str | None,
    ) -> AsyncIterator[bytes]:
        """OpenAI's event stream of one answer, ending with ``[DONE]``.

        A role chunk (chat), the text as it comes, then a last chunk with finish_reason, usage
        and moe2. An error after the first text is an error event (the 200 is already sent). A
        client that goes away cancels the request, and so the experts' calls.
        """
        try:
            if kind == "chat":
                role: Json = {"role": "assistant", "content": ""}
                yield _sse(
                    {**head, "choices": [{"index": 0, "delta": role, "finish_reason": None}]}
                )
            sent = ""
            text = first
            while text is not None:
                sent += text
                yield _sse({**head, "choices": [_piece(kind, text, None)]})
                text = await _next_text(texts, answering)
            await asyncio.wait({answering})
            try:
                refusal = self._refusal(kind, answering)
            except Exception as err:  # a bug, after the 200: a generic error event
                logger.error("unexpected error in a stream", exc_info=err)
                refusal = ApiError(
                    500,
                    "internal error; see the server log",
                    kind="internal_error",
                    param=None,
                    code=None,
                )
            if refusal is not None:
                yield _sse(refusal.body())
                yield _sse("[DONE]")
                return
            result = answering.result()
            if result.answer.startswith(sent) and result.answer != sent:
                yield _sse({**head, "choices": [_piece(kind, result.answer[len(sent) :], None)]})
            elif not result.answer.startswith(sent):
                logger.warning(
                    "request %s: streamed text differs from the answer", params.request_id
                )
            last = _piece(kind, "", result.finish_reason)
            yield _sse({**head, "choices": [last], **_extra(result, params)})
            yield _sse("[DONE]")
        finally:
            answering.cancel()  # no-op once answered


def _extra(result: AskResult, params: AskParams) -> Json:
    """The fields after ``choices``: usage and the moe2 object."""
    return {"usage": usage_json(result), "moe2": moe2_json(result, params.choices)}


def _validation_error(err: RequestValidationError) -> ApiError:
    """400 naming the first bad field of the body (never pydantic's internals)."""
    errors = err.errors()
    if not errors:
        return ApiError(
            400, "invalid request body", kind="invalid_request_error", param=None, code=None
        )
    first = errors[0]
    param = ""
    for part in first.get("loc", ()):
        if part == "body" or (isinstance(part, str) and _is_union_tag(part)):
            continue  # union members add their type to the location ("prompt", "str")
        param += f"[{part}]" if isinstance(part, int) else f".{part}" if param else str(part)
    kind = first.get("type", "")
    if kind == "json_invalid":
        return ApiError(
            400, "body: not valid JSON", kind="invalid_request_error", param=None, code=None
        )
    if kind == "extra_forbidden":
        message = "unknown field"
    elif kind == "missing":
        message = "required"
    else:
        message = str(first.get("msg", "invalid value"))
    return ApiError(
        400,
        f"{param or 'body'}: {message}",
        kind="invalid_request_error",
        param=param or None,
        code=None,
    )


def _is_union_tag(part: str) -> bool:
    return part in {"str", "int", "float", "bool", "none", "TextPart"} or part.endswith("]")


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the orchestrator process owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """The HTTP API served by uvicorn on the running event loop."""

    def __init__(self, api: HttpApi, host: str, port: int) -> None:
        """Bind now (so the port is known and a clash fails at start-up).

        Raises:
            OSError: the address cannot be bound.
        """
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((host, port))
        except OSError:
            self._socket.close()
            raise
        self._socket.setblocking(False)
        self.host = host
        self.port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(
            api.app,
            lifespan="off",
            log_config=None,  # uvicorn's loggers propagate to the process's own logging set-up
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start serving; returns once uvicorn listens."""
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise OSError(f"the HTTP server on {self.host}:{self.port} did not start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Finish in-flight requests and close the port."""
        self._server.should_exit = True
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        self._socket.close()
