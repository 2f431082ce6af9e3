"""Default ports and ``--target`` addresses (no gRPC import: the CLIs' parsers use this)."""

from __future__ import annotations

NODE_PORT = 50_051
"""An edge node's default port (``edge-node serve``)."""
ORCHESTRATOR_PORT = 50_100
"""The orchestrator's default port (``moe2 serve``)."""


def with_default_port(target: str, default_port: int) -> str:
    """``target`` with ``default_port`` added when it names only a host.

    ``host``, ``10.0.0.2``, ``[::1]`` and ``::1`` get the port; ``host:port``, ``[::1]:port``
    and gRPC URIs (``dns:///…``, ``unix:…``) are kept as they are. gRPC itself would take a
    bare host to port 443.
    """
    text = target.strip()
    if "://" in text or text.startswith(("unix:", "unix-abstract:", "vsock:")):
        return text
    if text.startswith("["):
        return text if "]:" in text else f"{text}:{default_port}"
    if text.count(":") > 1:  # a bare IPv6 literal
        return f"[{text}]:{default_port}"
    return text if ":" in text else f"{text}:{default_port}"
