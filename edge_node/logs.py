"""Logging flags and set-up shared by both CLIs: ``--log-level``, ``--log-format text|json``.

The flags are accepted before or after the subcommand (``edge-node --log-format json serve`` and
``edge-node serve --log-format json`` are the same). ``json`` writes one JSON object per line
(``ts``, ``level``, ``logger``, ``message``, and ``error`` with the exception's type and text
when there is one) for log shippers; ``text`` is the human format. Logs go to stderr; stdout
keeps the readiness lines and ``--json`` documents.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime, timezone

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
UTC_ZONE = timezone.utc  # noqa: UP017 (datetime.UTC is Python 3.11+; the node supports 3.10)


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "ts": datetime.fromtimestamp(record.created, UTC_ZONE).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            document["error"] = f"{type(error).__name__}: {error}"
        return json.dumps(document, ensure_ascii=False)


def add_logging_flags(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """``--log-level`` and ``--log-format`` on a parser.

    The top level gives the defaults; a subcommand's copy overrides them only when given.
    """
    default = None if top_level else argparse.SUPPRESS
    group = parser.add_argument_group("logging")
    group.add_argument(
        "--log-level",
        choices=LEVELS,
        default=default,
        help="log threshold (default: warning; info for servers; -v/-vv raise it)",
    )
    group.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text" if top_level else argparse.SUPPRESS,
        help="text (default) or json: one JSON object per line on stderr",
    )


def configure_logging(args: argparse.Namespace, *, server: bool) -> None:
    """Set up the root logger from the parsed flags (and ``-v`` counts, if the parser has them)."""
    if args.log_level is not None:
        level = getattr(logging, args.log_level.upper())
    else:
        verbose = getattr(args, "verbose", 0)
        level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
        if server:
            level = min(level, logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if args.log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
