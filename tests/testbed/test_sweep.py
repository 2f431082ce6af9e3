"""`moe2 sweep` end to end on fake-engine nodes (fast), resume after a kill, and a small
real-model sweep."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.gate import Gate
from orchestrator.planner import SelectionData
from testbed.results import adherence, load_live, load_results
from testbed.sweep_config import ALL_METHODS

MOE2 = [sys.executable, "-m", "testbed.cli"]
FAKE = Path(__file__).resolve().parents[2] / "testbed" / "configs" / "fake.toml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sweep(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MOE2, "sweep", "--config", str(config), "--out", str(out), "--no-progress", *extra],
        capture_output=True,
        text=True,
        timeout=600,
    )


def responses(out: Path) -> dict[tuple[str, str], list[float]]:
    """(expert, item_id) -> logprobs over every recorded file; fails on duplicates."""
    found: dict[tuple[str, str], list[float]] = {}
    for path in sorted((out / "responses").rglob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            key = (path.parent.name, row["item_id"])
            assert key not in found, f"duplicate answer {key}"
            found[key] = row["logprobs"]
    return found


def test_fake_sweep_writes_every_output(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = sweep(FAKE, out)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in (
        "config.toml",
        "env.json",
        "results.jsonl",
        "summary.csv",
        "live.jsonl",
        "profile.json",
        "gate.npz",
        "fine_level.json",
    ):
        assert (out / name).is_file(), name
    figures = sorted(out.glob("*.png"))
    assert {f.name for f in figures} >= {
        "accuracy_vs_energy.png",
        "accuracy_vs_delay.png",
        "heatmap_moe2.png",
        "predicted_vs_measured.png",
        "expert_usage.png",
    }
    for figure in figures:
        assert figure.read_bytes()[:8] == PNG_MAGIC
    rows = load_results(out)
    methods = set(ALL_METHODS)
    assert {r.method for r in rows} == methods
    assert len(rows) == 3 * 3 * 2 * len(methods)  # energy points x delay points x top_k x methods
    by_point: dict[int, dict[str, float | None]] = {}
    for row in rows:
        by_point.setdefault(row.point, {})[row.method] = row.accuracy
        if row.feasible:
            assert row.predicted_energy_j is not None
            assert row.predicted_energy_j <= row.energy_budget_j + 1e-9
            assert row.predicted_latency_s is not None
            assert row.predicted_latency_s <= row.delay_budget_s + 1e-9
    for accuracies in by_point.values():
        oracle, single = accuracies["oracle"], accuracies["best-single"]
        # The best-of oracle over raw answers bounds every single feasible expert's raw answer
        # (a calibrated fusion may beat it: calibration can turn an expert's wrong answer right).
        if oracle is not None:
            assert single is not None and single <= oracle + 1e-9
    # Early exit never spends more than running every expert of K at the same point.
    raw = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    spent = {(r["point"], r["method"]): r.get("realised_energy_j") for r in raw if r["feasible"]}
    staged = [(p, j) for (p, m), j in spent.items() if m == "moe2-exit"]
    assert staged
    for point, joules in staged:
        assert joules is not None and joules <= spent[(point, "moe2")] + 1e-9
    # The guard's evidence is out of fold, so the fine level is refitted on every planning
    # prompt (train + validation) and no planning row is marked held out.
    selection = SelectionData.load(out / "selection.npz")
    assert selection.out_of_fold is not None
    assert selection.held_out is not None and not selection.held_out.any()
    assert Gate.load(out / "gate.npz").metadata.train_size == selection.labels.size
    env = json.loads((out / "env.json").read_text())
    assert env["emulated"] is True
    assert env["experts"]["slow"]["emulated_device"] == "orin-nano"
    live = load_live(out)
    assert live
    # Budgets sit between breakpoints and both sides plan with the same figures: every live
    # request at a point the offline plan served is planned feasible online.
    assert [r for r in live if r.error == "FAILED_PRECONDITION"] == []
    assert any(r.early_exit for r in live)
    assert adherence(live)
    assert "MoE² vs the best single" in done.stdout  # the printed story
    assert "live: " in done.stdout and "refused" in done.stdout
    # moe2 plot redraws from the files alone
    for figure in figures:
        figure.unlink()
    redraw = subprocess.run([*MOE2, "plot", str(out)], capture_output=True, text=True, timeout=120)
    assert redraw.returncode == 0, redraw.stderr
    assert all(f.is_file() for f in figures)
    # the optimality-preserving check runs on the same files
    report = subprocess.run(
        [*MOE2, "gate-report", str(out)], capture_output=True, text=True, timeout=300
    )
    assert report.returncode == 0, report.stderr
    checked = json.loads((out / "optimality.json").read_text())["rows"]
    assert {r["split"] for r in checked} == {"train", "heldout"}
    for row in checked:
        if row["split"] == "train":  # the retrained gate cannot fit its own data worse
            assert row["gap"] >= -1e-3
    # what the orchestrator serves, scored on the same files: its planner per category
    served = subprocess.run(
        [*MOE2, "served-report", str(out)], capture_output=True, text=True, timeout=300
    )
    assert served.returncode == 0, served.stderr
    assert "served below the best single feasible expert at" in served.stdout
    points = json.loads((out / "served.json").read_text())["points"]
    moe2 = {r.point: r for r in rows if r.method == "moe2"}
    assert sorted(p["point"] for p in points) == sorted(moe2)
    agreeing = alike = 0
    for point in points:
        sweep_row = moe2[point["point"]]
        # every served plan meets the point's budgets; the per-category baseline is one expert
        for plan in point["plans"] + point["served_single"]:
            if plan["subset"]:
                assert plan["predicted_energy_j"] <= point["energy_budget_j"] + 1e-9
                assert plan["predicted_latency_s"] <= point["delay_budget_s"] + 1e-9
        assert all(len(plan["subset"]) <= 1 for plan in point["served_single"])
        single_hits = sum(plan["hits"] for plan in point["served_single"])
        assert point["served_single_accuracy"] == pytest.approx(
            single_hits / len(point["test_hits"])
        )
        if point["served_single"] == point["plans"]:  # the same plans: no gain either way
            alike += 1
            assert point["served_gain_points"] == 0.0
        same = sweep_row.feasible and all(
            tuple(plan["subset"]) == sweep_row.subset and plan["top_k"] == sweep_row.plan_top_k
            for plan in point["plans"]
        )
        if same:  # the planner's plan is the sweep's: the same answers, scored alike
            agreeing += 1
            assert point["accuracy"] == pytest.approx(sweep_row.accuracy)
    assert agreeing and alike


def test_recording_resumes_after_a_kill_with_nothing_lost_or_duplicated(tmp_path: Path) -> None:
    config = tmp_path / "slow.toml"
    config.write_text(
        FAKE.read_text().replace("fake_token_delay_s = 0.001", "fake_token_delay_s = 0.02")
    )
    reference = tmp_path / "reference"
    assert sweep(config, reference, "--record-only").returncode == 0
    expected = responses(reference)

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        [
            *MOE2,
            "sweep",
            "--config",
            str(config),
            "--out",
            str(interrupted),
            "--no-progress",
            "--record-only",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        files = list((interrupted / "responses").rglob("*.jsonl"))
        if sum(len(f.read_bytes().splitlines()) for f in files) >= len(expected) // 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    partial = responses(interrupted)
    assert 0 < len(partial) < len(expected)
    # a torn line, as a crash in the middle of a write would leave
    victim = next((interrupted / "responses").rglob("*.jsonl"))
    with victim.open("ab") as handle:
        handle.write(b'{"item_id": "torn", "logpr')

    resumed = sweep(config, interrupted, "--record-only")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert responses(interrupted) == expected


def test_bad_sweep_config_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(FAKE.read_text() + "\n[extras]\nfoo = 1\n")
    done = sweep(config, tmp_path / "out")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"moe2: error: {config}: extras: unknown key"
    config.write_text(FAKE.read_text().replace("copa = 12", "poetry = 12"))
    done = sweep(config, tmp_path / "out")
    assert "categories: unknown poetry" in done.stderr


def test_served_report_on_a_folder_that_is_no_sweep_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [*MOE2, "served-report", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"moe2: error: sweep config {tmp_path / 'config.toml'} does not exist"
    ]
    assert not (tmp_path / "served.json").exists()


@pytest.mark.model
def test_small_real_model_sweep(tmp_path: Path) -> None:
    config = tmp_path / "real.toml"
    config.write_text(
        """
seed = 1
top_k = [1, 2]
methods = ["moe2", "best-single", "oracle"]
[[experts]]
name = "smollm2-135m"
model = "smollm2-135m"
[[experts]]
name = "gemma3-270m"
model = "gemma3-270m"
device = "orin-agx"
[categories]
sst2 = 6
boolq = 6
[budgets]
points = 2
[emulation]
network = "none"
[live]
points = 1
prompts = 3
[node]
n_ctx = 1024
"""
    )
    out = tmp_path / "real"
    done = sweep(config, out)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = load_results(out)
    assert {r.method for r in rows} == {"moe2", "best-single", "oracle"}
    assert any(r.feasible and r.accuracy is not None for r in rows)
    recorded = responses(out)
    assert len(recorded) == 2 * 12
    env = json.loads((out / "env.json").read_text())
    assert env["experts"]["smollm2-135m"]["model_id"] == "smollm2-135m"
    assert env["experts"]["gemma3-270m"]["emulated"] is True
    assert load_live(out)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_sweep_stops_every_node_it_started(tmp_path: Path, stop: int) -> None:
    import psutil

    config = tmp_path / "slow.toml"
    config.write_text(
        FAKE.read_text().replace("fake_token_delay_s = 0.001", "fake_token_delay_s = 0.5")
    )
    process = subprocess.Popen(
        [*MOE2, "sweep", "--config", str(config), "--out", str(tmp_path / "out"), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    sweep_process = psutil.Process(process.pid)
    deadline = time.monotonic() + 60
    while len(sweep_process.children()) < 3:  # the three nodes are up
        assert time.monotonic() < deadline
        time.sleep(0.05)
    nodes = sweep_process.children()
    time.sleep(0.5)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr
    _, alive = psutil.wait_procs(nodes, timeout=10)
    assert not alive
