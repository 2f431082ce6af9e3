"""Types of the node fixtures in tests/conftest.py."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from edge_node.server import RunningNode

StartNode = Callable[..., Coroutine[Any, Any, RunningNode]]
"""``node_factory``: start a node over an engine (keyword options as ``start_node``)."""
