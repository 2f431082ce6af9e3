"""`moe2 profile`: measure every expert's latency and energy per category, live."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any, name: str, help_text: str) -> None:
    """Register the subcommand."""
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description="Send a seeded sample of each category's prompts to every node of the "
        "cluster (nodes in parallel, one request at a time per node) and write profile.json: "
        "latency p50/p95/max as seen from here (transmission included), energy per request "
        "with its source, accuracy, and the nodes' hardware. `moe2 serve` plans with it.",
    )
    parser.add_argument("--cluster", type=Path, required=True, metavar="cluster.toml")
    parser.add_argument("--out", type=Path, required=True, metavar="profile.json")
    parser.add_argument(
        "--categories",
        nargs="+",
        default=["sst2", "piqa", "sciq", "arc_easy"],
        help="categories to profile (default: sst2 piqa sciq arc_easy)",
    )
    parser.add_argument("--samples", type=int, default=12, help="prompts per category (12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Profile the cluster and write the file atomically."""
    import asyncio

    import grpc

    from orchestrator.config import ClusterError, load_cluster
    from orchestrator.server import StartupError
    from testbed.categories import UnknownCategoryError, load_items
    from testbed.datasets import DatasetUnavailableError
    from testbed.profiling import profile_cluster

    if args.samples < 1:
        print("moe2: error: --samples must be >= 1", file=sys.stderr)
        return 2
    try:
        cluster = load_cluster(args.cluster)
        items = [
            item
            for category in args.categories
            for item in load_items(category, limit=args.samples, seed=args.seed)
        ]
        profile = asyncio.run(
            profile_cluster(cluster, items, progress=not args.no_progress and sys.stderr.isatty())
        )
    except (ClusterError, StartupError, UnknownCategoryError, DatasetUnavailableError) as err:
        print(f"moe2: error: {err}", file=sys.stderr)
        return 1
    except grpc.aio.AioRpcError as err:
        print(f"moe2: error: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    profile.save(args.out)
    for expert, entry in profile.experts.items():
        for category, stats in entry.categories.items():
            energy = "unknown" if stats.energy_j is None else f"{stats.energy_j['p95']:.3f} J"
            print(
                f"{expert:<16} {category:<14} p95 {stats.latency_s['p95']:.3f} s  {energy} "
                f"({entry.energy_source})  accuracy {stats.accuracy:.2f}"
            )
    print(f"wrote {args.out}")
    return 0
