"""The in-process link emulation: a TCP proxy on loopback that delays and paces each direction.

The fallback of :mod:`testbed.network` when network namespaces are not available (no root, no
``ip``): no privileges needed, and byte-stream forwarding works for gRPC (HTTP/2). See
docs/network.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Self

from testbed.links import LinkSchedule, LinkSpec

logger = logging.getLogger(__name__)

_PROXY_CHUNK_BYTES = 64 * 1024
_PROXY_PACED_CHUNK_BYTES = 4 * 1024  # smaller pieces when paced, so delivery is smooth
_PROXY_QUEUE_CHUNKS = 256
_PROXY_CONNECT_TIMEOUT_S = 10.0


def _split_host_port(target: str) -> tuple[str, int]:
    host, separator, port = target.rpartition(":")
    if not separator or not port.isdigit():
        raise ValueError(f"target {target!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


class DelayProxy:
    """In-process fallback link: a TCP proxy on 127.0.0.1 that delays and paces each direction.

    Every chunk read from one side gets a release time (:class:`LinkSchedule`: paced to
    ``rate_mbit``, then ``delay_ms`` +- jitter) and waits in that direction's queue; a writer task
    sends chunks in order when they are due. Chunks overlap in flight, so the delay is added once
    per direction, not once per chunk. Half-close (EOF) is forwarded after the data before it.
    ``loss_pct`` is ignored: a byte stream cannot lose bytes.

    Runs on the event loop that calls :meth:`start`; byte-stream forwarding works for gRPC.
    """

    def __init__(self, target: str, link: LinkSpec) -> None:
        self._target_host, self._target_port = _split_host_port(target)
        self._link = link
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.address: str | None = None

    async def start(self) -> str:
        """Listen on an ephemeral port; returns ``"127.0.0.1:PORT"``."""
        if self._server is not None:
            raise RuntimeError("DelayProxy already started")
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        logger.info(
            "delay proxy %s -> %s:%d (%s)",
            self.address,
            self._target_host,
            self._target_port,
            self._link.describe(),
        )
        return self.address

    async def close(self) -> None:
        """Stop listening and close every proxied connection (both sides). Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # close() cancels an inner task, never asyncio's own handler task: on Python 3.11 a
        # cancelled handler task makes asyncio log a spurious "Exception in callback" traceback.
        task = asyncio.create_task(self._serve(reader, writer))
        self._connections.add(task)
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            self._connections.discard(task)

    async def _serve(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        upstream_writer: asyncio.StreamWriter | None = None
        pumps: list[asyncio.Task[None]] = []
        try:
            upstream_reader, upstream = await asyncio.wait_for(
                asyncio.open_connection(self._target_host, self._target_port),
                _PROXY_CONNECT_TIMEOUT_S,
            )
            upstream_writer = upstream
            pumps = [
                asyncio.create_task(self._pump(client_reader, upstream)),
                asyncio.create_task(self._pump(upstream_reader, client_writer)),
            ]
            # Both directions run until their EOF; a reset on either side ends the connection.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
        except (OSError, TimeoutError) as err:
            # The peer went away or the target refused: a proxy closes, as the link would.
            logger.debug("proxied connection ended: %s", err)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward one direction until EOF: a receiver stamps chunks, a sender releases them."""
        loop = asyncio.get_running_loop()
        schedule = LinkSchedule(self._link)
        queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue(_PROXY_QUEUE_CHUNKS)
        piece_bytes = (
            _PROXY_CHUNK_BYTES if self._link.rate_mbit is None else _PROXY_PACED_CHUNK_BYTES
        )

        async def receive() -> None:
            while chunk := await reader.read(_PROXY_CHUNK_BYTES):
                now_s = loop.time()
                for start in range(0, len(chunk), piece_bytes):
                    piece = chunk[start : start + piece_bytes]
                    await queue.put((schedule.release_s(len(piece), now_s), piece))
            await queue.put((schedule.release_s(0, loop.time()), None))

        async def send() -> None:
            while True:
                release_s, piece = await queue.get()
                wait_s = release_s - loop.time()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                if piece is None:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(piece)
                await writer.drain()

        async with asyncio.TaskGroup() as group:
            group.create_task(receive())
            group.create_task(send())
