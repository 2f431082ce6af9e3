"""`moe2 sweep`: the budget-sweep experiment."""

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
        description="Record every expert's answers (resumable), train the gate once, sweep the "
        "delay and energy budgets against the baselines, validate a few budget points live "
        "through the orchestrator, and write results, summary and figures into --out.",
        epilog="example: moe2 sweep --config testbed/configs/standard.toml --out runs/std "
        "--markdown runs/std/tables.md",
    )
    parser.add_argument("--config", type=Path, required=True, metavar="sweep.toml")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--record-only", action="store_true", help="stop after recording the responses"
    )
    parser.add_argument(
        "--markdown", type=Path, metavar="FILE", help="also write the tables as Markdown"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the sweep; one readable line and exit 1 on any expected failure."""
    return run_config_file(
        args.config,
        args.out,
        progress=not args.no_progress,
        record_only=args.record_only,
        markdown=args.markdown,
    )


def run_config_file(
    config: Path,
    out: Path,
    *,
    progress: bool,
    record_only: bool = False,
    markdown: Path | None = None,
) -> int:
    """Load, run, print the summary table; shared with `moe2 demo`."""
    import logging
    import signal

    from threadpoolctl import threadpool_limits

    from testbed.categories import UnknownCategoryError
    from testbed.datasets import DatasetUnavailableError
    from testbed.fleet import FleetError
    from testbed.recording import RecordingError
    from testbed.sweep import run_sweep
    from testbed.sweep_config import SweepConfigError, load_sweep_config

    # SIGINT and SIGTERM stop a sweep like Ctrl-C does (the fleet and its links are torn down in
    # order), however it was launched: a job a non-interactive shell starts with `&` inherits
    # SIGINT ignored, and the servers own both signals the same way (loop.add_signal_handler).
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.default_int_handler)
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    if logging.getLogger().level >= logging.INFO:  # one line per plan is too much here
        for name in ("optimizer", "orchestrator.registry"):
            logging.getLogger(name).setLevel(logging.WARNING)
    threadpool_limits(1)
    try:
        loaded = load_sweep_config(config)
        outcome = run_sweep(loaded, out, progress=progress, record_only=record_only)
    except (
        SweepConfigError,
        FleetError,
        RecordingError,
        DatasetUnavailableError,
        UnknownCategoryError,
    ) as err:
        print(f"moe2: error: {err}", file=sys.stderr)
        return 1
    if record_only:
        print(f"responses recorded in {out / 'responses'}")
        return 0
    print_report(out, outcome.figures, markdown=markdown)
    return 0


def print_report(out: Path, figures: list[Path], *, markdown: Path | None = None) -> None:
    """The three-line story, the tables, and optionally the tables as Markdown."""
    from testbed.results import load_live, load_results
    from testbed.story import accuracy_tables, early_exit_line, read_ceilings_line, story

    rows = load_results(out)
    live = load_live(out)
    print()
    print(accuracy_tables(rows))
    print()
    for extra in (early_exit_line(rows), read_ceilings_line(out)):
        if extra:
            print(extra)
    print(f"results: {out / 'results.jsonl'}  summary: {out / 'summary.csv'}")
    print()
    for line in story(rows, live, figures, out):
        print(line)
    if markdown is not None:
        markdown.write_text(accuracy_tables(rows, markdown=True) + "\n")
        print(f"tables (Markdown): {markdown}")
