"""Typed access to a sweep's result files: results.jsonl, live.jsonl and summary.csv.

A sweep (docs/architecture.md §6) appends one JSON object per line to ``DIR/results.jsonl``
(one per budget point × top_k × method) and to ``DIR/live.jsonl`` (one per request served live
through the orchestrator). One pydantic model per row kind (:class:`ResultRow`,
:class:`LiveRow`) is the schema: the sweep writes through it (:func:`write_rows`), this module
reads through it, and the tests build their rows with it. It also writes ``summary.csv`` and
computes the derived numbers that the figures and the end-of-run table show.

Reading is defensive on purpose: the files outlive the code that wrote them and a sweep can be
killed mid-write. A torn *last* line (the crash case) is skipped with a warning; any other bad
line raises :class:`ResultsError` naming the file and line, because silently dropping a row in
the middle would bias every figure drawn from the file. Optional fields that are absent read as
``None`` or empty, and the code that needs them skips its figure with a warning.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edge_node.files import atomic_write_text
from testbed.sweep_config import ALL_METHODS

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
LIVE_FILE = "live.jsonl"
SUMMARY_FILE = "summary.csv"

#: The methods of docs/method.md §6, in the order tables and legends show them.
METHODS: tuple[str, ...] = ALL_METHODS

SUMMARY_COLUMNS: tuple[str, ...] = (
    "point",
    "energy_budget_j",
    "delay_budget_s",
    "top_k",
    "method",
    "feasible",
    "accuracy",
    "n_experts",
    "subset",
    "predicted_energy_j",
    "predicted_latency_s",
)

_R = TypeVar("_R", bound="_Row")


class ResultsError(ValueError):
    """A result file cannot be read: missing, or a line that is not a valid row."""


class _Row(BaseModel):
    """A JSON-lines row: the writer dumps it, the reader validates it.

    Fields a newer writer added are ignored by an older reader (``extra="ignore"``).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    def to_json_line(self) -> str:
        """The row as one line of JSON (no newline)."""
        return self.model_dump_json()


class ResultRow(_Row):
    """One method at one budget point of the sweep (one line of results.jsonl).

    Attributes:
        point: Index of the budget point (an (energy, delay) grid cell, for one ``top_k``).
        energy_budget_j: Worst-case energy budget per request, joules.
        delay_budget_s: Delay budget per request, seconds (the same for every category).
        top_k: Experts the fine level may use per request.
        method: One of :data:`METHODS` (other names are kept as they are).
        feasible: Whether a non-empty subset met the budgets (absent: whether an accuracy is).
        subset: The selected experts; empty when infeasible.
        n_experts: ``len(subset)`` (absent: computed).
        accuracy: Test accuracy in [0, 1]; ``None`` when infeasible.
        accuracy_by_category: Test accuracy per category.
        validation_objective: Objective value on the planning prompts, if recorded.
        upper_bound: The solver's bound certificate, if recorded.
        evaluations: Objective evaluations the solver made, if recorded.
        solve_s: Solver wall time, seconds, if recorded.
        predicted_energy_j: Predicted worst-case energy per request, joules.
        predicted_latency_s: Predicted worst-case latency over categories, seconds.
        predicted_latency_by_category_s: Predicted worst-case latency per category, seconds.
        expert_usage: Per category, how many requests each expert served.
        emulated: Whether latency/energy came from an emulated fleet; ``None`` if unrecorded.
        energy_sources: Where the energy numbers came from (``estimated``, ``measured-nvml``…).
        test_hits: Per test prompt, 1 if the method answered it right (paired comparisons).
        realised_energy_j: Mean recorded joules per test prompt of the experts that ran.
        mean_experts_run: Early exit: experts that ran per test prompt, on average.
        exit_threshold: Early exit: the confidence threshold used.
        plan_top_k: MoE²: the experts per prompt its plan uses, at most ``top_k`` (the
            single-expert guard may plan with fewer); absent: ``top_k``.
    """

    point: int
    energy_budget_j: float
    delay_budget_s: float
    top_k: int
    method: str
    feasible: bool
    subset: tuple[str, ...] = ()
    n_experts: int = 0
    accuracy: float | None = None
    accuracy_by_category: dict[str, float] = Field(default_factory=dict)
    validation_objective: float | None = None
    upper_bound: float | None = None
    evaluations: int | None = None
    solve_s: float | None = None
    predicted_energy_j: float | None = None
    predicted_latency_s: float | None = None
    predicted_latency_by_category_s: dict[str, float] = Field(default_factory=dict)
    expert_usage: dict[str, dict[str, int]] = Field(default_factory=dict)
    emulated: bool | None = None
    energy_sources: tuple[str, ...] = ()
    test_hits: tuple[int, ...] = ()
    realised_energy_j: float | None = None
    mean_experts_run: float | None = None
    exit_threshold: float | None = None
    plan_top_k: int | None = None

    @field_validator("test_hits")
    @classmethod
    def _zero_or_one(cls, hits: tuple[int, ...]) -> tuple[int, ...]:
        if any(hit not in (0, 1) for hit in hits):
            raise ValueError("must be a list of 0/1")
        return hits

    @model_validator(mode="before")
    @classmethod
    def _derived(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if data.get("feasible") is None:  # older files: a row with an accuracy was feasible
                data = {**data, "feasible": data.get("accuracy") is not None}
            if data.get("n_experts") is None and isinstance(data.get("subset"), list | tuple):
                data = {**data, "n_experts": len(data["subset"])}
        return data


class LiveRow(_Row):
    """One request served live through the orchestrator (one line of live.jsonl).

    Attributes:
        point: Budget point the request was served at.
        energy_budget_j: Energy budget of that point, joules.
        delay_budget_s: Delay budget of that point, seconds.
        top_k: Experts per request at that point.
        category: The request's category.
        item_id: The evaluation item.
        correct: Whether the fused answer was right; ``None`` if unrecorded.
        latency_s: Measured end-to-end latency, seconds.
        energy_j: Measured or estimated energy, joules; ``None`` when unknown (never 0).
        predicted_latency_s: The plan's predicted worst-case latency, seconds.
        predicted_energy_j: The plan's predicted worst-case energy, joules.
        within_delay_budget: ``latency_s <= delay_budget_s`` (absent: computed).
        within_energy_budget: ``energy_j <= energy_budget_j``; ``None`` when energy is unknown.
        experts: Experts dispatched.
        outcomes: Per expert: ``ok``, ``deadline`` or ``error``.
        energy_source: Where ``energy_j`` came from.
        emulated: Whether the fleet was emulated; ``None`` if unrecorded.
        error: The gRPC status name when the request got no answer (``FAILED_PRECONDITION``:
            refused, no subset met the budgets online); ``None`` when it was answered.
        early_exit: Whether the request asked for early exit.
        staged: Whether early exit ran the experts in stages (not in parallel).
        experts_skipped: Experts early exit did not need to ask.
        encode_s: The orchestrator's prompt-encoder time, seconds.
        gate_s: The orchestrator's gate time, seconds.
    """

    point: int
    energy_budget_j: float
    delay_budget_s: float
    latency_s: float
    within_delay_budget: bool
    top_k: int | None = None
    category: str = ""
    item_id: str = ""
    correct: bool | None = None
    energy_j: float | None = None
    predicted_latency_s: float | None = None
    predicted_energy_j: float | None = None
    within_energy_budget: bool | None = None
    experts: tuple[str, ...] = ()
    outcomes: dict[str, str] = Field(default_factory=dict)
    energy_source: str | None = None
    emulated: bool | None = None
    error: str | None = None
    early_exit: bool = False
    staged: bool | None = None
    experts_skipped: int | None = None
    encode_s: float | None = None
    gate_s: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _derived(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for flag, value, budget in (
            ("within_delay_budget", "latency_s", "delay_budget_s"),
            ("within_energy_budget", "energy_j", "energy_budget_j"),
        ):
            if data.get(flag) is None and _is_number(data.get(value), data.get(budget)):
                data = {**data, flag: data[value] <= data[budget]}
        return data


def _is_number(*values: Any) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


@dataclass(frozen=True, slots=True)
class Adherence:
    """How well served requests kept their budgets (over one budget point, or all of them).

    Attributes:
        requests: Requests counted.
        within_delay_fraction: Fraction with ``latency_s <= delay_budget_s``.
        energy_known: Requests whose energy is known (``within_energy_budget`` not null).
        within_energy_fraction: Fraction within the energy budget among ``energy_known``;
            ``None`` when no request's energy is known.
        worst_delay_excess_s: Largest ``latency_s - delay_budget_s``, floored at 0 (0 means no
            request overran), seconds.
        worst_energy_excess_j: Largest ``energy_j - energy_budget_j`` floored at 0, joules;
            ``None`` when no energy is known.
        mean_predicted_latency_s: Mean predicted worst-case latency, seconds (``None`` if absent).
        mean_measured_latency_s: Mean measured latency, seconds.
        mean_predicted_energy_j: Mean predicted worst-case energy, joules (``None`` if absent).
        mean_measured_energy_j: Mean energy over requests with known energy, joules.
        accuracy: Fraction answered correctly among requests with ``correct`` recorded.
    """

    requests: int
    within_delay_fraction: float
    energy_known: int
    within_energy_fraction: float | None
    worst_delay_excess_s: float
    worst_energy_excess_j: float | None
    mean_predicted_latency_s: float | None
    mean_measured_latency_s: float
    mean_predicted_energy_j: float | None
    mean_measured_energy_j: float | None
    accuracy: float | None


# --- reading and writing ---------------------------------------------------------------------


def _field_error(error: ValidationError) -> str:
    """The first problem of a row, naming its field."""
    first = error.errors()[0]
    field_name = ".".join(str(part) for part in first["loc"]) or "row"
    if first["type"] == "missing":
        return f"missing field {field_name!r}"
    return f"field {field_name!r}: {first['msg'].lower()}, got {first.get('input')!r}"


def _read_jsonl(path: Path, row_type: type[_R]) -> list[_R]:
    """Parse every line of a JSON-lines file; a torn last line is skipped with a warning.

    Raises:
        ResultsError: The file cannot be read, or a line other than the last is not JSON, or
            any line is JSON but not a valid row (that is a writer bug, not a crash).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ResultsError(f"cannot read {path}: {error.strerror or error}") from error
    except UnicodeDecodeError as error:
        raise ResultsError(f"{path}: not UTF-8 text: {error}") from error
    lines = text.splitlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    rows: list[_R] = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        number = index + 1
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as error:
            if index == last and isinstance(error, json.JSONDecodeError):
                # A writer killed mid-line leaves exactly this: keep what was complete.
                logger.warning("%s:%d: skipping torn last line (%s)", path, number, error.msg)
                continue
            what = error.msg if isinstance(error, json.JSONDecodeError) else "nested too deep"
            raise ResultsError(f"{path}:{number}: not valid JSON: {what}") from error
        if not isinstance(obj, dict):
            raise ResultsError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
        try:
            rows.append(row_type.model_validate_json(line))
        except ValidationError as error:
            raise ResultsError(f"{path}:{number}: {_field_error(error)}") from None
    return rows


def write_rows(path: str | os.PathLike[str], rows: Iterable[_Row]) -> Path:
    """Write rows as JSON lines, atomically (the file is replaced whole)."""
    target = Path(path)
    atomic_write_text(target, "".join(row.to_json_line() + "\n" for row in rows))
    return target


def load_results(directory: str | os.PathLike[str]) -> list[ResultRow]:
    """Read ``DIR/results.jsonl``.

    Args:
        directory: The sweep's output folder.

    Returns:
        The rows in file order.

    Raises:
        ResultsError: The file is missing or unreadable, or a line (other than a torn last
            line, which is skipped with a warning) is not a valid row.
    """
    path = Path(directory) / RESULTS_FILE
    if not path.is_file():
        raise ResultsError(f"no {RESULTS_FILE} in {directory}")
    return _read_jsonl(path, ResultRow)


def load_live(directory: str | os.PathLike[str]) -> list[LiveRow]:
    """Read ``DIR/live.jsonl``; a sweep without live requests has none, which gives ``[]``.

    Args:
        directory: The sweep's output folder.

    Returns:
        The rows in file order (empty when the file does not exist).

    Raises:
        ResultsError: The file exists but a line (other than a torn last line) is invalid.
    """
    path = Path(directory) / LIVE_FILE
    if not path.exists():
        logger.info("no %s in %s", LIVE_FILE, directory)
        return []
    return _read_jsonl(path, LiveRow)


# --- summary.csv -------------------------------------------------------------------------------


def _csv_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def write_summary_csv(rows: Iterable[ResultRow], path: str | os.PathLike[str]) -> Path:
    """Write the per-row summary CSV atomically (temp file in the same folder, then rename).

    Columns are :data:`SUMMARY_COLUMNS`; ``subset`` is joined with ``+``, booleans are
    ``true``/``false`` and missing numbers are empty. The rename means a reader never sees a
    half-written file, even if the sweep is killed while writing it.

    Args:
        rows: Result rows, written in the order given.
        path: Destination file.

    Returns:
        The destination path.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    for row in rows:
        writer.writerow(
            [
                _csv_value(row.point),
                _csv_value(row.energy_budget_j),
                _csv_value(row.delay_budget_s),
                _csv_value(row.top_k),
                row.method,
                _csv_value(row.feasible),
                _csv_value(row.accuracy),
                _csv_value(row.n_experts),
                "+".join(row.subset),
                _csv_value(row.predicted_energy_j),
                _csv_value(row.predicted_latency_s),
            ]
        )
    target = Path(path)
    atomic_write_text(target, buffer.getvalue())
    return target


# --- derived numbers ---------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def overall_adherence(live_rows: Sequence[LiveRow]) -> Adherence | None:
    """Budget adherence over all the given requests; ``None`` when there are none.

    Args:
        live_rows: Requests served live (any mix of budget points).

    Returns:
        The adherence figures, or ``None`` for an empty input.
    """
    if not live_rows:
        return None
    energy_known = [row for row in live_rows if row.within_energy_budget is not None]
    with_energy = [row for row in live_rows if row.energy_j is not None]
    graded = [row.correct for row in live_rows if row.correct is not None]
    predicted_latency = [
        row.predicted_latency_s for row in live_rows if row.predicted_latency_s is not None
    ]
    predicted_energy = [
        row.predicted_energy_j for row in live_rows if row.predicted_energy_j is not None
    ]
    measured_energy = [row.energy_j for row in with_energy if row.energy_j is not None]
    energy_excess = [
        row.energy_j - row.energy_budget_j for row in with_energy if row.energy_j is not None
    ]
    return Adherence(
        requests=len(live_rows),
        within_delay_fraction=sum(row.within_delay_budget for row in live_rows) / len(live_rows),
        energy_known=len(energy_known),
        within_energy_fraction=(
            sum(bool(row.within_energy_budget) for row in energy_known) / len(energy_known)
            if energy_known
            else None
        ),
        worst_delay_excess_s=max(0.0, max(row.latency_s - row.delay_budget_s for row in live_rows)),
        worst_energy_excess_j=max(0.0, max(energy_excess)) if energy_excess else None,
        mean_predicted_latency_s=_mean(predicted_latency),
        mean_measured_latency_s=math.fsum(row.latency_s for row in live_rows) / len(live_rows),
        mean_predicted_energy_j=_mean(predicted_energy),
        mean_measured_energy_j=_mean(measured_energy),
        accuracy=sum(graded) / len(graded) if graded else None,
    )


def adherence(live_rows: Sequence[LiveRow]) -> dict[int, Adherence]:
    """Budget adherence of live requests, per budget point.

    Unknown energy (``energy_j`` null) is never counted as 0: such requests are left out of
    the energy fraction, the energy excess and the mean measured energy, and
    :attr:`Adherence.energy_known` says how many were counted.

    Args:
        live_rows: Requests served live.

    Returns:
        ``{point: Adherence}``, in ascending point order.
    """
    by_point: dict[int, list[LiveRow]] = {}
    for row in live_rows:
        by_point.setdefault(row.point, []).append(row)
    out: dict[int, Adherence] = {}
    for point in sorted(by_point):
        figures = overall_adherence(by_point[point])
        assert figures is not None  # every group is non-empty
        out[point] = figures
    return out


def ordered_methods(rows: Iterable[ResultRow]) -> list[str]:
    """The methods present in ``rows``: the known ones in :data:`METHODS` order, then others."""
    present = {row.method for row in rows}
    return [m for m in METHODS if m in present] + sorted(present - set(METHODS))


def energy_footnote(
    sources: Iterable[str], emulated: Iterable[bool | None], *, prefix: str = "energy"
) -> str:
    """A one-line statement of where energy numbers came from, for figure footnotes.

    A figure must never imply a measurement that was not made, so the line names the sources
    as the rows recorded them and says when the fleet was emulated.

    Args:
        sources: Energy sources recorded in the rows (``estimated``, ``measured-nvml``…).
        emulated: The rows' ``emulated`` flags (``None`` = not recorded).
        prefix: Leading word.

    Returns:
        E.g. ``"energy: estimated (emulated)"``.
    """
    names = sorted({source for source in sources if source})
    flags = [flag for flag in emulated if flag is not None]
    text = f"{prefix}: {', '.join(names) if names else 'source not recorded'}"
    if flags and all(flags):
        text += " (emulated)"
    elif any(flags):
        text += " (partly emulated)"
    return text
