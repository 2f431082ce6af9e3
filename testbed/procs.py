"""Server subprocesses (`edge-node serve`, `moe2 serve`) for tests, benchmarks and tools."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from types import TracebackType

# typing.Self is 3.11+; the node's tests start servers with this module on 3.10 too.
from typing_extensions import Self  # noqa: UP035

READY = re.compile(r"listening on (\S+):(\d+)\n")


def wait_listening(
    process: subprocess.Popen[str], tail: list[str], *, timeout_s: float = 180.0
) -> str | None:
    """Read the ``listening on HOST:PORT`` line; returns "HOST:PORT", or None if none came.

    stderr is drained on a daemon thread for the process's lifetime, keeping its last 20 lines
    in ``tail`` (an undrained pipe would block a chatty server once it fills). A process that
    prints nothing within ``timeout_s`` is killed.
    """
    assert process.stdout is not None
    stderr = process.stderr

    def drain() -> None:
        assert stderr is not None
        try:
            for line in stderr:
                tail.append(line.rstrip())
                del tail[:-20]
        except (OSError, ValueError):  # the owner closed the pipe after the process ended
            return

    if stderr is not None:
        threading.Thread(target=drain, daemon=True).start()
    timer = threading.Timer(timeout_s, process.kill)
    timer.start()
    try:
        line = process.stdout.readline()
    finally:
        timer.cancel()
    match = READY.fullmatch(line)
    return None if match is None else f"{match.group(1)}:{match.group(2)}"


class ServerStartError(RuntimeError):
    """A server subprocess exited or stayed silent instead of printing its listening line."""


class Served:
    """A running server subprocess that printed ``listening on HOST:PORT``."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        self.command = command
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.stderr_tail: list[str] = []
        address = wait_listening(self.process, self.stderr_tail, timeout_s=120)
        if address is None:
            self.process.kill()
            self.process.wait(timeout=10)
            raise ServerStartError(f"no readiness line from {command}: {self.stderr_tail[-5:]}")
        self.port = int(address.rsplit(":", 1)[1])
        self.target = f"127.0.0.1:{self.port}"

    def read_address(self, name: str, *, timeout_s: float = 30.0) -> str:
        """Read the next stdout line, ``NAME listening on HOST:PORT``; returns "127.0.0.1:PORT".

        For the lines that follow the readiness line (``http``, ``metrics``).
        """
        assert self.process.stdout is not None
        timer = threading.Timer(timeout_s, self.process.kill)
        timer.start()
        try:
            line = self.process.stdout.readline()
        finally:
            timer.cancel()
        match = re.fullmatch(rf"{re.escape(name)} listening on (\S+):(\d+)\n", line)
        if match is None:
            raise ServerStartError(f"expected '{name} listening on HOST:PORT', got {line!r}")
        return f"127.0.0.1:{match.group(2)}"

    @classmethod
    def edge_node(cls, *args: str, port: int = 0) -> Served:
        """`edge-node serve --port PORT ARGS...`."""
        return cls([sys.executable, "-m", "edge_node.cli", "serve", "--port", str(port), *args])

    @classmethod
    def fake_node(cls, token_delay_s: float = 0.0, port: int = 0) -> Served:
        """A fake-engine node with a per-token delay."""
        return cls.edge_node(
            "--engine", "fake", "--fake-token-delay-s", str(token_delay_s), port=port
        )

    def terminate(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def kill(self) -> None:
        """SIGKILL (a crash) and reap."""
        self.process.kill()
        self.process.wait(timeout=30)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process.poll() is None:
            self.kill()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
