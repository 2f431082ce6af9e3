"""Server subprocesses (`edge-node serve`, `moe2 serve`) for tests, benchmarks and tools."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from types import TracebackType
from typing import Self


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
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        match = re.fullmatch(r"listening on (\S+):(\d+)\n", line)
        if match is None:
            self.process.kill()
            _, stderr = self.process.communicate()
            raise AssertionError(f"no readiness line: {line!r} {stderr!r}")
        self.port = int(match.group(2))
        self.target = f"127.0.0.1:{self.port}"

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
