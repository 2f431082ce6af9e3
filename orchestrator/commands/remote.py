"""What every client command of a running orchestrator shares (`moe2 ask`, `plan`, `experts`).

``--target HOST[:PORT]`` (default port 50100) with the TLS and token flags; the call runs on an
SDK client; a gRPC error status is one line ``moe2: error: CODE: details`` (exit 1) and an
unusable TLS or token file one line too (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.client import AsyncClient


def add_target(parser: argparse.ArgumentParser) -> None:
    """``--target`` of a running orchestrator and the client security flags."""
    from edge_node.addresses import ORCHESTRATOR_PORT
    from edge_node.cli import add_client_security, add_target_argument

    add_target_argument(parser, default_port=ORCHESTRATOR_PORT, what="orchestrator")
    add_client_security(parser, env_var="MOE2_TOKEN")


def run_remote(args: argparse.Namespace, call: Callable[[AsyncClient], Awaitable[int]]) -> int:
    """Run ``call`` on a client of ``args.target``; its exit code, or 1/2 on errors."""
    import asyncio

    import grpc

    from edge_node.cli import client_security
    from edge_node.security import SecurityError
    from orchestrator.client import AsyncClient

    try:
        security = client_security(args, env_var="MOE2_TOKEN")
    except SecurityError as err:
        print(f"moe2: error: {err}", file=sys.stderr)
        return 2

    async def session() -> int:
        async with AsyncClient(args.target, security=security) as client:
            try:
                return await call(client)
            except grpc.aio.AioRpcError as err:
                print(f"moe2: error: {err.code().name}: {err.details()}", file=sys.stderr)
                return 1

    return asyncio.run(session())
