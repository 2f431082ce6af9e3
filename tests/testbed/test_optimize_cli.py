"""``moe2 optimize`` as a subprocess: the docs/architecture.md §5 contract and its error paths."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.instances import INSTANCE

REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, document: object, *flags: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "instance.json"
    text = document if isinstance(document, str) else json.dumps(document)
    path.write_text(text, encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "testbed.cli", "optimize", "--instance", str(path), *flags],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )


def test_json_output_follows_the_contract(tmp_path: Path) -> None:
    result = _run(tmp_path, INSTANCE, "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["subset"] == ["smollm2-135m", "gemma3-270m"]
    assert document["value"] == pytest.approx(0.85)
    assert document["feasible"] is True
    assert document["energy_j"] == pytest.approx(1.5)
    assert document["latency_s"] == pytest.approx({"sst2": 0.402, "boolq": 0.602})
    assert document["upper_bound"] == pytest.approx(0.85)
    assert isinstance(document["evaluations"], int)
    assert document["seconds"] >= 0


@pytest.mark.parametrize(
    "method", ["dmo", "exhaustive", "greedy", "milp", "best-single", "random", "maximal"]
)
def test_every_method_runs(tmp_path: Path, method: str) -> None:
    result = _run(tmp_path, INSTANCE, "--json", "--method", method)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["feasible"] is True
    assert document["method"] == method


def test_infeasible_budget_gives_empty_subset_and_exit_zero(tmp_path: Path) -> None:
    instance = copy.deepcopy(INSTANCE)
    instance["energy_budget_j"] = 0.1
    result = _run(tmp_path, instance, "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["subset"] == []
    assert document["feasible"] is False


def test_human_summary_without_json(tmp_path: Path) -> None:
    result = _run(tmp_path, INSTANCE)
    assert result.returncode == 0
    assert "smollm2-135m, gemma3-270m" in result.stdout
    assert "evaluations" in result.stdout


def test_gated_instance_is_solved_exactly(tmp_path: Path) -> None:
    instance = copy.deepcopy(INSTANCE)
    instance["objective"] = {
        "kind": "gated",
        "metric": "accuracy",
        "gate_logits": [[1.0, 2.0, 0.0], [0.0, -1.0, 1.0]],
        "option_probs": [
            [[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]],
            [[0.2, 0.8], [0.6, 0.4], [0.0, 0.0]],
        ],
        "labels": [0, 1],
    }
    result = _run(tmp_path, instance, "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["subset"] == ["smollm2-135m"]  # adding gemma routes prompt 0 to it: worse
    assert document["value"] == pytest.approx(1.0)


def _mutate(path: str, value: object) -> dict[str, Any]:
    instance = copy.deepcopy(INSTANCE)
    target: Any = instance
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return instance


_DELETE = object()


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (_mutate("energy_j", [0.8, 1.5]), "energy_j"),
        (_mutate("energy_j", [0.8, -1.5, 3.9]), "energy_j[1]"),
        (_mutate("latency_s.boolq", _DELETE), "latency_s.boolq"),
        (_mutate("delay_budget_s.extra", 1.0), "delay_budget_s.extra"),
        (_mutate("surprise", 1), "surprise"),
        (_mutate("objective.weights", [1]), "objective.weights"),
        (_mutate("objective.scores", [[0.9, 0.1], [0.2, 0.8]]), "objective.scores"),
        (_mutate("top_k", 0), "top_k"),
        (_mutate("objective.kind", "oracle"), "objective.kind"),
        (_mutate("energy_budget_j", _DELETE), "energy_budget_j"),
        (json.dumps(INSTANCE).replace("0.8, 1.5, 3.9", "0.8, NaN, 3.9"), "energy_j[1]"),
        (json.dumps(INSTANCE).replace("[0.9, 0.1, 0.4]", "[0.9, Infinity, 0.4]"), "scores"),
    ],
)
def test_malformed_instance_names_the_field_and_exits_2(
    tmp_path: Path, document: object, field: str
) -> None:
    result = _run(tmp_path, document, "--json")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert field in lines[0]
    assert "Traceback" not in result.stderr


def test_invalid_json_and_missing_file_exit_2(tmp_path: Path) -> None:
    result = _run(tmp_path, "{not json", "--json")
    assert result.returncode == 2
    assert "not valid JSON" in result.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "testbed.cli", "optimize", "--instance", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr
