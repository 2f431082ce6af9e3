"""Scaling of the coarse-level solvers: DMO against exhaustive enumeration, MILP and greedy.

For every N, instance family, budget tightness and top_k it builds one random best-of instance,
solves it with DMO, exhaustive enumeration (N <= 22), the MILP, and greedy, and checks that DMO's
value equals the reference (exhaustive where it runs, else the MILP). It prints a markdown
table (medians and p90s per N, the worst family) and can write every record as JSON.

    python benchmarks/optimizer_scaling.py [--quick] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import zlib
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from optimizer import BestOfObjective, Problem, solve

logger = logging.getLogger(__name__)

FAMILIES = ("uniform", "bigger-is-better", "dominated")
BUDGETS = {"tight": 0.35, "loose": 0.75}
EXHAUSTIVE_MAX_N = 22
N_PROMPTS = 200


@dataclass(frozen=True, slots=True)
class Record:
    n_experts: int
    family: str
    budget: str
    top_k: int
    dmo_value: float
    reference_value: float
    reference: str
    exact: bool
    dmo_evaluations: int
    dmo_s: float
    exhaustive_evaluations: int | None
    exhaustive_s: float | None
    milp_s: float
    milp_value: float
    greedy_gap: float


def build_instance(
    rng: np.random.Generator, n_experts: int, family: str, budget: str, top_k: int
) -> tuple[Problem, BestOfObjective]:
    energy = rng.uniform(0.5, 5.0, n_experts)
    if family == "uniform":
        scores = rng.uniform(0.0, 1.0, (N_PROMPTS, n_experts))
    elif family == "bigger-is-better":
        # Quality grows with energy; per-prompt noise keeps small experts useful sometimes.
        strength = (energy - 0.5) / 4.5
        scores = np.clip(strength[None, :] * 0.6 + rng.normal(0, 0.2, (N_PROMPTS, n_experts)), 0, 1)
    else:
        # A quarter of originals; the rest are dominated copies: dearer and no better anywhere.
        originals = max(1, n_experts // 4)
        base = rng.uniform(0.0, 1.0, (N_PROMPTS, originals))
        scores = np.empty((N_PROMPTS, n_experts))
        scores[:, :originals] = base
        for n in range(originals, n_experts):
            source = int(rng.integers(originals))
            scores[:, n] = base[:, source] * rng.uniform(0.7, 1.0, N_PROMPTS)
            energy[n] = energy[source] * rng.uniform(1.0, 1.5)
    k = n_experts if top_k == 0 else top_k
    scale = float(np.sort(energy)[-k:].sum())
    problem = Problem.build(
        experts=[f"e{n}" for n in range(n_experts)],
        energy_j=energy,
        energy_budget_j=BUDGETS[budget] * scale,
        top_k=k,
    )
    return problem, BestOfObjective(scores)


def run_one(n_experts: int, family: str, budget: str, top_k: int, seed: int) -> Record:
    rng = np.random.default_rng(seed)
    problem, objective = build_instance(rng, n_experts, family, budget, top_k)
    dmo = solve(problem, objective, "dmo")
    milp = solve(problem, objective, "milp")
    greedy = solve(problem, objective, "greedy")
    exhaustive = solve(problem, objective, "exhaustive") if n_experts <= EXHAUSTIVE_MAX_N else None
    reference = exhaustive.value if exhaustive is not None else milp.value
    tolerance = 1e-12 if exhaustive is not None else 1e-7
    return Record(
        n_experts=n_experts,
        family=family,
        budget=budget,
        top_k=problem.top_k,
        dmo_value=dmo.value,
        reference_value=reference,
        reference="exhaustive" if exhaustive is not None else "milp",
        exact=abs(dmo.value - reference) <= tolerance and dmo.upper_bound - dmo.value <= 1e-9,
        dmo_evaluations=dmo.evaluations,
        dmo_s=dmo.seconds,
        exhaustive_evaluations=exhaustive.evaluations if exhaustive is not None else None,
        exhaustive_s=exhaustive.seconds if exhaustive is not None else None,
        milp_s=milp.seconds,
        milp_value=milp.value,
        greedy_gap=(reference - greedy.value) / abs(reference) if reference else 0.0,
    )


def _p90(values: list[float]) -> float:
    return float(np.percentile(values, 90)) if values else float("nan")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(records: list[Record]) -> str:
    by_n: dict[int, list[Record]] = defaultdict(list)
    for record in records:
        by_n[record.n_experts].append(record)
    lines = [
        "| N | inst. | exact | DMO evals med / p90 | exh. evals med | DMO/exh evals med / p90 "
        "| DMO s med / p90 | exh. s med | MILP s med / p90 | greedy gap med / p90 / max |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n_experts in sorted(by_n):
        group = by_n[n_experts]
        exact = sum(r.exact for r in group)
        evals = [float(r.dmo_evaluations) for r in group]
        seconds = [r.dmo_s for r in group]
        milp = [r.milp_s for r in group]
        gaps = [100 * r.greedy_gap for r in group]
        exh = [r for r in group if r.exhaustive_evaluations]
        ratios = [100 * r.dmo_evaluations / (r.exhaustive_evaluations or 1) for r in exh]
        exh_evals = [float(r.exhaustive_evaluations or 0) for r in exh]
        exh_s = [r.exhaustive_s or 0.0 for r in exh]
        ratio_text = f"{_median(ratios):.2f}% / {_p90(ratios):.2f}%" if exh else "–"
        lines.append(
            f"| {n_experts} | {len(group)} | {100 * exact / len(group):.0f}% "
            f"| {_median(evals):.0f} / {_p90(evals):.0f} "
            f"| {_median(exh_evals):.0f} | {ratio_text} "
            f"| {_median(seconds):.4f} / {_p90(seconds):.4f} "
            f"| {_median(exh_s):.3f} | {_median(milp):.3f} / {_p90(milp):.3f} "
            f"| {_median(gaps):.2f}% / {_p90(gaps):.2f}% / {max(gaps):.2f}% |"
            if exh
            else f"| {n_experts} | {len(group)} | {100 * exact / len(group):.0f}% "
            f"| {_median(evals):.0f} / {_p90(evals):.0f} | – | – "
            f"| {_median(seconds):.4f} / {_p90(seconds):.4f} | – "
            f"| {_median(milp):.3f} / {_p90(milp):.3f} "
            f"| {_median(gaps):.2f}% / {_p90(gaps):.2f}% / {max(gaps):.2f}% |"
        )
    by_family: dict[tuple[str, str, int], list[Record]] = defaultdict(list)
    largest = max(by_n)
    for record in by_n[largest]:
        k_label = "N" if record.top_k == record.n_experts else str(record.top_k)
        by_family[(record.family, record.budget, 0 if k_label == "N" else record.top_k)].append(
            record
        )
    worst_key, worst = max(by_family.items(), key=lambda item: max(r.dmo_s for r in item[1]))
    family, budget, k = worst_key
    lines.append("")
    lines.append(
        f"Worst family at N = {largest}: {family}, {budget} budget, top_k = "
        f"{'N' if k == 0 else k}: DMO {max(r.dmo_s for r in worst):.3f} s, "
        f"{max(r.dmo_evaluations for r in worst)} evaluations."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="N <= 20, one seed (about 30 s)")
    parser.add_argument("--out", type=Path, help="write every record to this JSON file")
    parser.add_argument("--seeds", type=int, default=None, help="instances per configuration")
    args = parser.parse_args(argv)
    sizes = (8, 12, 16, 20) if args.quick else (8, 12, 16, 20, 24, 32, 40)
    seeds = args.seeds or 1
    records: list[Record] = []
    started = time.perf_counter()
    for n_experts in sizes:
        for family in FAMILIES:
            for budget in BUDGETS:
                for top_k in (1, 2, 3, 0):  # 0 means top_k = N
                    for seed in range(seeds):
                        key = f"{n_experts}/{family}/{budget}/{top_k}/{seed}".encode()
                        config_seed = zlib.crc32(key)
                        records.append(run_one(n_experts, family, budget, top_k, config_seed))
        print(
            f"N={n_experts} done at {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    print(table(records))
    if args.out is not None:
        args.out.write_text(json.dumps([asdict(r) for r in records], indent=1), encoding="utf-8")
    return 0 if all(r.exact for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
