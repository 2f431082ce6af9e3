"""Speed of one objective evaluation F(S): the gated objective against best-of, in one run.

DMO and greedy call F(S) thousands of times per plan, on every recorded planning prompt, so
F's cost is the coarse level's cost. This times ``value(mask)`` of the gated objective (linear
and log-linear fine level, top_k = 2) and of the best-of objective on the same prompts and the
same random subsets, in interleaved rounds, and prints per-call medians and the ratio to
best-of measured alongside (a plain per-prompt max: the cheapest objective there is).

    python benchmarks/objective_speed.py [--prompts 4000] [--experts 12] [--rounds 9]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from optimizer import BestOfObjective
from optimizer.fine import LogLinearPool
from optimizer.objectives import GatedObjective, SetObjective

N_CATEGORIES = 4
N_OPTIONS = 4


def build(n_prompts: int, n_experts: int, seed: int) -> dict[str, SetObjective]:
    """The objectives on one random recorded matrix (4 options, 4 categories)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n_prompts, n_experts))
    probs = rng.dirichlet(np.ones(N_OPTIONS), size=(n_prompts, n_experts))
    labels = rng.integers(0, N_OPTIONS, size=n_prompts)
    rows = rng.integers(0, N_CATEGORIES, size=n_prompts)
    pool = LogLinearPool(
        categories=tuple(f"c{c}" for c in range(N_CATEGORIES)),
        temperature=rng.uniform(0.5, 1.5, (N_CATEGORIES + 1, n_experts)),
        option_bias=rng.normal(0.0, 0.3, (N_CATEGORIES + 1, n_experts, N_OPTIONS)),
        expert_weight=rng.uniform(0.0, 1.5, (N_CATEGORIES + 1, n_experts)),
        gate_power=1.0,
    )
    return {
        "best-of (baseline)": BestOfObjective(probs[np.arange(n_prompts), :, labels]),
        "gated, linear pool": GatedObjective(logits, probs, labels, top_k=2),
        "gated, log-linear pool": GatedObjective(
            logits, probs, labels, top_k=2, fusion=pool, category_rows=rows
        ),
    }


def per_call_s(objective: SetObjective, masks: Sequence[int]) -> float:
    """Mean seconds per ``value`` call over ``masks``."""
    started = time.perf_counter()
    for mask in masks:
        objective.value(mask)
    return (time.perf_counter() - started) / len(masks)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4000)
    parser.add_argument("--experts", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds")
    parser.add_argument("--calls", type=int, default=200, help="subsets per round")
    args = parser.parse_args(argv)
    objectives = build(args.prompts, args.experts, seed=0)
    rng = np.random.default_rng(1)
    times: dict[str, list[float]] = {name: [] for name in objectives}
    with threadpool_limits(1):
        for _ in range(args.rounds):
            masks = rng.integers(1, 1 << args.experts, size=args.calls).tolist()
            for name, objective in objectives.items():
                times[name].append(per_call_s(objective, masks))
    baseline = times["best-of (baseline)"]
    print(
        f"F(S) per call, {args.prompts} prompts x {args.experts} experts, top_k 2, "
        f"{args.rounds} rounds x {args.calls} subsets, one BLAS thread\n"
    )
    print("| objective | per call p50 (ms) | min (ms) | ratio to best-of (median, max) |")
    print("|---|---|---|---|")
    for name, values in times.items():
        ratios = [v / b for v, b in zip(values, baseline, strict=True)]
        print(
            f"| {name} | {statistics.median(values) * 1e3:.3f} | {min(values) * 1e3:.3f} | "
            f"{statistics.median(ratios):.2f}, {max(ratios):.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
