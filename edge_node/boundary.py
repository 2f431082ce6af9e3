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
import inspect
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


class _Malformed:
    """Stands in for a request message that did not parse (never reaches a servicer)."""

    __slots__ = ()


_MALFORMED = _Malformed()


def _parsing(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """The deserializer, returning the _MALFORMED marker instead of raising."""
    if deserializer is None:
        return None

    def parse(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception:  # DecodeError and friends: the client's bytes, not our bug
            return _MALFORMED

    return parse


async def _refuse_malformed(method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    logger.info("%s -> INVALID_ARGUMENT: malformed request message", method)
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT, f"request: not a valid {method} request message"
    )


def _guarded(
    handler: grpc.RpcMethodHandler[_Req, _Resp], method: str
) -> grpc.RpcMethodHandler[_Req, _Resp]:
    """The handler with a non-raising deserializer and a behaviour that refuses the marker.

    Handlers whose behaviour is neither a coroutine nor an async generator are returned as they
    are (this project registers none).
    """
    name = method.rsplit("/", 1)[-1]
    kind = (
        "stream_stream"
        if handler.request_streaming and handler.response_streaming
        else "stream_unary"
        if handler.request_streaming
        else "unary_stream"
        if handler.response_streaming
        else "unary_unary"
    )
    behaviour = getattr(handler, kind)
    if behaviour is None:
        return handler
    if handler.request_streaming:

        async def checked(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            async for request in requests:
                if request is _MALFORMED:
                    await _refuse_malformed(name, context)
                yield request

        if inspect.isasyncgenfunction(behaviour):

            async def stream_in_gen(requests: AsyncIterator[Any], context: Any) -> Any:
                async for response in behaviour(checked(requests, context), context):
                    yield response

            wrapped: Any = stream_in_gen
        elif inspect.iscoroutinefunction(behaviour):

            async def stream_in(requests: AsyncIterator[Any], context: Any) -> Any:
                return await behaviour(checked(requests, context), context)

            wrapped = stream_in
        else:
            return handler
    elif inspect.isasyncgenfunction(behaviour):

        async def unary_in_gen(request: Any, context: Any) -> Any:
            if request is _MALFORMED:
                await _refuse_malformed(name, context)
            async for response in behaviour(request, context):
                yield response

        wrapped = unary_in_gen
    elif inspect.iscoroutinefunction(behaviour):

        async def unary_in(request: Any, context: Any) -> Any:
            if request is _MALFORMED:
                await _refuse_malformed(name, context)
            return await behaviour(request, context)

        wrapped = unary_in
    else:
        return handler
    replaced: grpc.RpcMethodHandler[_Req, _Resp] = handler._replace(  # type: ignore[attr-defined]
        request_deserializer=_parsing(handler.request_deserializer), **{kind: wrapped}
    )
    return replaced


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Turns a request message that does not parse into INVALID_ARGUMENT with a plain message.

    Without it grpc's own handler answers UNKNOWN with the DecodeError's class in the details
    and logs a traceback, on every RPC of every service.
    """

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Req, _Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Req, _Resp] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return _guarded(handler, handler_call_details.method)
