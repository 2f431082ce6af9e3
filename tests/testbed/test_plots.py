"""testbed.plots and ``moe2 plot DIR``: every figure drawn (PNG ≥ 200 dpi + PDF), valid and
deterministic; fixed colours; intervals; old folders; error paths."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from matplotlib.container import BarContainer, ErrorbarContainer

from testbed.plots import (
    BUILTIN_EXPERT_COLOURS,
    DPI,
    FIGURE_NAMES,
    SweepFiles,
    draw_all,
    expert_colour,
    expert_colours,
    figure_accuracy_vs_budget,
    figure_dmo_effort,
    figure_expert_profile,
    figure_expert_usage,
    figure_gain,
    figure_heatmap,
    figure_heatmap_gain,
    figure_predicted_vs_measured,
    format_3g,
    gain_cells,
    method_colour,
    method_style,
    save_figure,
)
from testbed.results import (
    METHODS,
    SUMMARY_COLUMNS,
    ResultRow,
    ResultsError,
    load_live,
    load_results,
)
from testbed.story import gains
from tests.helpers.sweeps import EXPERTS, live_rows, result_rows, write_jsonl, write_sweep

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_PROMPTS = 50
CATEGORIES = ("sst2", "boolq")


# --- fixtures ------------------------------------------------------------------------------------


def rich_result_rows(*, scale_top_k2: bool = True) -> list[dict[str, Any]]:
    """result_rows() as today's sweep writes them: per-prompt hits, per-top_k energy grids.

    Every feasible row but the oracle's gets ``test_hits`` (N_PROMPTS prompts, its accuracy's
    share of hits first), and top_k = 2 has its own energy budgets (×1.5), as the sweep's
    ``budget_grid(energy, top_k, ...)`` gives.
    """
    rows = result_rows()
    for obj in rows:
        if obj["top_k"] == 2 and scale_top_k2:
            obj["energy_budget_j"] *= 1.5
        if obj["feasible"] and obj["method"] != "oracle":
            hits = round(obj["accuracy"] * N_PROMPTS)
            obj["test_hits"] = [1] * hits + [0] * (N_PROMPTS - hits)
    return rows


def rich_live_rows() -> list[dict[str, Any]]:
    """live_rows() plus refused requests, early-exit requests and a measured 0 J."""
    rows = live_rows()
    refused = {
        **rows[0],
        "item_id": "refused-1",
        "error": "FAILED_PRECONDITION",
        "correct": False,
        "latency_s": 0.0,
        "energy_j": None,
        "predicted_latency_s": None,
        "predicted_energy_j": None,
        "within_delay_budget": False,
        "within_energy_budget": None,
        "experts": [],
        "outcomes": {},
    }
    early = [
        {**rows[0], "item_id": f"early-{i}", "early_exit": True, "energy_j": 0.4 + 0.1 * i}
        for i in range(3)
    ]
    zero = {**rows[0], "item_id": "zero-joules", "energy_j": 0.0, "within_energy_budget": True}
    return [*rows, refused, {**refused, "item_id": "refused-2"}, *early, zero]


def profile_document() -> dict[str, Any]:
    def stats(base: float) -> dict[str, float]:
        return {"p50": base, "p95": 1.5 * base, "max": 2.0 * base, "mean": 1.2 * base}

    return {
        "format": "moe2-profile/1",
        "created_unix_s": 0.0,
        "hardware": {},
        "experts": {
            name: {
                "address": "",
                "model_id": name,
                "device_kind": device,
                "energy_source": "estimated",
                "energy_scope": "a model, not a measurement",
                "categories": {
                    category: {
                        "samples": 8,
                        "latency_s": stats(0.05 * 10**index * (1 + c)),
                        "energy_j": None if name == EXPERTS[0] and c else stats(0.2 * (index + 1)),
                        "accuracy": 0.5,
                    }
                    for c, category in enumerate(CATEGORIES)
                },
            }
            for index, (name, device) in enumerate(
                zip(EXPERTS, ("cpu", "orin-agx", "orin-nano"), strict=True)
            )
        },
    }


def env_document() -> dict[str, Any]:
    devices = (None, "orin-agx", "orin-nano")
    return {
        "experts": {
            name: {
                "device_kind": "cpu",
                "device_name": "AMD EPYC" if device is None else "modeled",
                "emulated_device": device,
                "emulated": device is not None,
            }
            for name, device in zip(EXPERTS, devices, strict=True)
        },
        "emulated": True,
    }


def write_full_sweep(directory: Path) -> Path:
    """A folder like today's `moe2 sweep --out`: results, live, profile, env and config."""
    directory.mkdir(parents=True, exist_ok=True)
    write_jsonl(directory / "results.jsonl", rich_result_rows())
    write_jsonl(directory / "live.jsonl", rich_live_rows())
    (directory / "profile.json").write_text(json.dumps(profile_document()), encoding="utf-8")
    (directory / "env.json").write_text(json.dumps(env_document()), encoding="utf-8")
    (directory / "config.toml").write_text('statistic = "p95"\n', encoding="utf-8")
    return directory


def _rows(objects: list[dict[str, Any]], tmp_path: Path) -> list[ResultRow]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_jsonl(tmp_path / "results.jsonl", objects)
    return load_results(tmp_path)


# --- file checks ---------------------------------------------------------------------------------


def _png_chunks(path: Path) -> dict[bytes, bytes]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    chunks: dict[bytes, bytes] = {}
    position = 8
    while position < len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        chunks.setdefault(kind, data[position + 8 : position + 8 + length])
        if kind == b"IEND":
            break
        position += 12 + length
    return chunks


def _assert_png(path: Path, *, check_pixels: bool = False) -> None:
    chunks = _png_chunks(path)
    header = chunks[b"IHDR"]
    width, height = int.from_bytes(header[:4], "big"), int.from_bytes(header[4:8], "big")
    physical = chunks[b"pHYs"]
    per_metre = int.from_bytes(physical[:4], "big")
    assert physical[8] == 1, "pHYs unit is not the metre"
    assert per_metre * 0.0254 >= 199.5, (path, per_metre * 0.0254)
    # A figure of at least ~4 x 3 inches at >= 200 dpi.
    assert width >= 800 and height >= 600, (path, width, height)
    assert width <= 6000 and height <= 4000, (path, width, height)
    if check_pixels:
        import matplotlib.image

        pixels = matplotlib.image.imread(path)
        assert pixels.std() > 0.01, f"{path} is blank"


def _assert_pdf(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"%PDF-"), path
    assert data.rstrip().endswith(b"%%EOF"), path
    assert b"/CreationDate" not in data  # deterministic
    assert len(data) > 2000


def _moe2(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "testbed.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=180,
        check=False,
    )


def _texts(figure: Any) -> str:
    """Every text of a figure (titles, labels, legends, annotations), one per line."""
    from matplotlib.text import Text

    return "\n".join(
        artist.get_text() for artist in figure.findobj(Text) if artist.get_text().strip()
    )


# --- every figure, both formats ------------------------------------------------------------------


def test_draw_all_writes_every_figure_as_png_and_pdf(tmp_path: Path) -> None:
    written = draw_all(write_full_sweep(tmp_path))
    assert [p.name for p in written] == [
        f"{name}.{ext}" for name in FIGURE_NAMES for ext in ("png", "pdf")
    ]
    for path in written:
        if path.suffix == ".png":
            _assert_png(path, check_pixels=True)
        else:
            _assert_pdf(path)
    assert not list(tmp_path.glob(".*.tmp"))
    assert DPI >= 200


def test_draw_all_is_deterministic(tmp_path: Path) -> None:
    first = {p.name: p.read_bytes() for p in draw_all(write_full_sweep(tmp_path / "a"))}
    second = {p.name: p.read_bytes() for p in draw_all(write_full_sweep(tmp_path / "b"))}
    assert first == second
    assert any(name.endswith(".pdf") for name in first)


def test_an_old_folder_without_hits_live_profile_or_env_still_draws(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="testbed.plots"):
        written = draw_all(write_sweep(tmp_path, live=False))
    names = {p.stem for p in written}
    assert names == set(FIGURE_NAMES) - {"predicted_vs_measured", "expert_profile"}
    assert "predicted-vs-measured figure skipped" in caplog.text
    assert "expert-profile figure skipped" in caplog.text
    for path in written:
        if path.suffix == ".png":
            _assert_png(path)
        else:
            _assert_pdf(path)


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
    assert {p.stem for p in written} == set(FIGURE_NAMES) - {
        "expert_usage",
        "predicted_vs_measured",
        "expert_profile",
    }
    assert "expert-usage figure skipped" in caplog.text


def test_a_malformed_profile_or_env_is_skipped_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = write_full_sweep(tmp_path)
    (folder / "profile.json").write_text('{"format": "something else"}', encoding="utf-8")
    (folder / "env.json").write_text("[1, 2]", encoding="utf-8")
    (folder / "config.toml").write_text("statistic = ", encoding="utf-8")
    rows = load_results(folder)
    with caplog.at_level(logging.WARNING, logger="testbed.plots"):
        files = SweepFiles.read(folder, rows)
        assert figure_expert_profile(files) is None
    assert files.profile is None and files.env == {} and files.statistic == "p95"
    assert files.experts == tuple(sorted(EXPERTS))  # from the rows
    assert "expert-profile figure skipped" in caplog.text
    assert figure_dmo_effort(rows, files.experts) is not None


def test_the_profile_figure_reads_profile_env_and_config(tmp_path: Path) -> None:
    folder = write_full_sweep(tmp_path)
    (folder / "config.toml").write_text('statistic = "max"\n', encoding="utf-8")
    files = SweepFiles.read(folder, load_results(folder))
    assert files.experts == EXPERTS  # env.json's order
    figure = figure_expert_profile(files)
    assert figure is not None
    text = _texts(figure)
    assert "orin-nano (emulated)" in text and "cpu, AMD EPYC" in text
    assert "marker = max" in text
    assert "boolq: energy unknown" in text


def test_live_rows_with_all_energy_unknown_still_draw(tmp_path: Path) -> None:
    objects = live_rows()
    for obj in objects:
        obj["energy_j"] = None
        obj["within_energy_budget"] = None
    write_jsonl(tmp_path / "live.jsonl", objects)
    figure = figure_predicted_vs_measured(load_live(tmp_path))
    assert figure is not None
    assert "energy unknown for every answered request" in _texts(figure)
    save_figure(figure, tmp_path / "predicted_vs_measured.png", "png")
    _assert_png(tmp_path / "predicted_vs_measured.png", check_pixels=True)


def test_svg_format_writes_svg_and_pdf_twins(tmp_path: Path) -> None:
    written = draw_all(write_full_sweep(tmp_path), "svg")
    assert {p.suffix for p in written} == {".svg", ".pdf"}
    assert len(written) == 2 * len(FIGURE_NAMES)
    for path in written:
        if path.suffix == ".svg":
            text = path.read_text(encoding="utf-8")
            assert "<svg" in text
            assert "<dc:date>" not in text
    assert not list(tmp_path.glob("*.png"))


def test_draw_all_without_results_raises(tmp_path: Path) -> None:
    with pytest.raises(ResultsError):
        draw_all(tmp_path)


def test_empty_results_draws_nothing(tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").write_text("", encoding="utf-8")
    assert draw_all(tmp_path) == []


# --- colours and styles --------------------------------------------------------------------------


def test_method_colours_are_fixed_and_distinct() -> None:
    colours = {method: method_colour(method) for method in METHODS}
    assert colours["moe2"] == "#d62728"
    assert colours["best-single"] == "#1f77b4"
    assert len(set(colours.values())) == len(METHODS)
    assert set(METHODS) >= {
        "moe2",
        "moe2-exit",
        "best-single",
        "category-best",
        "random-k",
        "uniform-ensemble",
        "greedy",
        "oracle",
    }
    # Line styles differ too, so a baseline on top of MoE² stays visible.
    assert method_style("best-single")["linestyle"] != method_style("moe2")["linestyle"]
    assert method_style("best-single")["zorder"] > method_style("moe2")["zorder"]
    assert method_style("oracle")["linestyle"] == ":"
    assert method_colour("my-new-method") == method_colour("my-new-method")
    style = method_style("moe2")
    style["color"] = "changed"
    assert method_colour("moe2") == "#d62728"  # callers get a copy


def test_expert_colours_are_stable_across_calls_sets_and_processes() -> None:
    assert expert_colours(BUILTIN_EXPERT_COLOURS) == BUILTIN_EXPERT_COLOURS
    fake = expert_colours(["fast", "medium", "slow"])
    assert fake == expert_colours(["slow", "fast", "medium", "slow"])
    assert len(set(fake.values())) == 3
    assert expert_colours(["fast", "slow"]) == {"fast": fake["fast"], "slow": fake["slow"]}
    assert fake == {name: expert_colour(name) for name in fake}
    mixed = expert_colours(["fast", "qwen2.5-0.5b", *(f"e{i}" for i in range(8))])
    assert mixed["qwen2.5-0.5b"] == BUILTIN_EXPERT_COLOURS["qwen2.5-0.5b"]
    assert len(set(mixed.values())) == len(mixed)
    # Not Python's salted hash(): another interpreter with another seed agrees.
    code = (
        "import json; from testbed.plots import expert_colours; "
        "print(json.dumps(expert_colours(['fast', 'medium', 'slow', 'x-1'])))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        timeout=60,
        check=True,
    )
    assert json.loads(other.stdout) == expert_colours(["fast", "medium", "slow", "x-1"])


def test_figures_use_the_fixed_colours(tmp_path: Path) -> None:
    from matplotlib.colors import to_hex
    from matplotlib.patches import Rectangle

    rows = _rows(rich_result_rows(), tmp_path)
    figure = figure_accuracy_vs_budget(rows, "energy")
    assert figure is not None
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert to_hex(lines["MoE²"].get_color()) == method_colour("moe2")
    assert to_hex(lines["best-single"].get_color()) == method_colour("best-single")

    def bar_colours(usage_rows: list[ResultRow]) -> dict[str, str]:
        usage = figure_expert_usage(usage_rows)
        assert usage is not None
        return {
            str(container.get_label()): to_hex(container.patches[0].get_facecolor())
            for ax in usage.axes
            for container in ax.containers
            if isinstance(container, BarContainer) and isinstance(container.patches[0], Rectangle)
        }

    full = bar_colours(rows)
    # A "sweep" of fewer experts draws the remaining ones in the same colours.
    fewer = [row for row in rows if row.energy_budget_j <= 2.0 * 1.5]
    partial = bar_colours(fewer)
    assert partial and set(partial) < set(full)
    assert all(full[name] == colour for name, colour in partial.items())
    assert full == {name: BUILTIN_EXPERT_COLOURS[name] for name in full}


# --- numbers and axes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (62.7639, "62.8"),
        (193.338, "193"),
        (0.040675, "0.0407"),
        (2.0, "2"),
        (0.5, "0.5"),
        (1234.0, "1230"),
        (0.0, "0"),
        (3.661183, "3.66"),
        (1.23e-6, "1.23e-06"),
    ],
)
def test_format_3g(value: float, text: str) -> None:
    assert format_3g(value) == text


def _budget_rows(energies: tuple[float, ...], delays: tuple[float, ...]) -> list[ResultRow]:
    rows = []
    point = 0
    for energy in energies:
        for delay in delays:
            for method, accuracy in (("moe2", 0.6), ("best-single", 0.58), ("oracle", 0.95)):
                rows.append(
                    ResultRow(
                        point=point,
                        energy_budget_j=energy,
                        delay_budget_s=delay,
                        top_k=1,
                        method=method,
                        feasible=True,
                        subset=("a",),
                        n_experts=1,
                        accuracy=accuracy + 0.001 * point,
                    )
                )
            point += 1
    return rows


def test_budget_ticks_are_rounded_and_log_when_they_span_a_decade() -> None:
    rows = _budget_rows((6.27639, 62.7639, 193.338), (0.5, 0.6))
    figure = figure_accuracy_vs_budget(rows, "energy")
    assert figure is not None
    ax = figure.axes[0]
    assert ax.get_xscale() == "log"
    figure.canvas.draw()
    labels = [label.get_text() for label in ax.get_xticklabels() if label.get_text()]
    assert labels == ["6.28", "62.8", "193"]
    delay = figure_accuracy_vs_budget(rows, "delay")
    assert delay is not None
    assert delay.axes[0].get_xscale() == "linear"
    close = figure_accuracy_vs_budget(_budget_rows((1.0, 1.001, 2.0), (1.0,)), "energy")
    assert close is not None
    close.canvas.draw()
    texts = [label.get_text() for label in close.axes[0].get_xticklabels()]
    assert texts.count("") == 1  # the label too close to its neighbour is left out


def test_the_oracle_does_not_set_the_accuracy_range(tmp_path: Path) -> None:
    rows = _rows(rich_result_rows(), tmp_path)
    figure = figure_accuracy_vs_budget(rows, "energy")
    assert figure is not None
    _, top = figure.axes[0].get_ylim()
    real = [
        100 * row.accuracy
        for row in rows
        if row.method != "oracle" and row.accuracy is not None and row.feasible
    ]
    oracle = [100 * row.accuracy for row in rows if row.method == "oracle" and row.accuracy]
    assert max(real) < top < max(oracle)
    assert "above the range" in _texts(figure)


# --- gains ---------------------------------------------------------------------------------------


def test_gain_figure_draws_the_bootstrap_intervals(tmp_path: Path) -> None:
    rows = _rows(rich_result_rows(), tmp_path)
    expected = gains(rows)
    assert expected
    figure = figure_gain(rows)
    assert figure is not None
    containers = [
        c for ax in figure.axes for c in ax.containers if isinstance(c, ErrorbarContainer)
    ]
    assert len(containers) == len(expected)
    spans = set()
    for container in containers:
        (bars,) = container.lines[2]
        for segment in bars.get_segments():
            spans.add((round(float(segment[0][1]), 6), round(float(segment[1][1]), 6)))
    for gain in expected:
        assert (round(gain.low_points, 6), round(gain.high_points, 6)) in spans
        assert gain.low_points <= gain.gain_points <= gain.high_points
    assert "95 % paired-bootstrap interval" in _texts(figure)


def test_gain_figure_without_hits_shows_differences_without_intervals(tmp_path: Path) -> None:
    rows = _rows(result_rows(), tmp_path)
    cells = gain_cells(rows)
    assert cells and all(cell.low is None for cell in cells.values())
    loosest = cells[8]
    assert loosest.gain == pytest.approx(8.0)  # 74 % against 66 %
    figure = figure_gain(rows)
    assert figure is not None
    assert not [c for ax in figure.axes for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert "no intervals" in _texts(figure)


def _panels(figure: Any) -> list[Any]:
    return [ax for ax in figure.axes if ax.get_title().startswith("top_k")]


def _columns(figure: Any) -> list[list[str]]:
    figure.canvas.draw()
    return [[label.get_text() for label in ax.get_xticklabels()] for ax in _panels(figure)]


def test_gain_heatmap_is_centred_and_labels_per_top_k_grids(tmp_path: Path) -> None:
    from matplotlib.collections import QuadMesh

    rows = _rows(rich_result_rows(), tmp_path)
    figure = figure_heatmap_gain(rows)
    assert figure is not None
    columns = _columns(figure)
    meshes = [c for ax in _panels(figure) for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(meshes) == 2
    for mesh in meshes:
        low, high = mesh.get_clim()
        assert low is not None and high is not None
        assert float(low) == pytest.approx(-float(high))
        assert mesh.get_cmap().name == "RdBu"
    # top_k = 1 sweeps 1, 2, 4 J and top_k = 2 sweeps 1.5, 3, 6 J: each panel its own,
    # and it says so.
    assert columns == [["1", "2", "4"], ["1.5", "3", "6"]]
    text = _texts(figure)
    assert text.count("own energy grid") == 2
    assert "each panel has its own energy columns" in text
    assert "MoE² − best single (accuracy points)" in text  # the colour bar's label
    assert "+8.0" in text  # the loosest top_k = 1 point
    assert "[+" in text  # its interval


def test_heatmaps_share_columns_when_the_top_k_grids_agree(tmp_path: Path) -> None:
    same = _rows(rich_result_rows(scale_top_k2=False), tmp_path / "same")
    for figure in (figure_heatmap(same), figure_heatmap_gain(same)):
        assert figure is not None
        columns = _columns(figure)
        assert columns == [["1", "2", "4"], ["1", "2", "4"]]
        assert "own energy grid" not in _texts(figure)
        assert "same budgets in every panel" in _texts(figure)
    # One budget apart: the union, with the cells a panel did not sweep marked.
    objects = rich_result_rows(scale_top_k2=False)
    for obj in objects:
        if obj["top_k"] == 2 and obj["energy_budget_j"] == 4.0:
            obj["energy_budget_j"] = 6.0
    near = _rows(objects, tmp_path / "near")
    figure = figure_heatmap(near)
    assert figure is not None
    assert _columns(figure) == [["1", "2", "4", "6"], ["1", "2", "4", "6"]]
    text = _texts(figure)
    assert "not swept" in text and "infeasible" in text


# --- live, effort --------------------------------------------------------------------------------


def test_predicted_vs_measured_is_log_and_counts_refused_and_early_exit(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "live.jsonl", rich_live_rows())
    live = load_live(tmp_path)
    figure = figure_predicted_vs_measured(live)
    assert figure is not None
    latency_ax, energy_ax = figure.axes[:2]
    for ax in (latency_ax, energy_ax):
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    text = _texts(figure)
    assert "2 refused" in text
    assert "FAILED_PRECONDITION" in text
    assert "early exit" in text
    assert "measured 0" in text
    assert "point 8: 4 J, 2 s, k = 1" in text


def test_dmo_effort_states_the_exhaustive_count(tmp_path: Path) -> None:
    rows = _rows(rich_result_rows(), tmp_path)
    figure = figure_dmo_effort(rows, EXPERTS)
    assert figure is not None
    text = _texts(figure)
    assert "2^N − 1 = 7 (N = 3)" in text
    assert "at least" in text


# --- the CLI -------------------------------------------------------------------------------------


def test_cli_plot_draws_figures_and_prints_the_table(tmp_path: Path) -> None:
    sweep = write_full_sweep(tmp_path / "sweep")
    result = _moe2("plot", str(sweep))
    assert result.returncode == 0, result.stderr
    for name in FIGURE_NAMES:
        for ext in ("png", "pdf"):
            assert str(sweep / f"{name}.{ext}") in result.stdout
        _assert_png(sweep / f"{name}.png")
    assert "top_k=1" in result.stdout
    assert "top_k=2" in result.stdout
    assert "+8.0" in result.stdout  # moe2 vs best-single at the loosest top_k=1 point
    header = (sweep / "summary.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == ",".join(SUMMARY_COLUMNS)


def test_cli_plot_keeps_an_existing_summary_and_writes_svg(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path / "sweep")
    (sweep / "summary.csv").write_text("from the sweep\n", encoding="utf-8")
    result = _moe2("plot", str(sweep), "--format", "svg")
    assert result.returncode == 0, result.stderr
    assert "torn last line" in result.stderr  # a warning, not an error
    assert (sweep / "summary.csv").read_text(encoding="utf-8") == "from the sweep\n"
    drawn = len(FIGURE_NAMES) - 1  # no profile.json: no expert profile
    assert len(list(sweep.glob("*.svg"))) == drawn
    assert len(list(sweep.glob("*.pdf"))) == drawn
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
