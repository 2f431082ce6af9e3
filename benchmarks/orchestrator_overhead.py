"""Orchestrator overhead: Ask through `moe2 serve` vs a direct Score to the same node.

Fake-engine nodes that answer at once (`edge-node serve --engine fake`), N = 3 and N = 16
experts, top_k = 1 so exactly one expert is called either way. Direct and orchestrated calls
are interleaved in the same run (these machines are noisy) and the added latency is reported
as the difference of their p50 and p99. Run with uniform gate weights, with a gate trained on
the static encoder distilled from MiniLM (what sweeps train and `moe2 serve` loads), and with
one trained on MiniLM itself; the encoder and gate-head costs are also timed on their own
in-process, for both encoders (the first run distils and caches the static table, see
docs/gate.md).

    python benchmarks/orchestrator_overhead.py [--calls 300] [--components-only] [--out FILE.json]
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
from typing import Any, cast

import numpy as np

from edge_node.client import AsyncEdgeNodeClient
from orchestrator.client import AsyncClient
from orchestrator.encoder import EncoderName
from testbed.procs import Served

PROMPT = "Review: a gorgeous, witty, seductive movie.\nSentiment (positive or negative):"
CHOICES = [" negative", " positive"]
BLOCK_CALLS = 50
WARMUP_CALLS = 5


def percentile(values: list[float], q: float) -> float:
    return float(np.quantile(values, q))


def train_gate_file(experts: list[str], path: Path, encoder_name: EncoderName) -> str:
    """A gate trained on synthetic data over these experts (its cost, not quality, matters)."""
    from orchestrator.encoder import load_encoder
    from orchestrator.gate_training import train_gate

    encoder = load_encoder(encoder_name)
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


def component_costs(calls: int) -> list[dict[str, Any]]:
    """Encoder (one prompt) and gate head costs, in-process, single BLAS thread.

    Two encoders, each with a 16-expert gate trained on its own features: the default one
    (MiniLM when installed) and the static encoder distilled from MiniLM (distilled and cached
    on first use, which this function reports but does not time). The encoders take turns in
    blocks of BLOCK_CALLS timed calls, so a noisy machine slows both alike; each block starts
    with WARMUP_CALLS untimed ones, because a MiniLM call evicts the static table from the CPU
    caches (alternating single calls made the static encoder look 3x slower than it is in a
    process that runs only it).
    """
    from threadpoolctl import threadpool_limits

    from orchestrator.encoder import PromptEncoder, load_encoder
    from orchestrator.gate import Gate
    from orchestrator.gate_training import train_gate

    threadpool_limits(1)
    encoders: list[PromptEncoder] = [load_encoder("auto")]
    try:
        started = time.perf_counter()
        encoders.append(load_encoder("static"))
        print(f"static encoder ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    except FileNotFoundError as exc:  # no MiniLM package: nothing to distil from
        print(f"static encoder unavailable: {exc}", file=sys.stderr)
    experts = [f"e{i}" for i in range(16)]
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1.0, 1.0], size=(32, 16))
    labels = rng.integers(0, 2, size=32)
    gates: list[Gate] = []
    for encoder in encoders:
        features = encoder.encode([f"{PROMPT} {i}" for i in range(32)])
        gates.append(train_gate(features, probs, labels, experts, encoder_name=encoder.name))
    encode: list[list[float]] = [[] for _ in encoders]
    head: list[list[float]] = [[] for _ in encoders]
    total: list[list[float]] = [[] for _ in encoders]
    for start in range(0, calls, BLOCK_CALLS):
        for index, (encoder, gate) in enumerate(zip(encoders, gates, strict=True)):
            for _ in range(WARMUP_CALLS):
                gate.weights(gate.features(encoder.encode([PROMPT])), None, 2)
            for _ in range(min(BLOCK_CALLS, calls - start)):
                started = time.perf_counter()
                vector = encoder.encode([PROMPT])
                encoded = time.perf_counter()
                gate.weights(gate.features(vector), None, 2)
                done = time.perf_counter()
                encode[index].append(encoded - started)
                head[index].append(done - encoded)
                total[index].append(done - started)
    return [
        {
            "encoder": encoder.name,
            "dim": encoder.dim,
            "encode_p50_ms": statistics.median(encode[i]) * 1e3,
            "encode_p99_ms": percentile(encode[i], 0.99) * 1e3,
            "gate_head_p50_ms": statistics.median(head[i]) * 1e3,
            "gate_head_p99_ms": percentile(head[i], 0.99) * 1e3,
            "encode_and_gate_p50_ms": statistics.median(total[i]) * 1e3,
            "encode_and_gate_p99_ms": percentile(total[i], 0.99) * 1e3,
        }
        for i, encoder in enumerate(encoders)
    ]


def run_case(n: int, calls: int, encoder: EncoderName | None) -> dict[str, Any]:
    """Ask vs Score over ``n`` fake nodes; ``encoder`` names the trained gate's (None: uniform)."""
    with tempfile.TemporaryDirectory() as tmp:
        nodes = [Served.fake_node(0.0) for _ in range(n)]
        try:
            names = [f"e{i:02d}" for i in range(n)]
            cluster = Path(tmp) / "cluster.toml"
            lines = []
            if encoder is not None:
                trained_on = train_gate_file(names, Path(tmp) / "gate.npz", encoder)
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
    gate = "uniform" if encoder is None else f"trained ({trained_on})"
    return {"experts": n, "gate": gate, **result}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument(
        "--components-only",
        action="store_true",
        help="only the in-process encoder and gate-head costs (no served cases)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = (
        []
        if args.components_only
        else [
            run_case(n, args.calls, encoder)
            for n in (3, 16)
            for encoder in cast(tuple[EncoderName | None, ...], (None, "static", "minilm"))
        ]
    )
    costs = component_costs(max(args.calls, 200))
    if rows:
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
        f"One prompt in-process, one BLAS thread, gate with 16 experts; the encoders alternate "
        f"in blocks of {BLOCK_CALLS} calls:"
    )
    print()
    print("| encoder | dim | encode p50 / p99 | gate head p50 / p99 | encode + gate p50 / p99 |")
    print("|---|---|---|---|---|")
    for c in costs:
        print(
            f"| {c['encoder']} | {c['dim']} | {c['encode_p50_ms']:.3f} / {c['encode_p99_ms']:.3f}"
            f" ms | {c['gate_head_p50_ms']:.3f} / {c['gate_head_p99_ms']:.3f} ms | "
            f"{c['encode_and_gate_p50_ms']:.3f} / {c['encode_and_gate_p99_ms']:.3f} ms |"
        )
    if args.out:
        args.out.write_text(json.dumps({"cases": rows, "components": costs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
