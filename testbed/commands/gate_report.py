"""`moe2 gate-report`: check the optimality-preserving property on a finished sweep."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from pathlib import Path
from typing import Any


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
    import numpy as np

    from edge_node.files import atomic_write_text
    from optimizer.fine import LinearPool, LogLinearPool
    from orchestrator.gate import Gate, GateConfig, GateFileError
    from testbed.evaluation import concat
    from testbed.optimality import optimality_report, pool_report, pool_text
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
    if full.metadata.train_size == data["train"].size + data["validation"].size:
        # Refitted on every planning prompt (testbed.sweep.train_gate): the check
        # runs on what the gate learnt from, and the test split stays held out.
        data = {**data, "train": concat(data["train"], data["validation"])}
        features = {
            **features,
            "train": np.concatenate([features["train"], features["validation"]]),
        }
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
