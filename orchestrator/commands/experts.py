"""`moe2 experts`: the fleet a running orchestrator sees (ListExperts)."""

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
        description="List the experts of a running orchestrator: health, model, device, "
        "energy source, where their latency/energy figures come from (file, probe, live) and "
        "their age, requests in flight, and the gate in use.",
        epilog="example:\n  moe2 experts --target 127.0.0.1 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_target(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """List, print, and exit 1 with one line on any error status."""
    from orchestrator.client import AsyncClient

    async def experts(client: AsyncClient) -> int:
        fleet, trained, gate = await client.experts()
        if args.json:
            document = {
                "experts": [asdict(e) for e in fleet],
                "gate_trained": trained,
                "gate": gate,
            }
            print(json.dumps(document, indent=2))
            return 0
        for e in fleet:
            age = "never" if e.profile_age_s is None else f"{e.profile_age_s:.0f} s old"
            print(
                f"{e.name:<16} {e.health:<8} {e.model_id or '?':<16} {e.device_kind or '?':<10} "
                f"energy {e.energy_source:<16} figures {e.profile_source or 'none'} ({age}), "
                f"{e.in_flight} in flight{f'; {e.last_error}' if e.last_error else ''}"
            )
        print(f"gate: {gate}", file=sys.stderr)
        return 0

    return run_remote(args, experts)
