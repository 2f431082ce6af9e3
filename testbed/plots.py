"""The figures of a budget sweep, drawn from its result files alone (architecture.md §6).

Every figure is a pure function of ``results.jsonl`` / ``live.jsonl``, so ``moe2 plot DIR``
redraws them after the fact. matplotlib is imported inside the functions (``moe2 --help`` stays
cheap) and only through ``matplotlib.figure.Figure`` with the Agg canvas, never ``pyplot``: no
global backend switch, no figure registry to leak, safe next to other code in one process.

A figure whose inputs are missing (no live.jsonl, no ``expert_usage`` field, no feasible MoE²
row) is skipped with a logged warning rather than failing the others. Output is deterministic:
no timestamps or random ids in the files. Each figure carries a footnote naming the energy
sources the rows recorded, so an estimated or emulated energy never reads as a measurement.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from testbed.results import (
    LiveRow,
    ResultRow,
    energy_footnote,
    load_live,
    load_results,
    ordered_methods,
    overall_adherence,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

ImageFormat = Literal["png", "svg"]

DPI = 100

FIGURE_NAMES: tuple[str, ...] = (
    "accuracy_vs_energy",
    "accuracy_vs_delay",
    "heatmap_moe2",
    "predicted_vs_measured",
    "expert_usage",
)

# Fixed colours per method so every figure of every run reads the same way.
_METHOD_STYLE: dict[str, dict[str, Any]] = {
    "moe2": {"color": "#d62728", "linewidth": 2.4, "marker": "o", "zorder": 5},
    "best-single": {"color": "#1f77b4", "marker": "s"},
    "random-k": {"color": "#7f7f7f", "marker": "v"},
    "uniform-ensemble": {"color": "#2ca02c", "marker": "^"},
    "greedy": {"color": "#9467bd", "marker": "D"},
    "oracle": {"color": "#000000", "linestyle": "--", "marker": "x"},
}
_METHOD_LABEL = {"moe2": "MoE²", "oracle": "oracle (upper bound)"}


def draw_all(directory: str | os.PathLike[str], image_format: ImageFormat = "png") -> list[Path]:
    """Draw every figure of a finished (or interrupted) sweep into its folder.

    Args:
        directory: The sweep's output folder, holding ``results.jsonl`` and optionally
            ``live.jsonl``.
        image_format: ``png`` (default) or ``svg``.

    Returns:
        The paths written, in :data:`FIGURE_NAMES` order; skipped figures are absent.

    Raises:
        testbed.results.ResultsError: results.jsonl is missing or has an invalid line, or
            live.jsonl has an invalid line.
    """
    folder = Path(directory)
    return draw_figures(folder, load_results(folder), load_live(folder), image_format)


def draw_figures(
    directory: str | os.PathLike[str],
    rows: Sequence[ResultRow],
    live: Sequence[LiveRow],
    image_format: ImageFormat = "png",
) -> list[Path]:
    """Draw every figure from rows already loaded (what :func:`draw_all` does after reading).

    Args:
        directory: Folder the figures are written into.
        rows: Rows of results.jsonl.
        live: Rows of live.jsonl (may be empty: that figure is then skipped).
        image_format: ``png`` (default) or ``svg``.

    Returns:
        The paths written, in :data:`FIGURE_NAMES` order; skipped figures are absent.
    """
    folder = Path(directory)
    if not rows:
        logger.warning("%s/results.jsonl has no rows: no figures drawn", folder)
        return []
    drawers: dict[str, Callable[[], Figure | None]] = {
        "accuracy_vs_energy": lambda: figure_accuracy_vs_budget(rows, "energy"),
        "accuracy_vs_delay": lambda: figure_accuracy_vs_budget(rows, "delay"),
        "heatmap_moe2": lambda: figure_heatmap(rows),
        "predicted_vs_measured": lambda: figure_predicted_vs_measured(live),
        "expert_usage": lambda: figure_expert_usage(rows),
    }
    written: list[Path] = []
    for name in FIGURE_NAMES:
        figure = drawers[name]()
        if figure is None:
            continue
        path = folder / f"{name}.{image_format}"
        save_figure(figure, path, image_format)
        written.append(path)
    return written


def save_figure(figure: Figure, path: Path, image_format: ImageFormat) -> None:
    """Write a figure deterministically (no date, fixed SVG ids) via a temp file + rename.

    Args:
        figure: The figure.
        path: Destination.
        image_format: ``png`` or ``svg``.
    """
    import matplotlib

    metadata: dict[str, str | None] = {"Software": None}
    if image_format == "svg":
        metadata = {"Date": None, "Creator": None}
    temporary = path.with_name(f".{path.name}.tmp")
    with matplotlib.rc_context({"svg.hashsalt": "moe2", "svg.fonttype": "path"}):
        figure.savefig(temporary, format=image_format, dpi=DPI, metadata=metadata)
    os.replace(temporary, path)


# --- helpers -----------------------------------------------------------------------------------


def _new_figure(width_in: float, height_in: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _footnote(figure: Figure, text: str) -> None:
    # Keep a strip at the bottom free of axes so the footnote never overlaps a label.
    strip = 0.24 / figure.get_figheight()
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    engine = figure.get_layout_engine()
    if isinstance(engine, ConstrainedLayoutEngine):
        engine.set(rect=(0.0, strip, 1.0, 1.0 - strip))
    figure.text(0.005, 0.005, text, fontsize=8, color="#555555", ha="left", va="bottom")


def _results_footnote(rows: Sequence[ResultRow]) -> str:
    sources = [source for row in rows for source in row.energy_sources]
    return energy_footnote(sources, [row.emulated for row in rows])


def _accuracy_pct(row: ResultRow | None) -> float:
    if row is None or not row.feasible or row.accuracy is None:
        return math.nan
    return 100.0 * row.accuracy


def _top_ks(rows: Iterable[ResultRow]) -> list[int]:
    return sorted({row.top_k for row in rows})


def _label(method: str) -> str:
    return _METHOD_LABEL.get(method, method)


# --- accuracy against one budget ---------------------------------------------------------------


def figure_accuracy_vs_budget(
    rows: Sequence[ResultRow], axis: Literal["energy", "delay"]
) -> Figure | None:
    """Accuracy against one budget with the other held at its loosest; a subplot per top_k.

    Infeasible points are gaps in a method's line (there is no accuracy to show).

    Args:
        rows: All result rows.
        axis: ``energy`` (x = energy budget, at the loosest delay budget) or ``delay``.

    Returns:
        The figure, or ``None`` when there is nothing to draw.
    """
    top_ks = _top_ks(rows)
    methods = ordered_methods(rows)
    if not top_ks or not methods:
        logger.warning("no result rows: accuracy-vs-%s figure skipped", axis)
        return None
    figure = _new_figure(5.2 * len(top_ks) + 1.8, 4.4)
    axes = figure.subplots(1, len(top_ks), sharey=True, squeeze=False)[0]
    for ax, top_k in zip(axes, top_ks, strict=True):
        selected = [row for row in rows if row.top_k == top_k]
        if axis == "energy":
            fixed = max(row.delay_budget_s for row in selected)
            line_rows = [row for row in selected if row.delay_budget_s == fixed]
            ax.set_xlabel("energy budget per request (J)")
            ax.set_title(f"top_k = {top_k}, delay budget {fixed:g} s (loosest)")
        else:
            fixed = max(row.energy_budget_j for row in selected)
            line_rows = [row for row in selected if row.energy_budget_j == fixed]
            ax.set_xlabel("delay budget per request (s)")
            ax.set_title(f"top_k = {top_k}, energy budget {fixed:g} J (loosest)")
        for method in methods:
            points = sorted(
                (
                    row.energy_budget_j if axis == "energy" else row.delay_budget_s,
                    _accuracy_pct(row),
                )
                for row in line_rows
                if row.method == method
            )
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            style = {"linewidth": 1.5, "markersize": 5, **_METHOD_STYLE.get(method, {})}
            ax.plot(xs, ys, label=_label(method), **style)
        budgets = sorted(
            {row.energy_budget_j if axis == "energy" else row.delay_budget_s for row in line_rows}
        )
        ax.set_xticks(budgets, [f"{value:g}" for value in budgets])
        for budget in budgets:
            at_budget = [
                row
                for row in line_rows
                if (row.energy_budget_j if axis == "energy" else row.delay_budget_s) == budget
            ]
            if not any(row.feasible for row in at_budget):
                # Nothing to draw there: say so instead of leaving an unexplained blank.
                ax.axvline(budget, color="#9a9a9a", linestyle=":", linewidth=1.0)
                ax.text(
                    budget,
                    0.5,
                    "  no feasible subset",
                    transform=ax.get_xaxis_transform(),
                    rotation=90,
                    ha="left",
                    va="center",
                    fontsize=8,
                    color="#666666",
                )
        span = budgets[-1] - budgets[0] if len(budgets) > 1 else max(abs(budgets[0]), 1.0)
        ax.set_xlim(budgets[0] - 0.06 * span, budgets[-1] + 0.06 * span)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelleft=True)
    axes[0].set_ylabel("test accuracy (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right center", fontsize=9, frameon=False)
    what = "energy" if axis == "energy" else "delay"
    figure.suptitle(f"Accuracy against the {what} budget")
    _footnote(figure, _results_footnote(rows))
    return figure


# --- heat map ----------------------------------------------------------------------------------


def figure_heatmap(rows: Sequence[ResultRow], method: str = "moe2") -> Figure | None:
    """A method's accuracy over the (energy × delay) grid, annotated; a subplot per top_k.

    Infeasible cells are grey and hatched with "infeasible"; grid cells with no row, or a
    feasible row without an accuracy, read "n/a".

    Args:
        rows: All result rows.
        method: Which method to map (default MoE²).

    Returns:
        The figure, or ``None`` when the method has no rows.
    """
    import numpy as np

    selected_all = [row for row in rows if row.method == method]
    if not selected_all:
        logger.warning("no %s rows: heat-map skipped", method)
        return None
    top_ks = _top_ks(selected_all)
    figure = _new_figure(4.8 * len(top_ks) + 1.2, 4.4)
    axes = figure.subplots(1, len(top_ks), squeeze=False)[0]
    feasible_values = [_accuracy_pct(row) for row in selected_all]
    finite = [value for value in feasible_values if not math.isnan(value)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 100.0)
    if high - low < 1.0:
        low, high = low - 0.5, high + 0.5
    import matplotlib

    colormap = matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9")
    image = None
    for ax, top_k in zip(axes, top_ks, strict=True):
        selected = [row for row in selected_all if row.top_k == top_k]
        energies = sorted({row.energy_budget_j for row in selected})
        delays = sorted({row.delay_budget_s for row in selected})
        grid = np.full((len(delays), len(energies)), np.nan)
        # 0: no accuracy recorded, 1: infeasible, 2: an accuracy to show.
        state = np.zeros((len(delays), len(energies)), dtype=int)
        for row in selected:
            i, j = delays.index(row.delay_budget_s), energies.index(row.energy_budget_j)
            value = _accuracy_pct(row)
            grid[i, j] = value
            state[i, j] = 1 if not row.feasible else (0 if math.isnan(value) else 2)
        image = ax.imshow(
            np.ma.masked_invalid(grid),
            origin="lower",
            cmap=colormap,
            vmin=low,
            vmax=high,
            aspect="auto",
        )
        midpoint = (low + high) / 2.0
        for i in range(len(delays)):
            for j in range(len(energies)):
                if state[i, j] == 2:
                    colour = "black" if grid[i, j] > midpoint else "white"
                    ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", color=colour)
                else:
                    text = "infeasible" if state[i, j] == 1 else "n/a"
                    ax.text(j, i, text, ha="center", va="center", color="#444444", fontsize=8)
                    if state[i, j] == 1:
                        ax.add_patch(_hatched_cell(j, i))
        ax.set_xticks(range(len(energies)), [f"{value:g}" for value in energies])
        ax.set_yticks(range(len(delays)), [f"{value:g}" for value in delays])
        ax.set_xlabel("energy budget per request (J)")
        ax.set_ylabel("delay budget per request (s)")
        ax.set_title(f"top_k = {top_k}")
    if image is not None:
        colorbar = figure.colorbar(image, ax=list(axes), shrink=0.9)
        colorbar.set_label(f"{_label(method)} test accuracy (%)")
    figure.suptitle(f"{_label(method)} accuracy over the budget grid")
    _footnote(figure, _results_footnote(rows))
    return figure


def _hatched_cell(column: int, row: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle(
        (column - 0.5, row - 0.5), 1.0, 1.0, fill=False, hatch="//", edgecolor="#9a9a9a", lw=0
    )


# --- predicted against measured ----------------------------------------------------------------


def _fraction_text(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.0f}%"


def figure_predicted_vs_measured(live: Sequence[LiveRow]) -> Figure | None:
    """Measured against predicted worst-case latency and energy, one dot per live request.

    The y = x line is where the prediction is exact; dots below it mean the worst-case
    prediction held. Each budget point's budget is a dashed horizontal line in its colour.
    Requests with unknown energy are left out of the energy panel (never drawn at 0).

    Args:
        live: Rows of live.jsonl.

    Returns:
        The figure, or ``None`` when there are no live rows.
    """
    summary = overall_adherence(live)
    if summary is None:
        logger.warning("no live.jsonl rows: predicted-vs-measured figure skipped")
        return None
    import matplotlib
    from matplotlib.lines import Line2D

    points = sorted({row.point for row in live})
    palette = matplotlib.colormaps["tab10"]
    colour = {point: palette(index % 10) for index, point in enumerate(points)}
    first = {point: next(row for row in live if row.point == point) for point in points}
    figure = _new_figure(11.0, 5.0)
    latency_ax, energy_ax = figure.subplots(1, 2, squeeze=True)
    panels: list[tuple[Any, str, str, Callable[[LiveRow], float | None], Any, Any]] = [
        (
            latency_ax,
            "latency",
            "s",
            lambda row: row.latency_s,
            lambda row: row.predicted_latency_s,
            lambda row: row.delay_budget_s,
        ),
        (
            energy_ax,
            "energy",
            "J",
            lambda row: row.energy_j,
            lambda row: row.predicted_energy_j,
            lambda row: row.energy_budget_j,
        ),
    ]
    for ax, quantity, unit, measured_of, predicted_of, budget_of in panels:
        extent: list[float] = []
        for point in points:
            pairs = [
                (predicted_of(row), measured_of(row))
                for row in live
                if row.point == point
                and measured_of(row) is not None
                and predicted_of(row) is not None
            ]
            budget = budget_of(first[point])
            extent.append(budget)
            ax.axhline(budget, color=colour[point], linestyle="--", linewidth=1.0, alpha=0.8)
            if not pairs:
                continue
            xs, ys = zip(*pairs, strict=True)
            extent.extend(xs)
            extent.extend(ys)
            row = first[point]
            k_text = f", k={row.top_k}" if row.top_k is not None else ""
            ax.scatter(
                xs,
                ys,
                s=18,
                alpha=0.75,
                color=colour[point],
                label=f"point {point}: {row.energy_budget_j:g} J, {row.delay_budget_s:g} s{k_text}",
            )
        top = max(extent) * 1.08 if extent else 1.0
        ax.plot([0.0, top], [0.0, top], color="black", linewidth=0.8, label="y = x (exact)")
        ax.set_xlim(0.0, top)
        ax.set_ylim(0.0, top)
        ax.set_xlabel(f"predicted worst-case {quantity} ({unit})")
        ax.set_ylabel(f"measured {quantity} ({unit})")
        ax.grid(True, alpha=0.3)
        if not any(measured_of(row) is not None for row in live):
            ax.text(
                0.5,
                0.5,
                f"{quantity} unknown for every request",
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="#444444",
            )
    latency_ax.set_title(
        f"latency: {_fraction_text(summary.within_delay_fraction)} of "
        f"{summary.requests} within the delay budget",
        fontsize=10,
    )
    energy_ax.set_title(
        f"energy: {_fraction_text(summary.within_energy_fraction)} of "
        f"{summary.energy_known} with known energy within the budget",
        fontsize=10,
    )
    handles, labels = latency_ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color="#555555", linestyle="--", linewidth=1.0))
    labels.append("budget (colour of its point)")
    figure.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)
    figure.suptitle("Predicted worst case against measured, per live request")
    _footnote(
        figure,
        energy_footnote([row.energy_source or "" for row in live], [row.emulated for row in live])
        + f"; {summary.requests - summary.energy_known} request(s) with unknown energy left out",
    )
    return figure


# --- expert usage ------------------------------------------------------------------------------


def _tightness(row: ResultRow, max_energy_j: float, max_delay_s: float) -> tuple[float, ...]:
    # Budgets normalised by their largest value so joules and seconds weigh alike.
    energy = row.energy_budget_j / max_energy_j if max_energy_j > 0 else 0.0
    delay = row.delay_budget_s / max_delay_s if max_delay_s > 0 else 0.0
    return (energy + delay, row.energy_budget_j, row.delay_budget_s, float(row.point))


def figure_expert_usage(rows: Sequence[ResultRow]) -> Figure | None:
    """Per category, how often MoE² dispatched each expert (stacked bars); a row per top_k.

    Left: the loosest budget point (largest energy and delay budget). Right: the tightest
    feasible one (smallest sum of the budgets, each divided by its largest value).

    Args:
        rows: All result rows.

    Returns:
        The figure, or ``None`` when no MoE² row records ``expert_usage``.
    """
    import numpy as np

    moe2 = [row for row in rows if row.method == "moe2" and row.feasible and row.expert_usage]
    if not moe2:
        logger.warning("no feasible moe2 row with expert_usage: expert-usage figure skipped")
        return None
    top_ks = _top_ks(moe2)
    panels: list[tuple[int, list[tuple[str, ResultRow]]]] = []
    for top_k in top_ks:
        selected = [row for row in moe2 if row.top_k == top_k]
        max_energy = max(row.energy_budget_j for row in selected)
        max_delay = max(row.delay_budget_s for row in selected)
        loosest = max(selected, key=lambda row: _tightness(row, max_energy, max_delay))
        tightest = min(selected, key=lambda row: _tightness(row, max_energy, max_delay))
        panels.append((top_k, [("loosest", loosest), ("tightest feasible", tightest)]))
    experts = sorted(
        {expert for row in moe2 for counts in row.expert_usage.values() for expert in counts}
    )
    import matplotlib

    palette = matplotlib.colormaps["tab20" if len(experts) > 10 else "tab10"]
    colour = {expert: palette(index % palette.N) for index, expert in enumerate(experts)}
    figure = _new_figure(11.0, 3.8 * len(panels) + 0.6)
    axes = figure.subplots(len(panels), 2, squeeze=False)
    for (top_k, cases), row_axes in zip(panels, axes, strict=True):
        for (which, row), ax in zip(cases, row_axes, strict=True):
            categories = sorted(row.expert_usage)
            bottom = np.zeros(len(categories))
            for expert in experts:
                counts = np.array(
                    [row.expert_usage[category].get(expert, 0) for category in categories],
                    dtype=float,
                )
                if not counts.any():
                    continue
                ax.bar(categories, counts, bottom=bottom, color=colour[expert], label=expert)
                bottom += counts
            ax.set_ylabel("dispatches (requests)")
            ax.set_xlabel("category")
            accuracy = "-" if row.accuracy is None else f"{100.0 * row.accuracy:.1f}%"
            ax.set_title(
                f"top_k = {top_k}, {which}: {row.energy_budget_j:g} J, "
                f"{row.delay_budget_s:g} s (point {row.point}, acc. {accuracy})",
                fontsize=10,
            )
            ax.grid(True, axis="y", alpha=0.3)
    from matplotlib.patches import Patch

    handles = [Patch(color=colour[expert], label=expert) for expert in experts]
    figure.legend(handles=handles, loc="outside right center", fontsize=9, frameon=False)
    figure.suptitle("Experts dispatched by MoE², per category")
    _footnote(figure, _results_footnote(rows))
    return figure
