"""`moe2 serve` and `moe2 ask` as a user runs them, against real fake-engine nodes."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import openai

from testbed.procs import Served
from tests.scrape import parse, value

MOE2 = [sys.executable, "-m", "testbed.cli"]


def moe2(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MOE2, *args], capture_output=True, text=True, timeout=120)


def test_serve_and_ask_through_the_cli(tmp_path: Path) -> None:
    with Served.fake_node(0.0) as first, Served.fake_node(0.0) as second:
        cluster = tmp_path / "cluster.toml"
        cluster.write_text(
            f'[[nodes]]\nname = "first"\naddress = "{first.target}"\n\n'
            f'[[nodes]]\nname = "second"\naddress = "{second.target}"\n'
        )
        with Served([*MOE2, "serve", "--cluster", str(cluster), "--port", "0"]) as orchestrator:
            done = moe2(
                "ask",
                "--target",
                orchestrator.target,
                "--choices",
                " yes",
                " no",
                "--top-k",
                "2",
                "--json",
                "Is it?",
            )
            assert done.returncode == 0, done.stderr
            answer = json.loads(done.stdout)
            assert answer["answer"] in (" yes", " no")
            assert {e["expert"] for e in answer["experts"]} == {"first", "second"}
            assert sum(e["gate_weight"] for e in answer["experts"]) == 1.0
            assert answer["gate_trained"] is False
            text = moe2("ask", "--target", orchestrator.target, "--max-tokens", "3", "Hello")
            assert text.returncode == 0, text.stderr
            assert text.stdout.strip().startswith("w")
            bad = moe2("ask", "--target", orchestrator.target, "--delay-budget-s", "-1", "Hi")
            assert bad.returncode == 1
            assert bad.stderr.strip() == (
                "moe2: error: INVALID_ARGUMENT: "
                "delay_budget_s: must be a finite positive number, got -1.0"
            )
            assert orchestrator.terminate() == 0


def test_bad_cluster_files_are_one_line(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster.toml"
    cluster.write_text('[[nodes]]\nname = "a"\naddress = "localhost"\n')
    done = moe2("serve", "--cluster", str(cluster), "--port", "0")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"moe2: error: {cluster}: nodes.0.address: must be host:port, got 'localhost'"
    )
    cluster.write_text('[[nodes]]\nname = "a"\naddress = "h:1"\ncolour = "red"\n')
    done = moe2("serve", "--cluster", str(cluster), "--port", "0")
    assert (
        done.stderr.strip().splitlines()[-1]
        == f"moe2: error: {cluster}: nodes.0.colour: unknown key"
    )
    done = moe2("serve", "--cluster", str(tmp_path / "absent.toml"))
    assert "does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_http_and_metrics_ports_are_announced_and_served(tmp_path: Path) -> None:
    node_command = [sys.executable, "-m", "edge_node.cli", "serve", "--engine", "fake"]
    with Served([*node_command, "--port", "0", "--metrics-port", "0"]) as node:
        node_metrics = node.read_address("metrics")
        cluster = tmp_path / "cluster.toml"
        cluster.write_text(f'[[nodes]]\nname = "only"\naddress = "{node.target}"\n')
        serve = [*MOE2, "serve", "--cluster", str(cluster), "--port", "0"]
        with Served([*serve, "--http-port", "0", "--metrics-port", "0"]) as orchestrator:
            http = orchestrator.read_address("http")
            metrics = orchestrator.read_address("metrics")
            assert get(f"http://{http}/health") == (
                200,
                json.dumps({"status": "ok", "experts_up": 1, "experts": 1}, separators=(",", ":")),
            )
            api = openai.OpenAI(base_url=f"http://{http}/v1", api_key="-", max_retries=0)
            assert [m.id for m in api.models.list()] == ["moe2", "only"]
            reply = api.completions.create(model="only", prompt="Hello", max_tokens=2)
            assert reply.choices[0].text.split()[0].startswith("w")
            status, text = get(f"http://{metrics}/metrics")
            assert status == 200
            samples = parse(text)
            route = "POST /v1/completions"
            assert value(samples, "moe2_http_requests_total", rpc=route, code="200") == 1
            assert value(samples, "moe2_experts_up") == 1
            assert orchestrator.terminate() == 0
        status, text = get(f"http://{node_metrics}/metrics")
        assert status == 200
        assert value(parse(text), "edge_node_requests_total", rpc="Generate", code="OK") == 1
        assert node.terminate() == 0
