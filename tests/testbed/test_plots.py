"""testbed.plots and ``moe2 plot DIR``: every figure drawn, valid, deterministic; error paths."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.plots import FIGURE_NAMES, draw_all
from testbed.results import SUMMARY_COLUMNS, ResultsError
from tests.testbed.test_results import result_rows, write_jsonl, write_sweep

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_valid_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    pixels = matplotlib.image.imread(path)
    height, width = pixels.shape[:2]
    assert 300 <= height <= 2000, (path, pixels.shape)
    assert 500 <= width <= 2500, (path, pixels.shape)
    assert pixels.std() > 0.01, f"{path} is blank"


def _moe2(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "testbed.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )


def test_draw_all_writes_every_figure_as_a_valid_png(tmp_path: Path) -> None:
    written = draw_all(write_sweep(tmp_path))
    assert [p.name for p in written] == [f"{name}.png" for name in FIGURE_NAMES]
    for path in written:
        _assert_valid_png(path)
    assert not list(tmp_path.glob(".*.tmp"))


def test_draw_all_is_deterministic(tmp_path: Path) -> None:
    first = {p.name: p.read_bytes() for p in draw_all(write_sweep(tmp_path / "a"))}
    second = {p.name: p.read_bytes() for p in draw_all(write_sweep(tmp_path / "b"))}
    assert first == second


def test_without_live_file_predicted_vs_measured_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="testbed.plots"):
        written = draw_all(write_sweep(tmp_path, live=False))
    names = {p.stem for p in written}
    assert names == set(FIGURE_NAMES) - {"predicted_vs_measured"}
    assert "predicted-vs-measured figure skipped" in caplog.text


def test_without_expert_usage_that_figure_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    objects = result_rows()
    for obj in objects:
        del obj["expert_usage"]
        del obj["energy_sources"]
        del obj["emulated"]
    write_jsonl(tmp_path / "results.jsonl", objects)
    with caplog.at_level(logging.WARNING, logger="testbed.plots"):
        written = draw_all(tmp_path)
    assert {p.stem for p in written} == {"accuracy_vs_energy", "accuracy_vs_delay", "heatmap_moe2"}
    assert "expert-usage figure skipped" in caplog.text
    for path in written:
        _assert_valid_png(path)


def test_live_rows_with_all_energy_unknown_still_draw(tmp_path: Path) -> None:
    write_sweep(tmp_path)
    lines = (tmp_path / "live.jsonl").read_text(encoding="utf-8").splitlines()
    objects = [json.loads(line) for line in lines]
    for obj in objects:
        obj["energy_j"] = None
        obj["within_energy_budget"] = None
    write_jsonl(tmp_path / "live.jsonl", objects)
    written = draw_all(tmp_path)
    _assert_valid_png(tmp_path / "predicted_vs_measured.png")
    assert len(written) == len(FIGURE_NAMES)


def test_svg_format(tmp_path: Path) -> None:
    written = draw_all(write_sweep(tmp_path), "svg")
    assert len(written) == len(FIGURE_NAMES)
    for path in written:
        text = path.read_text(encoding="utf-8")
        assert path.suffix == ".svg"
        assert "<svg" in text
        assert "<dc:date>" not in text


def test_draw_all_without_results_raises(tmp_path: Path) -> None:
    with pytest.raises(ResultsError):
        draw_all(tmp_path)


def test_empty_results_draws_nothing(tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").write_text("", encoding="utf-8")
    assert draw_all(tmp_path) == []


# --- the CLI -----------------------------------------------------------------------------------


def test_cli_plot_draws_figures_and_prints_the_table(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path / "sweep")
    result = _moe2("plot", str(sweep))
    assert result.returncode == 0, result.stderr
    for name in FIGURE_NAMES:
        path = sweep / f"{name}.png"
        assert str(path) in result.stdout
        _assert_valid_png(path)
    assert "top_k=1" in result.stdout
    assert "top_k=2" in result.stdout
    assert "+8.0" in result.stdout  # moe2 vs best-single at the loosest top_k=1 point
    assert "torn last line" in result.stderr  # a warning, not an error
    header = (sweep / "summary.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == ",".join(SUMMARY_COLUMNS)


def test_cli_plot_keeps_an_existing_summary_and_writes_svg(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path / "sweep")
    (sweep / "summary.csv").write_text("from the sweep\n", encoding="utf-8")
    result = _moe2("plot", str(sweep), "--format", "svg")
    assert result.returncode == 0, result.stderr
    assert (sweep / "summary.csv").read_text(encoding="utf-8") == "from the sweep\n"
    assert len(list(sweep.glob("*.svg"))) == len(FIGURE_NAMES)
    assert not list(sweep.glob("*.png"))


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing-dir", "no such directory"),
        ("missing-results", "no results.jsonl"),
        ("bad-line", "results.jsonl:2: not valid JSON"),
    ],
)
def test_cli_plot_errors_are_one_line_and_exit_1(tmp_path: Path, setup: str, message: str) -> None:
    target = tmp_path / "sweep"
    if setup != "missing-dir":
        target.mkdir()
    if setup == "bad-line":
        rows = result_rows()[:2]
        text = json.dumps(rows[0]) + "\n{oops\n" + json.dumps(rows[1]) + "\n"
        (target / "results.jsonl").write_text(text, encoding="utf-8")
    result = _moe2("plot", str(target))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("moe2: error: ")
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_plot_help_mentions_format() -> None:
    result = _moe2("plot", "--help")
    assert result.returncode == 0
    assert "--format" in result.stdout
