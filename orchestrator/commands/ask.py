"""`moe2 ask`: one request through a running orchestrator."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from orchestrator.commands.remote import add_target, run_remote


def add_parser(subparsers: Any, name: str, help_text: str) -> None:
    """Register the subcommand."""
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description="Send one prompt through the orchestrator under delay and energy budgets. "
        "With --choices the experts score the candidate continuations and their distributions "
        "are fused; without, they generate and the answers are fused by weighted vote.",
    )
    add_target(parser)
    parser.add_argument("--energy-budget-j", type=float, help="joules per request")
    parser.add_argument("--delay-budget-s", type=float, help="seconds per request")
    parser.add_argument("--category", default="", help="application category (e.g. sst2)")
    parser.add_argument(
        "--choices",
        nargs="+",
        default=[],
        metavar="CHOICE",
        help="candidate continuations; in `--choices A B PROMPT` the last word is the prompt",
    )
    parser.add_argument("--top-k", type=int, help="experts per prompt (cluster default)")
    parser.add_argument(
        "--early-exit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="multiple choice: ask the top-k experts one at a time in the gate's exit order and "
        "stop once the answer looks final (cluster default)",
    )
    parser.add_argument("--max-tokens", type=int, help="open prompts: tokens to generate")
    parser.add_argument(
        "--scoring",
        choices=["sum", "mean_token", "mean_char"],
        default="sum",
        help="length normalisation of the choices' log-probabilities",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("prompt", nargs="?")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Ask, print, and exit 1 with one line on any error status."""
    from edge_node.cli import prompt_and_choices
    from orchestrator.client import AsyncClient

    if args.prompt is None and len(args.choices) != 1:
        try:
            args.prompt, args.choices = prompt_and_choices(
                args.prompt,
                args.choices,
                min_choices=2,
                example='moe2 ask --target HOST "Is it?" --choices " yes" " no"',
            )
        except ValueError as err:
            print(f"moe2: error: ask: {err}", file=sys.stderr)
            return 2
    if args.prompt is None or len(args.choices) == 1:
        print(
            "moe2: error: ask: a PROMPT and no choices (open prompt) or at least two choices "
            'are needed, e.g. moe2 ask --target HOST "Is it?" --choices " yes" " no"',
            file=sys.stderr,
        )
        return 2

    async def ask(client: AsyncClient) -> int:
        answer = await client.ask(
            args.prompt,
            choices=args.choices,
            category=args.category,
            energy_budget_j=args.energy_budget_j,
            delay_budget_s=args.delay_budget_s,
            top_k=args.top_k,
            max_tokens=args.max_tokens,
            scoring=args.scoring,
            early_exit=args.early_exit,
        )
        if args.json:
            print(json.dumps(answer.to_json(), indent=2))
            return 0
        print(answer.answer)
        for expert in answer.experts:
            joules = (
                "?"
                if expert.energy is None or expert.energy.energy_j is None
                else (f"{expert.energy.energy_j:.3f} J {expert.energy.source}")
            )
            print(
                f"  {expert.expert:<16} w={expert.gate_weight:.2f} {expert.outcome:<8} "
                f"{expert.latency_s:.3f} s {joules}",
                file=sys.stderr,
            )
        total = "unknown" if answer.energy_j is None else f"{answer.energy_j:.3f} J"
        print(
            f"  total {answer.latency_s:.3f} s, {total}; predicted worst case "
            f"{answer.predicted_latency_s:.3f} s, {answer.predicted_energy_j:.3f} J",
            file=sys.stderr,
        )
        return 0

    return run_remote(args, ask)
