"""`edge-node` as a user runs it: subprocesses, real servers, signals and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.procs import Served

EDGE_NODE = [sys.executable, "-m", "edge_node.cli"]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*EDGE_NODE, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    return done


@pytest.fixture
def fake_server() -> Iterator[Served]:
    with Served.edge_node("--engine", "fake") as served:
        yield served


def test_serve_answers_the_tools_and_exits_zero_on_sigterm(fake_server: Served) -> None:
    info = json.loads(run("info", "--target", fake_server.target, "--json").stdout)
    assert info["engine"] == "fake" and info["state"] == "serving"
    generated = json.loads(
        run("generate", "--target", fake_server.target, "--max-tokens", "3", "--json", "hi").stdout
    )
    assert set(generated) >= {"text", "completion_tokens", "prompt_tokens", "latency", "energy"}
    assert set(generated["latency"]) == {"queue_s", "prefill_s", "decode_s", "total_s"}
    assert generated["energy"]["source"] == "estimated"
    scored = json.loads(
        run(
            "score", "--target", fake_server.target, "--choices", " yes", " no", "--json", "Q?"
        ).stdout
    )
    assert scored["choices"] == [" yes", " no"]
    assert sum(scored["probs"]) == pytest.approx(1.0)
    assert fake_server.terminate() == 0


def test_score_accepts_the_prompt_after_the_choices(fake_server: Served) -> None:
    done = run("score", "--target", fake_server.target, "--json", "--choices", " a", " b", "Q?")
    assert json.loads(done.stdout)["choices"] == [" a", " b"]


def test_bad_requests_exit_non_zero_with_one_readable_line(fake_server: Served) -> None:
    done = run("generate", "--target", fake_server.target, "--max-tokens", "0", "x", check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "edge-node: error: INVALID_ARGUMENT: max_tokens: must be positive, got 0"
    ]
    telemetry = run(
        "telemetry",
        "--target",
        fake_server.target,
        "--seconds",
        "0.3",
        "--interval-s",
        "0.1",
        "--json",
    )
    assert len(json.loads(telemetry.stdout)["samples"]) >= 2


def test_unreachable_node_is_one_line() -> None:
    done = run("info", "--target", "127.0.0.1:1", "--timeout-s", "2", check=False)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert "127.0.0.1:1" in done.stderr and "Traceback" not in done.stderr


def test_unknown_config_key_is_named(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('engine = "fake"\nn_ctxx = 5\n')
    done = run("serve", "--config", str(config), "--port", "0", check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == f"edge-node: error: {config}: n_ctxx: unknown key"


def test_out_of_bounds_setting_is_named(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('engine = "fake"\n[energy]\nbackend = "magic"\n')
    done = run("serve", "--config", str(config), check=False)
    assert done.returncode == 2
    assert done.stderr.startswith(f"edge-node: error: {config}: energy.backend:")


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), (b"not a gguf at all", "is not a GGUF file")],
)
def test_missing_or_corrupt_model_file_is_one_line(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "model.gguf"
    if content is not None:
        path.write_bytes(content)
    done = run("serve", "--model", str(path), "--port", "0", check=False)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("edge-node: error: model file") and message in lines[-1]
    assert "Traceback" not in done.stderr


def test_explicit_energy_backend_that_is_absent_fails_clearly() -> None:
    done = run("serve", "--engine", "fake", "--energy-backend", "rapl", check=False)
    assert done.returncode == 1
    assert "rapl" in done.stderr.strip().splitlines()[-1]


def test_unknown_model_name_lists_the_catalogue() -> None:
    done = run("serve", "--model", "llama-70b", check=False)
    assert done.returncode == 1
    assert "smollm2-135m" in done.stderr and "unknown model 'llama-70b'" in done.stderr


def test_models_list_shows_the_installed_catalogue() -> None:
    listing = json.loads(run("models", "list", "--json").stdout)["models"]
    names = {row["name"]: row for row in listing}
    assert set(names) >= {"smollm2-135m", "gemma3-270m", "qwen2.5-0.5b", "qwen2.5-1.5b"}
    assert names["smollm2-135m"]["installed"] is True
    assert names["qwen2.5-1.5b"]["optional"] is True


@pytest.mark.model
def test_serve_a_real_model_and_score_through_the_cli() -> None:
    with Served.edge_node("--model", "smollm2-135m", "--n-ctx", "512") as served:
        info = json.loads(run("info", "--target", served.target, "--json").stdout)
        assert info["model_id"] == "smollm2-135m" and info["quantization"] == "Q4_1"
        assert info["chat_template"] is True and info["context_tokens"] == 512
        scored = json.loads(
            run(
                "score",
                "--target",
                served.target,
                "--choices",
                " negative",
                " positive",
                "--json",
                "Review: a gorgeous, witty, seductive movie.\nSentiment (positive or negative):",
            ).stdout
        )
        assert scored["probs"][1] > scored["probs"][0]
        assert scored["energy"]["joules"] is None or scored["energy"]["joules"] >= 0
        generated = json.loads(
            run(
                "generate",
                "--target",
                served.target,
                "--max-tokens",
                "8",
                "--raw",
                "--json",
                "The capital of France is",
            ).stdout
        )
        assert "Paris" in generated["text"]
        assert generated["latency"]["prefill_s"] > 0 and generated["latency"]["decode_s"] > 0
        assert served.terminate() == 0
