"""Measure an expert the orchestrator has no figures for, before it is planned with.

A budget needs each expert's worst-case latency and energy. When the cluster file names no
profile (or a node joins at run time, or comes up for the first time), the orchestrator sends
the expert a few Score requests of different prompt lengths, one at a time, and records what it
sees the way it records served traffic: wall latency at the orchestrator and the energy the node
reports (unknown stays unknown). The figures are stored for every category the orchestrator
plans for (or for any category, ``*``) with source ``probe``; served requests then keep them
live (``ProfileBook.observe``), as with a profile file. Bounded: :data:`PROBE_REQUESTS` requests,
each within :data:`PROBE_TIMEOUT_S`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import grpc

from orchestrator.profiles import ANY_CATEGORY, CategoryStats, ExpertProfile, summarise
from orchestrator.registry import ExpertClient

logger = logging.getLogger(__name__)

PROBE_PROMPTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Question: Is the sky blue on a clear day?\nAnswer (yes or no):", (" yes", " no")),
    (
        "Review: a gorgeous, witty, seductive movie with a cast that clearly enjoys every "
        "scene, and a script that never talks down to its audience.\n"
        "Sentiment (positive or negative):",
        (" negative", " positive"),
    ),
    (
        "The following is a question about science. Water boils at a lower temperature on a "
        "high mountain than at sea level because the air pressure up there is lower, so the "
        "molecules escape the liquid with less energy. Which of these explains why pasta "
        "takes longer to cook at altitude?\nAnswer:",
        (
            " the water is cooler when it boils",
            " the pasta is drier",
            " the pot is heavier",
            " the flame is hotter",
        ),
    ),
)
"""Short, medium and long multiple-choice prompts (the dearest shape a request usually takes)."""

PROBE_REQUESTS = 6
"""Requests per probe: every prompt twice (the first of each warms the node's cache)."""

PROBE_TIMEOUT_S = 60.0
"""Deadline of one probe request (seconds); a node slower than that is not probed."""


class ProbeError(Exception):
    """The expert did not answer the probe; the message says how."""


async def probe_expert(
    client: ExpertClient,
    categories: Sequence[str],
    *,
    requests: int = PROBE_REQUESTS,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> ExpertProfile:
    """Score the probe prompts on one expert; its figures for every category (or ``*``).

    Raises:
        ProbeError: a request failed or missed its deadline.
    """
    latencies: list[float] = []
    energies: list[float] = []
    unknown_energy = False
    for index in range(requests):
        prompt, choices = PROBE_PROMPTS[index % len(PROBE_PROMPTS)]
        started = time.monotonic()
        try:
            result = await client.score(prompt, list(choices), timeout_s=timeout_s)
        except grpc.aio.AioRpcError as err:
            raise ProbeError(f"probe request {index + 1}: {err.code().name}") from None
        latencies.append(time.monotonic() - started)
        joules = result.energy.energy_j
        if joules is None:
            unknown_energy = True
        else:
            energies.append(joules)
    stats = CategoryStats(
        samples=len(latencies),
        latency_s=summarise(latencies),
        energy_j=None if unknown_energy or not energies else summarise(energies),
    )
    names = list(categories) or [ANY_CATEGORY]
    return ExpertProfile(categories=dict.fromkeys(names, stats))
