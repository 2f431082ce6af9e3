"""Load: many concurrent clients against a node and against the orchestrator, loopback only.

Each scenario runs a bounded number of concurrent clients for a bounded time; every client sends
requests back to back with a per-call deadline. What must hold under overload: only ``OK``,
``RESOURCE_EXHAUSTED`` (the node's bounded queue) and ``DEADLINE_EXCEEDED`` come back, and the
server's resident memory stays bounded. Reported per scenario: requests, throughput, p50/p99
latency of the answered ones, status counts, the server's RSS before and after, and the
throughput ratio against one client measured in the same run (the baseline).

Scenarios: a fake-engine node (2 ms per token, queue depth 8), a SmolLM2-135M node (when the
model is installed), and `moe2 serve` over three fake nodes.

    python benchmarks/load.py [--clients 64] [--seconds 10] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil

from edge_node.client import AsyncEdgeNodeClient
from orchestrator.client import AsyncClient
from testbed.procs import Served

PROMPT = "Review: a gorgeous, witty, seductive movie.\nSentiment (positive or negative):"
CHOICES = [" negative", " positive"]
EXPECTED = {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}
CALL_TIMEOUT_S = 2.0

Call = Callable[[], Awaitable[object]]


async def drive(call: Call, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` loops calling ``call`` back to back for ``seconds``; statuses and latencies."""
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    end = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                await call()
            except grpc.aio.AioRpcError as err:
                statuses[err.code().name] += 1
                continue
            latencies.append(time.monotonic() - started)
            statuses["OK"] += 1

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.monotonic() - started
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests": sum(statuses.values()),
        "answered_per_s": round(statuses["OK"] / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2) if latencies else None,
        "p99_ms": round(1000 * float(np.quantile(latencies, 0.99)), 2) if latencies else None,
        "statuses": dict(statuses),
    }


def rss_mb(served: Served) -> float:
    return psutil.Process(served.process.pid).memory_info().rss / 1e6


async def scenario(
    name: str, served: Served, call: Call, clients: int, seconds: float
) -> dict[str, Any]:
    """One client (the baseline), then ``clients``, against the same server in one run."""
    for _ in range(5):  # warm-up
        await call()
    before = rss_mb(served)
    single = await drive(call, 1, min(seconds, 3.0))
    loaded = await drive(call, clients, seconds)
    after = rss_mb(served)
    unexpected = set(loaded["statuses"]) - EXPECTED
    return {
        "scenario": name,
        **loaded,
        "one_client_answered_per_s": single["answered_per_s"],
        "throughput_ratio": round(loaded["answered_per_s"] / single["answered_per_s"], 2)
        if single["answered_per_s"]
        else None,
        "rss_before_mb": round(before, 1),
        "rss_after_mb": round(after, 1),
        "unexpected_statuses": sorted(unexpected),
    }


async def node_scenario(name: str, args: list[str], clients: int, seconds: float) -> dict[str, Any]:
    with Served.edge_node(*args) as served:
        async with AsyncEdgeNodeClient(served.target) as node:

            async def call() -> object:
                return await node.score(PROMPT, CHOICES, timeout_s=CALL_TIMEOUT_S)

            return await scenario(name, served, call, clients, seconds)


async def orchestrator_scenario(clients: int, seconds: float) -> dict[str, Any]:
    with (
        Served.fake_node(0.002) as a,
        Served.fake_node(0.002) as b,
        Served.fake_node(0.002) as c,
        tempfile.TemporaryDirectory() as folder,
    ):
        cluster = Path(folder) / "cluster.toml"
        cluster.write_text(
            "".join(
                f'[[nodes]]\nname = "{name}"\naddress = "{node.target}"\n\n'
                for name, node in (("a", a), ("b", b), ("c", c))
            )
        )
        command = [sys.executable, "-m", "testbed.cli", "serve", "--cluster", str(cluster)]
        with Served([*command, "--port", "0"]) as served:
            async with AsyncClient(served.target) as client:

                async def call() -> object:
                    return await client.ask(
                        PROMPT, choices=CHOICES, top_k=2, timeout_s=CALL_TIMEOUT_S
                    )

                return await scenario("orchestrator, 3 fake nodes", served, call, clients, seconds)


def smollm_installed() -> bool:
    from edge_node import models

    try:
        models.model_path("smollm2-135m")
    except Exception:  # not installed: the scenario is skipped, and said so
        return False
    return True


async def main_async(clients: int, seconds: float) -> list[dict[str, Any]]:
    rows = [
        await node_scenario(
            "node, fake engine",
            ["--engine", "fake", "--fake-token-delay-s", "0.002"],
            clients,
            seconds,
        )
    ]
    if smollm_installed():
        rows.append(
            await node_scenario(
                "node, SmolLM2-135M",
                ["--model", "smollm2-135m", "--n-threads", "1"],
                clients,
                seconds,
            )
        )
    else:
        print("SmolLM2-135M is not installed: its scenario is skipped", file=sys.stderr)
    rows.append(await orchestrator_scenario(clients, seconds))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (64)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per scenario (10)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    if not 1 <= args.clients <= 1024 or not 0 < args.seconds <= 300:
        parser.error("--clients must be in 1-1024 and --seconds in (0, 300]")
    rows = asyncio.run(main_async(args.clients, args.seconds))
    header = (
        f"{'scenario':<28} {'clients':>7} {'requests':>8} {'answered/s':>10} {'x 1 client':>10} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'RSS MB before/after':>20}  statuses"
    )
    print(header)
    for row in rows:
        print(
            f"{row['scenario']:<28} {row['clients']:>7} {row['requests']:>8} "
            f"{row['answered_per_s']:>10} {row['throughput_ratio']!s:>10} {row['p50_ms']!s:>8} "
            f"{row['p99_ms']!s:>8} {row['rss_before_mb']:>9} / {row['rss_after_mb']:<8}  "
            f"{row['statuses']}"
        )
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    bad = [row["scenario"] for row in rows if row["unexpected_statuses"]]
    if bad:
        print(f"unexpected statuses in: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
