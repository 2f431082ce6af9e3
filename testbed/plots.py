"""The figures of a budget sweep, drawn from its output folder alone (docs/architecture.md §6.2).

Every figure is a pure function of the folder's files (``results.jsonl``, ``live.jsonl``,
``profile.json``, ``env.json``, ``config.toml``), so ``moe2 plot DIR`` redraws them after the
fact. matplotlib is imported inside the functions (``moe2 --help`` stays cheap) and only through
``matplotlib.figure.Figure`` with the Agg canvas, never ``pyplot``: no global backend switch, no
figure registry to leak, safe next to other code in one process.

Each figure is written twice: as a raster image (PNG at :data:`DPI` dots per inch, or SVG) and as
a vector PDF twin with the same stem. A figure whose inputs are missing (no live.jsonl, no
``expert_usage`` field, no profile.json, no feasible MoE² row) is skipped with a logged warning
rather than failing the others; folders written before ``test_hits`` existed still draw (the
gain figures then show point differences without intervals and say so). Output is
deterministic: no timestamps or random ids in the files. Each figure carries a footnote naming
the energy sources the rows recorded, so an estimated or emulated energy never reads as a
measurement.

Reading aids shared by every figure: a method and an expert have one colour in every figure of
every sweep (:func:`method_style`, :func:`expert_colours`); budgets are printed with three
significant digits (:func:`format_3g`) and drawn on a log axis when they span more than a
decade; the oracle (an upper bound no router can reach) never sets an accuracy axis' range.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tomllib
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edge_node.files import atomic_writer
from testbed.results import (
    LiveRow,
    ResultRow,
    energy_footnote,
    load_live,
    load_results,
    ordered_methods,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from orchestrator.profiles import Profile

logger = logging.getLogger(__name__)

ImageFormat = Literal["png", "svg"]
"""The raster/primary format ``moe2 plot --format`` chooses; a PDF twin is always written."""

SaveFormat = Literal["png", "svg", "pdf"]

DPI = 200
"""Resolution of the PNG figures, dots per inch (also written into the PNG's pHYs chunk)."""

VECTOR_FORMAT: SaveFormat = "pdf"

REFUSED = "FAILED_PRECONDITION"
"""``LiveRow.error`` of a request the orchestrator refused: no subset met the budgets online."""

PROFILE_FILE = "profile.json"
ENV_FILE = "env.json"
CONFIG_FILE = "config.toml"

FIGURE_NAMES: tuple[str, ...] = (
    "accuracy_vs_energy",
    "accuracy_vs_delay",
    "heatmap_moe2",
    "predicted_vs_measured",
    "expert_usage",
    "gain_over_best_single",
    "heatmap_gain",
    "expert_profile",
    "subset_by_budget",
    "dmo_effort",
)

# --- fixed colours and styles --------------------------------------------------------------------

# One style per method, the same in every figure of every sweep. MoE² is the thick line at the
# bottom; the baselines are thinner and drawn above it, dashed or dotted with their own markers,
# so a baseline that coincides with MoE² stays visible on top of it.
_METHOD_STYLES: dict[str, dict[str, Any]] = {
    "moe2": {
        "color": "#d62728",
        "linestyle": "-",
        "linewidth": 3.2,
        "marker": "o",
        "markersize": 7,
        "zorder": 3,
    },
    "moe2-exit": {
        "color": "#ff7f0e",
        "linestyle": (0, (6, 2, 1, 2)),
        "linewidth": 1.6,
        "marker": "P",
        "markersize": 6,
        "zorder": 4,
    },
    "best-single": {
        "color": "#1f77b4",
        "linestyle": (0, (4, 2)),
        "linewidth": 1.8,
        "marker": "s",
        "markersize": 6,
        "markerfacecolor": "white",
        "markeredgewidth": 1.5,
        "zorder": 6,
    },
    "category-best": {
        "color": "#17becf",
        "linestyle": (0, (3, 1, 1, 1)),
        "linewidth": 1.4,
        "marker": "<",
        "markersize": 5,
        "zorder": 5,
    },
    "random-k": {
        "color": "#7f7f7f",
        "linestyle": (0, (1, 1.5)),
        "linewidth": 1.4,
        "marker": "v",
        "markersize": 5,
        "zorder": 5,
    },
    "uniform-ensemble": {
        "color": "#2ca02c",
        "linestyle": (0, (7, 2)),
        "linewidth": 1.4,
        "marker": "^",
        "markersize": 5,
        "zorder": 5,
    },
    "greedy": {
        "color": "#9467bd",
        "linestyle": "-.",
        "linewidth": 1.4,
        "marker": "D",
        "markersize": 4.5,
        "zorder": 5,
    },
    "oracle": {
        "color": "#8c8c8c",
        "linestyle": ":",
        "linewidth": 1.2,
        "marker": "x",
        "markersize": 4,
        "alpha": 0.8,
        "zorder": 2,
    },
}
_OTHER_METHOD_COLOURS: tuple[str, ...] = (
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#393b79",
    "#637939",
    "#843c39",
)
_METHOD_LABELS = {
    "moe2": "MoE²",
    "moe2-exit": "MoE² + early exit",
    "oracle": "oracle (upper bound)",
}

BUILTIN_EXPERT_COLOURS: dict[str, str] = {
    "smollm2-135m": "#4e79a7",
    "gemma3-270m": "#f28e2b",
    "qwen2.5-0.5b": "#59a14f",
    "qwen2.5-1.5b": "#b07aa1",
}
"""Fixed colours of the built-in experts."""

# Colours for other experts, picked by a stable hash of the name (never Python's salted hash()).
_EXPERT_PALETTE: tuple[str, ...] = (
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#ff9da7",
    "#9c755f",
    "#1b9e77",
    "#d95f02",
    "#7570b3",
    "#e7298a",
    "#66a61e",
    "#a6761d",
    "#17becf",
)

_CATEGORY_PALETTE: tuple[str, ...] = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def _stable_index(name: str, size: int) -> int:
    return zlib.crc32(name.encode("utf-8")) % size


def method_style(method: str) -> dict[str, Any]:
    """The line style of a method (colour, dashes, marker, width, z-order), fixed across sweeps.

    Args:
        method: A method name; the known ones (:data:`testbed.results.METHODS`) have a fixed
            style, any other gets a solid line in a colour picked by a stable hash of its name.

    Returns:
        Keyword arguments for ``Axes.plot`` (a fresh dict: callers may change it).
    """
    known = _METHOD_STYLES.get(method)
    if known is not None:
        return dict(known)
    colour = _OTHER_METHOD_COLOURS[_stable_index(method, len(_OTHER_METHOD_COLOURS))]
    return {
        "color": colour,
        "linestyle": "-",
        "linewidth": 1.4,
        "marker": "*",
        "markersize": 6,
        "zorder": 5,
    }


def method_colour(method: str) -> str:
    """The colour of a method in every figure (see :func:`method_style`)."""
    return str(method_style(method)["color"])


def expert_colour(name: str) -> str:
    """An expert's colour: the fixed one of a built-in expert, else a stable hash of the name."""
    fixed = BUILTIN_EXPERT_COLOURS.get(name)
    if fixed is not None:
        return fixed
    return _EXPERT_PALETTE[_stable_index(name, len(_EXPERT_PALETTE))]


def _distinct_colours(
    names: Iterable[str], colour_of: Callable[[str], str], palette: Sequence[str]
) -> dict[str, str]:
    unique = sorted(set(names))
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in unique:
        colour = colour_of(name)
        if colour in used and len(used) < len(palette):
            # Two names of one figure hash alike: the later name (sorted) takes the next free
            # colour, so the choice depends on the set of names only, never on their order.
            start = palette.index(colour) if colour in palette else -1
            for step in range(1, len(palette) + 1):
                candidate = palette[(start + step) % len(palette)]
                if candidate not in used:
                    colour = candidate
                    break
        out[name] = colour
        used.add(colour)
    return out


def expert_colours(names: Iterable[str]) -> dict[str, str]:
    """Colours for the experts of one figure: :func:`expert_colour`, made distinct.

    Built-in experts keep their fixed colour; another expert keeps its hashed colour unless an
    expert earlier in sorted order of the same set already has it (then it takes the next free
    palette colour). The mapping depends only on the set of names, so it is the same in every
    figure and every sweep of those experts.

    Args:
        names: Expert names (duplicates and order do not matter).

    Returns:
        ``{name: colour}`` in sorted name order.
    """
    unique = sorted(set(names))
    builtin = {
        name: BUILTIN_EXPERT_COLOURS[name] for name in unique if name in BUILTIN_EXPERT_COLOURS
    }
    taken = set(builtin.values())
    palette = [colour for colour in _EXPERT_PALETTE if colour not in taken]
    others = _distinct_colours(
        (name for name in unique if name not in builtin),
        lambda name: expert_colour(name) if expert_colour(name) in palette else palette[0],
        palette or list(_EXPERT_PALETTE),
    )
    merged = {**builtin, **others}
    return {name: merged[name] for name in unique}


def _category_colours(categories: Iterable[str]) -> dict[str, str]:
    return _distinct_colours(
        categories,
        lambda name: _CATEGORY_PALETTE[_stable_index(name, len(_CATEGORY_PALETTE))],
        _CATEGORY_PALETTE,
    )


def _label(method: str) -> str:
    return _METHOD_LABELS.get(method, method)


# --- numbers and axes ----------------------------------------------------------------------------


def format_3g(value: float) -> str:
    """A number rounded to three significant digits, without exponent for everyday magnitudes.

    ``62.7639 -> "62.8"``, ``193.338 -> "193"``, ``0.040675 -> "0.0407"``, ``2.0 -> "2"``,
    ``1234 -> "1230"``; below 1e-4 or from 1e6 on it falls back to ``"1.23e-05"``.

    Args:
        value: Any float.

    Returns:
        The text.
    """
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    rounded = float(f"{value:.3g}")
    magnitude = math.floor(math.log10(abs(rounded)))
    if not -4 <= magnitude < 6:
        return f"{rounded:.2e}"
    text = f"{rounded:.{max(0, 2 - magnitude)}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _wants_log(values: Sequence[float]) -> bool:
    positive = [value for value in values if value > 0]
    return len(positive) == len(values) and len(values) >= 2 and max(values) > 10 * min(values)


def _budget_axis(ax: Axes, values: Iterable[float], which: Literal["x", "y"] = "x") -> None:
    """Ticks at exactly the budget values, three significant digits, log when > a decade.

    Labels never collide: they are rotated when there are many or they sit close together, and
    a label closer than ~3 % of the axis to the previous labelled one is left out (its tick
    stays).
    """
    from matplotlib.ticker import NullFormatter

    ordered = sorted(set(values))
    if not ordered:
        return
    log = _wants_log(ordered)
    if which == "x":
        ax.set_xscale("log" if log else "linear")
    else:
        ax.set_yscale("log" if log else "linear")
    positions = [math.log10(value) for value in ordered] if log else list(ordered)
    span = positions[-1] - positions[0]
    pad = 0.07 * span
    if span <= 0:
        pad = 0.3 if log else max(abs(positions[0]) * 0.1, 0.5)
    low, high = positions[0] - pad, positions[-1] + pad
    limits = (10.0**low, 10.0**high) if log else (low, high)
    total = high - low
    labels: list[str] = []
    last: float | None = None
    crowded = len(ordered) > 5
    for position, value in zip(positions, ordered, strict=True):
        if last is not None and (position - last) / total < 0.03:
            labels.append("")
            continue
        if last is not None and (position - last) / total < 0.11:
            crowded = True
        labels.append(format_3g(value))
        last = position
    rotation = 30.0 if crowded else 0.0
    text_kwargs: dict[str, Any] = (
        {"rotation": rotation, "ha": "right", "rotation_mode": "anchor"} if crowded else {}
    )
    if which == "x":
        ax.set_xlim(*limits)
        ax.set_xticks(ordered, labels, **text_kwargs)
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_ylim(*limits)
        ax.set_yticks(ordered, labels)
        ax.yaxis.set_minor_formatter(NullFormatter())


def _category_ticks(ax: Axes, values: Sequence[float], which: Literal["x", "y"] = "x") -> None:
    """Evenly spaced cells labelled with budget values (heat maps, grouped figures)."""
    labels = [format_3g(value) for value in values]
    crowded = which == "x" and (len(values) > 5 or max((len(s) for s in labels), default=0) > 6)
    if which == "x":
        kwargs: dict[str, Any] = (
            {"rotation": 30.0, "ha": "right", "rotation_mode": "anchor"} if crowded else {}
        )
        ax.set_xticks(range(len(values)), labels, **kwargs)
    else:
        ax.set_yticks(range(len(values)), labels)


def _offset_transform(ax: Axes, figure: Figure, index: int, count: int, step_pt: float) -> Any:
    """Data coordinates shifted sideways by a few points, so coinciding markers sit side by side."""
    from matplotlib.transforms import offset_copy

    shift = (index - (count - 1) / 2.0) * step_pt
    return offset_copy(ax.transData, fig=figure, x=shift, y=0.0, units="points")


def _wilson(hits: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion, in percent."""
    z = 1.959963984540054
    p = hits / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


# --- entry points --------------------------------------------------------------------------------


def draw_all(directory: str | os.PathLike[str], image_format: ImageFormat = "png") -> list[Path]:
    """Draw every figure of a finished (or interrupted) sweep into its folder.

    Args:
        directory: The sweep's output folder, holding ``results.jsonl`` and optionally
            ``live.jsonl``, ``profile.json``, ``env.json`` and ``config.toml``.
        image_format: ``png`` (default) or ``svg``; a ``.pdf`` twin is written either way.

    Returns:
        The paths written, in :data:`FIGURE_NAMES` order (each figure's ``image_format`` file,
        then its PDF); skipped figures are absent.

    Raises:
        testbed.results.ResultsError: results.jsonl is missing or has an invalid line, or
            live.jsonl has an invalid line.
    """
    folder = Path(directory)
    return draw_figures(folder, load_results(folder), load_live(folder), image_format)


@dataclass(frozen=True, slots=True)
class SweepFiles:
    """What the figures read from a sweep folder besides the result rows.

    Attributes:
        experts: The sweep's experts in its own order (env.json, else profile.json, else the
            names the rows mention, sorted).
        profile: profile.json, or ``None`` when missing or unreadable.
        env: env.json's document (empty when missing or unreadable).
        statistic: The latency/energy statistic the planner used (config.toml; ``p95``).
    """

    experts: tuple[str, ...]
    profile: Profile | None
    env: Mapping[str, Any]
    statistic: str

    @classmethod
    def read(cls, directory: Path, rows: Sequence[ResultRow]) -> SweepFiles:
        """Read the folder's side files, tolerating any of them missing or malformed."""
        env = _read_json_object(directory / ENV_FILE)
        profile = _read_profile(directory / PROFILE_FILE)
        statistic = "p95"
        config_path = directory / CONFIG_FILE
        if config_path.is_file():
            try:
                config = tomllib.loads(config_path.read_text(encoding="utf-8"))
                value = config.get("statistic")
                if isinstance(value, str) and value in ("p50", "p95", "max"):
                    statistic = value
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
                logger.warning("%s unreadable (%s): assuming statistic p95", config_path, error)
        env_experts = env.get("experts")
        experts: tuple[str, ...]
        if isinstance(env_experts, dict) and env_experts:
            experts = tuple(str(name) for name in env_experts)
        elif profile is not None and profile.experts:
            experts = tuple(profile.experts)
        else:
            named = {name for row in rows for name in row.subset}
            named |= {
                name for row in rows for counts in row.expert_usage.values() for name in counts
            }
            experts = tuple(sorted(named))
        return cls(experts=experts, profile=profile, env=env, statistic=statistic)


def _read_json_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        logger.warning("%s unreadable (%s): ignored", path, error)
        return {}
    if not isinstance(document, dict):
        logger.warning("%s is not a JSON object: ignored", path)
        return {}
    return document


def _read_profile(path: Path) -> Profile | None:
    from orchestrator.profiles import Profile, ProfileError

    if not path.is_file():
        return None
    try:
        return Profile.load(path)
    except ProfileError as error:
        logger.warning("%s: ignored (%s)", path, error)
        return None


def draw_figures(
    directory: str | os.PathLike[str],
    rows: Sequence[ResultRow],
    live: Sequence[LiveRow],
    image_format: ImageFormat = "png",
) -> list[Path]:
    """Draw every figure from rows already loaded (what :func:`draw_all` does after reading).

    The side files (profile.json, env.json, config.toml) are read from ``directory``.

    Args:
        directory: The sweep folder; figures are written into it.
        rows: Rows of results.jsonl.
        live: Rows of live.jsonl (may be empty: that figure is then skipped).
        image_format: ``png`` (default) or ``svg``; a ``.pdf`` twin is written either way.

    Returns:
        The paths written, in :data:`FIGURE_NAMES` order (each figure's ``image_format`` file,
        then its PDF); skipped figures are absent.
    """
    folder = Path(directory)
    if not rows:
        logger.warning("%s/results.jsonl has no rows: no figures drawn", folder)
        return []
    files = SweepFiles.read(folder, rows)
    drawers: dict[str, Callable[[], Figure | None]] = {
        "accuracy_vs_energy": lambda: figure_accuracy_vs_budget(rows, "energy"),
        "accuracy_vs_delay": lambda: figure_accuracy_vs_budget(rows, "delay"),
        "heatmap_moe2": lambda: figure_heatmap(rows),
        "predicted_vs_measured": lambda: figure_predicted_vs_measured(live),
        "expert_usage": lambda: figure_expert_usage(rows),
        "gain_over_best_single": lambda: figure_gain(rows),
        "heatmap_gain": lambda: figure_heatmap_gain(rows),
        "expert_profile": lambda: figure_expert_profile(files),
        "subset_by_budget": lambda: figure_subset_by_budget(rows, files.experts),
        "dmo_effort": lambda: figure_dmo_effort(rows, files.experts),
    }
    written: list[Path] = []
    for name in FIGURE_NAMES:
        figure = drawers[name]()
        if figure is None:
            continue
        for fmt in (image_format, VECTOR_FORMAT):
            path = folder / f"{name}.{fmt}"
            save_figure(figure, path, fmt)
            written.append(path)
    return written


def save_figure(figure: Figure, path: Path, image_format: SaveFormat) -> None:
    """Write a figure deterministically (no date, fixed ids) via a temp file + rename.

    PNGs are written at :data:`DPI`; PDFs are vector with embedded TrueType fonts.

    Args:
        figure: The figure.
        path: Destination.
        image_format: ``png``, ``svg`` or ``pdf``.
    """
    import matplotlib

    metadata: dict[str, str | None]
    if image_format == "svg":
        metadata = {"Date": None, "Creator": None}
    elif image_format == "pdf":
        metadata = {"Creator": None, "Producer": None, "CreationDate": None}
    else:
        metadata = {"Software": None}
    with (
        matplotlib.rc_context({"svg.hashsalt": "moe2", "svg.fonttype": "path", "pdf.fonttype": 42}),
        atomic_writer(path) as handle,
    ):
        figure.savefig(handle, format=image_format, dpi=DPI, metadata=metadata)


# --- helpers -------------------------------------------------------------------------------------


def _new_figure(width_in: float, height_in: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _footnote(figure: Figure, text: str) -> None:
    # Keep a strip at the bottom free of axes so the footnote never overlaps a label.
    lines = text.count("\n") + 1
    strip = (0.08 + 0.16 * lines) / figure.get_figheight()
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    engine = figure.get_layout_engine()
    if isinstance(engine, ConstrainedLayoutEngine):
        engine.set(rect=(0.0, strip, 1.0, 1.0 - strip))
    figure.text(0.005, 0.005, text, fontsize=7.5, color="#555555", ha="left", va="bottom")


def _results_footnote(rows: Sequence[ResultRow]) -> str:
    sources = [source for row in rows for source in row.energy_sources]
    return energy_footnote(sources, [row.emulated for row in rows])


def _accuracy_pct(row: ResultRow | None) -> float:
    if row is None or not row.feasible or row.accuracy is None:
        return math.nan
    return 100.0 * row.accuracy


def _top_ks(rows: Iterable[ResultRow]) -> list[int]:
    return sorted({row.top_k for row in rows})


def _budget_grid(rows: Iterable[ResultRow]) -> tuple[list[float], list[float]]:
    """The union of energy and of delay budgets: the same columns and rows in every panel."""
    listed = list(rows)
    return (
        sorted({row.energy_budget_j for row in listed}),
        sorted({row.delay_budget_s for row in listed}),
    )


@dataclass(frozen=True, slots=True)
class _Grids:
    """The (energy, delay) budget columns and rows of each top_k's grid panel.

    The sweep scales the energy grid with top_k, so panels rarely share their budgets. When
    the union of a dimension is at most one value longer than the widest panel, every panel
    shows the union (identical axes; cells outside a panel's own grid read "not swept");
    otherwise each panel shows its own values and says so in its axis label.
    """

    panels: dict[int, tuple[list[float], list[float]]]
    shared_energy: bool
    shared_delay: bool
    identical: bool

    @classmethod
    def of(cls, rows: Sequence[ResultRow]) -> _Grids:
        own = {k: _budget_grid([r for r in rows if r.top_k == k]) for k in _top_ks(rows)}
        union_energy, union_delay = _budget_grid(rows)
        widest_energy = max((len(e) for e, _ in own.values()), default=0)
        widest_delay = max((len(d) for _, d in own.values()), default=0)
        shared_energy = len(union_energy) <= widest_energy + 1
        shared_delay = len(union_delay) <= widest_delay + 1
        panels = {
            k: (union_energy if shared_energy else e, union_delay if shared_delay else d)
            for k, (e, d) in own.items()
        }
        identical = len({(tuple(e), tuple(d)) for e, d in own.values()}) <= 1
        return cls(panels, shared_energy, shared_delay, identical)

    @property
    def columns(self) -> int:
        return max((len(e) for e, _ in self.panels.values()), default=1)

    @property
    def rows(self) -> int:
        return max((len(d) for _, d in self.panels.values()), default=1)

    def label(self, ax: Axes, first: bool) -> None:
        """Axis labels that say when a panel's budgets are its own."""
        own = "" if self.shared_energy else "\n(this top_k's own energy grid)"
        ax.set_xlabel(f"energy budget per request (J){own}")
        if first or not self.shared_delay:
            own = "" if self.shared_delay else " (this top_k's own)"
            ax.set_ylabel(f"delay budget per request (s){own}")

    def note(self) -> str:
        """A suptitle clause on what the panels share."""
        if self.identical:
            return "same budgets in every panel"
        if self.shared_energy and self.shared_delay:
            return "same axes in every panel; 'not swept' where a top_k's grid lacks a budget"
        if not self.shared_energy and self.shared_delay:
            return "energy budgets scale with top_k: each panel has its own energy columns"
        return "each panel has its own budget grid (read its axes)"


def _panels(
    count: int,
    max_columns: int,
    panel_in: tuple[float, float],
    extra_in: tuple[float, float],
    **kwargs: Any,
) -> tuple[Figure, list[Axes], int]:
    """A figure of ``count`` panels, at most ``max_columns`` per row (wide sweeps wrap).

    Returns:
        The figure, its panels in order (unused grid cells removed) and the column count.
    """
    columns = max(1, min(count, max_columns))
    rows = math.ceil(count / columns)
    figure = _new_figure(panel_in[0] * columns + extra_in[0], panel_in[1] * rows + extra_in[1])
    grid = figure.subplots(rows, columns, squeeze=False, **kwargs)
    axes: list[Axes] = [ax for line in grid for ax in line]
    for spare in axes[count:]:
        spare.remove()
    return figure, axes[:count], columns


def _axes_row(figure: Figure, count: int, **kwargs: Any) -> list[Axes]:
    grid = figure.subplots(1, count, squeeze=False, **kwargs)
    return list(grid[0])


def _delay_colours(count: int) -> list[Any]:
    import matplotlib

    colormap = matplotlib.colormaps["viridis"]
    if count == 1:
        return [colormap(0.35)]
    return [colormap(0.1 + 0.7 * index / (count - 1)) for index in range(count)]


_DELAY_MARKERS: tuple[str, ...] = ("o", "s", "D", "^", "v", "P", "X", "h", "<", ">")


# --- accuracy against one budget -----------------------------------------------------------------


def figure_accuracy_vs_budget(
    rows: Sequence[ResultRow], axis: Literal["energy", "delay"]
) -> Figure | None:
    """Accuracy against one budget with the other held at its loosest; a subplot per top_k.

    Infeasible points are gaps in a method's line (there is no accuracy to show). Markers of
    the methods are shifted sideways by a few points so coinciding values stay visible. MoE²
    (shaded) and best single (error bars) carry 95 % Wilson intervals where per-prompt hits
    are recorded. The y-range is set by every method but the oracle, which is a light dotted
    line; an oracle value above the range is a ▲ on the top edge.

    Args:
        rows: All result rows.
        axis: ``energy`` (x = energy budget, at the loosest delay budget) or ``delay``.

    Returns:
        The figure, or ``None`` when there is nothing to draw.
    """
    import numpy as np
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    top_ks = _top_ks(rows)
    methods = ordered_methods(rows)
    if not top_ks or not methods:
        logger.warning("no result rows: accuracy-vs-%s figure skipped", axis)
        return None

    def budget_of(row: ResultRow) -> float:
        return row.energy_budget_j if axis == "energy" else row.delay_budget_s

    figure, axes, columns = _panels(len(top_ks), 3, (4.6, 3.9), (2.6, 0.7), sharey=True)
    ranged: list[float] = []
    oracle_points: list[tuple[Axes, Any, float, float]] = []
    prompts: set[int] = set()
    handles: dict[str, Any] = {}
    for ax, top_k in zip(axes, top_ks, strict=True):
        selected = [row for row in rows if row.top_k == top_k]
        if axis == "energy":
            fixed = max(row.delay_budget_s for row in selected)
            line_rows = [row for row in selected if row.delay_budget_s == fixed]
            ax.set_xlabel("energy budget per request (J)")
            ax.set_title(f"top_k = {top_k}, delay budget {format_3g(fixed)} s (loosest)")
        else:
            fixed = max(row.energy_budget_j for row in selected)
            line_rows = [row for row in selected if row.energy_budget_j == fixed]
            ax.set_xlabel("delay budget per request (s)")
            ax.set_title(f"top_k = {top_k}, energy budget {format_3g(fixed)} J (loosest)")
        budgets = sorted({budget_of(row) for row in line_rows})
        _budget_axis(ax, budgets, "x")
        for index, method in enumerate(methods):
            points = sorted(
                ((budget_of(row), row) for row in line_rows if row.method == method),
                key=lambda pair: pair[0],
            )
            if not points:
                continue
            xs = np.array([budget for budget, _ in points])
            ys = np.array([_accuracy_pct(row) for _, row in points])
            transform = _offset_transform(ax, figure, index, len(methods), 2.2)
            style = method_style(method)
            (line,) = ax.plot(xs, ys, label=_label(method), transform=transform, **style)
            handles.setdefault(method, line)
            if method == "oracle":
                oracle_points.extend(
                    (ax, transform, float(x), float(y))
                    for x, y in zip(xs, ys, strict=True)
                    if not math.isnan(y)
                )
                continue
            ranged.extend(float(y) for y in ys if not math.isnan(y))
            if method not in ("moe2", "best-single"):
                continue
            bounds = [
                _wilson(sum(row.test_hits), len(row.test_hits))
                if row.feasible and row.test_hits
                else (math.nan, math.nan)
                for _, row in points
            ]
            prompts.update(len(row.test_hits) for _, row in points if row.test_hits)
            low = np.array([bound[0] for bound in bounds])
            high = np.array([bound[1] for bound in bounds])
            if np.all(np.isnan(low)):
                continue
            if method == "moe2":
                ax.fill_between(
                    xs,
                    low,
                    high,
                    transform=transform,
                    color=style["color"],
                    alpha=0.13,
                    linewidth=0,
                    zorder=1,
                )
            else:
                ax.errorbar(
                    xs,
                    ys,
                    yerr=np.vstack([ys - low, high - ys]),
                    fmt="none",
                    ecolor=style["color"],
                    elinewidth=0.9,
                    capsize=2.5,
                    alpha=0.7,
                    transform=transform,
                    zorder=style["zorder"],
                )
        for budget in budgets:
            at_budget = [row for row in line_rows if budget_of(row) == budget]
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
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelleft=True)
    low_y, high_y = _accuracy_range(ranged)
    axes[0].set_ylim(low_y, high_y)
    clipped = False
    for ax, transform, x, y in oracle_points:
        if y > high_y:
            clipped = True
            ax.plot(
                [x],
                [high_y],
                marker="^",
                color=method_colour("oracle"),
                markersize=7,
                clip_on=False,
                transform=transform,
                zorder=7,
                linestyle="none",
            )
    for index, ax in enumerate(axes):
        if index % columns == 0:
            ax.set_ylabel("test accuracy (%)")
    legend_handles = [handles[method] for method in methods if method in handles]
    legend_labels = [_label(method) for method in methods if method in handles]
    if "oracle" in handles and clipped:
        legend_labels[methods.index("oracle")] = "oracle (upper bound;\n▲ = above the range)"
    if prompts:
        legend_handles.append(Patch(color=method_colour("moe2"), alpha=0.25, linewidth=0))
        legend_labels.append("MoE² 95 % interval")
        legend_handles.append(
            Line2D([], [], color=method_colour("best-single"), marker="|", markersize=10, lw=0)
        )
        legend_labels.append("best single 95 % interval")
    figure.legend(
        legend_handles, legend_labels, loc="outside right center", fontsize=8.5, frameon=False
    )
    what = "energy" if axis == "energy" else "delay"
    figure.suptitle(f"Accuracy against the {what} budget")
    note = _results_footnote(rows)
    if prompts:
        n_text = "/".join(str(n) for n in sorted(prompts))
        note += (
            f"; intervals: 95 % Wilson over n = {n_text} test prompts per point "
            "(paired differences: gain_over_best_single)"
        )
    _footnote(figure, note)
    return figure


def _accuracy_range(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return 0.0, 100.0
    low, high = min(values), max(values)
    pad = max(3.0, 0.12 * (high - low))
    return max(0.0, low - pad), min(100.0, high + pad)


# --- gains over best single ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GainCell:
    """MoE² minus best single at one budget point, in points, with its interval when known.

    ``low``/``high`` are ``None`` when the rows carry no per-prompt hits (older folders): the
    gain is then the difference of the two accuracies.
    """

    point: int
    top_k: int
    energy_budget_j: float
    delay_budget_s: float
    gain: float
    low: float | None
    high: float | None
    n_prompts: int
    n_feasible_experts: int


def gain_cells(rows: Sequence[ResultRow]) -> dict[int, GainCell]:
    """MoE² minus best single at every point where both are feasible, keyed by point.

    Intervals come from :func:`testbed.story.gains` (paired bootstrap over the test prompts).

    Args:
        rows: All result rows.

    Returns:
        ``{point: GainCell}``.
    """
    from testbed.story import Gain, gains

    intervals: dict[int, Gain] = {gain.point: gain for gain in gains(rows)}
    cells = {(row.point, row.method): row for row in rows}
    out: dict[int, GainCell] = {}
    for (point, method), row in sorted(cells.items()):
        if method != "moe2":
            continue
        interval = intervals.get(point)
        if interval is not None:
            out[point] = GainCell(
                point,
                row.top_k,
                row.energy_budget_j,
                row.delay_budget_s,
                interval.gain_points,
                interval.low_points,
                interval.high_points,
                interval.n_prompts,
                interval.n_feasible_experts,
            )
            continue
        other = cells.get((point, "best-single"))
        if (
            not row.feasible
            or row.accuracy is None
            or other is None
            or not other.feasible
            or other.accuracy is None
        ):
            continue
        oracle = cells.get((point, "oracle"))
        fit = max(row.n_experts, oracle.n_experts if oracle and oracle.feasible else 0)
        out[point] = GainCell(
            point,
            row.top_k,
            row.energy_budget_j,
            row.delay_budget_s,
            100.0 * (row.accuracy - other.accuracy),
            None,
            None,
            0,
            fit,
        )
    return out


def figure_gain(rows: Sequence[ResultRow]) -> Figure | None:
    """MoE²'s gain over the best single feasible expert per budget point, with 95 % intervals.

    A subplot per top_k; x groups the energy budgets, one series per delay budget. Hollow
    markers are points where only one expert fits (MoE² and best single then use the same
    expert); × marks points where MoE² or best single is infeasible.

    Args:
        rows: All result rows.

    Returns:
        The figure, or ``None`` when no point has both MoE² and best single feasible.
    """
    from matplotlib.lines import Line2D

    cells = gain_cells(rows)
    if not cells:
        logger.warning("no point with both moe2 and best-single feasible: gain figure skipped")
        return None
    moe2_rows = [row for row in rows if row.method == "moe2"]
    top_ks = _top_ks(moe2_rows)
    panel_width = max(4.2, 1.2 + 1.3 * _max_energies(moe2_rows))
    figure, axes, columns = _panels(len(top_ks), 2, (panel_width, 3.7), (2.8, 0.9), sharey=True)
    all_delays = sorted({row.delay_budget_s for row in moe2_rows})
    colours = dict(zip(all_delays, _delay_colours(len(all_delays)), strict=True))
    markers = {
        delay: _DELAY_MARKERS[index % len(_DELAY_MARKERS)] for index, delay in enumerate(all_delays)
    }
    extent: list[float] = [0.0]
    any_interval = any(cell.low is not None for cell in cells.values())
    any_plain = any(cell.low is None for cell in cells.values())
    any_single = any(cell.n_feasible_experts < 2 for cell in cells.values())
    any_missing = False
    for ax, top_k in zip(axes, top_ks, strict=True):
        selected = [row for row in moe2_rows if row.top_k == top_k]
        energies, delays = _budget_grid(selected)
        width = 0.72 / max(1, len(delays))
        for row in sorted(selected, key=lambda r: (r.energy_budget_j, r.delay_budget_s)):
            x = (
                energies.index(row.energy_budget_j)
                + (delays.index(row.delay_budget_s) - (len(delays) - 1) / 2.0) * width
            )
            cell = cells.get(row.point)
            colour = colours[row.delay_budget_s]
            if cell is None:
                any_missing = True
                _mark_infeasible(ax, x)
                continue
            face = colour if cell.n_feasible_experts >= 2 else "white"
            marker = markers[row.delay_budget_s]
            if cell.low is not None and cell.high is not None:
                ax.errorbar(
                    [x],
                    [cell.gain],
                    yerr=[[cell.gain - cell.low], [cell.high - cell.gain]],
                    fmt=marker,
                    color=colour,
                    markerfacecolor=face,
                    markeredgecolor=colour,
                    markersize=6,
                    capsize=3,
                    elinewidth=1.3,
                    zorder=4,
                )
                extent.extend([cell.low, cell.high])
            else:
                ax.plot(
                    [x],
                    [cell.gain],
                    marker=marker,
                    color=colour,
                    markerfacecolor=face,
                    markersize=7,
                    linestyle="none",
                    zorder=4,
                )
                extent.append(cell.gain)
        ax.axhline(0.0, color="black", linewidth=0.9, zorder=2)
        for boundary in range(1, len(energies)):
            ax.axvline(boundary - 0.5, color="#dddddd", linewidth=0.8, zorder=0)
        ax.set_xlim(-0.5, len(energies) - 0.5)
        _category_ticks(ax, energies, "x")
        ax.set_xlabel("energy budget per request (J)")
        ax.set_title(f"top_k = {top_k}")
        ax.grid(True, axis="y", alpha=0.3)
        ax.tick_params(labelleft=True)
    low, high = min(extent), max(extent)
    pad = max(2.0, 0.08 * (high - low))
    axes[0].set_ylim(low - pad, high + pad)
    for index, ax in enumerate(axes):
        if index % columns == 0:
            ax.set_ylabel("MoE² − best single (accuracy points)")
    handles: list[Any] = [
        Line2D(
            [],
            [],
            color=colours[delay],
            marker=markers[delay],
            linestyle="none",
            markersize=6,
        )
        for delay in all_delays
    ]
    labels = [f"delay budget {format_3g(delay)} s" for delay in all_delays]
    if any_single:
        handles.append(
            Line2D([], [], color="#555555", marker="o", mfc="white", linestyle="none", ms=6)
        )
        labels.append("hollow: one expert fits\n(same expert as best single)")
    if any_plain and any_interval:
        handles.append(Line2D([], [], color="#555555", marker="o", linestyle="none", ms=6))
        labels.append("no bar: per-prompt hits\nnot recorded there")
    if any_missing:
        handles.append(Line2D([], [], color="#9a9a9a", marker="x", linestyle="none", ms=5))
        labels.append("MoE² or best single\ninfeasible")
    figure.legend(handles, labels, loc="outside right center", fontsize=8.5, frameon=False)
    prompts = sorted({cell.n_prompts for cell in cells.values() if cell.low is not None})
    subtitle = (
        f"95 % paired-bootstrap interval over n = {'/'.join(map(str, prompts))} test prompts"
        if any_interval
        else "point differences of the accuracies (no per-prompt hits recorded: no intervals)"
    )
    figure.suptitle(f"Gain of MoE² over the best single feasible expert\n{subtitle}", fontsize=11)
    _footnote(figure, _results_footnote(rows))
    return figure


def _max_energies(rows: Sequence[ResultRow]) -> int:
    return max(
        (len({r.energy_budget_j for r in rows if r.top_k == k}) for k in _top_ks(rows)), default=1
    )


# --- heat maps -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Cell:
    state: Literal["value", "infeasible", "missing", "na"]
    value: float = math.nan
    text: str = ""
    subtext: str = ""


def _heatmap_panels(
    rows_for_grid: Sequence[ResultRow],
    cell_of: Callable[[int, float, float], _Cell],
    colormap: Any,
    norm: Any,
    text_colour: Callable[[float], str],
    colorbar_label: str,
) -> tuple[Figure, list[Axes], _Grids]:
    """A grid panel per top_k over the (energy × delay) budgets (see :class:`_Grids`).

    Cells not in a top_k's own grid read "not swept" (the budget grid depends on top_k).
    """
    import numpy as np

    top_ks = _top_ks(rows_for_grid)
    grids = _Grids.of(rows_for_grid)
    width = max(3.8, 0.95 * grids.columns + 1.4)
    height = max(3.0, 0.75 * grids.rows + 1.6)
    figure, axes, columns = _panels(
        len(top_ks), 3, (width, height), (1.6, 0.8), sharey=grids.shared_delay
    )
    mesh = None
    for index, (ax, top_k) in enumerate(zip(axes, top_ks, strict=True)):
        energies, delays = grids.panels[top_k]
        grid = np.full((len(delays), len(energies)), np.nan)
        cells: dict[tuple[int, int], _Cell] = {}
        for i, delay in enumerate(delays):
            for j, energy in enumerate(energies):
                cell = cell_of(top_k, energy, delay)
                cells[(i, j)] = cell
                if cell.state == "value":
                    grid[i, j] = cell.value
        edges_x = np.arange(len(energies) + 1) - 0.5
        edges_y = np.arange(len(delays) + 1) - 0.5
        mesh = ax.pcolormesh(
            edges_x,
            edges_y,
            np.ma.masked_invalid(grid),
            cmap=colormap,
            norm=norm,
            edgecolors="white",
            linewidth=1.5,
        )
        ax.set_facecolor("white")
        for (i, j), cell in cells.items():
            if cell.state == "value":
                colour = text_colour(cell.value)
                if cell.subtext:
                    ax.text(j, i + 0.1, cell.text, ha="center", va="center", color=colour)
                    ax.text(
                        j,
                        i - 0.22,
                        cell.subtext,
                        ha="center",
                        va="center",
                        color=colour,
                        fontsize=7,
                    )
                else:
                    ax.text(j, i, cell.text, ha="center", va="center", color=colour)
                continue
            if cell.state == "infeasible":
                ax.add_patch(_hatched_cell(j, i))
                text, colour = "infeasible", "#444444"
            elif cell.state == "missing":
                text, colour = "not swept\nat this top_k", "#9a9a9a"
            else:
                text, colour = "n/a", "#444444"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=7)
        ax.set_xlim(-0.5, len(energies) - 0.5)
        ax.set_ylim(-0.5, len(delays) - 0.5)
        _category_ticks(ax, energies, "x")
        _category_ticks(ax, delays, "y")
        ax.tick_params(labelleft=True, length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        grids.label(ax, index % columns == 0)
        ax.set_title(f"top_k = {top_k}")
    if mesh is not None:
        colorbar = figure.colorbar(mesh, ax=axes, shrink=0.9)
        colorbar.set_label(colorbar_label)
    return figure, axes, grids


def figure_heatmap(rows: Sequence[ResultRow], method: str = "moe2") -> Figure | None:
    """A method's accuracy over the (energy × delay) grid, annotated; a subplot per top_k.

    Panels share their columns and rows where the top_k grids nearly agree, else each is
    labelled as its own grid (see :class:`_Grids`). Infeasible cells are grey and hatched,
    cells outside a top_k's own grid read "not swept", a feasible row without an accuracy
    reads "n/a".

    Args:
        rows: All result rows.
        method: Which method to map (default MoE²).

    Returns:
        The figure, or ``None`` when the method has no rows.
    """
    import matplotlib
    from matplotlib.colors import Normalize

    selected_all = [row for row in rows if row.method == method]
    if not selected_all:
        logger.warning("no %s rows: heat-map skipped", method)
        return None
    finite = [v for v in (_accuracy_pct(row) for row in selected_all) if not math.isnan(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 100.0)
    if high - low < 1.0:
        low, high = low - 0.5, high + 0.5
    by_cell = {(row.top_k, row.energy_budget_j, row.delay_budget_s): row for row in selected_all}

    def cell_of(top_k: int, energy: float, delay: float) -> _Cell:
        row = by_cell.get((top_k, energy, delay))
        if row is None:
            return _Cell("missing")
        if not row.feasible:
            return _Cell("infeasible")
        value = _accuracy_pct(row)
        if math.isnan(value):
            return _Cell("na")
        return _Cell("value", value, f"{value:.1f}")

    midpoint = (low + high) / 2.0
    figure, _, grids = _heatmap_panels(
        selected_all,
        cell_of,
        matplotlib.colormaps["viridis"],
        Normalize(low, high),
        lambda value: "black" if value > midpoint else "white",
        f"{_label(method)} test accuracy (%)",
    )
    figure.suptitle(f"{_label(method)} test accuracy over the budget grid ({grids.note()})")
    _footnote(figure, _results_footnote(rows))
    return figure


def figure_heatmap_gain(rows: Sequence[ResultRow]) -> Figure | None:
    """MoE² minus best single (points) over the (energy × delay) grid; a subplot per top_k.

    A diverging colour map centred on zero (blue: MoE² better, red: best single better) with
    one colour bar for all panels; columns shared or labelled as in :func:`figure_heatmap`.
    Cells show the gain and, where per-prompt hits are recorded, its 95 % paired-bootstrap
    interval.

    Args:
        rows: All result rows.

    Returns:
        The figure, or ``None`` when there is no MoE² row.
    """
    import matplotlib
    from matplotlib.colors import Normalize

    moe2_rows = [row for row in rows if row.method == "moe2"]
    if not moe2_rows:
        logger.warning("no moe2 rows: gain heat-map skipped")
        return None
    cells = gain_cells(rows)
    by_cell = {(row.top_k, row.energy_budget_j, row.delay_budget_s): row for row in moe2_rows}
    limit = max(max((abs(cell.gain) for cell in cells.values()), default=0.0), 1.0)

    def cell_of(top_k: int, energy: float, delay: float) -> _Cell:
        row = by_cell.get((top_k, energy, delay))
        if row is None:
            return _Cell("missing")
        cell = cells.get(row.point)
        if cell is None:
            return _Cell("infeasible")
        interval = (
            f"[{cell.low:+.0f}, {cell.high:+.0f}]"
            if cell.low is not None and cell.high is not None
            else ""
        )
        return _Cell("value", cell.gain, f"{cell.gain:+.1f}", interval)

    figure, _, grids = _heatmap_panels(
        moe2_rows,
        cell_of,
        matplotlib.colormaps["RdBu"],
        Normalize(-limit, limit),
        lambda value: "white" if abs(value) > 0.6 * limit else "black",
        "MoE² − best single (accuracy points)",
    )
    with_ci = any(cell.low is not None for cell in cells.values())
    detail = (
        "cell: gain [95 % paired-bootstrap interval]"
        if with_ci
        else "no per-prompt hits recorded: no intervals"
    )
    figure.suptitle(
        f"MoE² minus the best single feasible expert over the budget grid ({grids.note()})\n"
        f"blue: MoE² better, red: best single better; {detail}; "
        "infeasible = MoE² or best single has no feasible subset",
        fontsize=10,
    )
    _footnote(figure, _results_footnote(rows))
    return figure


def _hatched_cell(column: int, row: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle(
        (column - 0.5, row - 0.5),
        1.0,
        1.0,
        facecolor="#e3e3e3",
        hatch="//",
        edgecolor="#b5b5b5",
        lw=0,
    )


# --- predicted against measured ------------------------------------------------------------------


_Getter = Callable[[LiveRow], float | None]


def figure_predicted_vs_measured(live: Sequence[LiveRow]) -> Figure | None:
    """Measured against predicted worst-case latency and energy, one dot per answered request.

    Log axes (tight budgets stay apart from loose ones); the y = x line is where the
    prediction is exact and dots below it mean the worst-case prediction held. Each budget
    point's budget is a dashed horizontal line in its colour. Circles are requests that ran
    every expert of K, hollow triangles requests with early exit. Refused requests
    (``FAILED_PRECONDITION``: no subset met the budgets online) have no prediction to plot and
    are counted in the legend and the title, as are failed ones. Unknown energy is left out of
    the energy panel (never drawn at 0); a measured 0 sits on the bottom edge as ▼.

    Args:
        live: Rows of live.jsonl.

    Returns:
        The figure, or ``None`` when there are no live rows.
    """
    import matplotlib
    from matplotlib.lines import Line2D

    if not live:
        logger.warning("no live.jsonl rows: predicted-vs-measured figure skipped")
        return None
    answered = [row for row in live if row.error is None]
    refused = [row for row in live if row.error == REFUSED]
    failed = [row for row in live if row.error is not None and row.error != REFUSED]
    points = sorted({row.point for row in live})
    palette = matplotlib.colormaps["tab10"]
    colour = {point: palette(index % 10) for index, point in enumerate(points)}
    first = {point: next(row for row in live if row.point == point) for point in points}
    figure = _new_figure(12.5, 5.4)
    latency_ax, energy_ax = _axes_row(figure, 2)
    panels: list[tuple[Axes, str, str, _Getter, _Getter, Callable[[LiveRow], float]]] = [
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
    floored_any = False
    early_any = any(row.early_exit for row in answered)
    for ax, quantity, unit, measured_of, predicted_of, budget_of in panels:
        pairs = [
            (row, predicted, measured)
            for row in answered
            if (predicted := predicted_of(row)) is not None
            and (measured := measured_of(row)) is not None
        ]
        positive = [value for _, p, m in pairs for value in (p, m) if value > 0]
        positive += [budget_of(first[point]) for point in points if budget_of(first[point]) > 0]
        ax.set_xlabel(f"predicted worst-case {quantity} ({unit})")
        ax.set_ylabel(f"measured {quantity} ({unit})")
        ax.grid(True, which="major", alpha=0.3)
        if not pairs or not positive:
            ax.text(
                0.5,
                0.5,
                f"{quantity} unknown for every answered request",
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="#444444",
            )
            ax.set_xlim(0.0, 1.0)
            ax.set_ylim(0.0, 1.0)
        else:
            low, high = min(positive) / 1.8, max(positive) * 1.8
            floor = low
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(low, high)
            ax.set_ylim(low, high)
            ax.plot([low, high], [low, high], color="black", linewidth=0.8, zorder=2)
            for point in points:
                budget = budget_of(first[point])
                if budget > 0:
                    ax.axhline(
                        budget, color=colour[point], linestyle="--", linewidth=1.0, alpha=0.8
                    )
                for early in (False, True):
                    chosen = [
                        (p, m)
                        for row, p, m in pairs
                        if row.point == point and row.early_exit is early
                    ]
                    shown = [(max(p, floor), m) for p, m in chosen if m > 0]
                    floored = [(max(p, floor), floor) for p, m in chosen if m <= 0]
                    style: dict[str, Any] = (
                        {"marker": "^", "facecolors": "none", "edgecolors": [colour[point]]}
                        if early
                        else {"marker": "o", "color": [colour[point]]}
                    )
                    if shown:
                        xs, ys = zip(*shown, strict=True)
                        ax.scatter(xs, ys, s=22, alpha=0.8, linewidths=1.1, zorder=4, **style)
                    if floored:
                        floored_any = True
                        xs, ys = zip(*floored, strict=True)
                        ax.scatter(
                            xs,
                            ys,
                            s=26,
                            marker="v",
                            color=[colour[point]],
                            clip_on=False,
                            zorder=5,
                        )
            _log_ticks(ax)
        if quantity == "latency":
            ok = sum(1 for row in answered if row.within_delay_budget)
            ax.set_title(
                f"latency: {ok}/{len(answered)} answered within the delay budget", fontsize=10
            )
        else:
            known = [row for row in answered if row.within_energy_budget is not None]
            ok = sum(1 for row in known if row.within_energy_budget)
            ax.set_title(
                f"energy: {ok}/{len(known)} answered with known energy within the budget",
                fontsize=10,
            )
    handles: list[Any] = []
    labels: list[str] = []
    for point in points:
        row = first[point]
        k_text = f", k = {row.top_k}" if row.top_k is not None else ""
        n_answered = sum(1 for r in answered if r.point == point)
        n_refused = sum(1 for r in refused if r.point == point)
        n_failed = sum(1 for r in failed if r.point == point)
        counts = f"{n_answered} answered"
        if n_refused:
            counts += f", {n_refused} refused"
        if n_failed:
            counts += f", {n_failed} failed"
        handles.append(Line2D([], [], color=colour[point], marker="o", linestyle="--", lw=1.0))
        labels.append(
            f"point {point}: {format_3g(row.energy_budget_j)} J, "
            f"{format_3g(row.delay_budget_s)} s{k_text}\n  ({counts})"
        )
    handles.append(Line2D([], [], color="#555555", marker="o", linestyle="none"))
    labels.append("ran all of K")
    if early_any:
        handles.append(Line2D([], [], color="#555555", marker="^", mfc="none", linestyle="none"))
        labels.append("early exit (staged)")
    if floored_any:
        handles.append(Line2D([], [], color="#555555", marker="v", linestyle="none"))
        labels.append("measured 0 (on the bottom edge)")
    handles.append(Line2D([], [], color="black", linewidth=0.8))
    labels.append("y = x (exact)")
    handles.append(Line2D([], [], color="#555555", linestyle="--", linewidth=1.0))
    labels.append("budget (colour of its point)")
    figure.legend(handles, labels, loc="outside right center", fontsize=7.5, frameon=False)
    counts = f"{len(answered)} answered, {len(refused)} refused"
    if failed:
        counts += f", {len(failed)} failed"
    why = (
        "\nrefused = FAILED_PRECONDITION (no subset met the budgets online): no prediction, "
        "counted per point in the legend"
        if refused or failed
        else ""
    )
    figure.suptitle(
        f"Predicted worst case against measured, per live request ({counts}){why}",
        fontsize=10.5,
    )
    unknown = sum(1 for row in answered if row.energy_j is None)
    _footnote(
        figure,
        energy_footnote([row.energy_source or "" for row in live], [row.emulated for row in live])
        + f"; {unknown} answered request(s) with unknown energy left out of the energy panel",
    )
    return figure


def _log_ticks(ax: Axes) -> None:
    """Readable log ticks: major labels with three significant digits, no minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0), numticks=12))
        axis.set_major_formatter(FuncFormatter(lambda value, _pos: format_3g(value)))
        axis.set_minor_formatter(NullFormatter())


# --- expert usage --------------------------------------------------------------------------------


def _tightness(row: ResultRow, max_energy_j: float, max_delay_s: float) -> tuple[float, ...]:
    # Budgets normalised by their largest value so joules and seconds weigh alike.
    energy = row.energy_budget_j / max_energy_j if max_energy_j > 0 else 0.0
    delay = row.delay_budget_s / max_delay_s if max_delay_s > 0 else 0.0
    return (energy + delay, row.energy_budget_j, row.delay_budget_s, float(row.point))


def figure_expert_usage(rows: Sequence[ResultRow]) -> Figure | None:
    """Per category, how often MoE² dispatched each expert (stacked bars); a row per top_k.

    Left: the loosest budget point (largest energy and delay budget). Right: the tightest
    feasible one (smallest sum of the budgets, each divided by its largest value). Experts
    have their fixed colours (:func:`expert_colours`).

    Args:
        rows: All result rows.

    Returns:
        The figure, or ``None`` when no MoE² row records ``expert_usage``.
    """
    import numpy as np
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

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
    colour = expert_colours(experts)
    figure = _new_figure(11.5, 3.8 * len(panels) + 0.7)
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
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("category")
            accuracy = "-" if row.accuracy is None else f"{100.0 * row.accuracy:.1f}%"
            ax.set_title(
                f"top_k = {top_k}, {which}: {format_3g(row.energy_budget_j)} J, "
                f"{format_3g(row.delay_budget_s)} s (point {row.point}, acc. {accuracy})",
                fontsize=10,
            )
            ax.grid(True, axis="y", alpha=0.3)
    handles = [Patch(color=colour[expert], label=expert) for expert in experts]
    figure.legend(handles=handles, loc="outside right center", fontsize=9, frameon=False)
    figure.suptitle("Experts dispatched by MoE², per category")
    _footnote(figure, _results_footnote(rows))
    return figure


# --- expert profile ------------------------------------------------------------------------------


def _device_text(name: str, files: SweepFiles) -> str:
    experts = files.env.get("experts")
    info = experts.get(name, {}) if isinstance(experts, dict) else {}
    if not isinstance(info, dict):
        info = {}
    emulated_device = info.get("emulated_device")
    if emulated_device:
        return f"{emulated_device} (emulated)"
    profile_device = ""
    if files.profile is not None and name in files.profile.experts:
        profile_device = files.profile.experts[name].device_kind
    kind = str(info.get("device_kind") or profile_device or "device unknown")
    device_name = str(info.get("device_name") or "")
    return f"{kind}, {device_name}" if device_name and device_name != "modeled" else kind


def figure_expert_profile(files: SweepFiles) -> Figure | None:
    """Per expert (labelled with its device), profiled latency and energy per category.

    From profile.json (what the planner's worst cases were built from) and env.json (the
    device each expert ran on or emulated). Each line runs from the p50 to the max of one
    category's sample; the marker is the planning statistic (config.toml, p95 by default).
    Log axes when the values span more than a decade; a 0 J energy sits on the left edge as ◀.

    Args:
        files: The folder's side files.

    Returns:
        The figure, or ``None`` when profile.json is missing or unreadable.
    """
    from matplotlib.lines import Line2D

    profile = files.profile
    if profile is None or not profile.experts:
        logger.warning("no readable %s: expert-profile figure skipped", PROFILE_FILE)
        return None
    experts = [name for name in files.experts if name in profile.experts] or list(profile.experts)
    experts += [name for name in profile.experts if name not in experts]
    categories = sorted({c for name in experts for c in profile.experts[name].categories})
    category_colour = _category_colours(categories)
    colours = expert_colours(experts)
    statistic = files.statistic
    height = max(3.6, 1.7 + 0.32 * len(experts) * max(2, len(categories)))
    figure = _new_figure(12.0, height)
    latency_ax, energy_ax = _axes_row(figure, 2, sharey=True)
    spread = 0.6 / max(1, len(categories))
    floored = False
    unknown: list[str] = []
    for ax, key, unit in ((latency_ax, "latency", "s"), (energy_ax, "energy", "J")):
        values: list[float] = []
        entries: list[tuple[float, str, Mapping[str, float]]] = []
        for e_index, name in enumerate(experts):
            base = len(experts) - 1 - e_index
            for c_index, category in enumerate(categories):
                stats = profile.experts[name].categories.get(category)
                if stats is None:
                    continue
                y = base + (((len(categories) - 1) / 2.0) - c_index) * spread
                summary = stats.latency_s if key == "latency" else stats.energy_j
                if summary is None:
                    unknown.append(f"{name}/{category}")
                    ax.text(
                        0.02,
                        y,
                        f"{category}: {key} unknown",
                        transform=ax.get_yaxis_transform(),
                        ha="left",
                        va="center",
                        fontsize=7.5,
                        color=category_colour[category],
                    )
                    continue
                entries.append((y, category, summary))
                values.extend(
                    summary[stat] for stat in ("p50", statistic, "max") if stat in summary
                )
        positive = [value for value in values if value > 0]
        log = bool(positive) and max(positive) > 10 * min(positive)
        floor = min(positive) / 2.0 if log else 0.0
        for y, category, summary in entries:
            p50 = summary.get("p50", math.nan)
            top = summary.get("max", math.nan)
            mark = summary.get(statistic, summary.get("p95", math.nan))
            colour = category_colour[category]
            ax.plot(
                [max(p50, floor), max(top, floor)], [y, y], color=colour, linewidth=1.6, zorder=3
            )
            ax.plot([max(p50, floor)], [y], marker="|", color=colour, markersize=7, zorder=4)
            if log and mark <= 0:
                floored = True
                ax.plot([floor], [y], marker="<", color=colour, markersize=6, clip_on=False)
            else:
                ax.plot([mark], [y], marker="o", color=colour, markersize=5.5, zorder=5)
        if log:
            ax.set_xscale("log")
            ax.set_xlim(floor, max(positive) * 1.6)
            from matplotlib.ticker import FuncFormatter, NullFormatter

            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: format_3g(value)))
            ax.xaxis.set_minor_formatter(NullFormatter())
        elif values:
            ax.set_xlim(0.0, max(max(values), 1e-12) * 1.1)
        ax.set_xlabel(f"{key} per request ({unit}), one expert alone")
        ax.set_title(f"{key}: p50 to max, marker = {statistic}", fontsize=10)
        ax.grid(True, axis="x", which="major", alpha=0.3)
        for boundary in range(1, len(experts)):
            ax.axhline(boundary - 0.5, color="#dddddd", linewidth=0.8)
    latency_ax.set_ylim(-0.5, len(experts) - 0.5)
    latency_ax.set_yticks(
        range(len(experts)),
        [f"{name}\n{_device_text(name, files)}" for name in reversed(experts)],
    )
    for label, name in zip(latency_ax.get_yticklabels(), reversed(experts), strict=True):
        label.set_color(colours[name])
        label.set_fontweight("bold")
    handles: list[Any] = [
        Line2D([], [], color=category_colour[c], marker="o", linewidth=1.6) for c in categories
    ]
    labels = list(categories)
    if floored:
        handles.append(Line2D([], [], color="#555555", marker="<", linestyle="none"))
        labels.append(f"{statistic} of 0 J (on the left edge)")
    figure.legend(handles, labels, loc="outside right center", fontsize=9, frameon=False)
    figure.suptitle("Per-expert latency and energy profile, by device (profile.json)")
    sources = [expert.energy_source for expert in profile.experts.values()]
    env_experts = files.env.get("experts")
    emulated: list[bool | None] = []
    if isinstance(env_experts, dict):
        emulated = [
            bool(info.get("emulated")) if isinstance(info, dict) else None
            for info in env_experts.values()
        ]
    note = energy_footnote(sources, emulated)
    if unknown:
        note += f"; energy unknown for {len(unknown)} expert/category pair(s)"
    _footnote(figure, note)
    return figure


# --- the subset MoE² chose -----------------------------------------------------------------------


def figure_subset_by_budget(rows: Sequence[ResultRow], experts: Sequence[str]) -> Figure | None:
    """The subset S that MoE² chose at every budget point: a budget grid panel per top_k.

    Each cell shows one square per expert of the sweep, filled in the expert's colour when it
    is in S, with MoE²'s accuracy below; columns shared or labelled as in :func:`figure_heatmap`.

    Args:
        rows: All result rows.
        experts: The sweep's experts in display order (names only in rows are appended).

    Returns:
        The figure, or ``None`` when there is no MoE² row.
    """
    from matplotlib.patches import Patch, Rectangle

    moe2 = [row for row in rows if row.method == "moe2"]
    if not moe2:
        logger.warning("no moe2 rows: subset-by-budget figure skipped")
        return None
    order = list(dict.fromkeys(experts))
    order += sorted({name for row in moe2 for name in row.subset} - set(order))
    colours = expert_colours(order)
    top_ks = _top_ks(moe2)
    grids = _Grids.of(moe2)
    by_cell = {(row.top_k, row.energy_budget_j, row.delay_budget_s): row for row in moe2}
    width = max(3.4, 1.0 * grids.columns + 1.2)
    height = max(2.9, 0.95 * grids.rows + 1.4)
    figure, axes, columns = _panels(
        len(top_ks), 3, (width, height), (2.2, 0.8), sharey=grids.shared_delay
    )
    size = min(0.8 / max(1, len(order)), 0.24)
    for panel, (ax, top_k) in enumerate(zip(axes, top_ks, strict=True)):
        energies, delays = grids.panels[top_k]
        for i, delay in enumerate(delays):
            for j, energy in enumerate(energies):
                row = by_cell.get((top_k, energy, delay))
                if row is None:
                    ax.text(
                        j,
                        i,
                        "not swept\nat this top_k",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="#9a9a9a",
                    )
                    continue
                if not row.feasible:
                    ax.add_patch(_hatched_cell(j, i))
                    ax.text(j, i, "infeasible", ha="center", va="center", fontsize=7)
                    continue
                left = j - size * len(order) * 1.15 / 2.0
                for index, name in enumerate(order):
                    member = name in row.subset
                    ax.add_patch(
                        Rectangle(
                            (left + index * size * 1.15, i - 0.02),
                            size,
                            size,
                            facecolor=colours[name] if member else "white",
                            edgecolor=colours[name] if member else "#c8c8c8",
                            linewidth=0.8,
                        )
                    )
                accuracy = "" if row.accuracy is None else f"{100.0 * row.accuracy:.1f} %"
                ax.text(
                    j,
                    i - 0.2,
                    f"|S| = {len(row.subset)}  {accuracy}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="#333333",
                )
        for boundary in range(1, len(energies)):
            ax.axvline(boundary - 0.5, color="#dddddd", linewidth=0.8)
        for boundary in range(1, len(delays)):
            ax.axhline(boundary - 0.5, color="#dddddd", linewidth=0.8)
        ax.set_xlim(-0.5, len(energies) - 0.5)
        ax.set_ylim(-0.5, len(delays) - 0.5)
        _category_ticks(ax, energies, "x")
        _category_ticks(ax, delays, "y")
        ax.tick_params(labelleft=True, length=0)
        grids.label(ax, panel % columns == 0)
        ax.set_title(f"top_k = {top_k}")
    handles = [Patch(facecolor=colours[name], edgecolor=colours[name]) for name in order]
    labels = [f"{name} in S" for name in order]
    handles.append(Patch(facecolor="white", edgecolor="#c8c8c8"))
    labels.append("not in S")
    figure.legend(handles, labels, loc="outside right center", fontsize=9, frameon=False)
    figure.suptitle(
        "Subset S chosen by MoE² as the budgets vary (squares in the legend's order; "
        f"MoE² test accuracy below)\n{grids.note()}",
        fontsize=10,
    )
    _footnote(figure, _results_footnote(rows))
    return figure


# --- search effort -------------------------------------------------------------------------------


def _known_feasible(subsets: Iterable[Sequence[str]], experts: Sequence[str]) -> int | None:
    """Non-empty subsets implied feasible by the recorded ones (costs are monotone in S)."""
    index = {name: bit for bit, name in enumerate(experts)}
    masks: set[int] = set()
    for subset in subsets:
        if len(subset) > 16 or any(name not in index for name in subset):
            return None
        members = [index[name] for name in subset]
        for combination in range(1, 1 << len(members)):
            mask = 0
            for position, bit in enumerate(members):
                if combination >> position & 1:
                    mask |= 1 << bit
            masks.add(mask)
    return len(masks)


def figure_dmo_effort(rows: Sequence[ResultRow], experts: Sequence[str]) -> Figure | None:
    """DMO's objective evaluations per budget point against exhaustive search's.

    Bars: the evaluations the DMO solver recorded for MoE² (``evaluations``). Exhaustive
    search evaluates every feasible subset; the rows do not store that count, so the figure
    draws its bounds: at most 2^N − 1 (every non-empty subset of the N experts, the dashed
    line) and at least the subsets of the subsets any method recorded as feasible at that
    point (a black tick; budgets are monotone, so a subset of a feasible subset is feasible).

    Args:
        rows: All result rows.
        experts: The sweep's experts (N is their number; names only in rows are added).

    Returns:
        The figure, or ``None`` when no feasible MoE² row records ``evaluations``.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    moe2 = [row for row in rows if row.method == "moe2"]
    if not any(row.feasible and row.evaluations is not None for row in moe2):
        logger.warning("no moe2 row records evaluations: DMO-effort figure skipped")
        return None
    order = list(dict.fromkeys(experts))
    order += sorted({name for row in rows for name in row.subset} - set(order))
    n = len(order)
    total = 2**n - 1
    feasible_by_point: dict[int, list[Sequence[str]]] = {}
    for row in rows:
        if row.feasible and row.subset:
            feasible_by_point.setdefault(row.point, []).append(row.subset)
    top_ks = _top_ks(moe2)
    all_delays = sorted({row.delay_budget_s for row in moe2})
    colours = dict(zip(all_delays, _delay_colours(len(all_delays)), strict=True))
    panel_width = max(4.2, 1.2 + 1.3 * _max_energies(moe2))
    figure, axes, columns = _panels(len(top_ks), 2, (panel_width, 3.7), (3.0, 0.9), sharey=True)
    log = total > 64
    highest = float(total)
    infeasible_any = False
    for ax, top_k in zip(axes, top_ks, strict=True):
        selected = [row for row in moe2 if row.top_k == top_k]
        energies, delays = _budget_grid(selected)
        width = 0.8 / max(1, len(delays))
        for row in selected:
            x = (
                energies.index(row.energy_budget_j)
                + (delays.index(row.delay_budget_s) - (len(delays) - 1) / 2.0) * width
            )
            if not row.feasible or row.evaluations is None:
                infeasible_any = True
                _mark_infeasible(ax, x)
                continue
            ax.bar(
                x, row.evaluations, width=width * 0.9, color=colours[row.delay_budget_s], zorder=3
            )
            highest = max(highest, float(row.evaluations))
            ax.annotate(
                str(row.evaluations),
                (x, row.evaluations),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
            )
            known = _known_feasible(feasible_by_point.get(row.point, []), order)
            if known is not None:
                ax.plot(
                    [x - width * 0.36, x + width * 0.36],
                    [known, known],
                    color="black",
                    linewidth=2.0,
                    zorder=4,
                )
        ax.axhline(total, color="black", linestyle="--", linewidth=1.0, zorder=2)
        for boundary in range(1, len(energies)):
            ax.axvline(boundary - 0.5, color="#dddddd", linewidth=0.8, zorder=0)
        ax.set_xlim(-0.5, len(energies) - 0.5)
        _category_ticks(ax, energies, "x")
        ax.set_xlabel("energy budget per request (J)")
        ax.set_title(f"top_k = {top_k}")
        ax.grid(True, axis="y", alpha=0.3)
        ax.tick_params(labelleft=True)
    if log:
        axes[0].set_yscale("log")
        axes[0].set_ylim(0.8, highest * 2.0)
    else:
        axes[0].set_ylim(0.0, highest * 1.15)
    for index, ax in enumerate(axes):
        if index % columns == 0:
            ax.set_ylabel("objective evaluations (subsets)")
    handles: list[Any] = [Patch(color=colours[delay]) for delay in all_delays]
    labels = [f"DMO, delay budget {format_3g(delay)} s" for delay in all_delays]
    handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1.0))
    labels.append(f"exhaustive, at most\n2^N − 1 = {total} (N = {n})")
    handles.append(Line2D([], [], color="black", linewidth=2.0))
    labels.append("exhaustive, at least: subsets\nof the feasible S recorded here")
    if infeasible_any:
        handles.append(Line2D([], [], color="#9a9a9a", marker="x", linestyle="none", ms=5))
        labels.append("MoE² infeasible")
    figure.legend(handles, labels, loc="outside right center", fontsize=8.5, frameon=False)
    figure.suptitle(
        "Search effort: DMO objective evaluations against exhaustive search\n"
        "(exhaustive evaluates every feasible subset; the rows store DMO's count, not that one)",
        fontsize=10,
    )
    _footnote(figure, _results_footnote(rows))
    return figure


def _mark_infeasible(ax: Axes, x: float) -> None:
    """A grey × on the bottom edge at ``x``: nothing to draw there (infeasible)."""
    ax.plot(
        [x],
        [0.0],
        marker="x",
        color="#7a7a7a",
        markersize=6,
        transform=ax.get_xaxis_transform(),
        linestyle="none",
        clip_on=False,
        zorder=6,
    )
