"""testbed.results: loading result files, summary.csv, adherence and the summary table."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

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

ENERGIES_J = (1.0, 2.0, 4.0)
DELAYS_S = (0.5, 1.0, 2.0)
TOP_KS = (1, 2)
BASE_ACCURACY = {
    "moe2": 0.70,
    "moe2-exit": 0.69,
    "best-single": 0.62,
    "category-best": 0.64,
    "random-k": 0.50,
    "uniform-ensemble": 0.58,
    "greedy": 0.66,
    "oracle": 0.80,
}
EXPERTS = ("smollm2-135m", "gemma3-270m", "qwen2.5-0.5b")
TORN_LINE = '{"point": 99, "energy_budget_j": 4.0, "delay_b'


def result_rows() -> list[dict[str, Any]]:
    """A 3×3 (energy × delay) grid for top_k 1 and 2, all six methods, some infeasible cells.

    Infeasible: the cheapest energy budget at the tightest delay (both top_k) and the cheapest
    energy budget at every delay for top_k = 2. Accuracy = base + 1 point per grid step + 2
    points for top_k = 2, so the loosest top_k=1 point has moe2 74 %, best-single 66 %, oracle
    84 %.
    """
    rows: list[dict[str, Any]] = []
    point = 0
    for top_k in TOP_KS:
        for ei, energy_j in enumerate(ENERGIES_J):
            for di, delay_s in enumerate(DELAYS_S):
                feasible = not (ei == 0 and (di == 0 or top_k == 2))
                for method in METHODS:
                    subset = list(EXPERTS[: 1 + ei]) if feasible else []
                    accuracy = (
                        round(BASE_ACCURACY[method] + 0.01 * (ei + di) + 0.02 * (top_k - 1), 4)
                        if feasible
                        else None
                    )
                    usage: dict[str, dict[str, int]] = {}
                    if feasible and method == "moe2":
                        usage = {
                            "sst2": {name: 30 - 10 * i for i, name in enumerate(subset)},
                            "boolq": {name: 10 + 5 * i for i, name in enumerate(subset)},
                        }
                    rows.append(
                        {
                            "point": point,
                            "energy_budget_j": energy_j,
                            "delay_budget_s": delay_s,
                            "top_k": top_k,
                            "method": method,
                            "feasible": feasible,
                            "subset": subset,
                            "n_experts": len(subset),
                            "accuracy": accuracy,
                            "accuracy_by_category": (
                                {"sst2": accuracy, "boolq": accuracy} if accuracy else {}
                            ),
                            "validation_objective": accuracy,
                            "upper_bound": accuracy,
                            "evaluations": 7,
                            "solve_s": 0.001,
                            "predicted_energy_j": 0.8 * energy_j if feasible else None,
                            "predicted_latency_s": 0.9 * delay_s if feasible else None,
                            "predicted_latency_by_category_s": (
                                {"sst2": 0.8 * delay_s, "boolq": 0.9 * delay_s} if feasible else {}
                            ),
                            "expert_usage": usage,
                            "emulated": True,
                            "energy_sources": ["estimated"],
                        }
                    )
                point += 1
    return rows


def live_rows() -> list[dict[str, Any]]:
    """Hand-checkable live requests at two budget points (points 4 and 8, top_k = 1).

    Point 8 (4 J, 2 s): 3 requests, one over both budgets (by 0.3 s and 0.5 J), one with
    unknown energy. Point 4 (2 J, 1 s): 2 requests, energy unknown for both.
    """

    def row(
        point: int,
        energy_budget_j: float,
        delay_budget_s: float,
        latency_s: float,
        energy_j: float | None,
        correct: bool,
    ) -> dict[str, Any]:
        return {
            "point": point,
            "energy_budget_j": energy_budget_j,
            "delay_budget_s": delay_budget_s,
            "top_k": 1,
            "category": "sst2",
            "item_id": f"item-{point}-{latency_s}",
            "correct": correct,
            "latency_s": latency_s,
            "energy_j": energy_j,
            "predicted_latency_s": 0.9 * delay_budget_s,
            "predicted_energy_j": 0.875 * energy_budget_j,
            "within_delay_budget": latency_s <= delay_budget_s,
            "within_energy_budget": None if energy_j is None else energy_j <= energy_budget_j,
            "experts": ["smollm2-135m"],
            "outcomes": {"smollm2-135m": "ok"},
            "energy_source": "estimated",
            "emulated": True,
        }

    return [
        row(8, 4.0, 2.0, 0.5, 1.0, True),
        row(8, 4.0, 2.0, 2.3, 4.5, False),
        row(8, 4.0, 2.0, 1.0, None, True),
        row(4, 2.0, 1.0, 0.4, None, True),
        row(4, 2.0, 1.0, 0.6, None, False),
    ]


def write_jsonl(path: Path, objects: list[dict[str, Any]], *, torn: str | None = None) -> None:
    text = "".join(json.dumps(obj) + "\n" for obj in objects)
    path.write_text(text + (torn or ""), encoding="utf-8")


def write_sweep(directory: Path, *, live: bool = True, torn: bool = True) -> Path:
    """A synthetic sweep folder: results.jsonl (with a torn last line) and live.jsonl."""
    directory.mkdir(parents=True, exist_ok=True)
    write_jsonl(directory / "results.jsonl", result_rows(), torn=TORN_LINE if torn else None)
    if live:
        write_jsonl(directory / "live.jsonl", live_rows())
    return directory


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
    with pytest.raises(ResultsError, match=r"results\.jsonl:2: field 'accuracy' must be a number"):
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
