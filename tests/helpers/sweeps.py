"""Synthetic sweep folders for the tests of the result files and the figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from testbed.results import METHODS, LiveRow, ResultRow, write_rows

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
    """As JSON objects (each built through :class:`ResultRow`, so the schema is the model's):
    a 3×3 (energy × delay) grid for top_k 1 and 2, all six methods, some infeasible cells.

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
                    row = ResultRow(
                        point=point,
                        energy_budget_j=energy_j,
                        delay_budget_s=delay_s,
                        top_k=top_k,
                        method=method,
                        feasible=feasible,
                        subset=tuple(subset),
                        n_experts=len(subset),
                        accuracy=accuracy,
                        accuracy_by_category=(
                            {"sst2": accuracy, "boolq": accuracy} if accuracy else {}
                        ),
                        validation_objective=accuracy,
                        upper_bound=accuracy,
                        evaluations=7,
                        solve_s=0.001,
                        predicted_energy_j=0.8 * energy_j if feasible else None,
                        predicted_latency_s=0.9 * delay_s if feasible else None,
                        predicted_latency_by_category_s=(
                            {"sst2": 0.8 * delay_s, "boolq": 0.9 * delay_s} if feasible else {}
                        ),
                        expert_usage=usage,
                        emulated=True,
                        energy_sources=("estimated",),
                    )
                    rows.append(row.model_dump(mode="json"))
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
        return LiveRow(
            point=point,
            energy_budget_j=energy_budget_j,
            delay_budget_s=delay_budget_s,
            top_k=1,
            category="sst2",
            item_id=f"item-{point}-{latency_s}",
            correct=correct,
            latency_s=latency_s,
            energy_j=energy_j,
            predicted_latency_s=0.9 * delay_budget_s,
            predicted_energy_j=0.875 * energy_budget_j,
            within_delay_budget=latency_s <= delay_budget_s,
            within_energy_budget=None if energy_j is None else energy_j <= energy_budget_j,
            experts=("smollm2-135m",),
            outcomes={"smollm2-135m": "ok"},
            energy_source="estimated",
            emulated=True,
        ).model_dump(mode="json")

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
    """A synthetic sweep folder written by the sweep's own writer (:func:`write_rows`):
    results.jsonl (with a torn last line appended, as a crash leaves it) and live.jsonl."""
    directory.mkdir(parents=True, exist_ok=True)
    results = write_rows(directory / "results.jsonl", map(ResultRow.model_validate, result_rows()))
    if torn:
        with results.open("a", encoding="utf-8") as handle:
            handle.write(TORN_LINE)
    if live:
        write_rows(directory / "live.jsonl", map(LiveRow.model_validate, live_rows()))
    return directory
