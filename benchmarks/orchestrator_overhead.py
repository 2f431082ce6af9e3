"""Orchestrator overhead: Ask through `moe2 serve` vs a direct Score to the same node.

Fake-engine nodes that answer at once (`edge-node serve --engine fake`), N = 3 and N = 16
experts, top_k = 1 so exactly one expert is called either way. Direct and orchestrated calls
are interleaved in the same run (these machines are noisy) and the added latency is reported
as the difference of their p50 and p99. Run once with uniform gate weights and once with a
trained gate (MiniLM encoder when installed), and the encoder and gate-head costs are timed on
their own in-process.

    python benchmarks/orchestrator_overhead.py [--calls 300] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_node.client import AsyncEdgeNodeClient
from orchestrator.client import AsyncClient
from testbed.procs import Served

PROMPT = "Review: a gorgeous, witty, seductive movie.\nSentiment (positive or negative):"
CHOICES = [" negative", " positive"]


def percentile(values: list[float], q: float) -> float:
    return float(np.quantile(values, q))


def train_gate_file(experts: list[str], path: Path) -> str:
    """A gate trained on synthetic data over these experts (its cost, not quality, matters)."""
    from orchestrator.encoder import load_encoder
    from orchestrator.gate import train_gate

    encoder = load_encoder("auto")
    prompts = [f"{PROMPT} sample {i}" for i in range(64)]
    features = encoder.encode(prompts)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1.0, 1.0], size=(64, len(experts)))
    labels = rng.integers(0, 2, size=64)
    gate = train_gate(features, probs, labels, experts, encoder_name=encoder.name)
    gate.save(path)
    return encoder.name


async def measure(node_target: str, orchestrator_target: str, calls: int) -> dict[str, float]:
    direct: list[float] = []
    ask: list[float] = []
    async with AsyncEdgeNodeClient(node_target) as node, AsyncClient(orchestrator_target) as moe2:
        for _ in range(20):
            await node.score(PROMPT, CHOICES)
            await moe2.ask(PROMPT, choices=CHOICES, top_k=1)
        for _ in range(calls):
            started = time.perf_counter()
            await node.score(PROMPT, CHOICES)
            direct.append(time.perf_counter() - started)
            started = time.perf_counter()
            answer = await moe2.ask(PROMPT, choices=CHOICES, top_k=1)
            ask.append(time.perf_counter() - started)
            assert len(answer.experts) == 1
    return {
        "direct_p50_ms": percentile(direct, 0.5) * 1e3,
        "direct_p99_ms": percentile(direct, 0.99) * 1e3,
        "ask_p50_ms": percentile(ask, 0.5) * 1e3,
        "ask_p99_ms": percentile(ask, 0.99) * 1e3,
        "added_p50_ms": (percentile(ask, 0.5) - percentile(direct, 0.5)) * 1e3,
        "added_p99_ms": (percentile(ask, 0.99) - percentile(direct, 0.99)) * 1e3,
    }


def component_costs(calls: int) -> dict[str, Any]:
    """Encoder (one prompt) and gate head costs, in-process, single BLAS thread."""
    from threadpoolctl import threadpool_limits

    from orchestrator.encoder import load_encoder
    from orchestrator.gate import train_gate

    threadpool_limits(1)
    encoder = load_encoder("auto")
    experts = [f"e{i}" for i in range(16)]
    features = encoder.encode([f"{PROMPT} {i}" for i in range(32)])
    rng = np.random.default_rng(0)
    gate = train_gate(
        features,
        rng.dirichlet([1.0, 1.0], size=(32, 16)),
        rng.integers(0, 2, size=32),
        experts,
        encoder_name=encoder.name,
    )
    encode, head = [], []
    for _ in range(calls):
        started = time.perf_counter()
        vector = encoder.encode([PROMPT])
        encode.append(time.perf_counter() - started)
        started = time.perf_counter()
        gate.weights(gate.features(vector), None, 2)
        head.append(time.perf_counter() - started)
    return {
        "encoder": encoder.name,
        "encode_p50_ms": statistics.median(encode) * 1e3,
        "encode_p99_ms": percentile(encode, 0.99) * 1e3,
        "gate_head_p50_ms": statistics.median(head) * 1e3,
        "gate_head_p99_ms": percentile(head, 0.99) * 1e3,
    }


def run_case(n: int, calls: int, gate: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        nodes = [Served.fake_node(0.0) for _ in range(n)]
        try:
            names = [f"e{i:02d}" for i in range(n)]
            cluster = Path(tmp) / "cluster.toml"
            lines = []
            if gate:
                train_gate_file(names, Path(tmp) / "gate.npz")
                lines.append('gate = "gate.npz"')
            for name, node in zip(names, nodes, strict=True):
                lines.append(f'[[nodes]]\nname = "{name}"\naddress = "{node.target}"')
            cluster.write_text("\n".join(lines) + "\n")
            orchestrator = Served(
                [
                    sys.executable,
                    "-m",
                    "testbed.cli",
                    "serve",
                    "--cluster",
                    str(cluster),
                    "--port",
                    "0",
                ]
            )
            try:
                result = asyncio.run(measure(nodes[0].target, orchestrator.target, calls))
            finally:
                orchestrator.terminate()
        finally:
            for node in nodes:
                node.terminate()
    return {"experts": n, "gate": "trained" if gate else "uniform", **result}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = [run_case(n, args.calls, gate) for n in (3, 16) for gate in (False, True)]
    costs = component_costs(200)
    print("| experts | gate | direct Score p50 / p99 | Ask p50 / p99 | added p50 / p99 |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['experts']} | {r['gate']} | {r['direct_p50_ms']:.2f} / {r['direct_p99_ms']:.2f}"
            f" ms | {r['ask_p50_ms']:.2f} / {r['ask_p99_ms']:.2f} ms | "
            f"{r['added_p50_ms']:.2f} / {r['added_p99_ms']:.2f} ms |"
        )
    print()
    print(
        f"encoder ({costs['encoder']}, one prompt): p50 {costs['encode_p50_ms']:.2f} ms, "
        f"p99 {costs['encode_p99_ms']:.2f} ms; gate head (16 experts): p50 "
        f"{costs['gate_head_p50_ms']:.3f} ms, p99 {costs['gate_head_p99_ms']:.3f} ms"
    )
    if args.out:
        args.out.write_text(json.dumps({"cases": rows, "components": costs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
