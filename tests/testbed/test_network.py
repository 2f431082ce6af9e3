"""Emulated links: DelayProxy on loopback, and NetnsHost namespaces (root only)."""

from __future__ import annotations

import asyncio
import select
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from testbed.links import LinkSpec
from testbed.network import (
    LinkMode,
    NetnsHost,
    NetworkUnavailableError,
    cleanup_stale,
    netem_available,
    netns_available,
    subnets_in_use,
)
from testbed.proxy import DelayProxy

# A one-connection TCP echo server: prints its port, echoes until EOF.
ECHO_SERVER = """
import socket, sys
server = socket.create_server((sys.argv[1], 0))
print(server.getsockname()[1], flush=True)
server.settimeout(20)
connection, _ = server.accept()
connection.settimeout(20)
while data := connection.recv(65536):
    connection.sendall(data)
"""

# A gRPC health server: prints its port, serves until stdin closes.
HEALTH_SERVER = """
import asyncio, sys
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio

async def main():
    server = grpc.aio.server()
    servicer = aio.HealthServicer()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"{sys.argv[1]}:0")
    await server.start()
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(None)

asyncio.run(main())
"""


# ---------------------------------------------------------------------------------------------
# helpers


@asynccontextmanager
async def health_server() -> AsyncIterator[str]:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    servicer = health_aio.HealthServicer()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def check_round_trip_s(target: str, calls: int = 3) -> float:
    """Median time of a unary Check on a warmed channel."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # the stub is untyped
        response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        times_s = []
        for _ in range(calls):
            start_s = time.perf_counter()
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            times_s.append(time.perf_counter() - start_s)
    return sorted(times_s)[len(times_s) // 2]


@asynccontextmanager
async def tcp_servers() -> AsyncIterator[tuple[str, str]]:
    """Two loopback servers: ("echo" address, "sink" address).

    The sink reads until EOF (a half-close), then answers with the byte count and closes.
    """

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        total = 0
        while data := await reader.read(65536):
            total += len(data)
        writer.write(str(total).encode())
        await writer.drain()
        writer.close()

    echo_server = await asyncio.start_server(echo, "127.0.0.1", 0)
    sink_server = await asyncio.start_server(sink, "127.0.0.1", 0)
    try:
        yield (
            f"127.0.0.1:{echo_server.sockets[0].getsockname()[1]}",
            f"127.0.0.1:{sink_server.sockets[0].getsockname()[1]}",
        )
    finally:
        for server in (echo_server, sink_server):
            server.close()


def split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


@contextmanager
def spawned(
    command: list[str], timeout_s: float = 20.0
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A subprocess and the first line it printed; killed on exit."""
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], timeout_s)
        assert readable, f"no output from {command} within {timeout_s} s"
        line = process.stdout.readline().strip()
        assert line, process.stderr.read() if process.stderr else ""
        yield process, line
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def namespaces() -> list[str]:
    result = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# DelayProxy


async def test_proxy_adds_delay_in_each_direction_of_a_grpc_call() -> None:
    async with health_server() as target:
        direct_s = await check_round_trip_s(target)
        proxy = DelayProxy(target, LinkSpec(delay_ms=50.0))
        try:
            proxied_s = await check_round_trip_s(await proxy.start())
        finally:
            await proxy.close()
    assert 0.100 <= proxied_s < 0.400, proxied_s
    assert direct_s < 0.05, direct_s
    assert proxied_s - direct_s >= 0.095


async def test_proxy_delays_overlapping_chunks_once_not_cumulatively() -> None:
    async with tcp_servers() as (echo, _), DelayProxy(echo, LinkSpec(delay_ms=50.0)) as proxy:
        assert proxy.address is not None
        reader, writer = await asyncio.open_connection(*split(proxy.address))
        try:
            start_s = time.perf_counter()
            for index in range(10):
                writer.write(bytes([index]) * 100)
                await writer.drain()
                await asyncio.sleep(0.005)
            received = await asyncio.wait_for(reader.readexactly(1000), timeout=5)
            elapsed_s = time.perf_counter() - start_s
        finally:
            writer.close()
    assert received == b"".join(bytes([index]) * 100 for index in range(10))  # order kept
    # 10 chunks 5 ms apart, each 100 ms round trip: ~150 ms, not 10 x 100 ms.
    assert 0.100 <= elapsed_s < 0.400, elapsed_s


async def test_rate_limited_proxy_paces_a_large_transfer_and_forwards_half_close() -> None:
    payload = b"z" * 125_000  # 1 Mbit
    async with tcp_servers() as (_, sink), DelayProxy(sink, LinkSpec(rate_mbit=1.0)) as proxy:
        assert proxy.address is not None
        reader, writer = await asyncio.open_connection(*split(proxy.address))
        try:
            start_s = time.perf_counter()
            writer.write(payload)
            await writer.drain()
            writer.write_eof()
            answer = await asyncio.wait_for(reader.read(), timeout=10)
            elapsed_s = time.perf_counter() - start_s
        finally:
            writer.close()
    assert answer == str(len(payload)).encode()
    assert 0.8 <= elapsed_s < 3.0, elapsed_s


async def test_closing_the_proxy_closes_its_connections() -> None:
    async with tcp_servers() as (echo, _):
        proxy = DelayProxy(echo, LinkSpec(delay_ms=5.0))
        reader, writer = await asyncio.open_connection(*split(await proxy.start()))
        try:
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), timeout=5) == b"ping"
            await proxy.close()
            try:
                rest = await asyncio.wait_for(reader.read(), timeout=5)
            except ConnectionResetError:
                rest = b""
            assert rest == b""
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(*split(proxy.address or ""))
        finally:
            writer.close()
            await proxy.close()


def test_link_spec_rejects_negative_values() -> None:
    with pytest.raises(ValueError, match="delay_ms"):
        LinkSpec(delay_ms=-1.0)
    with pytest.raises(ValueError, match="rate_mbit"):
        LinkSpec(rate_mbit=0.0)
    with pytest.raises(ValueError, match="loss_pct"):
        LinkSpec(loss_pct=101.0)


# ---------------------------------------------------------------------------------------------
# NetnsHost (root only)


@pytest.fixture(scope="module")
def netns_reason() -> str:
    usable, reason = netns_available()
    if not usable:
        pytest.skip(reason)
    return reason


@pytest.fixture(params=["tun", "netem"])
def link_mode(request: pytest.FixtureRequest, netns_reason: str) -> LinkMode:
    mode: LinkMode = request.param
    if mode == "netem" and not netem_available():
        pytest.skip(f"tc netem unavailable here: {netns_reason}")
    return mode


def test_namespace_host_adds_delay_to_a_tcp_round_trip(link_mode: LinkMode) -> None:
    host = NetnsHost.create("rtt", 201, LinkSpec(delay_ms=40.0), mode=link_mode)
    try:
        assert host.address == "10.77.201.2"
        assert host.namespace in namespaces()
        times_s = []
        with (
            spawned(host.wrap([sys.executable, "-c", ECHO_SERVER, host.address])) as (_, port),
            socket.create_connection((host.address, int(port)), timeout=5) as connection,
        ):
            for _ in range(3):
                start_s = time.perf_counter()
                connection.sendall(b"x")
                assert connection.recv(16) == b"x"
                times_s.append(time.perf_counter() - start_s)
        assert min(times_s) >= 0.080, times_s
        assert max(times_s) < 0.300, times_s
    finally:
        host.close()
    assert host.namespace not in namespaces()
    host.close()  # idempotent


async def test_grpc_health_server_inside_a_namespace_answers_through_the_link(
    link_mode: LinkMode,
) -> None:
    link = LinkSpec(delay_ms=40.0)
    host = await asyncio.to_thread(NetnsHost.create, "grpc", 202, link, link_mode)
    try:
        with spawned(host.wrap([sys.executable, "-c", HEALTH_SERVER, host.address])) as (_, port):
            round_trip_s = await check_round_trip_s(f"{host.address}:{port}")
        assert 0.080 <= round_trip_s < 0.300, round_trip_s
    finally:
        await asyncio.to_thread(host.close)
    assert host.namespace not in namespaces()


def test_rate_limited_namespace_link_paces_a_large_transfer(link_mode: LinkMode) -> None:
    payload = b"z" * 125_000  # 1 Mbit
    with (
        NetnsHost.create("rate", 203, LinkSpec(rate_mbit=1.0), link_mode) as host,
        spawned(host.wrap([sys.executable, "-c", ECHO_SERVER, host.address])) as (_, port),
        socket.create_connection((host.address, int(port)), timeout=10) as connection,
    ):
        connection.settimeout(10)
        start_s = time.perf_counter()
        connection.sendall(payload)
        received = 0
        for _ in range(10_000):
            if received >= len(payload):
                break
            data = connection.recv(65536)
            assert data
            received += len(data)
        elapsed_s = time.perf_counter() - start_s
    assert host.namespace not in namespaces()
    # The echo crosses the 1 Mbit link in each direction; the directions overlap.
    assert 0.8 <= elapsed_s < 4.0, elapsed_s


def test_cleanup_stale_removes_what_a_crashed_run_left(netns_reason: str) -> None:
    crash = (
        "import os\n"
        "from testbed.links import LinkSpec\nfrom testbed.network import NetnsHost\n"
        "host = NetnsHost.create('crashed', 204, LinkSpec(delay_ms=1.0), mode='tun')\n"
        "print(host.namespace, flush=True)\n"
        "os._exit(0)  # no atexit, no close: a crash\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", crash], capture_output=True, text=True, timeout=60, check=False
    )
    leftover = result.stdout.strip()
    try:
        assert result.returncode == 0, result.stderr
        assert leftover in namespaces()
        assert cleanup_stale() >= 1
        assert leftover not in namespaces()
    finally:
        if leftover in namespaces():
            subprocess.run(["ip", "netns", "delete", leftover], check=False, timeout=10)


def test_host_in_a_live_process_survives_cleanup_stale(netns_reason: str) -> None:
    with NetnsHost.create("live", 205, LinkSpec(), "tun") as host:
        cleanup_stale()
        assert host.namespace in namespaces()
    assert host.namespace not in namespaces()


def test_hosts_of_concurrent_runs_get_different_subnets(netns_reason: str) -> None:
    """Two sweeps on one machine must not share a subnet (the second's nodes would be
    unreachable): with no index given, a host takes the lowest subnet no live host uses, and
    a given index in use is refused."""
    other_run = (
        "from testbed.links import LinkSpec\nfrom testbed.network import NetnsHost\n"
        "host = NetnsHost.create('other', None, LinkSpec(), mode='tun')\n"
        "print(host.index, flush=True)\n"
        "host.close()\n"
    )
    with (
        NetnsHost.create("first", None, LinkSpec(), "tun") as first,
        NetnsHost.create("second", None, LinkSpec(), "tun") as second,
    ):
        assert first.index != second.index
        assert {first.index, second.index} <= subnets_in_use()
        result = subprocess.run(
            [sys.executable, "-c", other_run],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert int(result.stdout) not in {first.index, second.index}
        with pytest.raises(
            NetworkUnavailableError, match=rf"10\.77\.{first.index}\.0/30 is in use"
        ):
            NetnsHost.create("clash", first.index, LinkSpec(), "tun")
    assert first.index not in subnets_in_use()
