"""`moe2 serve`: the orchestrator gRPC server over a cluster file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edge_node.addresses import ORCHESTRATOR_PORT


def add_parser(subparsers: Any, name: str, help_text: str) -> None:
    """Register the subcommand."""
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description="Serve the Orchestrator gRPC API (with --http-port also the OpenAI-compatible\n"
        "HTTP API, with --metrics-port Prometheus metrics). Prints 'listening on HOST:PORT'\n"
        "once ready, then 'http listening on HOST:PORT' and 'metrics listening on HOST:PORT'\n"
        "for the ports enabled. SIGHUP re-reads the cluster file's [[nodes]]; SIGTERM drains\n"
        "and exits 0.",
        epilog="example:\n"
        "  moe2 serve --cluster cluster.toml --port 50100 --http-port 8000 --metrics-port 9100\n"
        "  curl http://127.0.0.1:8000/v1/models\n"
        "  curl http://127.0.0.1:9100/metrics",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cluster", type=Path, required=True, metavar="cluster.toml")
    parser.add_argument(
        "--host", default="127.0.0.1", help="bind address of every port (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=ORCHESTRATOR_PORT,
        help=f"gRPC port; 0 picks a free one (default {ORCHESTRATOR_PORT})",
    )
    parser.add_argument(
        "--http-port",
        type=int,
        default=None,
        metavar="P",
        help="serve the OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, "
        "/v1/models, /health, /metrics) on P; 0 picks a free port (default: off; e.g. "
        "--http-port 8000)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="P",
        help="serve Prometheus metrics at http://HOST:P/metrics; 0 picks a free port "
        "(default: off; e.g. --metrics-port 9100)",
    )
    from edge_node.cli import add_server_security

    add_server_security(parser, env_var="MOE2_TOKEN")
    parser.add_argument(
        "--admin-token-file",
        type=Path,
        metavar="FILE",
        help="token RegisterNode/DeregisterNode need (default: the MOE2_ADMIN_TOKEN environment "
        "variable); a client token gets PERMISSION_DENIED there",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until signalled; one readable line and exit 1 on a bad cluster file."""
    import asyncio

    from edge_node.security import SecurityError, ServerSecurity
    from edge_node.transport import AddressError
    from orchestrator.config import ClusterError
    from orchestrator.server import ADMIN_TOKEN_ENV, TOKEN_ENV, StartupError, serve

    try:
        security = ServerSecurity.load(
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            token_file=args.token_file,
            token_env=TOKEN_ENV,
            admin_token_file=args.admin_token_file,
            admin_token_env=ADMIN_TOKEN_ENV,
            insecure=bool(args.insecure),
            reflection=args.reflection,
        )
        asyncio.run(
            serve(
                args.cluster,
                host=args.host,
                port=args.port,
                security=security,
                http_port=args.http_port,
                metrics_port=args.metrics_port,
            )
        )
    except (ClusterError, StartupError, AddressError, SecurityError) as err:
        print(f"moe2: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"moe2: error: cannot serve: {err}", file=sys.stderr)
        return 1
    return 0
