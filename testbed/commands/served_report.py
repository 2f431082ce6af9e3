"""`moe2 served-report`: what the orchestrator serves, scored offline on a finished sweep."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any, name: str, help_text: str) -> None:
    """Register the subcommand."""
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description="Run the orchestrator's planner (built from the sweep's gate, profile and "
        "selection files, as `moe2 serve` builds it) per request category at every moe2 "
        "budget point, and score each category's plan on its test prompts with the fine "
        "level the orchestrator answers with. Prints the served accuracy next to the sweep's "
        "moe2 (one subset for every category) and best-single, with a paired-bootstrap "
        "interval; writes DIR/served.json.",
        epilog="example: moe2 served-report runs/std",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="a finished `moe2 sweep` folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the report."""
    from edge_node.files import atomic_write_text
    from orchestrator.gate import GateFileError
    from orchestrator.server import StartupError
    from testbed.recording import RecordingError
    from testbed.results import ResultsError
    from testbed.served import served_json, served_points, served_text
    from testbed.sweep_config import SweepConfigError

    try:
        points = served_points(args.dir)
    except (
        SweepConfigError,
        RecordingError,
        GateFileError,
        StartupError,
        ResultsError,
        OSError,
    ) as err:
        print(f"moe2: error: {err}", file=sys.stderr)
        return 1
    print(served_text(points))
    atomic_write_text(args.dir / "served.json", json.dumps(served_json(points), indent=2) + "\n")
    return 0
