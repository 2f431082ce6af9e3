"""``moe2 plot DIR``: redraw a sweep's figures from its result files (docs/architecture.md §6.2).

The figures depend on the files alone, so this works on a finished sweep, an interrupted one
(a torn last line of results.jsonl is skipped with a warning) and a copy on another machine.
A missing folder or results file, or an invalid line, is one ``moe2: error: ...`` line on
stderr and exit 1, never a traceback: the usual cause is a wrong path, not a bug.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

EXIT_ERROR = 1


def add_parser(subparsers: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    """Register the ``plot`` subcommand on the ``moe2`` parser.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers``.
        name: The subcommand name.
        help_text: One-line help for the command list.

    Returns:
        The subcommand's parser.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=help_text,
        description=(
            "Redraw every figure of a budget sweep from its folder (results.jsonl, and "
            "live.jsonl, profile.json, env.json, config.toml when present): accuracy against "
            "the energy and the delay budget, the MoE² heat map, MoE²'s gain over the best "
            "single expert with 95 % intervals and its heat map, predicted against measured "
            "latency/energy (refused requests counted), expert usage, per-expert profiles, the "
            "chosen subsets by budget and DMO's effort; each as PNG (200 dpi) or SVG, plus PDF. "
            "Prints the paths written, the tables and the three-line story. Writes "
            "DIR/summary.csv if it is missing."
        ),
        epilog="example: moe2 plot docs/results/standard",
    )
    parser.add_argument("dir", metavar="DIR", help="output folder of `moe2 sweep --out DIR`")
    parser.add_argument(
        "--format",
        dest="image_format",
        choices=("png", "svg"),
        default="png",
        help="image format of the figures (default: png)",
    )
    parser.set_defaults(func=run)
    return parser


def _error(message: str) -> int:
    print(f"moe2: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def run(args: argparse.Namespace) -> int:
    """Draw the figures and print their paths and the summary table; returns the exit code."""
    from testbed.plots import draw_figures
    from testbed.results import (
        RESULTS_FILE,
        SUMMARY_FILE,
        ResultsError,
        load_live,
        load_results,
        write_summary_csv,
    )
    from testbed.story import accuracy_tables, early_exit_line, story

    directory = Path(args.dir)
    if not directory.is_dir():
        return _error(f"no such directory: {directory}")
    if not (directory / RESULTS_FILE).is_file():
        return _error(f"no {RESULTS_FILE} in {directory} (is it a `moe2 sweep` output folder?)")
    try:
        rows = load_results(directory)
        live = load_live(directory)
        written = draw_figures(directory, rows, live, args.image_format)
    except ResultsError as error:
        return _error(str(error))
    except OSError as error:
        return _error(f"cannot write figures: {error}")
    summary_path = directory / SUMMARY_FILE
    if not summary_path.exists():
        try:
            write_summary_csv(rows, summary_path)
        except OSError as error:
            return _error(f"cannot write {summary_path}: {error}")
        written.append(summary_path)
    for path in written:
        print(path)
    print()
    print(accuracy_tables(rows))
    exit_line = early_exit_line(rows)
    if exit_line:
        print(exit_line)
    print()
    figures = [p for p in written if p.suffix in (".png", ".svg", ".pdf")]
    for line in story(rows, live, figures, directory):
        print(line)
    return 0
