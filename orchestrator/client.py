"""The MoE² client SDK: ``AsyncClient`` and ``Client`` over the Orchestrator service.

Budgets are keyword arguments; results are frozen dataclasses. Only UNAVAILABLE is retried
(once by default, with jittered backoff, while the delay budget allows): every other status
means retrying cannot help (docs/architecture.md §10.1).

    from orchestrator.client import Client

    with Client("127.0.0.1:50100") as moe2:
        answer = moe2.ask("Is the sky blue?", choices=[" yes", " no"], category="boolq",
                          energy_budget_j=5.0, delay_budget_s=2.0)
        print(answer.answer, answer.energy_j, [e.expert for e in answer.experts])

Over a network, pass ``security=ClientSecurity.load(tls_ca=..., token_file=...)``
(``edge_node.security``; docs/security.md).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import grpc

from edge_node import transport
from edge_node.loop_thread import BlockingFacade
from edge_node.security import ClientSecurity, open_channel
from orchestrator import wire
from orchestrator.budgets import rpc_timeout_s
from orchestrator.results import Answer, ExpertAnswer, ExpertInfo, PlanResult
from protos import orchestrator_pb2 as pb
from protos import orchestrator_pb2_grpc as pb_grpc

__all__ = ["Answer", "AsyncClient", "Client", "ExpertAnswer", "ExpertInfo", "PlanResult"]


class AsyncClient:
    """Async SDK over one channel. Use ``async with``, or call ``close()``."""

    def __init__(
        self,
        target: str,
        *,
        retries: int = 1,
        backoff_s: float = 0.05,
        security: ClientSecurity | None = None,
    ) -> None:
        self.target = target
        self._channel = open_channel(target, security, transport.CHANNEL_OPTIONS)
        self._stub = pb_grpc.OrchestratorStub(self._channel)
        self._retries = retries
        self._backoff_s = backoff_s

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def ask(
        self,
        prompt: str,
        *,
        choices: Sequence[str] = (),
        category: str = "",
        energy_budget_j: float | None = None,
        delay_budget_s: float | None = None,
        top_k: int | None = None,
        max_tokens: int | None = None,
        scoring: str = "sum",
        chat_template: bool = False,
        request_id: str = "",
        timeout_s: float | None = None,
        early_exit: bool | None = None,
    ) -> Answer:
        """One request through the orchestrator; UNAVAILABLE is retried, nothing else."""
        request = wire.ask_request(
            prompt,
            choices=choices,
            category=category,
            energy_budget_j=energy_budget_j,
            delay_budget_s=delay_budget_s,
            top_k=top_k,
            max_tokens=max_tokens,
            scoring=scoring,
            chat_template=chat_template,
            request_id=request_id,
            early_exit=early_exit,
        )
        deadline_s = timeout_s if timeout_s is not None else rpc_timeout_s(delay_budget_s)
        started = time.monotonic()
        attempt = 0
        while True:
            remaining = None if deadline_s is None else deadline_s - (time.monotonic() - started)
            try:
                return wire.answer_from_pb(await self._stub.Ask(request, timeout=remaining))
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE or attempt >= self._retries:
                    raise
                pause = self._backoff_s * (1 + random.random())
                if remaining is not None and remaining <= pause:
                    raise
                attempt += 1
                await asyncio.sleep(pause)

    async def plan(
        self,
        *,
        energy_budget_j: float | None = None,
        delay_budget_s: float | dict[str, float] | None = None,
        top_k: int | None = None,
        method: str = "dmo",
    ) -> PlanResult:
        """The coarse-level plan for these budgets (a dict gives per-category delay budgets)."""
        request = wire.plan_request(
            energy_budget_j=energy_budget_j,
            delay_budget_s=delay_budget_s,
            top_k=top_k,
            method=method,
        )
        return wire.plan_result_from_pb(await self._stub.Plan(request, timeout=30))

    async def experts(self) -> tuple[list[ExpertInfo], bool, str]:
        """The fleet, whether a gate is trained, and the gate description."""
        m = await self._stub.ListExperts(pb.ListExpertsRequest(), timeout=10)
        return [wire.expert_info_from_pb(e) for e in m.experts], m.gate_trained, m.gate


class Client(BlockingFacade[AsyncClient]):
    """Blocking SDK: an AsyncClient on a private event-loop thread."""

    def __init__(
        self, target: str, *, retries: int = 1, security: ClientSecurity | None = None
    ) -> None:
        async def make() -> AsyncClient:
            return AsyncClient(target, retries=retries, security=security)

        super().__init__(make)

    def ask(self, prompt: str, **options: Any) -> Answer:
        """See ``AsyncClient.ask``."""
        return self._run(self._client.ask(prompt, **options))

    def plan(self, **options: Any) -> PlanResult:
        """See ``AsyncClient.plan``."""
        return self._run(self._client.plan(**options))

    def experts(self) -> tuple[list[ExpertInfo], bool, str]:
        """See ``AsyncClient.experts``."""
        return self._run(self._client.experts())
