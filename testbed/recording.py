"""The recorded response matrix: every expert answers every sampled prompt once (Score).

Stored under ``DIR/responses/<expert>/<category>.jsonl``, one JSON object per line, keyed by
``(item_id, prompt_sha256)`` so a changed prompt template is re-recorded rather than reused.
Each line is written with a single ``write`` on an ``O_APPEND`` descriptor and fsync'ed, so an
interrupted run loses at most the line being written; a torn last line is cut off when the file
is next opened. A re-run skips everything recorded: resumable, nothing lost or duplicated.

Emulated nodes are asked to record at host speed (``account`` timing, edge_node.emulation): the
node does not wait out the emulated device's compute time but reports it, and the recorded
latency is the caller's wall time plus that reported stretch, i.e. what live serving (``sleep``
timing) would have taken. So that host compute is not slowed by more nodes computing at once
than there are cores, at most ``max_in_flight`` requests (default: this machine's cores) run at
a time across all experts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from edge_node.client import AsyncEdgeNodeClient, ScoreResult
from edge_node.emulation import STRETCH_METADATA_KEY, TIMING_METADATA_KEY, EmulateTiming
from edge_node.wire import score_request, score_result
from protos import edge_node_pb2_grpc as pb_grpc
from testbed.categories import Item

logger = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def prompt_sha256(item: Item) -> str:
    """Digest of what was asked: the prompt and the choices."""
    return hashlib.sha256("\x1f".join((item.prompt, *item.choices)).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Response:
    """One expert's recorded answer to one item."""

    item_id: str
    category: str
    prompt_sha256: str
    logprobs: tuple[float, ...]
    choice_tokens: tuple[int, ...]
    latency_s: float  # wall time at the caller, transmission included, plus stretch_s
    node_total_s: float
    energy_j: float | None
    energy_source: str
    energy_emulated: bool
    stretch_s: float = 0.0  # emulated compute the node accounted instead of waiting

    def to_json(self) -> dict[str, Any]:
        """One JSONL line's object."""
        return {
            "item_id": self.item_id,
            "category": self.category,
            "prompt_sha256": self.prompt_sha256,
            "logprobs": list(self.logprobs),
            "choice_tokens": list(self.choice_tokens),
            "latency_s": self.latency_s,
            "node_total_s": self.node_total_s,
            "energy_j": self.energy_j,
            "energy_source": self.energy_source,
            "energy_emulated": self.energy_emulated,
            "stretch_s": self.stretch_s,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Response:
        """Parse one line's object (KeyError/TypeError/ValueError on malformed input)."""
        return cls(
            item_id=str(raw["item_id"]),
            category=str(raw["category"]),
            prompt_sha256=str(raw["prompt_sha256"]),
            logprobs=tuple(float(v) for v in raw["logprobs"]),
            choice_tokens=tuple(int(v) for v in raw["choice_tokens"]),
            latency_s=float(raw["latency_s"]),
            node_total_s=float(raw["node_total_s"]),
            energy_j=None if raw["energy_j"] is None else float(raw["energy_j"]),
            energy_source=str(raw["energy_source"]),
            energy_emulated=bool(raw["energy_emulated"]),
            stretch_s=float(raw.get("stretch_s", 0.0)),  # absent in older recordings
        )


def _file_name(name: str) -> str:
    return _SAFE.sub("_", name) or "_"


class ResponseStore:
    """Append-only, crash-safe JSONL files of responses per (expert, category)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, expert: str, category: str) -> Path:
        """The file of one (expert, category)."""
        return self.root / _file_name(expert) / f"{_file_name(category)}.jsonl"

    def load(self, expert: str, category: str) -> dict[tuple[str, str], Response]:
        """Recorded responses by (item_id, prompt_sha256); repairs a torn last line."""
        path = self.path(expert, category)
        if not path.exists():
            return {}
        data = path.read_bytes()
        good_end = data.rfind(b"\n") + 1
        if good_end < len(data):
            logger.warning("%s: dropping a torn last line (%d bytes)", path, len(data) - good_end)
            with path.open("r+b") as handle:
                handle.truncate(good_end)
        out: dict[tuple[str, str], Response] = {}
        for number, line in enumerate(data[:good_end].splitlines(), 1):
            if not line.strip():
                continue
            try:
                response = Response.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{number}: malformed response line ({err})") from None
            out[(response.item_id, response.prompt_sha256)] = response
        return out

    def append(self, expert: str, response: Response) -> None:
        """Append one response durably (single write + fsync)."""
        path = self.path(expert, response.category)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(response.to_json(), separators=(",", ":")) + "\n").encode()
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def response_from_score(
    item: Item, result: ScoreResult, latency_s: float, stretch_s: float = 0.0
) -> Response:
    """Convert one Score result.

    Args:
        item: The item asked.
        result: The node's answer.
        latency_s: Wall time at the caller, transmission included.
        stretch_s: Emulated compute seconds the node reported but did not spend (``account``
            timing); added to ``latency_s`` so the record is what live serving would take.
    """
    return Response(
        item_id=item.item_id,
        category=item.category,
        prompt_sha256=prompt_sha256(item),
        logprobs=result.logprobs,
        choice_tokens=result.choice_tokens,
        latency_s=latency_s + stretch_s,
        node_total_s=result.latency.total_s,
        energy_j=result.energy.energy_j,
        energy_source=result.energy.source,
        energy_emulated=result.energy.emulated,
        stretch_s=stretch_s,
    )


def stretch_from_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> float:
    """The ``moe2-emulated-stretch-s`` trailing entry in seconds; 0 when absent or malformed."""
    for key, value in metadata or ():
        if key == STRETCH_METADATA_KEY:
            try:
                seconds = float(value.decode() if isinstance(value, bytes) else value)
            except ValueError:
                return 0.0
            return seconds if seconds > 0 else 0.0
    return 0.0


async def score_with_stretch(
    client: AsyncEdgeNodeClient, item: Item, *, timing: EmulateTiming, timeout_s: float
) -> tuple[ScoreResult, float]:
    """Score one item asking an emulated node for ``timing``; the result and reported stretch.

    Nodes that emulate nothing ignore the request metadata and report no stretch.
    """
    stub = pb_grpc.EdgeNodeStub(client.channel)
    call = stub.Score(
        score_request(item.prompt, item.choices),
        timeout=timeout_s,
        metadata=((TIMING_METADATA_KEY, timing),),
    )
    response = await call
    trailing = await call.trailing_metadata()
    return score_result(item.choices, response), stretch_from_metadata(
        None if trailing is None else list(trailing)
    )


class RecordingError(Exception):
    """An expert failed the same item repeatedly; the run stops (a re-run resumes)."""


async def record_expert(
    store: ResponseStore,
    expert: str,
    target: str,
    items: Sequence[Item],
    *,
    on_done: Callable[[int], object],
    timeout_s: float = 600.0,
    attempts: int = 3,
    timing: EmulateTiming = "account",
    slots: asyncio.Semaphore | None = None,
) -> int:
    """Record every missing response of one expert, in order; returns how many were new.

    Args:
        store: Where responses go.
        expert: The expert's name.
        target: Its node's address.
        items: The items to answer.
        on_done: Called with 1 per item done (recorded before or now).
        timeout_s: Deadline of one Score call.
        attempts: Tries per item on UNAVAILABLE / RESOURCE_EXHAUSTED.
        timing: Timing mode asked of an emulated node (``account``: host speed, stretch
            reported and added to the recorded latency).
        slots: Shared bound on requests in flight across experts; a request's latency is
            timed from when it holds a slot.
    """
    by_category: dict[str, dict[tuple[str, str], Response]] = {}
    missing = []
    for item in items:
        recorded = by_category.setdefault(item.category, store.load(expert, item.category))
        if (item.item_id, prompt_sha256(item)) in recorded:
            on_done(1)
        else:
            missing.append(item)
    loop = asyncio.get_running_loop()
    async with AsyncEdgeNodeClient(target) as client:
        for item in missing:
            for attempt in range(1, attempts + 1):
                try:
                    async with slots or contextlib.nullcontext():
                        started = loop.time()
                        result, stretch_s = await score_with_stretch(
                            client, item, timing=timing, timeout_s=timeout_s
                        )
                        latency_s = loop.time() - started
                    break
                except grpc.aio.AioRpcError as err:
                    retriable = err.code() in (
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                    )
                    if not retriable or attempt == attempts:
                        raise RecordingError(
                            f"{expert} failed on {item.category}/{item.item_id}: "
                            f"{err.code().name}: {err.details()}"
                        ) from None
                    await asyncio.sleep(0.5 * attempt)
            store.append(expert, response_from_score(item, result, latency_s, stretch_s))
            on_done(1)
    return len(missing)


async def record_all(
    store: ResponseStore,
    targets: Mapping[str, str],
    items: Sequence[Item],
    *,
    progress: bool = True,
    timing: EmulateTiming = "account",
    max_in_flight: int | None = None,
) -> int:
    """Record every expert in parallel (one task per node), with a progress bar and ETA.

    Args:
        store: Where responses go.
        targets: Expert name to node address.
        items: The items every expert answers.
        progress: Show the progress bar.
        timing: Timing mode asked of emulated nodes (see :func:`record_expert`).
        max_in_flight: Requests in flight at once across experts; default this machine's
            cores, so local nodes computing at host speed do not slow each other down.
    """
    from tqdm import tqdm

    slots = asyncio.Semaphore(max_in_flight or len(os.sched_getaffinity(0)))
    total = len(targets) * len(items)
    with tqdm(total=total, desc="recording", unit="answer", disable=not progress) as bar:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(
                    record_expert(
                        store,
                        expert,
                        target,
                        items,
                        on_done=bar.update,
                        timing=timing,
                        slots=slots,
                    )
                )
                for expert, target in targets.items()
            ]
    return sum(task.result() for task in tasks)


def load_matrix(
    store: ResponseStore, experts: Iterable[str], items: Sequence[Item]
) -> dict[str, dict[str, Response]]:
    """Expert -> item_id -> response for the given items (must all be recorded)."""
    out: dict[str, dict[str, Response]] = {}
    for expert in experts:
        cache: dict[str, dict[tuple[str, str], Response]] = {}
        responses = {}
        for item in items:
            recorded = cache.setdefault(item.category, store.load(expert, item.category))
            key = (item.item_id, prompt_sha256(item))
            if key not in recorded:
                raise RecordingError(f"{expert} has no recorded answer for {item.item_id}")
            responses[item.item_id] = recorded[key]
        out[expert] = responses
    return out
