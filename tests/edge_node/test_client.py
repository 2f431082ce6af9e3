"""The blocking EdgeNodeClient against a real node process."""

from __future__ import annotations

import grpc
import pytest

from edge_node.client import EdgeNodeClient
from testbed.procs import Served


def test_sync_client_round_trip() -> None:
    with Served.fake_node(0.0) as node, EdgeNodeClient(node.target) as client:
        assert client.info().engine == "fake"
        generated = client.generate("hello there", max_tokens=3)
        assert generated.completion_tokens == 3
        assert "".join(c.text for c in generated.chunks) == generated.text
        scored = client.score("Q?", [" yes", " no"])
        assert sum(scored.probs) == pytest.approx(1.0)
        samples = client.telemetry(interval_s=0.05, count=2)
        assert len(samples) == 2
        with pytest.raises(grpc.RpcError) as excinfo:
            client.score("Q?", [])
        assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    client.close()  # idempotent
