"""gRPC options every server and channel of the project uses, written once.

Keepalive must match on both ends: the orchestrator's health watch and its channels ping every
:data:`KEEPALIVE_TIME_MS`, also while a long request is in flight or the link is idle, and a
server that keeps gRPC's default policy (at most one ping per five minutes without data) answers
``GOAWAY too_many_pings`` and drops the connection, failing every call on it. So servers accept
pings as often as every :data:`MIN_PING_INTERVAL_MS` with or without calls and never count
strikes, and channels ping no more often than that.
"""

from __future__ import annotations

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
)
