"""Request size limits, written once: the node refuses with them, the orchestrator checks them.

The orchestrator checks them before dispatch, so a request every node would refuse is
INVALID_ARGUMENT at the orchestrator, not UNAVAILABLE after a fan-out.

Every check counts UTF-8 bytes, not characters: bytes are what a request costs on the wire and in
the tokenizer, and they are known without any model work. Checks run on the servicer, before a
request is queued for the engine thread, so a hostile request is refused in microseconds and never
delays the requests behind it. Each error names the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge_node.errors import InvalidRequestError

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""The largest request message a server accepts (gRPC's default, set explicitly on both servers;
a larger one is RESOURCE_EXHAUSTED before it is parsed)."""


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Bounds on request fields (node settings; the orchestrator checks the defaults)."""

    default_max_tokens: int = 128
    max_prompt_bytes: int = 262_144
    max_choices: int = 32
    max_choice_bytes: int = 4096
    max_stops: int = 16
    max_stop_bytes: int = 256


DEFAULT_LIMITS = RequestLimits()


def utf8_bytes(text: str) -> int:
    """Bytes of text in UTF-8 (what the tokenizer reads)."""
    return len(text.encode("utf-8", errors="surrogatepass"))


def check_prompt(prompt: str, limits: RequestLimits = DEFAULT_LIMITS) -> None:
    """Raise InvalidRequestError for an empty or oversized prompt."""
    if not prompt:
        raise InvalidRequestError("prompt: must not be empty")
    # A character is at most 4 bytes: only long prompts need the exact count.
    if (
        len(prompt) * 4 > limits.max_prompt_bytes
        and (size := utf8_bytes(prompt)) > limits.max_prompt_bytes
    ):
        raise InvalidRequestError(
            f"prompt: {size} bytes exceeds the limit of {limits.max_prompt_bytes} bytes"
        )


def check_choices(choices: Sequence[str], limits: RequestLimits = DEFAULT_LIMITS) -> None:
    """Raise InvalidRequestError for no, too many, empty or oversized choices."""
    if not choices:
        raise InvalidRequestError("choices: at least one candidate continuation is required")
    if len(choices) > limits.max_choices:
        raise InvalidRequestError(
            f"choices: {len(choices)} given, at most {limits.max_choices} allowed"
        )
    for index, choice in enumerate(choices):
        if not choice:
            raise InvalidRequestError(f"choices[{index}]: must not be empty")
        if (size := utf8_bytes(choice)) > limits.max_choice_bytes:
            raise InvalidRequestError(
                f"choices[{index}]: {size} bytes exceeds the limit of "
                f"{limits.max_choice_bytes} bytes"
            )


def check_stops(stops: Sequence[str], limits: RequestLimits = DEFAULT_LIMITS) -> None:
    """Raise InvalidRequestError for too many or too long stop strings.

    The engine searches every stop string after every token, so their count and length bound
    the work per token.
    """
    if len(stops) > limits.max_stops:
        raise InvalidRequestError(f"stop: {len(stops)} given, at most {limits.max_stops} allowed")
    for index, stop in enumerate(stops):
        if (size := utf8_bytes(stop)) > limits.max_stop_bytes:
            raise InvalidRequestError(
                f"stop[{index}]: {size} bytes exceeds the limit of {limits.max_stop_bytes} bytes"
            )
