"""testbed.results: loading result files, summary.csv, adherence and the summary table."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from testbed.results import (
    METHODS,
    SUMMARY_COLUMNS,
    ResultsError,
    adherence,
    energy_footnote,
    load_live,
    load_results,
    overall_adherence,
    write_summary_csv,
)
from tests.helpers.sweeps import (
    DELAYS_S,
    ENERGIES_J,
    EXPERTS,
    TOP_KS,
    live_rows,
    result_rows,
    write_jsonl,
    write_sweep,
)

# --- loading -----------------------------------------------------------------------------------


def test_load_results_reads_every_row_and_skips_torn_last_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_sweep(tmp_path)
    with caplog.at_level(logging.WARNING, logger="testbed.results"):
        rows = load_results(tmp_path)
    assert len(rows) == len(ENERGIES_J) * len(DELAYS_S) * len(TOP_KS) * len(METHODS)
    assert "torn last line" in caplog.text
    assert f"results.jsonl:{len(rows) + 1}" in caplog.text
    first = rows[0]
    assert (first.point, first.method, first.feasible, first.accuracy) == (0, "moe2", False, None)
    assert first.subset == ()
    loosest = next(r for r in rows if r.point == 8 and r.method == "moe2")
    assert loosest.accuracy == pytest.approx(0.74)
    assert loosest.subset == EXPERTS
    assert loosest.energy_sources == ("estimated",)
    assert loosest.expert_usage["sst2"]["smollm2-135m"] == 30
    assert loosest.predicted_latency_by_category_s["boolq"] == pytest.approx(1.8)


def test_load_results_tolerates_missing_optional_fields(tmp_path: Path) -> None:
    minimal = {"point": 0, "energy_budget_j": 1, "delay_budget_s": 2, "top_k": 1, "method": "x"}
    write_jsonl(tmp_path / "results.jsonl", [minimal, {**minimal, "accuracy": 0.5}])
    rows = load_results(tmp_path)
    assert rows[0].feasible is False
    assert rows[0].energy_budget_j == 1.0
    assert rows[1].feasible is True
    assert rows[1].expert_usage == {}
    assert rows[1].emulated is None


def test_bad_line_in_the_middle_raises_naming_file_and_line(tmp_path: Path) -> None:
    objects = result_rows()[:3]
    text = json.dumps(objects[0]) + "\n{not json\n" + json.dumps(objects[1]) + "\n"
    (tmp_path / "results.jsonl").write_text(text, encoding="utf-8")
    with pytest.raises(ResultsError, match=r"results\.jsonl:2: not valid JSON"):
        load_results(tmp_path)


def test_wrong_field_type_raises_naming_field_even_on_last_line(tmp_path: Path) -> None:
    objects = result_rows()[:2]
    objects[1]["accuracy"] = "high"
    write_jsonl(tmp_path / "results.jsonl", objects)
    with pytest.raises(
        ResultsError, match=r"results\.jsonl:2: field 'accuracy': input should be a valid number"
    ):
        load_results(tmp_path)


def test_missing_required_field_raises(tmp_path: Path) -> None:
    objects = result_rows()[:1]
    del objects[0]["top_k"]
    write_jsonl(tmp_path / "results.jsonl", objects)
    with pytest.raises(ResultsError, match="missing field 'top_k'"):
        load_results(tmp_path)


def test_non_object_line_raises(tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(ResultsError, match="expected a JSON object"):
        load_results(tmp_path)


def test_missing_results_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match=r"no results\.jsonl"):
        load_results(tmp_path)


def test_missing_live_file_gives_no_rows(tmp_path: Path) -> None:
    assert load_live(tmp_path) == []


def test_load_live_keeps_null_energy_and_skips_torn_line(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "live.jsonl", live_rows(), torn='{"point": 8, "lat')
    rows = load_live(tmp_path)
    assert len(rows) == 5
    assert rows[2].energy_j is None
    assert rows[2].within_energy_budget is None
    assert rows[1].within_delay_budget is False
    assert rows[0].outcomes == {"smollm2-135m": "ok"}


def test_load_live_derives_missing_within_flags(tmp_path: Path) -> None:
    obj = live_rows()[1]
    del obj["within_delay_budget"]
    del obj["within_energy_budget"]
    write_jsonl(tmp_path / "live.jsonl", [obj])
    (row,) = load_live(tmp_path)
    assert row.within_delay_budget is False  # 2.3 s > 2.0 s
    assert row.within_energy_budget is False  # 4.5 J > 4.0 J


# --- summary.csv -------------------------------------------------------------------------------


def test_summary_csv_has_the_columns_and_values(tmp_path: Path) -> None:
    rows = load_results(write_sweep(tmp_path / "sweep"))
    path = write_summary_csv(rows, tmp_path / "summary.csv")
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == SUMMARY_COLUMNS
        records = list(reader)
    assert len(records) == len(rows)
    infeasible = records[0]
    assert infeasible["method"] == "moe2"
    assert infeasible["feasible"] == "false"
    assert infeasible["accuracy"] == ""
    assert infeasible["subset"] == ""
    assert infeasible["predicted_energy_j"] == ""
    loosest = next(r for r in records if r["point"] == "8" and r["method"] == "oracle")
    assert loosest["energy_budget_j"] == "4.0"
    assert loosest["delay_budget_s"] == "2.0"
    assert loosest["top_k"] == "1"
    assert loosest["feasible"] == "true"
    assert float(loosest["accuracy"]) == pytest.approx(0.84)
    assert loosest["n_experts"] == "3"
    assert loosest["subset"] == "smollm2-135m+gemma3-270m+qwen2.5-0.5b"
    assert float(loosest["predicted_energy_j"]) == pytest.approx(3.2)
    assert float(loosest["predicted_latency_s"]) == pytest.approx(1.8)
    # Written via a temp file and renamed: nothing else is left in the folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv", "sweep"]


def test_summary_csv_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "summary.csv"
    path.write_text("old\n", encoding="utf-8")
    write_summary_csv([], path)
    assert path.read_text(encoding="utf-8") == ",".join(SUMMARY_COLUMNS) + "\n"


# --- adherence ---------------------------------------------------------------------------------


def test_adherence_per_point_by_hand(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "live.jsonl", live_rows())
    figures = adherence(load_live(tmp_path))
    assert list(figures) == [4, 8]
    point8 = figures[8]
    assert point8.requests == 3
    assert point8.within_delay_fraction == pytest.approx(2 / 3)
    assert point8.energy_known == 2  # the null energy is not counted as 0 J
    assert point8.within_energy_fraction == pytest.approx(1 / 2)
    assert point8.worst_delay_excess_s == pytest.approx(0.3)
    assert point8.worst_energy_excess_j == pytest.approx(0.5)
    assert point8.mean_predicted_latency_s == pytest.approx(1.8)
    assert point8.mean_measured_latency_s == pytest.approx((0.5 + 2.3 + 1.0) / 3)
    assert point8.mean_predicted_energy_j == pytest.approx(3.5)
    assert point8.mean_measured_energy_j == pytest.approx(2.75)
    assert point8.accuracy == pytest.approx(2 / 3)
    point4 = figures[4]
    assert point4.requests == 2
    assert point4.within_delay_fraction == 1.0
    assert point4.worst_delay_excess_s == 0.0
    assert point4.energy_known == 0
    assert point4.within_energy_fraction is None
    assert point4.worst_energy_excess_j is None
    assert point4.mean_measured_energy_j is None
    assert point4.accuracy == pytest.approx(0.5)


def test_overall_adherence_pools_every_request(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "live.jsonl", live_rows())
    total = overall_adherence(load_live(tmp_path))
    assert total is not None
    assert total.requests == 5
    assert total.within_delay_fraction == pytest.approx(4 / 5)
    assert total.energy_known == 2
    assert total.within_energy_fraction == pytest.approx(1 / 2)
    assert overall_adherence([]) is None
    assert adherence([]) == {}


# --- summary table and footnote ----------------------------------------------------------------


def test_energy_footnote_never_implies_a_measurement() -> None:
    assert energy_footnote(["estimated"], [True, True]) == "energy: estimated (emulated)"
    assert energy_footnote(["measured-NVML", "estimated"], [False]) == (
        "energy: estimated, measured-NVML"
    )
    assert energy_footnote([], [None]) == "energy: source not recorded"
    assert energy_footnote(["estimated"], [True, False]).endswith("(partly emulated)")
