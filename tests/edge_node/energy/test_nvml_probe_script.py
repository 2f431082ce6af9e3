from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.edge_node.energy.fake_nvml import FakeNvml

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "nvml_probe.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nvml_probe_under_test", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_probe_script_compares_counter_and_power_on_a_fake_gpu(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = load_script()
    # 300 W, stepping every 100 ms like the H100 counter.
    fake = FakeNvml(energy_mj=lambda: int(time.monotonic() * 10) * 30_000, power_mw=lambda: 300_000)
    monkeypatch.setattr(script, "import_pynvml", lambda: fake)
    argv = ["--repeats", "1", "--load", "none", "--windows-s", "0.05", "--reads", "3"]
    assert script.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["meters"]) == {"counter", "power_integration"}
    assert report["load"] is None
    assert set(report["read_cost_us"]) >= {"total_energy_consumption", "power_usage"}
    (row,) = report["phases"]["idle"]
    assert row["counter"]["approximate"]  # 50 ms < the 100 ms counter period
    assert row["power_integration"]["energy_j"] == pytest.approx(300 * row["window_s"], rel=0.05)
    assert row["counter"]["energy_j"] == pytest.approx(300 * row["window_s"], rel=0.6)
    assert fake.shutdown_calls == fake.init_calls


def test_probe_script_reports_missing_nvml(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = load_script()
    fake = FakeNvml(init_error=FakeNvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    monkeypatch.setattr(script, "import_pynvml", lambda: fake)
    assert script.main(["--load", "none"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["error"] == ["nvml: nvmlInit: NVML_ERROR_LIBRARY_NOT_FOUND"]
