"""`moe2 plan`: the coarse-level plan a running orchestrator would use for these budgets."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from orchestrator.commands.remote import add_target, run_remote


def add_parser(subparsers: Any, name: str, help_text: str) -> None:
    """Register the subcommand."""
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description="Ask a running orchestrator which expert subset it would use for these "
        "budgets (Plan): the subset, its predicted worst-case energy and latency, and the "
        "optimizer's certificate. Nothing is sent to the experts.",
        epilog="example:\n  moe2 plan --target 127.0.0.1 --energy-budget-j 5 --delay-budget-s 2 "
        "--top-k 2 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_target(parser)
    parser.add_argument("--energy-budget-j", type=float, help="joules per request (default: none)")
    parser.add_argument("--delay-budget-s", type=float, help="seconds per request (default: none)")
    parser.add_argument("--top-k", type=int, help="experts per prompt (default: the cluster's)")
    parser.add_argument(
        "--method",
        default="dmo",
        help="optimizer method: dmo (default), greedy, best-single, exhaustive, ...",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Plan, print, and exit 1 with one line on any error status."""
    from orchestrator.client import AsyncClient

    async def plan(client: AsyncClient) -> int:
        result = await client.plan(
            energy_budget_j=args.energy_budget_j,
            delay_budget_s=args.delay_budget_s,
            top_k=args.top_k,
            method=args.method,
        )
        if args.json:
            print(json.dumps(asdict(result), indent=2))
            return 0
        latency = max(result.predicted_latency_s.values(), default=0.0)
        print(" + ".join(result.subset))
        print(
            f"  predicted worst case {result.predicted_energy_j:.3f} J, {latency:.3f} s; "
            f"objective {result.objective} {result.objective_value:.4f} (bound "
            f"{result.upper_bound:.4f}), {result.method}, top_k {result.top_k}, "
            f"{result.evaluations} evaluations in {result.solve_s * 1000:.2f} ms",
            file=sys.stderr,
        )
        return 0

    return run_remote(args, plan)
