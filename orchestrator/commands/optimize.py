"""``moe2 optimize``: solve one coarse-level instance file (docs/architecture.md §5).

The only I/O of the optimizer lives here: read the JSON file, hand the decoded object to
:func:`optimizer.parse_instance`, solve, print. A malformed file is one line on stderr naming the
field, exit 2, never a traceback: instance files are written by hand as well as by the testbed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from typing import Any

logger = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2
_METHOD_CHOICES = ("dmo", "exhaustive", "greedy", "milp", "best-single", "random", "maximal")


def add_parser(subparsers: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    """Register the ``optimize`` subcommand on the ``moe2`` parser.

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
            "Pick the expert subset that maximises the objective under the worst-case energy "
            "budget and every category's delay budget (see docs/optimizer.md)."
        ),
    )
    parser.add_argument("--instance", required=True, metavar="FILE", help="instance JSON file")
    parser.add_argument(
        "--method", choices=_METHOD_CHOICES, default="dmo", help="solver (default: dmo, exact)"
    )
    parser.add_argument(
        "--mode",
        choices=("monotone", "exact"),
        default=None,
        help="dmo mode (default: monotone for best-of, exact for gated)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random method")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Solve the instance and print the result; returns the exit code (0, or 2 on bad input)."""
    from optimizer import InstanceError, parse_instance, solution_to_dict, solve

    try:
        with open(args.instance, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as error:
        print(
            f"error: cannot read instance file: {error.strerror}: {args.instance}", file=sys.stderr
        )
        return EXIT_BAD_INPUT
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        print(f"error: instance file {args.instance} is not valid JSON: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValueError:  # an integer longer than Python's int_max_str_digits (4300)
        print(
            f"error: instance file {args.instance}: a number has more than "
            f"{sys.get_int_max_str_digits()} digits",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    except RecursionError:
        print(f"error: instance file {args.instance}: nested too deeply", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        instance = parse_instance(data)
    except InstanceError as error:
        print(f"error: {args.instance}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ValueError, TypeError, OverflowError, RecursionError) as error:
        print(f"error: {args.instance}: invalid instance: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        solution = solve(
            instance.problem, instance.objective, args.method, mode=args.mode, seed=args.seed
        )
    except (ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps(solution_to_dict(solution), allow_nan=False))
        return 0
    if not solution.feasible:
        print(f"{solution.method}: no non-empty subset meets the budgets (feasible: false)")
    else:
        print(f"{solution.method}: subset {', '.join(solution.subset_names)}")
        print(f"  value {solution.value:.6g}  upper bound {_format_bound(solution.upper_bound)}")
        latency = ", ".join(f"{c} {s:.4g} s" for c, s in solution.latency_s.items())
        print(f"  worst-case energy {solution.energy_j:.4g} J; latency {latency or '-'}")
    print(f"  {solution.evaluations} F evaluations in {solution.seconds:.3g} s")
    return 0


def _format_bound(bound: float) -> str:
    return "unknown" if math.isinf(bound) else f"{bound:.6g}"
