"""The inference engine boundary: llama.cpp in production, a deterministic fake in tests.

An ``Engine`` is blocking and not thread-safe (one llama.cpp context). ``SerializedEngine`` runs
it on a one-thread executor with a bounded queue, records the compute window inside that thread
(so a queued request is never billed for its predecessor), and turns client cancellation into a
``threading.Event`` the engine checks between tokens.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, Literal, Protocol, TypeVar

from edge_node.errors import (
    ContextOverflowError,
    NodeBusyError,
    NodeDrainingError,
    RequestCancelledError,
)

if TYPE_CHECKING:
    from edge_node.energy import EnergyMeter

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "cancelled"]
TokenCallback = Callable[[str, int, float], None]
"""Called on the engine thread per emitted chunk: (text, tokens, time.monotonic() of the token)."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What an engine serves, for GetInfo."""

    model_id: str
    family: str
    quantization: str
    context_tokens: int
    chat_template: bool
    engine: Literal["llama", "fake"]
    size_bytes: int = 0
    sha256: str = ""
    n_threads: int = 0
    n_gpu_layers: int = 0  # layers llama.cpp was asked to offload (-1: all); 0 on the CPU
    gpu_offload_supported: bool = False  # the llama.cpp build can offload at all
    model_layers: int = 0  # the model's transformer blocks (0: unknown)


@dataclass(frozen=True, slots=True)
class GenerateParams:
    """One generation request as the engine sees it (validated by ``Node.generate_params``)."""

    prompt: str
    max_tokens: int
    temperature: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    raw: bool = False


@dataclass(frozen=True, slots=True)
class Generation:
    """The outcome of one generation, with token timestamps from time.monotonic()."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    first_token_s: float | None


@dataclass(frozen=True, slots=True)
class Scores:
    """Summed log-probabilities (nats) of each candidate continuation given the prompt."""

    logprobs: tuple[float, ...]
    choice_tokens: tuple[int, ...]
    prompt_tokens: int
    evaluated_tokens: int


class Engine(Protocol):
    """A blocking model over one context. Called only from the engine thread."""

    info: ModelInfo

    def generate(
        self, params: GenerateParams, on_token: TokenCallback, cancel: threading.Event
    ) -> Generation:
        """Generate up to params.max_tokens; stop early (finish "cancelled") once cancel is set."""
        ...

    def score(
        self, prompt: str, choices: Sequence[str], chat_template: bool, cancel: threading.Event
    ) -> Scores:
        """Log-probability of each choice as a continuation of the prompt."""
        ...

    def close(self) -> None:
        """Free the model."""
        ...


class FakeEngine:
    """Deterministic engine for tests and dry runs, with a configurable delay per token.

    Generation emits the words ``w0 w1 …`` derived from a hash of the prompt, one per token, so
    equal prompts give equal answers. Scoring gives each choice a log-probability derived from a
    hash of (model id, prompt, choice): stable across runs, different between choices and
    between fake models of different names. The delays make
    deadline and cancellation behaviour observable without a model.
    """

    def __init__(
        self,
        *,
        token_delay_s: float = 0.0,
        prefill_delay_s: float = 0.0,
        context_tokens: int = 2048,
        model_id: str = "fake",
    ) -> None:
        self._token_delay_s = token_delay_s
        self._prefill_delay_s = prefill_delay_s
        self.info = ModelInfo(
            model_id=model_id,
            family="fake",
            quantization="none",
            context_tokens=context_tokens,
            chat_template=False,
            engine="fake",
        )

    @staticmethod
    def count_tokens(text: str) -> int:
        """Whitespace tokens (at least one for non-empty text)."""
        return max(1, len(text.split())) if text else 0

    def _check_context(self, what: str, tokens: int) -> None:
        if tokens > self.info.context_tokens:
            raise ContextOverflowError(what, tokens, self.info.context_tokens)

    def _sleep(self, seconds: float, cancel: threading.Event) -> bool:
        """Sleep unless cancelled; True when cancelled."""
        return cancel.wait(seconds) if seconds > 0 else cancel.is_set()

    def generate(
        self, params: GenerateParams, on_token: TokenCallback, cancel: threading.Event
    ) -> Generation:
        """Emit deterministic words, one per token, sleeping token_delay_s before each."""
        prompt_tokens = self.count_tokens(params.prompt)
        self._check_context("prompt", prompt_tokens)
        if self._sleep(self._prefill_delay_s, cancel):
            return Generation("", prompt_tokens, 0, "cancelled", None)
        seed = int(hashlib.sha256(params.prompt.encode()).hexdigest()[:8], 16)  # same per prompt
        words: list[str] = []
        first_token_s = None
        room = self.info.context_tokens - prompt_tokens
        for index in range(min(params.max_tokens, room)):
            if self._sleep(self._token_delay_s, cancel):
                return Generation("".join(words), prompt_tokens, index, "cancelled", first_token_s)
            word = f" w{(seed + index) % 97}"
            words.append(word)
            now = time.monotonic()
            first_token_s = first_token_s or now
            on_token(word, 1, now)
        reason: FinishReason = "length"
        return Generation("".join(words), prompt_tokens, len(words), reason, first_token_s)

    def score(
        self, prompt: str, choices: Sequence[str], chat_template: bool, cancel: threading.Event
    ) -> Scores:
        """Hash-derived log-probabilities; one token delay per choice token."""
        prompt_tokens = self.count_tokens(prompt)
        choice_tokens = tuple(self.count_tokens(c) for c in choices)
        self._check_context("prompt plus the longest choice", prompt_tokens + max(choice_tokens))
        if self._sleep(self._prefill_delay_s + self._token_delay_s * sum(choice_tokens), cancel):
            raise RequestCancelledError("cancelled")
        logprobs = []
        for choice, n_tokens in zip(choices, choice_tokens, strict=True):
            key = f"{self.info.model_id}\x00{prompt}\x00{choice}"
            digest = hashlib.sha256(key.encode()).digest()
            uniform = int.from_bytes(digest[:4], "big") / 2**32
            logprobs.append(n_tokens * math.log(0.05 + 0.9 * uniform))
        return Scores(tuple(logprobs), choice_tokens, prompt_tokens, sum(choice_tokens))

    def close(self) -> None:
        """Nothing to free."""


_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Timed(Generic[_T]):
    """An engine result with its compute window on the time.monotonic() clock."""

    value: _T
    queued_s: float  # submitted (monotonic)
    started_s: float  # engine thread picked it up
    finished_s: float


@dataclass(slots=True)
class _Counters:
    lock: threading.Lock = field(default_factory=threading.Lock)
    depth: int = 0
    completed: int = 0


class SerializedEngine:
    """Runs a blocking Engine off the event loop, strictly one call at a time, with a bound.

    A one-thread executor, not asyncio.Lock + to_thread: when an RPC is cancelled the awaiting
    coroutine stops but the thread keeps running; with a lock the next call would enter the same
    llama.cpp context concurrently, with a one-thread executor it queues behind it
    (docs/architecture.md §10.3). ``depth`` counts calls waiting or running; a call beyond
    ``max_queue_depth`` is refused with NodeBusyError (RESOURCE_EXHAUSTED) instead of letting
    latency grow without bound. The count drops when the job finishes or is cancelled before it
    started, never earlier, so an abandoned call still occupies its slot while the engine is
    busy with it.
    """

    def __init__(self, engine: Engine, meter: EnergyMeter, *, max_queue_depth: int = 8) -> None:
        self.engine = engine
        self.meter = meter
        self._max_queue_depth = max_queue_depth
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._counters = _Counters()
        self._draining = False

    @property
    def depth(self) -> int:
        """Calls waiting or running."""
        return self._counters.depth

    @property
    def completed(self) -> int:
        """Calls finished since start (successfully or not)."""
        return self._counters.completed

    @property
    def max_queue_depth(self) -> int:
        """The bound on calls waiting or running."""
        return self._max_queue_depth

    def drain(self) -> None:
        """Refuse new calls from now on (UNAVAILABLE); running and queued ones continue."""
        self._draining = True

    async def run(
        self, function: Callable[[threading.Event], _T], cancel: threading.Event
    ) -> Timed[_T]:
        """Queue ``function(cancel)`` behind running calls and await its timed result.

        If the caller is cancelled while the call is still queued, the call never runs; if it is
        already running, ``cancel`` is set by the caller's RPC done-callback and the engine stops
        at its next token.
        """
        if self._draining:
            raise NodeDrainingError("node is shutting down")
        counters = self._counters
        with counters.lock:
            if counters.depth >= self._max_queue_depth:
                raise NodeBusyError(
                    f"queue full: {counters.depth} requests waiting or running "
                    f"(max_queue_depth {self._max_queue_depth})"
                )
            counters.depth += 1
        queued_s = time.monotonic()

        def job() -> Timed[_T]:
            if cancel.is_set():
                raise RequestCancelledError("cancelled before it started")
            self.meter.checkpoint()
            started_s = time.monotonic()
            value = function(cancel)
            finished_s = time.monotonic()
            self.meter.checkpoint()
            return Timed(value, queued_s, started_s, finished_s)

        def release(_: Future[Timed[_T]]) -> None:
            with counters.lock:
                counters.depth -= 1
                counters.completed += 1

        try:
            future = self._executor.submit(job)
        except RuntimeError:  # executor shut down
            release(Future())
            raise NodeDrainingError("node is shutting down") from None
        future.add_done_callback(release)
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        """Wait for the running and queued calls, then free the engine and the meter."""
        self._draining = True
        self._executor.shutdown(wait=True)
        self.engine.close()
        self.meter.close()
