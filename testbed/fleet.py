"""Start and stop the testbed's edge nodes (local `edge-node serve` processes).

Nodes may run on emulated devices and behind emulated network links (network namespaces and
netem as root, an in-process delay proxy otherwise). Every process started is stopped on exit,
also on Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self

from testbed.procs import wait_listening

if TYPE_CHECKING:
    from testbed.network import NetnsHost
    from testbed.proxy import DelayProxy

logger = logging.getLogger(__name__)

NetworkMode = Literal["auto", "netns", "proxy", "none"]


class FleetError(Exception):
    """A node could not be started; one line naming the expert and why."""


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One expert of the fleet: a local model to start, or the address of a running node."""

    name: str
    model: str = ""  # built-in name or .gguf path; empty when address is given
    address: str = ""
    engine: Literal["llama", "fake"] = "llama"
    device: str | None = None  # emulated device profile
    # With a device: "sleep" waits out the emulated compute (real time); "account" reports it.
    # The recorder asks for "account" per request, so a fleet serving live keeps "sleep".
    emulate_timing: Literal["sleep", "account"] = "sleep"
    delay_ms: float = 0.0
    rate_mbit: float | None = None
    n_ctx: int = 1024
    n_threads: int = 1
    fake_token_delay_s: float = 0.0


@dataclass(slots=True)
class _Started:
    spec: NodeSpec
    process: subprocess.Popen[str] | None
    address: str
    host: NetnsHost | None = None
    proxy: DelayProxy | None = None
    stderr_tail: list[str] = field(default_factory=list)


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the sweep dies (even by SIGKILL). Linux only."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class Fleet:
    """A set of running nodes; ``targets`` maps expert name to the address to call."""

    def __init__(self, specs: Sequence[NodeSpec], *, network: NetworkMode = "none") -> None:
        self._specs = list(specs)
        self._network = network
        self._started: list[_Started] = []
        self.network_mode: Literal["netns", "proxy", "none"] = "none"
        self.targets: dict[str, str] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _resolve_network(self) -> Literal["netns", "proxy", "none"]:
        needs_links = any(s.delay_ms > 0 or s.rate_mbit for s in self._specs)
        if self._network == "none" or not needs_links:
            return "none"
        from testbed.network import netns_available

        if self._network in ("auto", "netns"):
            usable, reason = netns_available()
            if usable:
                return "netns"
            if self._network == "netns":
                raise FleetError(f"network = 'netns' is not usable here: {reason}")
            logger.warning("network namespaces unavailable (%s): using the delay proxy", reason)
        return "proxy"

    async def start(self) -> dict[str, str]:
        """Start every local node (in parallel) and any links; returns ``targets``."""
        import asyncio

        self.network_mode = self._resolve_network()
        try:
            for index, spec in enumerate(self._specs):
                if spec.address:
                    self._started.append(_Started(spec, None, spec.address))
                    continue
                host = None
                if self.network_mode == "netns" and (spec.delay_ms > 0 or spec.rate_mbit):
                    from testbed.links import LinkSpec
                    from testbed.network import NetnsHost

                    host = NetnsHost.create(  # the lowest free subnet: runs may overlap
                        f"n{index}", None, LinkSpec(spec.delay_ms, rate_mbit=spec.rate_mbit)
                    )
                self._started.append(self._spawn(spec, host))
            await asyncio.gather(*(asyncio.to_thread(self._wait_ready, s) for s in self._started))
            for started in self._started:
                if self.network_mode == "proxy" and (
                    started.spec.delay_ms > 0 or started.spec.rate_mbit
                ):
                    from testbed.links import LinkSpec
                    from testbed.proxy import DelayProxy

                    started.proxy = DelayProxy(
                        started.address,
                        LinkSpec(started.spec.delay_ms, rate_mbit=started.spec.rate_mbit),
                    )
                    started.address = await started.proxy.start()
                self.targets[started.spec.name] = started.address
        except BaseException:
            await self.aclose()
            raise
        return self.targets

    def _spawn(self, spec: NodeSpec, host: NetnsHost | None) -> _Started:
        bind = host.address if host is not None else "127.0.0.1"
        command = [
            sys.executable,
            "-m",
            "edge_node.cli",
            "serve",
            "--model",
            spec.model or (spec.name if spec.engine == "fake" else "smollm2-135m"),
            "--engine",
            spec.engine,
            "--host",
            bind,
            "--port",
            "0",
            "--n-ctx",
            str(spec.n_ctx),
            "--n-threads",
            str(spec.n_threads),
            "--max-queue-depth",
            "64",
        ]
        if spec.device:
            command += ["--emulate-device", spec.device, "--emulate-timing", spec.emulate_timing]
        if spec.engine == "fake":
            command += ["--fake-token-delay-s", str(spec.fake_token_delay_s)]
        if host is not None:
            # A network-namespace address (10.77.x.x) is not loopback: the node refuses to bind
            # it without TLS and a token unless told the testbed's private link is fine.
            command += ["--insecure"]
            command = host.wrap(command)
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # Ctrl-C reaches us, and we stop the nodes in order
            preexec_fn=_die_with_parent,
        )
        return _Started(spec, process, "", host=host)

    def _wait_ready(self, started: _Started, timeout_s: float = 180.0) -> None:
        process = started.process
        assert process is not None
        address = wait_listening(process, started.stderr_tail, timeout_s=timeout_s)
        if address is None:
            process.wait(timeout=10)
            tail = started.stderr_tail
            last = tail[-1] if tail else f"exit code {process.returncode}"
            raise FleetError(f"expert {started.spec.name}: node did not start: {last}")
        started.address = address
        logger.info("expert %s serving at %s", started.spec.name, started.address)

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL) and remove the links."""
        for started in self._started:
            process = started.process
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for started in self._started:
            process = started.process
            if process is not None:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
                for stream in (process.stdout, process.stderr):
                    if stream is not None:
                        stream.close()
            if started.host is not None:
                started.host.close()

    async def aclose(self) -> None:
        """Close the proxies, then stop the processes."""
        for started in self._started:
            if started.proxy is not None:
                await started.proxy.close()
                started.proxy = None
        self.stop()
        self._started = []
