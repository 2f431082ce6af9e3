"""`--target HOST` means the default port (gRPC alone would go to 443)."""

from __future__ import annotations

import pytest

from edge_node.addresses import NODE_PORT, ORCHESTRATOR_PORT, with_default_port


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("node1", "node1:50051"),
        ("10.0.0.2", "10.0.0.2:50051"),
        ("10.0.0.2:7000", "10.0.0.2:7000"),
        ("[::1]", "[::1]:50051"),
        ("::1", "[::1]:50051"),
        ("[::1]:7000", "[::1]:7000"),
        ("dns:///node1:7000", "dns:///node1:7000"),
        ("unix:/tmp/node.sock", "unix:/tmp/node.sock"),
    ],
)
def test_a_bare_host_gets_the_default_port(target: str, expected: str) -> None:
    assert with_default_port(target, NODE_PORT) == expected


def test_the_orchestrator_default_is_its_own() -> None:
    assert with_default_port("orchestrator", ORCHESTRATOR_PORT) == "orchestrator:50100"
