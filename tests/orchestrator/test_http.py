"""The OpenAI-compatible HTTP API, through the official `openai` client over loopback."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import grpc
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from openai.types.chat import ChatCompletionMessageParam

from edge_node.engine import FakeEngine
from edge_node.security import ServerSecurity
from edge_node.server import RunningNode
from orchestrator.client import AsyncClient
from orchestrator.config import ClusterConfig, NodeEntry
from orchestrator.server import RunningOrchestrator, start_orchestrator
from tests.helpers.nodes import StartNode
from tests.helpers.profiles import profile
from tests.scrape import delta, scrape, value

CHOICES = [" yes", " no"]
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Is it?"}]


async def serve(
    nodes: dict[str, RunningNode],
    tmp_path: Path,
    figures: dict[str, tuple[float, float]],
    **options: object,
) -> RunningOrchestrator:
    path = tmp_path / "profile.json"
    profile(figures).save(path)
    config = ClusterConfig.model_validate(
        {
            "nodes": [NodeEntry(name=n, address=f"127.0.0.1:{s.port}") for n, s in nodes.items()],
            "profile": path,
            **options,
        }
    )
    return await start_orchestrator(config, http_port=0, metrics_port=0)


def base_url(running: RunningOrchestrator) -> str:
    return f"http://127.0.0.1:{running.http_port}"


def client(running: RunningOrchestrator) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{base_url(running)}/v1", api_key="unused", max_retries=0, timeout=30
    )


async def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP call off the event loop (the server under test shares it)."""

    def call() -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(url, data=body, method=method)
        request.add_header("content-type", "application/json")
        for name, header in (headers or {}).items():
            request.add_header(name, header)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    return await asyncio.to_thread(call)


def error_message(err: openai.APIStatusError) -> str:
    """The server's own message (the client prefixes its ``.message`` with the status)."""
    assert isinstance(err.body, dict)
    assert set(err.body) == {"message", "type", "param", "code"}
    return str(err.body["message"])


@pytest.fixture
async def fleet(node_factory: StartNode) -> dict[str, RunningNode]:
    return {
        "fast": await node_factory(FakeEngine(model_id="fast")),
        "medium": await node_factory(FakeEngine(model_id="medium", token_delay_s=0.01)),
    }


@pytest.fixture
async def running(
    fleet: dict[str, RunningNode], tmp_path: Path
) -> AsyncIterator[RunningOrchestrator]:
    orchestrator = await serve(fleet, tmp_path, {"fast": (0.05, 1.0), "medium": (0.1, 2.0)})
    yield orchestrator
    await orchestrator.stop(None)


async def test_multiple_choice_chat_is_fused_and_accounted(running: RunningOrchestrator) -> None:
    async with client(running) as api:
        response = await api.chat.completions.create(
            model="moe2",
            messages=USER,
            extra_body={"choices": CHOICES, "category": "qa", "top_k": 2, "energy_budget_j": 5.0},
        )
    assert response.object == "chat.completion"
    assert response.model == "moe2"
    assert response.id.startswith("chatcmpl-")
    moe2: dict[str, Any] = (response.model_extra or {})["moe2"]
    answer = response.choices[0].message.content
    assert answer == CHOICES[moe2["choice_index"]]
    assert response.choices[0].finish_reason == "stop"
    assert moe2["fused_probs"][moe2["choice_index"]] == max(moe2["fused_probs"])
    experts = moe2["experts"]
    assert {e["expert"] for e in experts} == {"fast", "medium"}
    assert sum(e["gate_weight"] for e in experts) == pytest.approx(1.0)
    assert all(e["outcome"] == "ok" for e in experts)
    assert all(e["energy"]["source"] == "estimated" for e in experts)  # never passed as measured
    assert moe2["totals"]["energy_j"] == pytest.approx(sum(e["energy"]["joules"] for e in experts))
    assert moe2["totals"]["energy_includes_estimates"] is True
    assert moe2["budgets"]["energy_budget_j"] == 5.0
    assert moe2["predicted"]["energy_j"] == pytest.approx(3.0)  # both experts' profiled joules
    assert moe2["request_id"] in response.id
    assert response.usage is not None
    assert response.usage.prompt_tokens == sum(e["prompt_tokens"] for e in experts)
    assert response.usage.completion_tokens == sum(e["completion_tokens"] for e in experts)
    assert response.usage.total_tokens == (
        response.usage.prompt_tokens + response.usage.completion_tokens
    )


async def test_open_completion_generates_text(running: RunningOrchestrator) -> None:
    async with client(running) as api:
        response = await api.completions.create(
            model="moe2", prompt="Say something", max_tokens=3, extra_body={"top_k": 1}
        )
    assert response.object == "text_completion"
    text = response.choices[0].text
    assert len(text.split()) == 3 and text.split()[0].startswith("w")  # the fake engine's words
    assert response.choices[0].finish_reason == "length"  # max_tokens ran out
    assert response.usage is not None and response.usage.completion_tokens == 3


async def test_streaming_chat_sends_the_answer_then_done(running: RunningOrchestrator) -> None:
    request = {"choices": CHOICES, "category": "qa", "top_k": 2}
    async with client(running) as api:
        whole = await api.chat.completions.create(
            model="moe2",
            messages=USER,
            extra_body=request,
        )
        stream = await api.chat.completions.create(
            model="moe2",
            messages=USER,
            stream=True,
            extra_body=request,
        )
        chunks = [chunk async for chunk in stream]
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == whole.choices[0].message.content  # deterministic fake experts
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert len((chunks[-1].model_extra or {})["moe2"]["experts"]) == 2

    body = json.dumps({"model": "moe2", "prompt": "Hi", "max_tokens": 2, "stream": True}).encode()
    status, headers, raw = await http("POST", f"{base_url(running)}/v1/completions", body)
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    events = [e for e in raw.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2].removeprefix("data: "))
    assert last["object"] == "text_completion"
    assert last["choices"][0]["finish_reason"] == "length"


async def test_models_are_the_ensemble_and_each_expert_alone(
    running: RunningOrchestrator,
) -> None:
    async with client(running) as api:
        models = [m.id async for m in api.models.list()]
        assert models == ["moe2", "fast", "medium"]
        alone = await api.chat.completions.create(
            model="medium",
            messages=USER,
            extra_body={"choices": CHOICES, "category": "qa", "top_k": 2},
        )
        assert (await api.models.retrieve("fast")).id == "fast"
    moe2 = (alone.model_extra or {})["moe2"]
    assert alone.model == "medium"
    assert moe2["subset"] == ["medium"]
    assert [(e["expert"], e["gate_weight"]) for e in moe2["experts"]] == [("medium", 1.0)]
    assert moe2["predicted"]["energy_j"] == pytest.approx(2.0)  # planned like any request


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"energy_budget_j": -1.0}, "energy_budget_j"),  # the core's value check
        ({"top_k": 0}, "top_k"),
        ({"category": "poetry"}, "category"),
        ({"scoring": "median"}, "scoring"),
        ({"energy_budget": 5.0}, "energy_budget"),  # a misspelt budget is refused, not ignored
        ({"delay_budget_s": "soon"}, "delay_budget_s"),  # pydantic's type check
        ({"choices": [" yes", ""]}, "choices[1]"),  # the empty one
        ({"n": 2}, "n"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": ""}]}, "messages"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(
    running: RunningOrchestrator, extra: dict[str, object], param: str
) -> None:
    messages = cast(list[ChatCompletionMessageParam], extra.pop("messages", USER))
    async with client(running) as api:
        with pytest.raises(openai.BadRequestError) as excinfo:
            await api.chat.completions.create(
                model="moe2",
                messages=messages,
                extra_body={"choices": CHOICES, "category": "qa", **extra},
            )
    err = excinfo.value
    assert err.status_code == 400
    assert err.type == "invalid_request_error"
    assert err.param == param
    message = error_message(err)
    assert message.startswith(f"{param}: ") or message.startswith(f"{param}[")
    assert "Traceback" not in message and "pydantic" not in message


async def test_unknown_model_and_route_are_404(running: RunningOrchestrator) -> None:
    async with client(running) as api:
        with pytest.raises(openai.NotFoundError) as excinfo:
            await api.chat.completions.create(
                model="gpt-17",
                messages=USER,
            )
    assert excinfo.value.code == "model_not_found"
    assert excinfo.value.param == "model"
    assert "gpt-17" in error_message(excinfo.value)
    status, _, raw = await http("GET", f"{base_url(running)}/v2/nothing")
    assert status == 404
    assert set(json.loads(raw)["error"]) == {"message", "type", "param", "code"}


async def test_malformed_json_is_a_400_without_internals(running: RunningOrchestrator) -> None:
    status, _, raw = await http("POST", f"{base_url(running)}/v1/chat/completions", b"{nope")
    assert status == 400
    assert json.loads(raw) == {
        "error": {
            "message": "body: not valid JSON",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


@pytest.mark.parametrize(
    ("budgets", "named"),
    [({"delay_budget_s": 0.01}, "delay_budget_s"), ({"energy_budget_j": 0.5}, "energy_budget_j")],
)
async def test_a_budget_no_subset_meets_is_400_budget_infeasible(
    running: RunningOrchestrator, budgets: dict[str, float], named: str
) -> None:
    async with client(running) as api:
        with pytest.raises(openai.BadRequestError) as excinfo:
            await api.chat.completions.create(
                model="moe2",
                messages=USER,
                extra_body={"choices": CHOICES, "category": "qa", **budgets},
            )
    assert excinfo.value.code == "budget_infeasible"
    assert excinfo.value.param == named
    assert error_message(excinfo.value).startswith(named)


async def test_all_experts_late_is_504(node_factory: StartNode, tmp_path: Path) -> None:
    # The profile claims the node is fast, so the plan keeps it; it then takes 1 s per choice.
    slow = await node_factory(FakeEngine(token_delay_s=1.0))
    running = await serve({"slow": slow}, tmp_path, {"slow": (0.05, 1.0)})
    try:
        async with client(running) as api:
            with pytest.raises(openai.InternalServerError) as excinfo:
                await api.chat.completions.create(
                    model="moe2",
                    messages=USER,
                    extra_body={"choices": CHOICES, "category": "qa", "delay_budget_s": 0.3},
                )
    finally:
        await running.stop(None)
    assert excinfo.value.status_code == 504
    assert excinfo.value.code == "deadline_exceeded"


async def test_every_expert_busy_is_429(node_factory: StartNode, tmp_path: Path) -> None:
    busy = await node_factory(FakeEngine(token_delay_s=0.4), max_queue_depth=1)
    running = await serve({"busy": busy}, tmp_path, {"busy": (0.05, 1.0)})
    try:
        async with client(running) as api:
            first = asyncio.create_task(
                api.chat.completions.create(
                    model="moe2",
                    messages=USER,
                    extra_body={"choices": CHOICES, "category": "qa"},
                )
            )

            async def holding() -> bool:
                return busy.engine.depth == 1

            await until(holding)  # the first request now holds the node's only slot
            with pytest.raises(openai.RateLimitError) as excinfo:
                await api.chat.completions.create(
                    model="moe2",
                    messages=USER,
                    extra_body={"choices": CHOICES, "category": "qa"},
                )
            assert (await first).choices[0].message.content in CHOICES
    finally:
        await running.stop(None)
    assert excinfo.value.status_code == 429
    assert excinfo.value.code == "overloaded"
    assert excinfo.value.response.headers["retry-after"] == "1"


async def grpc_health(running: RunningOrchestrator) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        response = await stub.Check(request, timeout=5)  # type: ignore[attr-defined]
        status: int = response.status
        return status


async def until(condition: Any, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not await condition():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.05)


async def test_no_expert_up_is_503_and_not_serving(node_factory: StartNode, tmp_path: Path) -> None:
    node = await node_factory(FakeEngine())
    running = await serve({"only": node}, tmp_path, {"only": (0.05, 1.0)})
    try:
        status, _, raw = await http("GET", f"{base_url(running)}/health")
        assert (status, json.loads(raw)) == (200, {"status": "ok", "experts_up": 1, "experts": 1})
        assert await grpc_health(running) == health_pb2.HealthCheckResponse.SERVING

        await node.stop(None)

        async def down() -> bool:
            return await grpc_health(running) == health_pb2.HealthCheckResponse.NOT_SERVING

        await until(down)
        status, _, raw = await http("GET", f"{base_url(running)}/health")
        assert (status, json.loads(raw)["experts_up"]) == (503, 0)
        async with client(running) as api:
            with pytest.raises(openai.InternalServerError) as excinfo:
                await api.chat.completions.create(
                    model="moe2",
                    messages=USER,
                    extra_body={"choices": CHOICES, "category": "qa"},
                )
            assert excinfo.value.status_code == 503
            assert excinfo.value.code == "no_expert_available"
            with pytest.raises(openai.InternalServerError) as named:
                await api.chat.completions.create(
                    model="only",
                    messages=USER,
                )
            assert named.value.status_code == 503
        async with AsyncClient(f"127.0.0.1:{running.port}", retries=0) as sdk:
            with pytest.raises(grpc.aio.AioRpcError) as rpc:
                await sdk.ask("Is it?", choices=CHOICES, category="qa")
        assert rpc.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await running.stop(None)


async def test_metrics_move_by_exactly_what_was_served(
    fleet: dict[str, RunningNode], tmp_path: Path
) -> None:
    # Profiled energies far below what the fake nodes' modelled meter reports (10 W x compute):
    # the plan admits them under a tight energy budget, and the measurement then exceeds it.
    # Each expert gets fewer than 8 live samples (ProfileBook's min_live_samples), so the
    # profile's figures are still the ones planned with.
    running = await serve(
        fleet, tmp_path, {"fast": (0.05, 0.0001), "medium": (0.1, 0.0001)}, top_k=2
    )
    assert running.metrics_port is not None
    url = f"http://127.0.0.1:{running.metrics_port}/metrics"
    try:
        before = await scrape(url)
        assert value(before, "moe2_experts_up") == 2
        assert value(before, "moe2_experts") == 2
        assert value(before, "moe2_expert_up", expert="fast") == 1
        assert value(before, "moe2_expert_in_flight_requests", expert="medium") == 0
        responses = []
        async with client(running) as api:
            for _ in range(3):
                responses.append(
                    await api.chat.completions.create(
                        model="moe2",
                        messages=USER,
                        extra_body={"choices": CHOICES, "category": "qa"},
                    )
                )
            over = await api.chat.completions.create(
                model="medium",
                messages=USER,
                extra_body={"choices": CHOICES, "category": "qa", "energy_budget_j": 0.0002},
            )
            with pytest.raises(openai.BadRequestError):
                await api.chat.completions.create(
                    model="moe2",
                    messages=USER,
                    extra_body={"top_k": 0},
                )
        async with AsyncClient(f"127.0.0.1:{running.port}") as sdk:
            grpc_answer = await sdk.ask("Is it?", choices=CHOICES, category="qa")
        after = await scrape(url)
        # The HTTP port's /metrics serves the same registry.
        status, _, _ = await http("GET", f"{base_url(running)}/metrics")
        assert status == 200
    finally:
        await running.stop(None)

    route = "POST /v1/chat/completions"
    assert delta(before, after, "moe2_http_requests_total", rpc=route, code="200") == 4
    assert delta(before, after, "moe2_http_requests_total", rpc=route, code="400") == 1
    assert delta(before, after, "moe2_grpc_requests_total", rpc="Ask", code="OK") == 1
    assert delta(before, after, "moe2_answered_requests_total") == 5
    assert delta(before, after, "moe2_ask_latency_seconds_count") == 5
    assert delta(before, after, "moe2_encode_gate_seconds_count") == 5
    assert delta(before, after, "moe2_plan_seconds_count") == 5
    assert delta(before, after, "moe2_plan_recomputations_total") >= 2  # two distinct plans
    assert value(after, "moe2_http_in_flight_requests") == 0
    assert value(after, "moe2_grpc_in_flight_requests") == 0

    experts: list[dict[str, Any]] = [
        e for r in [*responses, over] for e in (r.model_extra or {})["moe2"]["experts"]
    ]
    experts += [
        {
            "expert": e.expert,
            "outcome": e.outcome,
            "prompt_tokens": None,
            "energy": {"joules": e.energy.energy_j if e.energy else None},
        }
        for e in grpc_answer.experts
    ]
    for name in ("fast", "medium"):
        mine = [e for e in experts if e["expert"] == name]
        assert delta(before, after, "moe2_expert_selections_total", expert=name) == len(mine)
        assert delta(before, after, "moe2_expert_outcomes_total", expert=name, outcome="ok") == len(
            mine
        )
        joules = sum(e["energy"]["joules"] for e in mine)
        assert delta(
            before, after, "moe2_energy_joules_total", expert=name, source="estimated"
        ) == pytest.approx(joules)
        http_tokens = sum(e["prompt_tokens"] for e in mine if e["prompt_tokens"] is not None)
        grpc_calls = sum(1 for e in mine if e["prompt_tokens"] is None)
        assert delta(before, after, "moe2_tokens_total", expert=name, kind="prompt") == (
            http_tokens + grpc_calls * 2  # "Is it?": two whitespace tokens for the fake engine
        )
    assert delta(before, after, "moe2_budget_violations_total", budget="energy") == 1
    assert delta(before, after, "moe2_budget_violations_total", budget="delay") == 0
    moe2 = (over.model_extra or {})["moe2"]
    assert moe2["budgets"]["within_energy_budget"] is False


async def test_a_bug_is_a_generic_500_without_its_text(
    running: RunningOrchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(params: object) -> None:
        raise ValueError("secret internal detail")

    monkeypatch.setattr(running.orchestrator, "ask", broken)
    async with client(running) as api:
        with pytest.raises(openai.InternalServerError) as excinfo:
            await api.chat.completions.create(model="moe2", messages=USER)
    assert excinfo.value.status_code == 500
    assert error_message(excinfo.value) == "internal error; see the server log"
    assert running.metrics_port is not None
    after = await scrape(f"http://127.0.0.1:{running.metrics_port}/metrics")
    route = "POST /v1/chat/completions"
    assert value(after, "moe2_http_requests_total", rpc=route, code="500") == 1


async def test_an_orchestrator_whose_only_expert_is_down_starts_not_serving(
    tmp_path: Path,
) -> None:
    config = ClusterConfig.model_validate(
        {"nodes": [NodeEntry(name="gone", address="127.0.0.1:1")]}  # nothing listens on port 1
    )
    running = await start_orchestrator(config, http_port=0, settle_s=3.0)
    try:
        assert running.orchestrator.registry.up() == []
        assert await grpc_health(running) == health_pb2.HealthCheckResponse.NOT_SERVING
        status, _, raw = await http("GET", f"{base_url(running)}/health")
        assert (status, json.loads(raw)) == (
            503,
            {"status": "unavailable", "experts_up": 0, "experts": 1},
        )
        models = json.loads((await http("GET", f"{base_url(running)}/v1/models"))[2])
        assert [(m["id"], m["moe2"].get("health")) for m in models["data"]] == [
            ("moe2", None),
            ("gone", "down"),
        ]
    finally:
        await running.stop(None)


async def test_one_expert_streams_its_tokens_as_they_are_generated(
    node_factory: StartNode, tmp_path: Path
) -> None:
    node = await node_factory(FakeEngine(token_delay_s=0.1))
    running = await serve({"solo": node}, tmp_path, {"solo": (0.05, 1.0)})
    try:
        loop = asyncio.get_running_loop()
        async with client(running) as api:
            whole = await api.completions.create(model="solo", prompt="Say it", max_tokens=5)
            started = loop.time()
            stream = await api.chat.completions.create(
                model="solo",
                messages=[{"role": "user", "content": "Say it"}],
                max_tokens=5,
                stream=True,
            )
            arrivals = [(loop.time() - started, chunk) async for chunk in stream]
    finally:
        await running.stop(None)
    texts = [(at, c.choices[0].delta.content) for at, c in arrivals if c.choices[0].delta.content]
    assert "".join(text for _, text in texts) == whole.choices[0].text
    assert len(texts) >= 3  # token by token (coalesced only when the loop falls behind)
    assert texts[-1][0] - texts[0][0] >= 0.2  # the first text came well before the last
    last = arrivals[-1][1]
    assert last.choices[0].finish_reason == "length"
    assert (last.model_extra or {})["moe2"]["experts"][0]["completion_tokens"] == 5


async def test_a_deadline_after_the_first_tokens_is_an_error_event(
    node_factory: StartNode, tmp_path: Path
) -> None:
    node = await node_factory(FakeEngine(token_delay_s=0.15))
    running = await serve({"solo": node}, tmp_path, {"solo": (0.05, 1.0)})
    try:
        async with client(running) as api:
            stream = await api.completions.create(
                model="solo",
                prompt="Say it",
                max_tokens=20,  # 3 s of tokens against a 0.6 s budget
                stream=True,
                extra_body={"delay_budget_s": 0.6},
            )
            received: list[str] = []

            async def read() -> None:
                async for chunk in stream:
                    received.append(chunk.choices[0].text)

            with pytest.raises(openai.APIError) as excinfo:
                await read()
    finally:
        await running.stop(None)
    assert received and all(received)  # some text came before the deadline
    assert isinstance(excinfo.value.body, dict)
    assert excinfo.value.body["code"] == "deadline_exceeded"


async def test_the_grpc_tokens_hold_on_the_http_api(
    fleet: dict[str, RunningNode], tmp_path: Path
) -> None:
    """No or a wrong token is 401 in OpenAI's shape; /health stays open for probes."""
    config = ClusterConfig.model_validate(
        {"nodes": [NodeEntry(name=n, address=f"127.0.0.1:{s.port}") for n, s in fleet.items()]}
    )
    security = ServerSecurity(token="client-token", admin_token="admin-token")
    running = await start_orchestrator(config, http_port=0, security=security)
    try:
        url = f"http://127.0.0.1:{running.http_port}"
        for key in ("wrong-token", None):
            headers = {} if key is None else {"authorization": f"Bearer {key}"}
            status, _, body = await http("GET", f"{url}/v1/models", headers=headers)
            assert status == 401
            error = json.loads(body)["error"]
            assert error["message"] == "authorization: missing or invalid token"
            assert error["type"] == "authentication_error"
        status, _, _ = await http("GET", f"{url}/health")
        assert status == 200
        authorised = openai.AsyncOpenAI(
            base_url=f"{url}/v1", api_key="client-token", max_retries=0, timeout=30
        )
        models = await authorised.models.list()
        assert {m.id for m in models.data} >= {"moe2", "fast", "medium"}
    finally:
        await running.stop(None)
