"""Live profiling of a cluster: latency, energy and accuracy per (expert, category)."""

from __future__ import annotations

import asyncio
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from orchestrator.config import ClusterConfig
from orchestrator.fusion import option_distribution
from orchestrator.profiles import CategoryStats, ExpertProfile, Profile, summarise
from orchestrator.registry import ExpertClient
from testbed.categories import Item


async def _profile_node(
    client: ExpertClient, items: Sequence[Item], bar: Any = None
) -> tuple[dict[str, object], list[tuple[str, float, float | None, bool]]]:
    """GetInfo plus one Score per item: (category, wall latency, energy, correct); closes client."""
    observations = []
    try:
        info = await client.info()
        for item in items:
            started = time.perf_counter()
            result = await client.score(item.prompt, item.choices, timeout_s=600)
            latency_s = time.perf_counter() - started
            probs = option_distribution(
                result.logprobs, result.choice_tokens, item.choices, item.scoring
            )
            correct = max(range(len(probs)), key=probs.__getitem__) == item.label
            observations.append((item.category, latency_s, result.energy.energy_j, correct))
            if bar is not None:
                bar.update(1)
    finally:
        await client.close()
    return asdict(info), observations


async def profile_cluster(
    cluster: ClusterConfig, items: Sequence[Item], *, progress: bool = False
) -> Profile:
    """Profile every node of the cluster in parallel (one request at a time per node).

    ``progress`` shows one bar (with an ETA) over every node's requests.

    Nodes are reached as the orchestrator reaches them (the cluster file's ``[tls]``; an
    OpenAI-compatible server over HTTP).

    Raises:
        StartupError: a TLS, token or API key file the cluster file names is unusable.
    """
    from tqdm import tqdm

    from orchestrator.server import expert_client

    clients = {node.name: expert_client(cluster, node) for node in cluster.nodes}
    total = len(cluster.nodes) * len(items)
    with tqdm(total=total, desc="profiling", unit="request", disable=not progress) as bar:
        async with asyncio.TaskGroup() as group:
            tasks = {
                node.name: group.create_task(_profile_node(clients[node.name], items, bar))
                for node in cluster.nodes
            }
    experts = {}
    hardware: dict[str, object] = {"orchestrator_host": platform.node()}
    for node in cluster.nodes:
        info, observations = tasks[node.name].result()
        hardware[node.name] = {
            "device_kind": info["device_kind"],
            "device_name": info["device_name"],
            "energy_source": info["energy_source"],
            "energy_scope": info["energy_scope"],
        }
        categories = {}
        for category in sorted({o[0] for o in observations}):
            rows = [o for o in observations if o[0] == category]
            energies = [o[2] for o in rows if o[2] is not None]
            categories[category] = CategoryStats(
                samples=len(rows),
                latency_s=summarise([o[1] for o in rows]),
                energy_j=summarise(energies) if len(energies) == len(rows) else None,
                accuracy=sum(o[3] for o in rows) / len(rows),
            )
        experts[node.name] = ExpertProfile(
            categories=categories,
            address=node.target,
            model_id=str(info["model_id"]),
            device_kind=str(info["device_kind"]),
            energy_source=str(info["energy_source"]),
            energy_scope=str(info["energy_scope"]),
        )
    return Profile(experts=experts, hardware=hardware)
