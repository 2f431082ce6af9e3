"""The `moe2` console script: orchestrator, optimizer and testbed subcommands.

The orchestrator's commands live with it (``orchestrator/commands``: serve, ask, plan, experts,
optimize), the experiment's here (``testbed/commands``: profile, sweep, plot, gate-report,
demo). Each command module exposes ``add_parser(subparsers, name, help_text)`` and
``run(args) -> int`` and imports its heavy dependencies inside ``run``, so ``moe2 --help`` stays
cheap (no numpy, grpc or matplotlib at start-up).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from edge_node.logs import add_logging_flags, configure_logging
from orchestrator.commands import ask, experts, optimize, plan, serve
from testbed.commands import demo, gate_report, plot, profile, served_report, sweep

SERVER_COMMANDS = frozenset(("serve", "sweep", "demo", "profile"))
"""Long-running commands: they log at info by default."""

EXTRAS_MODULES = frozenset(
    (
        "scipy",
        "tokenizers",
        "safetensors",
        "threadpoolctl",
        "tqdm",
        "pyarrow",
        "matplotlib",
        "tomli_w",
        "fastapi",
        "starlette",
        "uvicorn",
    )
)
"""Import names the `orchestrator` and `testbed` extras bring (a node-only install lacks them)."""

COMMANDS: dict[str, tuple[ModuleType, str]] = {
    "serve": (serve, "run the orchestrator gRPC server over a cluster file"),
    "ask": (ask, "send one request through a running orchestrator"),
    "plan": (plan, "the expert subset a running orchestrator would plan"),
    "experts": (experts, "the fleet a running orchestrator sees"),
    "profile": (profile, "measure every expert's latency and energy, live"),
    "optimize": (optimize, "solve one coarse-level selection instance"),
    "sweep": (sweep, "run the budget-sweep experiment"),
    "plot": (plot, "redraw the figures of a finished sweep"),
    "gate-report": (gate_report, "check the optimality-preserving property on a finished sweep"),
    "served-report": (served_report, "score what the orchestrator serves on a finished sweep"),
    "demo": (demo, "start local nodes and run a short sweep end to end"),
}
"""Subcommand name -> (its module, one-line help)."""


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="moe2",
        description="MoE² (Mixture-of-Edge-Experts): orchestrator, optimizer and testbed.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)"
    )
    from edge_node.version import package_version

    parser.add_argument("--version", action="version", version=f"moe2 {package_version()}")
    add_logging_flags(parser, top_level=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (command, help_text) in COMMANDS.items():
        command.add_parser(subparsers, name, help_text)
    for sub in subparsers.choices.values():  # the logging flags after the subcommand too
        add_logging_flags(sub, top_level=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``moe2`` console script; returns the process exit code."""
    try:
        return _main(argv)
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] not in EXTRAS_MODULES:
            raise
        print(
            f"moe2: error: the orchestrator and testbed extras are not installed (no module "
            f"{err.name!r}): pip install 'moe2-edge[testbed]'",
            file=sys.stderr,
        )
        return 2


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args, server=args.command in SERVER_COMMANDS)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # inside the try: a closed pipe is reported here, not at exit
        return code
    except BrokenPipeError:
        from edge_node.cli import broken_pipe

        return broken_pipe("moe2")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
