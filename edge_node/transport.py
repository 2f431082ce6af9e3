"""gRPC options every server and channel of the project uses, written once.

Keepalive must match on both ends: the orchestrator's health watch and its channels ping every
:data:`KEEPALIVE_TIME_MS`, also while a long request is in flight or the link is idle, and a
server that keeps gRPC's default policy (at most one ping per five minutes without data) answers
``GOAWAY too_many_pings`` and drops the connection, failing every call on it. So servers accept
pings as often as every :data:`MIN_PING_INTERVAL_MS` with or without calls and never count
strikes, and channels ping no more often than that.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

import grpc

from edge_node.boundary import MalformedRequestInterceptor
from edge_node.limits import MAX_MESSAGE_BYTES

KEEPALIVE_TIME_MS = 10_000
"""How often channels ping an idle or busy connection (milliseconds)."""

KEEPALIVE_TIMEOUT_MS = 5_000
"""How long a channel waits for the ping's answer before it declares the peer dead."""

MIN_PING_INTERVAL_MS = 5_000
"""The shortest ping interval servers accept (half the channels' interval: room for jitter)."""

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)

SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
    ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)

MAX_PORT = 65_535


class AddressError(ValueError):
    """A host or port that cannot be bound, as one line naming the flag."""


def check_port(port: int) -> int:
    """The port itself, or AddressError outside 0-65535 (0 picks a free port)."""
    if not 0 <= port <= MAX_PORT:
        raise AddressError(f"--port: must be in 0-{MAX_PORT}, got {port}")
    return port


def bind_target(host: str, port: int) -> str:
    """``host:port`` for add_*_port, with IPv6 literals in brackets; the port is checked."""
    check_port(port)
    if not host or any(c.isspace() for c in host):
        raise AddressError(f"--host: not a host name or address: {host!r}")
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def new_server(interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> grpc.aio.Server:
    """A grpc.aio server with the project's options and error boundary.

    ``interceptors`` run first (the token check, so an unauthenticated request is never
    parsed); the malformed-message guard runs last, next to the handlers.
    """
    return grpc.aio.server(
        options=list(SERVER_OPTIONS),
        interceptors=[*interceptors, MalformedRequestInterceptor()],
    )


def bind_problem(host: str, port: int) -> str | None:
    """Why host:port cannot be bound, as one line naming the flag, or None if it can.

    A plain socket tries first, so the reason is the system's (in use, not an address of this
    host, no such name) rather than gRPC's generic failure and its C-core log line.
    """
    try:
        infos = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as err:
        reason = err.strerror if isinstance(err, socket.gaierror) else "not a valid name"
        return f"--host: {host} does not resolve: {reason}"
    first: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as err:
                first = first or err
                continue
            return None
    if first is not None and first.errno == errno.EADDRINUSE:
        return f"--port: {port} is already in use on {host}"
    reason = first.strerror if first is not None else "no address"
    return f"--host: cannot bind {host}:{port}: {reason}"


def check_bindable(host: str, port: int) -> None:
    """Raise AddressError now if host:port cannot be bound (before any slow start-up work)."""
    bind_target(host, port)
    problem = bind_problem(host, port)
    if problem is not None:
        raise AddressError(problem)


def add_port(
    server: grpc.aio.Server,
    host: str,
    port: int,
    credentials: grpc.ServerCredentials | None = None,
) -> int:
    """Bind host:port (TLS when credentials are given) and return the port actually bound.

    Raises:
        AddressError: a port outside 0-65535, a port in use, or a host that is not an address
            of this machine; one line naming the flags.
    """
    target = bind_target(host, port)
    check_bindable(host, port)
    try:
        if credentials is None:
            bound = server.add_insecure_port(target)
        else:
            bound = server.add_secure_port(target, credentials)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise AddressError(
            f"--host/--port: cannot bind {target} (port in use, or not an address of this host)"
        )
    return bound
