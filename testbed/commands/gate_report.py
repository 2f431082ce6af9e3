"""`moe2 gate-report`: check the optimality-preserving property on a finished sweep."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from optimizer.fine import PROBABILITY_FLOOR, LinearPool, LogLinearPool
from orchestrator.profiles import atomic_write_text
from testbed.evaluation import SplitData
from testbed.training import fit_pool


def add_parser(subparsers: Any, name: str, help_text: str) -> None:
    """Register the subcommand."""
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description="Retrain the gate on several expert subsets and compare each retrained "
        "gate's loss with the train-once full-set gate restricted to the subset (docs/method.md, "
        "optimality-preserving property), on the sweep's training split and on its test split. "
        "With a log-linear fusion rule, the same check for the pool: its weights trained once "
        "and restricted to S against weights refitted on S alone. Writes DIR/optimality.json "
        "and prints the tables.",
        epilog="example: moe2 gate-report runs/std --top-k 1",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="a finished `moe2 sweep` folder")
    parser.add_argument("--top-k", type=int, default=1, help="top-k for the accuracies (1)")
    parser.add_argument("--max-subsets", type=int, default=12, help="subsets checked (12)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the check."""
    from orchestrator.gate import Gate, GateConfig, GateFileError
    from testbed.optimality import optimality_report
    from testbed.recording import RecordingError
    from testbed.sweep import gate_features, load_recorded
    from testbed.sweep_config import SweepConfigError

    try:
        config, experts, data = load_recorded(args.dir)
        full = Gate.load(args.dir / "gate.npz")
    except (SweepConfigError, RecordingError, GateFileError, OSError) as err:
        print(f"moe2: error: {err}", file=sys.stderr)
        return 1
    categories = list(config.categories)
    features, _, _ = gate_features(data, categories, args.dir)
    fusion = full.fusion
    # The gate learns from the answers its fusion rule fuses: calibrated ones for the pool.
    targets = {name: split.option_probs for name, split in data.items()}
    if isinstance(fusion, LogLinearPool):
        targets = {
            name: np.exp(
                fusion.calibrated_log_probs(
                    split.option_probs, split.n_options, split.category_rows(fusion)
                )
            )
            for name, split in data.items()
        }
    hyper = full.metadata.hyperparameters
    gate_config = GateConfig(
        seed=config.seed,
        l2=float(hyper.get("l2", 1e-4)),
        target_sharpness=float(hyper.get("target_sharpness", 1.0)),
    )
    n = len(experts)
    subsets = [combo for size in range(2, n) for combo in itertools.combinations(range(n), size)][
        : args.max_subsets
    ] or [tuple(range(n))]
    report = optimality_report(
        features["train"],
        targets["train"],
        data["train"].labels,
        subsets,
        experts=experts,
        config=gate_config,
        # The gate's own check, on the answers it learnt from (calibrated ones for a pool),
        # with both gates' accuracies from the mixture; the pool has its own check below.
        full_gate=dataclasses.replace(full, fusion=LinearPool()),
        top_k=args.top_k,
        heldout=(features["test"], targets["test"], data["test"].labels),
    )
    print(report.to_text())
    rows = [
        {
            "subset": list(row.experts),
            "split": row.split,
            "restricted_loss": row.restricted_loss,
            "retrained_loss": row.retrained_loss,
            "gap": row.gap,
            "restricted_accuracy": row.restricted_accuracy,
            "retrained_accuracy": row.retrained_accuracy,
        }
        for row in report.rows
    ]
    result: dict[str, Any] = {"rows": rows}
    if isinstance(fusion, LogLinearPool):
        pool_rows = pool_report(args.dir, fusion, data, experts, categories, subsets, config.seed)
        result["fusion_rows"] = pool_rows
        print(pool_text(pool_rows))
    atomic_write_text(args.dir / "optimality.json", json.dumps(result, indent=2) + "\n")
    return 0


def _fused_scores(pool: LogLinearPool, split: SplitData, members: list[int]) -> tuple[float, float]:
    """NLL (nats) and accuracy of the pool over every expert of S on one split."""
    probs = split.option_probs[:, members]
    fused = pool.fuse(
        np.full((split.size, len(members)), 1.0 / len(members)),  # equal gate weights over S
        probs,
        split.n_options,
        split.category_rows(pool),
    )
    picked = fused[np.arange(split.size), split.labels]
    nll = float(-np.mean(np.log(np.maximum(picked, PROBABILITY_FLOOR))))
    return nll, float(np.mean(fused.argmax(axis=1) == split.labels))


def pool_report(
    out_dir: Path,
    pool: LogLinearPool,
    data: dict[str, SplitData],
    experts: list[str],
    categories: list[str],
    subsets: list[tuple[int, ...]],
    seed: int,
) -> list[dict[str, Any]]:
    """The pool trained once and restricted to S against the pool refitted on S alone."""
    choice_file = out_dir / "fine_level.json"
    l2 = 0.03
    if choice_file.is_file():
        l2 = float(json.loads(choice_file.read_text())["choice"].get("pool_l2", l2))
    train = data["train"]
    rows = []
    for subset in subsets:
        members = list(subset)
        refitted = fit_pool(
            dataclasses.replace(train, option_probs=train.option_probs[:, members]),
            categories,
            l2=l2,
            seed=seed,
        )
        restricted = pool.restrict(members)
        for split_name, split in (("train", train), ("heldout", data["test"])):
            restricted_nll, restricted_accuracy = _fused_scores(restricted, split, members)
            refitted_nll, refitted_accuracy = _fused_scores(refitted, split, members)
            rows.append(
                {
                    "subset": [experts[e] for e in members],
                    "split": split_name,
                    "restricted_nll": restricted_nll,
                    "refitted_nll": refitted_nll,
                    "gap": restricted_nll - refitted_nll,
                    "restricted_accuracy": restricted_accuracy,
                    "refitted_accuracy": refitted_accuracy,
                }
            )
    return rows


def pool_text(rows: list[dict[str, Any]]) -> str:
    """The pool's rows as a table with per-split mean and max gaps."""
    lines = [
        "log-linear pool: weights trained once, restricted to S, vs refitted on S (all of S)",
        f"{'split':8} {'subset':40} {'NLL once':>9} {'NLL refit':>9} {'gap':>9} "
        f"{'acc once':>8} {'acc refit':>9}",
    ]
    for row in rows:
        lines.append(
            f"{row['split']:8} {','.join(row['subset'])[:40]:40} "
            f"{row['restricted_nll']:9.4f} {row['refitted_nll']:9.4f} {row['gap']:9.2e} "
            f"{row['restricted_accuracy']:8.3f} {row['refitted_accuracy']:9.3f}"
        )
    for split in ("train", "heldout"):
        gaps = [r["gap"] for r in rows if r["split"] == split]
        if gaps:
            lines.append(f"{split}: mean gap {np.mean(gaps):.2e}, max gap {max(gaps):.2e}")
    return "\n".join(lines)
