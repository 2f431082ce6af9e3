"""A private event loop on a daemon thread: what the blocking client facades run on."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import (
    Any,
    Generic,
    Protocol,
    Self,  # typing.Self is 3.11+; the node supports 3.10
    TypeVar,
)

_T = TypeVar("_T")


class LoopThread:
    """Runs coroutines on its own loop from any thread, blocking until each is done."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        """Whether ``stop`` has run."""
        return self._loop.is_closed()

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run a coroutine on the loop thread and return its result (or raise its error)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def stop(self) -> None:
        """Stop the loop and join its thread (idempotent)."""
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class _AsyncClosable(Protocol):
    async def close(self) -> None: ...


_C = TypeVar("_C", bound=_AsyncClosable)


class BlockingFacade(Generic[_C]):
    """Base of the blocking clients: an async client created and used on its own loop thread.

    Subclasses call ``self._run(self._client.method(...))``; ``close`` (also on ``with`` exit)
    closes the async client on its loop, then stops the loop.
    """

    def __init__(self, factory: Callable[[], Coroutine[Any, Any, _C]]) -> None:
        self._loop = LoopThread()
        self._run = self._loop.run
        self._client: _C = self._run(factory())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the client and stop the loop thread (idempotent)."""
        if self._loop.closed:
            return
        self._run(self._client.close())
        self._loop.stop()
