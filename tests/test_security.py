"""TLS and tokens on every link, over real loopback servers with throwaway certificates."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from edge_node.client import AsyncEdgeNodeClient
from edge_node.security import ClientSecurity, SecurityError, ServerSecurity, open_channel
from edge_node.server import RunningNode
from orchestrator.client import AsyncClient
from orchestrator.config import ClusterConfig, load_cluster
from orchestrator.server import RunningOrchestrator, StartupError, start_orchestrator
from protos import edge_node_pb2 as pb
from protos import edge_node_pb2_grpc as pb_grpc
from protos import orchestrator_pb2 as orch_pb
from protos import orchestrator_pb2_grpc as orch_pb_grpc
from testbed.procs import Served
from tests.certificates import Pki, make_pki
from tests.helpers.nodes import StartNode

NODE_TOKEN = "node-token-0123456789"
CLIENT_TOKEN = "client-token-abcdef"
ADMIN_TOKEN = "admin-token-fedcba"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def secret(tmp_path: Path, name: str, token: str) -> Path:
    path = tmp_path / name
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def node_security(
    pki: Pki, *, mutual: bool = False, token: str | None = NODE_TOKEN
) -> ServerSecurity:
    loaded = ServerSecurity.load(
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_client_ca=pki.ca if mutual else None,
    )
    return dataclasses.replace(loaded, token=token)


def reach(pki: Pki, *, token: str | None = NODE_TOKEN, client_cert: bool = False) -> ClientSecurity:
    return ClientSecurity(
        tls=True,
        ca=pki.ca.read_bytes(),
        certificate=pki.client_cert.read_bytes() if client_cert else None,
        private_key=pki.client_key.read_bytes() if client_cert else None,
        token=token,
    )


def address(node: RunningNode) -> str:
    return f"127.0.0.1:{node.port}"


async def code_of(coroutine: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await coroutine  # type: ignore[misc]
    return excinfo.value.code()


# -- the node ----------------------------------------------------------------------------------


async def test_tls_node_with_tokens(node_factory: StartNode, pki: Pki) -> None:
    node = await node_factory(security=node_security(pki))
    target = address(node)
    async with AsyncEdgeNodeClient(target, security=reach(pki)) as good:
        info = await good.info(timeout_s=5)
        generated = await good.generate("hello there", max_tokens=3, timeout_s=5)
        samples = 0
        async for _ in good.telemetry(interval_s=0.05, timeout_s=5):
            samples += 1
            break
    async with AsyncEdgeNodeClient(target, security=reach(pki, token=None)) as anonymous:
        missing = await code_of(anonymous.info(timeout_s=5))
        missing_stream = await code_of(anonymous.generate("hi", max_tokens=1, timeout_s=5))
    async with AsyncEdgeNodeClient(target, security=reach(pki, token="wrong")) as wrong:
        rejected = await code_of(wrong.score("p", [" a", " b"], timeout_s=5))
    async with AsyncEdgeNodeClient(target) as plaintext:
        plain = await code_of(plaintext.info(timeout_s=5))
    other = ClientSecurity(tls=True, ca=pki.other_ca.read_bytes(), token=NODE_TOKEN)
    async with AsyncEdgeNodeClient(target, security=other) as untrusted:
        distrust = await code_of(untrusted.info(timeout_s=5))
    assert info.engine == "fake" and generated.completion_tokens == 3 and samples == 1
    assert (missing, missing_stream, rejected) == (grpc.StatusCode.UNAUTHENTICATED,) * 3
    assert plain == grpc.StatusCode.UNAVAILABLE  # a plaintext client cannot talk to TLS
    assert distrust == grpc.StatusCode.UNAVAILABLE  # nor one that trusts another CA


async def test_health_stays_reachable_without_a_token(node_factory: StartNode, pki: Pki) -> None:
    node = await node_factory(security=node_security(pki))
    async with open_channel(address(node), reach(pki, token=None)) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_mutual_tls_needs_a_client_certificate(node_factory: StartNode, pki: Pki) -> None:
    node = await node_factory(security=node_security(pki, mutual=True))
    async with AsyncEdgeNodeClient(address(node), security=reach(pki)) as without:
        refused = await code_of(without.info(timeout_s=5))
    async with AsyncEdgeNodeClient(address(node), security=reach(pki, client_cert=True)) as with_:
        info = await with_.info(timeout_s=5)
    assert refused == grpc.StatusCode.UNAVAILABLE
    assert info.engine == "fake"


async def test_a_token_alone_over_loopback_plaintext(node_factory: StartNode) -> None:
    node = await node_factory(security=ServerSecurity(token=NODE_TOKEN))
    token_only = ClientSecurity(token=NODE_TOKEN)
    async with AsyncEdgeNodeClient(address(node), security=token_only) as client:
        info = await client.info(timeout_s=5)
        # A call's own metadata travels with the token (the testbed's timing metadata does).
        stub = pb_grpc.EdgeNodeStub(client.channel)
        scored = await stub.Score(
            pb.ScoreRequest(prompt="p", choices=[" a", " b"]),
            metadata=(("moe2-emulate-timing", "account"),),
            timeout=5,
        )
    async with AsyncEdgeNodeClient(address(node)) as anonymous:
        missing = await code_of(anonymous.info(timeout_s=5))
    assert info.engine == "fake" and len(scored.probs) == 2
    assert missing == grpc.StatusCode.UNAUTHENTICATED


async def test_non_loopback_binds(node_factory: StartNode, pki: Pki) -> None:
    with pytest.raises(SecurityError) as refused:
        await node_factory(host="0.0.0.0")
    insecure = await node_factory(host="0.0.0.0", security=ServerSecurity(insecure=True))
    secured = await node_factory(host="0.0.0.0", security=node_security(pki))
    asked = await node_factory(
        host="0.0.0.0", security=ServerSecurity(insecure=True, reflection=True)
    )
    loopback = await node_factory()

    async def reflection_code(node: RunningNode) -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(address(node)) as channel:
            stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            try:
                async for _ in stub.ServerReflectionInfo(iter([request]), timeout=5):
                    return grpc.StatusCode.OK
            except grpc.aio.AioRpcError as err:
                return err.code()
        return grpc.StatusCode.OK

    assert "--insecure" in str(refused.value)
    assert secured.port > 0
    assert await reflection_code(insecure) == grpc.StatusCode.UNIMPLEMENTED
    assert await reflection_code(asked) == grpc.StatusCode.OK
    assert await reflection_code(loopback) == grpc.StatusCode.OK


def test_cli_non_loopback_refusal_names_insecure(tmp_path: Path) -> None:
    import subprocess

    node = subprocess.run(
        [sys.executable, "-m", "edge_node.cli", "serve", "--engine", "fake", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    cluster = tmp_path / "cluster.toml"
    cluster.write_text('[[nodes]]\nname = "a"\naddress = "127.0.0.1:1"\n')
    orchestrator = subprocess.run(
        [
            sys.executable,
            "-m",
            "testbed.cli",
            "serve",
            "--cluster",
            str(cluster),
            "--host",
            "0.0.0.0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    message = (
        "--host 0.0.0.0 is not loopback and the server has no TLS (--tls-cert/--tls-key) and "
        "a token (--token-file); add them, or pass --insecure to serve the network unprotected"
    )
    assert node.returncode == 1 and node.stderr.strip().splitlines() == [
        f"edge-node: error: {message}"
    ]
    assert orchestrator.returncode == 1
    assert orchestrator.stderr.strip().splitlines()[-1] == f"moe2: error: {message}"


def test_cli_insecure_starts_and_warns() -> None:
    with Served.edge_node("--engine", "fake", "--host", "0.0.0.0", "--insecure") as node:
        assert node.terminate() == 0
    assert any("--insecure" in line and "WARNING" in line for line in node.stderr_tail)


def test_cli_node_token_from_the_environment_and_client_flags(tmp_path: Path, pki: Pki) -> None:
    import subprocess

    token_file = secret(tmp_path, "token", NODE_TOKEN)
    wrong_file = secret(tmp_path, "wrong", "not-the-token")
    with Served(
        [
            sys.executable,
            "-m",
            "edge_node.cli",
            "serve",
            "--engine",
            "fake",
            "--port",
            "0",
            "--tls-cert",
            str(pki.server_cert),
            "--tls-key",
            str(pki.server_key),
        ],
        env={"EDGE_NODE_TOKEN": NODE_TOKEN},
    ) as node:

        def info(*flags: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "edge_node.cli",
                    "info",
                    "--target",
                    node.target,
                    "--json",
                    "--tls-ca",
                    str(pki.ca),
                    *flags,
                ],
                capture_output=True,
                text=True,
                timeout=60,
                env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)},
            )

        good = info("--token-file", str(token_file))
        wrong = info("--token-file", str(wrong_file))
        none = info()
        assert node.terminate() == 0
    assert good.returncode == 0, good.stderr
    assert '"engine": "fake"' in good.stdout
    assert (
        wrong.stderr.strip()
        == "edge-node: error: UNAUTHENTICATED: GetInfo: missing or invalid token"
    )
    assert none.returncode == 1 and "UNAUTHENTICATED" in none.stderr


def test_unreadable_security_files_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(SecurityError) as missing:
        ServerSecurity.load(token_file=tmp_path / "absent")
    empty = secret(tmp_path, "empty", "")
    with pytest.raises(SecurityError) as blank:
        ServerSecurity.load(token_file=empty)
    with pytest.raises(SecurityError) as half:
        ServerSecurity.load(tls_cert=tmp_path / "cert.pem")
    not_pem = tmp_path / "cert.pem"
    not_pem.write_text("hello")
    with pytest.raises(SecurityError) as garbage:
        ServerSecurity.load(tls_cert=not_pem, tls_key=not_pem)
    assert str(missing.value) == f"--token-file: {tmp_path / 'absent'} does not exist"
    assert str(blank.value) == f"--token-file: {empty} is empty"
    assert str(half.value) == "--tls-cert and --tls-key: give both or neither"
    assert str(garbage.value) == f"--tls-cert: {not_pem} is not a PEM file"


# -- the orchestrator --------------------------------------------------------------------------


@pytest.fixture
async def secured(
    node_factory: StartNode, pki: Pki, tmp_path: Path
) -> AsyncIterator[tuple[RunningOrchestrator, list[RunningNode]]]:
    """Two TLS+token nodes behind a TLS orchestrator with client and admin tokens."""
    nodes = [await node_factory(security=node_security(pki)) for _ in range(2)]
    token_file = secret(tmp_path, "node-token", NODE_TOKEN)
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(
        f'[tls]\nca = "{pki.ca}"\ntoken_file = "node-token"\n\n'
        + "".join(
            f'[[nodes]]\nname = "n{i}"\naddress = "127.0.0.1:{node.port}"\n\n'
            for i, node in enumerate(nodes)
        )
    )
    assert token_file.exists()
    config = load_cluster(cluster)
    security = ServerSecurity(
        certificate=pki.server_cert.read_bytes(),
        private_key=pki.server_key.read_bytes(),
        token=CLIENT_TOKEN,
        admin_token=ADMIN_TOKEN,
    )
    running = await start_orchestrator(config, security=security, settle_s=5.0)
    yield running, nodes
    await running.stop(None)


async def test_orchestrator_drives_tls_nodes_end_to_end(
    secured: tuple[RunningOrchestrator, list[RunningNode]], pki: Pki
) -> None:
    running, nodes = secured
    target = f"127.0.0.1:{running.port}"
    before = [node.engine.completed for node in nodes]  # the start-up probes went over TLS too
    assert all(count > 0 for count in before)
    async with AsyncClient(target, security=reach(pki, token=CLIENT_TOKEN)) as client:
        answer = await client.ask("Is it?", choices=[" yes", " no"], top_k=2, timeout_s=10)
        experts, _, _ = await client.experts()
    async with AsyncClient(target, security=reach(pki, token=None), retries=0) as anonymous:
        missing = await code_of(anonymous.ask("Is it?", choices=[" yes", " no"]))
    async with AsyncClient(target, security=reach(pki, token="wrong"), retries=0) as wrong:
        rejected = await code_of(wrong.experts())
    assert {e.expert for e in answer.experts} == {"n0", "n1"}
    assert all(e.outcome == "ok" for e in answer.experts)
    assert {e.health for e in experts} == {"up"}
    assert [node.engine.completed - b for node, b in zip(nodes, before, strict=True)] == [1, 1]
    assert (missing, rejected) == (grpc.StatusCode.UNAUTHENTICATED,) * 2


async def test_fleet_changes_need_the_admin_token(
    secured: tuple[RunningOrchestrator, list[RunningNode]], pki: Pki, node_factory: StartNode
) -> None:
    running, _ = secured
    extra = await node_factory(security=node_security(pki))
    target = f"127.0.0.1:{running.port}"
    register = orch_pb.RegisterNodeRequest(name="extra", address=address(extra))

    async def call(token: str | None, request: object, method: str) -> grpc.StatusCode:
        async with open_channel(target, reach(pki, token=token)) as channel:
            stub = orch_pb_grpc.OrchestratorStub(channel)
            try:
                await getattr(stub, method)(request, timeout=10)
            except grpc.aio.AioRpcError as err:
                return err.code()
        return grpc.StatusCode.OK

    as_client = await call(CLIENT_TOKEN, register, "RegisterNode")
    as_nobody = await call(None, register, "RegisterNode")
    as_admin = await call(ADMIN_TOKEN, register, "RegisterNode")
    added = running.orchestrator.registry.get("extra")
    remove = orch_pb.DeregisterNodeRequest(name="extra")
    remove_as_client = await call(CLIENT_TOKEN, remove, "DeregisterNode")
    remove_as_admin = await call(ADMIN_TOKEN, remove, "DeregisterNode")
    assert as_client == grpc.StatusCode.PERMISSION_DENIED
    assert as_nobody == grpc.StatusCode.UNAUTHENTICATED
    assert as_admin == grpc.StatusCode.OK
    assert added is not None and added.health == "up"  # reached over TLS with the [tls] token
    assert remove_as_client == grpc.StatusCode.PERMISSION_DENIED
    assert remove_as_admin == grpc.StatusCode.OK
    assert running.orchestrator.registry.get("extra") is None


async def test_moe2_ask_cli_over_tls(
    secured: tuple[RunningOrchestrator, list[RunningNode]], pki: Pki, tmp_path: Path
) -> None:
    running, _ = secured
    token_file = secret(tmp_path, "client-token", CLIENT_TOKEN)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "testbed.cli",
        "ask",
        "--target",
        f"127.0.0.1:{running.port}",
        "--tls-ca",
        str(pki.ca),
        "--token-file",
        str(token_file),
        "--top-k",
        "2",
        "--choices",
        " yes",
        " no",
        "Is it?",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().strip() in ("yes", "no")


async def test_per_node_tls_overrides_and_bad_files(tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "certs").mkdir()
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(
        '[tls]\nca = "certs/ca.pem"\ntoken_file = "token"\n\n'
        '[[nodes]]\nname = "a"\naddress = "127.0.0.1:1"\n'
        'tls = { token_file = "/elsewhere/token" }\n'
    )
    config = load_cluster(cluster)
    assert config.tls is not None and config.tls.ca == tmp_path / "certs" / "ca.pem"
    node = config.nodes[0]
    assert node.tls is not None
    merged = node.tls.over(config.tls)
    assert merged.ca == tmp_path / "certs" / "ca.pem"
    assert merged.token_file == Path("/elsewhere/token")
    broken = ClusterConfig.model_validate(
        {"tls": {"ca": str(tmp_path / "absent.pem")}, "nodes": [{"name": "a", "address": "h:1"}]}
    )
    with pytest.raises(StartupError) as excinfo:
        await start_orchestrator(broken)
    assert str(excinfo.value) == f"cluster file: tls.ca: {tmp_path / 'absent.pem'} does not exist"
