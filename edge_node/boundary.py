"""The single error boundary of every gRPC servicer in this project.

The conventions it implements are in docs/architecture.md §10.1.

A domain error is any exception with a ``status_code`` attribute holding a ``grpc.StatusCode``:
it becomes that status with its message. Anything else becomes INTERNAL with a generic message
and its traceback goes to the server log only, so a client never sees UNKNOWN or exception
text. ``context.abort`` raised by a handler itself passes through untouched.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

logger = logging.getLogger(__name__)

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
Unary = Callable[[Any, _Req, grpc.aio.ServicerContext[_Req, _Resp]], Awaitable[_Resp]]
Stream = Callable[[Any, _Req, grpc.aio.ServicerContext[_Req, _Resp]], AsyncIterator[_Resp]]


async def abort_for(
    name: str, err: BaseException, context: grpc.aio.ServicerContext[Any, Any]
) -> None:
    """Abort the RPC with the status an exception maps to (always raises)."""
    status = getattr(err, "status_code", None)
    if isinstance(status, grpc.StatusCode):
        logger.info("%s -> %s: %s", name, status.name, err)
        await context.abort(status, str(err))
    logger.error("unexpected error in %s", name, exc_info=err)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")


def grpc_errors(handler: Unary[_Req, _Resp]) -> Unary[_Req, _Resp]:
    """The boundary for unary handlers."""

    @functools.wraps(handler)
    async def wrapper(
        self: Any, request: _Req, context: grpc.aio.ServicerContext[_Req, _Resp]
    ) -> _Resp:
        try:
            return await handler(self, request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as err:  # the boundary: nothing escapes as UNKNOWN
            await abort_for(handler.__name__, err, context)
            raise  # unreachable: abort raises

    return wrapper


def grpc_stream_errors(handler: Stream[_Req, _Resp]) -> Stream[_Req, _Resp]:
    """The same boundary for server-streaming handlers (async generators)."""

    @functools.wraps(handler)
    async def wrapper(
        self: Any, request: _Req, context: grpc.aio.ServicerContext[_Req, _Resp]
    ) -> AsyncIterator[_Resp]:
        try:
            async for message in handler(self, request, context):
                yield message
        except (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as err:
            await abort_for(handler.__name__, err, context)

    return wrapper
