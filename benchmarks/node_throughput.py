"""Edge-node overhead: decode tokens/s through gRPC streaming vs direct llama-cpp-python.

Both sides use the same GGUF, thread count and context size, measured in the same run with the
rounds interleaved (A, B, A, B, ...) because these machines are noisy. Decode speed is timed from
the first to the last token as the caller sees them (prefill excluded on both sides). The Score
overhead is the median wall time of a Score RPC minus the median of the same call made directly
on an in-process engine; it is reported for the real model and for the fake engine (pure
transport cost).

    python benchmarks/node_throughput.py [--model smollm2-135m] [--rounds 7] [--tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edge_node import models
from edge_node.client import AsyncEdgeNodeClient, GenerateResult, TokenChunk
from edge_node.energy import ModeledEnergyMeter
from edge_node.engine import FakeEngine, SerializedEngine
from edge_node.llama_engine import LlamaEngine, LlamaOptions
from edge_node.server import start_node

PROMPT = "Once upon a time, in a small village by the sea, there lived an old lighthouse keeper who"
SCORE_PROMPT = "Review: a gorgeous, witty, seductive movie.\nSentiment (positive or negative):"
CHOICES = [" negative", " positive"]


def start_server(
    model: str, threads: int, n_ctx: int, n_gpu_layers: int = 0
) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_node.cli",
            "serve",
            "--model",
            model,
            "--port",
            "0",
            "--n-threads",
            str(threads),
            "--n-ctx",
            str(n_ctx),
            "--n-gpu-layers",
            str(n_gpu_layers),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r":(\d+)$", line.strip())
    if not match:
        process.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return process, f"127.0.0.1:{match.group(1)}"


def direct_decode(llm: Any, tokens: int) -> tuple[float, float]:
    """(decode tok/s first->last token, end-to-end tok/s call->last token), greedy, raw."""
    import llama_cpp

    prompt_tokens = llm.tokenize(PROMPT.encode(), add_bos=True)
    # No reset: llama-cpp-python reuses the cached prompt prefix, as the node's engine does.
    stamps = []
    started = time.perf_counter()
    for count, token in enumerate(llm.generate(prompt_tokens, temp=0.0, top_k=1, reset=True), 1):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            break
        stamps.append(time.perf_counter())
        if count >= tokens:
            break
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]), len(stamps) / (stamps[-1] - started)


async def grpc_decode(client: AsyncEdgeNodeClient, tokens: int) -> tuple[float, float, float]:
    """The same two rates from the chunks' arrival times at the client, and the node's own.

    A chunk may carry several tokens (coalesced); its tokens count at its arrival. The decode
    rate then only counts tokens after the first chunk, which is why the end-to-end rate (from
    sending the request) is reported too: it has no such edge case. The third rate is decode
    by the node's clock (each chunk's ``elapsed_s``, when its last token was made): the
    engine's speed inside the node, without the transport's delays.
    """
    stamps = []
    count = 0
    started = time.perf_counter()
    async for event in client.stream(PROMPT, max_tokens=tokens, raw=True, timeout_s=120):
        if isinstance(event, TokenChunk):
            count += event.tokens
            stamps.append((time.perf_counter(), count, event.elapsed_s))
        elif isinstance(event, GenerateResult) and event.completion_tokens < tokens:
            print(f"note: stopped after {event.completion_tokens} tokens", file=sys.stderr)
    (t0, n0, e0), (t1, n1, e1) = stamps[0], stamps[-1]
    return (n1 - n0) / (t1 - t0), n1 / (t1 - started), (n1 - n0) / (e1 - e0)


async def score_overhead(client: AsyncEdgeNodeClient, direct: Any, calls: int) -> dict[str, float]:
    """Median wall seconds of Score via gRPC and direct, interleaved."""
    via, local = [], []
    for _ in range(calls):
        started = time.perf_counter()
        await client.score(SCORE_PROMPT, CHOICES, timeout_s=30)
        via.append(time.perf_counter() - started)
        started = time.perf_counter()
        direct.score(SCORE_PROMPT, CHOICES, False, threading.Event())
        local.append(time.perf_counter() - started)
    return {
        "grpc_median_s": statistics.median(via),
        "direct_median_s": statistics.median(local),
        "overhead_ms": (statistics.median(via) - statistics.median(local)) * 1e3,
    }


async def fake_overhead(calls: int) -> dict[str, float]:
    engine = FakeEngine()
    node = await start_node(SerializedEngine(engine, ModeledEnergyMeter(power_w=1.0)))
    try:
        async with AsyncEdgeNodeClient(f"127.0.0.1:{node.port}") as client:
            for _ in range(20):
                await client.score(SCORE_PROMPT, CHOICES)
            return await score_overhead(client, engine, calls)
    finally:
        await node.stop(None)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    import llama_cpp

    _, path = models.resolve(args.model)
    process, target = start_server(args.model, args.threads, args.n_ctx, args.n_gpu_layers)
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=args.n_ctx,
        n_threads=args.threads,
        n_gpu_layers=args.n_gpu_layers,
        use_mmap=False,  # as the node loads it
        verbose=False,
    )
    direct_engine = LlamaEngine.load(
        path,
        model_id=args.model,
        options=LlamaOptions(
            n_ctx=args.n_ctx, n_threads=args.threads, n_gpu_layers=args.n_gpu_layers
        ),
    )
    try:
        async with AsyncEdgeNodeClient(target) as client:
            await grpc_decode(client, 8)  # warm both sides
            direct_decode(llm, 8)
            via_pairs, local_pairs = [], []
            for _ in range(args.rounds):
                via_pairs.append(await grpc_decode(client, args.tokens))
                local_pairs.append(direct_decode(llm, args.tokens))
            via, via_e2e = [v[0] for v in via_pairs], [v[1] for v in via_pairs]
            node_clock = [v[2] for v in via_pairs]
            local, local_e2e = [d[0] for d in local_pairs], [d[1] for d in local_pairs]
            for _ in range(5):
                await client.score(SCORE_PROMPT, CHOICES)
            real = await score_overhead(client, direct_engine, args.score_calls)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    ratios = [v / d for v, d in zip(via, local, strict=True)]
    ratios_e2e = [v / d for v, d in zip(via_e2e, local_e2e, strict=True)]
    ratios_node = [v / d for v, d in zip(node_clock, local, strict=True)]
    return {
        "model": args.model,
        "threads": args.threads,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "grpc_tok_s_median": statistics.median(via),
        "direct_tok_s_median": statistics.median(local),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "grpc_e2e_tok_s_median": statistics.median(via_e2e),
        "direct_e2e_tok_s_median": statistics.median(local_e2e),
        "e2e_ratio_median": statistics.median(ratios_e2e),
        "e2e_ratio_min": min(ratios_e2e),
        "grpc_node_tok_s_median": statistics.median(node_clock),
        "direct_node_tok_s_median": statistics.median(local),
        "node_ratio_median": statistics.median(ratios_node),
        "node_ratio_min": min(ratios_node),
        "score_real_model": real,
        "score_fake_engine": await fake_overhead(args.score_calls * 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--n-ctx", type=int, default=512)
    parser.add_argument(
        "--n-gpu-layers", type=int, default=0, help="layers offloaded (-1: all; a CUDA build)"
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--score-calls", type=int, default=50)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    real, fake = result["score_real_model"], result["score_fake_engine"]
    print("| model | threads | rate | gRPC tok/s | direct tok/s | ratio (median, min) |")
    print("|---|---|---|---|---|---|")
    rates = (("decode", ""), ("decode, node clock", "node_"), ("end-to-end", "e2e_"))
    for label, prefix in rates:
        print(
            f"| {result['model']} | {result['threads']} | {label} | "
            f"{result['grpc_' + prefix + 'tok_s_median']:.1f} | "
            f"{result['direct_' + prefix + 'tok_s_median']:.1f} | "
            f"{result[prefix + 'ratio_median']:.3f}, {result[prefix + 'ratio_min']:.3f} |"
        )
    print()
    print("| Score | via gRPC (median) | direct (median) | overhead |")
    print("|---|---|---|---|")
    for name, row in (("real model", real), ("fake engine", fake)):
        print(
            f"| {name} | {row['grpc_median_s'] * 1e3:.2f} ms | {row['direct_median_s'] * 1e3:.2f}"
            f" ms | {row['overhead_ms']:.2f} ms |"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
