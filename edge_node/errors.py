"""Domain errors of the edge node, each tagged with the gRPC status it maps to.

The single error boundary both servicers use (``edge_node.boundary.grpc_errors``) turns these into
statuses with their message; anything else becomes INTERNAL with a generic text, so exception
details never reach a client (docs/architecture.md §10.1).
"""

from __future__ import annotations

import grpc


class EdgeNodeError(Exception):
    """Base class: an error the servicer turns into a gRPC status, never a traceback."""

    status_code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidRequestError(EdgeNodeError):
    """The request can never succeed as sent (empty prompt, max_tokens <= 0, bad choices)."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT


class ContextOverflowError(InvalidRequestError):
    """The prompt (plus what must follow it) does not fit the model's context window."""

    def __init__(self, what: str, tokens: int, context_tokens: int) -> None:
        super().__init__(
            f"{what} is {tokens} tokens but the context window is {context_tokens} tokens"
        )
        self.tokens = tokens
        self.context_tokens = context_tokens


class NodeBusyError(EdgeNodeError):
    """The node's request queue is full; the caller should pick another expert or back off."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NodeDrainingError(EdgeNodeError):
    """The node is shutting down and accepts no new work; retrying elsewhere may succeed."""

    status_code = grpc.StatusCode.UNAVAILABLE


class RequestCancelledError(EdgeNodeError):
    """The client cancelled or its deadline passed before the engine produced a result."""

    status_code = grpc.StatusCode.CANCELLED


class ModelError(Exception):
    """A model name, file or package problem, reported as one line at start-up (not on the wire)."""


class ModelNotFoundError(ModelError):
    """No built-in model of that name, or no file at that path, or its package is not installed."""


class CorruptModelError(ModelError):
    """The file exists but is not a usable GGUF (bad magic, wrong checksum, truncated)."""
