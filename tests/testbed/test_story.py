"""The end-of-sweep story: paired bootstrap, gains, adherence line, tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.results import LiveRow, ResultRow
from testbed.story import accuracy_tables, early_exit_line, gains, paired_bootstrap, story


def test_paired_bootstrap_centres_on_the_mean_difference_and_widens_with_noise() -> None:
    same = [1, 0, 1, 1, 0] * 20
    assert paired_bootstrap(same, same) == (0.0, 0.0, 0.0)
    better = [1] * 60 + [0] * 40
    worse = [1] * 50 + [0] * 50
    gain, low, high = paired_bootstrap(better, worse)
    assert gain == pytest.approx(10.0)
    assert 0.0 <= low < gain < high <= 20.0
    with pytest.raises(ValueError, match="equal length"):
        paired_bootstrap([1, 0], [1])


def _row(point: int, method: str, hits: list[int] | None, subset: tuple[str, ...]) -> ResultRow:
    feasible = hits is not None
    return ResultRow(
        point=point,
        energy_budget_j=1.23456 * (point + 1),
        delay_budget_s=0.5,
        top_k=1 + point // 2,
        method=method,
        feasible=feasible,
        subset=subset if feasible else (),
        n_experts=len(subset) if feasible else 0,
        accuracy=sum(hits) / len(hits) if hits else None,
        test_hits=tuple(hits or ()),
        realised_energy_j=float(len(subset)) if feasible else None,
    )


ROWS = [
    _row(0, "moe2", None, ()),
    _row(0, "best-single", None, ()),
    _row(1, "moe2", [1] * 7 + [0] * 3, ("a", "b")),
    _row(1, "best-single", [1] * 5 + [0] * 5, ("a",)),
    _row(1, "oracle", [1] * 9 + [0], ("a", "b")),
    _row(1, "moe2-exit", [1] * 7 + [0] * 3, ("a",)),
]


def test_gains_pair_moe2_with_the_baseline_where_both_answered() -> None:
    (gain,) = gains(ROWS)
    assert (gain.point, gain.n_prompts, gain.n_feasible_experts) == (1, 10, 2)
    assert gain.gain_points == pytest.approx(20.0)


def test_story_says_gain_adherence_with_refusals_and_figures(tmp_path: Path) -> None:
    live = [
        LiveRow(
            point=1,
            energy_budget_j=2,
            delay_budget_s=1,
            latency_s=0.2,
            within_delay_budget=True,
            energy_j=1.0,
            within_energy_budget=True,
        ),
        LiveRow(
            point=1,
            energy_budget_j=2,
            delay_budget_s=1,
            latency_s=0.0,
            within_delay_budget=False,
            error="FAILED_PRECONDITION",
        ),
    ]
    lines = story(ROWS, live, [tmp_path / "accuracy_vs_energy.png"], tmp_path)
    assert len(lines) == 3
    assert "+20.0" in lines[0] and "n=10" in lines[0] and "95 % CI" in lines[0]
    assert "1/2 within the delay budget" in lines[1] and "1 refused" in lines[1]
    assert "accuracy_vs_energy" in lines[2]


def test_tables_round_budgets_give_n_and_count_empty_points() -> None:
    text = accuracy_tables(ROWS)
    assert "1 budget points where nothing fits" in text
    assert "2.47" in text and "2.46912" not in text  # three significant digits
    body = [line for line in text.splitlines() if "a+b" in line]
    assert len(body) == 1 and " 10 " in body[0]
    markdown = accuracy_tables(ROWS, markdown=True)
    assert "| E budget (J) |" in markdown and "|---|" in markdown


def test_tables_say_when_the_plan_routes_fewer_experts_per_prompt_than_top_k() -> None:
    routed = ROWS[2].model_copy(update={"top_k": 2, "plan_top_k": 1})
    row = ResultRow.model_validate_json(routed.to_json_line())  # the field survives the file
    assert row.plan_top_k == 1
    assert "a+b (k=1)" in accuracy_tables([row])
    assert "(k=" not in accuracy_tables([routed.model_copy(update={"plan_top_k": 2})])


def test_early_exit_line_compares_realised_joules_with_all_of_k() -> None:
    line = early_exit_line(ROWS)
    assert line is not None and "50 % fewer joules" in line


def test_ceilings_count_co_failures_per_category_bests_and_chance() -> None:
    import numpy as np

    from optimizer.fine import LinearPool
    from testbed.categories import Item
    from testbed.evaluation import SplitData
    from testbed.story import ceilings

    items = tuple(
        Item("a" if i < 2 else "b", f"id{i}", "p", (" x", " y"), 0, "sum") for i in range(4)
    )
    # expert 0 right on prompts 0 and 2, expert 1 right on prompt 1 only; prompt 3: nobody.
    right = np.array([[1, 0], [0, 1], [1, 0], [0, 0]], dtype=bool)
    probs = np.where(right[:, :, None], [0.9, 0.1], [0.1, 0.9])
    split = SplitData(
        items=items,
        categories=np.array([i.category for i in items]),
        labels=np.zeros(4, dtype=np.int64),
        option_probs=probs,
        correct=right,
        latency_s=np.zeros((4, 2)),
        energy_j=np.zeros((4, 2)),
    )
    found = ceilings(split, ["e0", "e1"], LinearPool())
    assert found.raw_accuracy == {"e0": 0.5, "e1": 0.25}
    assert found.calibrated_accuracy == found.raw_accuracy  # no calibration in a linear pool
    assert found.co_failure_ceiling == 0.75
    assert found.category_ceiling == 0.5  # a: best 0.5, b: best 0.5
    assert found.chance_oracle == 0.75  # 1 - (1/2)^2 on 2-way prompts
    assert "75.0 %" in found.line()
