"""`moe2 demo`: the embedded default behind `make demo`.

Starts local edge nodes for the installed built-in models (on emulated devices and links), runs
the quick budget sweep end to end, prints the accuracy table and where the figures are, and
stops every process it started, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any, name: str, help_text: str) -> None:
    """Register the subcommand."""
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description="Run the quick MoE² budget sweep on the installed built-in models: local "
        "nodes on emulated edge devices, a mixed benchmark, every baseline, live validation "
        "through the orchestrator, a printed table and figures. About 5-10 minutes on 2 cores.",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="output folder (runs/demo)"
    )
    parser.add_argument(
        "--config", type=Path, help="another sweep.toml (default: testbed/configs/quick.toml)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--markdown", type=Path, metavar="FILE", help="also write the tables as Markdown"
    )
    parser.set_defaults(func=run)


def demo_config(source: str, out_dir: Path) -> Path:
    """The quick config restricted to the installed built-in models, written into out_dir."""
    import tomli_w

    from edge_node import models

    document = tomllib.loads(source)
    experts = document.get("experts", [])
    installed = [
        e
        for e in experts
        if not e.get("model")
        or e["model"] not in models.CATALOGUE
        or models.is_installed(e["model"])
    ]
    skipped = [e["name"] for e in experts if e not in installed]
    if skipped:
        print(f"moe2 demo: not installed, skipped: {', '.join(skipped)}", file=sys.stderr)
    if not installed:
        raise SystemExit("moe2: error: no built-in model is installed; run `make setup`")
    document["experts"] = installed
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "demo.toml"
    path.write_text(tomli_w.dumps(document))
    return path


def run(args: argparse.Namespace) -> int:
    """Run the demo sweep."""
    from testbed.commands.sweep import run_config_file

    if args.config is not None:
        try:
            source = args.config.read_text()
        except OSError as err:
            print(f"moe2: error: cannot read {args.config}: {err.strerror}", file=sys.stderr)
            return 1
    else:
        source = resources.files("testbed").joinpath("configs/quick.toml").read_text()
    config = demo_config(source, args.out)
    return run_config_file(config, args.out, progress=not args.no_progress, markdown=args.markdown)
