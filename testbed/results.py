"""Typed access to a sweep's result files: results.jsonl, live.jsonl and summary.csv.

A sweep (docs/architecture.md §6) appends one JSON object per line to ``DIR/results.jsonl``
(one per budget point × top_k × method) and to ``DIR/live.jsonl`` (one per request served live
through the orchestrator). This module reads them into frozen dataclasses, writes
``summary.csv``, and computes the derived numbers that the figures and the end-of-run table
show.

Reading is defensive on purpose: the files outlive the code that wrote them and a sweep can be
killed mid-write. A torn *last* line (the crash case) is skipped with a warning; any other bad
line raises :class:`ResultsError` naming the file and line, because silently dropping a row in
the middle would bias every figure drawn from the file. Optional fields that are absent read as
``None`` or empty, and the code that needs them skips its figure with a warning.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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

_T = TypeVar("_T")


class ResultsError(ValueError):
    """A result file cannot be read: missing, or a line that is not a valid row."""


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One method at one budget point of the sweep (one line of results.jsonl).

    Attributes:
        point: Index of the budget point (an (energy, delay) grid cell, for one ``top_k``).
        energy_budget_j: Worst-case energy budget per request, joules.
        delay_budget_s: Delay budget per request, seconds (the same for every category).
        top_k: Experts the fine level may use per request.
        method: One of :data:`METHODS` (other names are kept as they are).
        feasible: Whether a non-empty subset met the budgets.
        subset: The selected experts; empty when infeasible.
        n_experts: ``len(subset)`` as recorded.
        accuracy: Test accuracy in [0, 1]; ``None`` when infeasible.
        accuracy_by_category: Test accuracy per category.
        validation_objective: Objective value on the validation split, if recorded.
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
    accuracy_by_category: Mapping[str, float] = field(default_factory=dict)
    validation_objective: float | None = None
    upper_bound: float | None = None
    evaluations: int | None = None
    solve_s: float | None = None
    predicted_energy_j: float | None = None
    predicted_latency_s: float | None = None
    predicted_latency_by_category_s: Mapping[str, float] = field(default_factory=dict)
    expert_usage: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    emulated: bool | None = None
    energy_sources: tuple[str, ...] = ()
    test_hits: tuple[int, ...] = ()
    realised_energy_j: float | None = None


@dataclass(frozen=True, slots=True)
class LiveRow:
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
        within_delay_budget: ``latency_s <= delay_budget_s``.
        within_energy_budget: ``energy_j <= energy_budget_j``; ``None`` when energy is unknown.
        experts: Experts dispatched.
        outcomes: Per expert: ``ok``, ``deadline`` or ``error``.
        energy_source: Where ``energy_j`` came from.
        emulated: Whether the fleet was emulated; ``None`` if unrecorded.
        error: The gRPC status name when the request got no answer (``FAILED_PRECONDITION``:
            refused, no subset met the budgets online); ``None`` when it was answered.
        early_exit: Whether the request asked for early exit.
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
    outcomes: Mapping[str, str] = field(default_factory=dict)
    energy_source: str | None = None
    emulated: bool | None = None
    error: str | None = None
    early_exit: bool = False


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


# --- reading -----------------------------------------------------------------------------------


class _FieldError(ValueError):
    """A field of one JSON object has the wrong type; the caller adds file and line."""


def _number(obj: Mapping[str, Any], key: str, *, required: bool = False) -> float | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _FieldError(f"missing field {key!r}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _FieldError(f"field {key!r} must be a number, got {value!r}")
    return float(value)


def _required_number(obj: Mapping[str, Any], key: str) -> float:
    value = _number(obj, key, required=True)
    assert value is not None  # _number raised otherwise
    return value


def _integer(obj: Mapping[str, Any], key: str, *, required: bool = False) -> int | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _FieldError(f"missing field {key!r}")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _FieldError(f"field {key!r} must be an integer, got {value!r}")
    return value


def _required_integer(obj: Mapping[str, Any], key: str) -> int:
    value = _integer(obj, key, required=True)
    assert value is not None
    return value


def _boolean(obj: Mapping[str, Any], key: str) -> bool | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _FieldError(f"field {key!r} must be true or false, got {value!r}")
    return value


def _string(obj: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _FieldError(f"missing field {key!r}")
        return None
    if not isinstance(value, str):
        raise _FieldError(f"field {key!r} must be a string, got {value!r}")
    return value


def _strings(obj: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _FieldError(f"field {key!r} must be a list of strings, got {value!r}")
    return tuple(value)


def _number_map(obj: Mapping[str, Any], key: str) -> dict[str, float]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _FieldError(f"field {key!r} must be an object, got {value!r}")
    out: dict[str, float] = {}
    for name, number in value.items():
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise _FieldError(f"field {key!r}[{name!r}] must be a number, got {number!r}")
        out[name] = float(number)
    return out


def _usage_map(obj: Mapping[str, Any], key: str) -> dict[str, dict[str, int]]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _FieldError(f"field {key!r} must be an object, got {value!r}")
    out: dict[str, dict[str, int]] = {}
    for category, counts in value.items():
        if not isinstance(counts, dict):
            raise _FieldError(f"field {key!r}[{category!r}] must be an object, got {counts!r}")
        inner: dict[str, int] = {}
        for expert, count in counts.items():
            if isinstance(count, bool) or not isinstance(count, int):
                raise _FieldError(
                    f"field {key!r}[{category!r}][{expert!r}] must be an integer, got {count!r}"
                )
            inner[expert] = count
        out[category] = inner
    return out


def _string_map(obj: Mapping[str, Any], key: str) -> dict[str, str]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _FieldError(f"field {key!r} must be an object of strings, got {value!r}")
    return dict(value)


def _parse_result(obj: Mapping[str, Any]) -> ResultRow:
    accuracy = _number(obj, "accuracy")
    subset = _strings(obj, "subset")
    feasible = _boolean(obj, "feasible")
    if feasible is None:
        # Older or hand-written files: a row with an accuracy was a feasible one.
        feasible = accuracy is not None
    n_experts = _integer(obj, "n_experts")
    return ResultRow(
        point=_required_integer(obj, "point"),
        energy_budget_j=_required_number(obj, "energy_budget_j"),
        delay_budget_s=_required_number(obj, "delay_budget_s"),
        top_k=_required_integer(obj, "top_k"),
        method=_string(obj, "method", required=True) or "",
        feasible=feasible,
        subset=subset,
        n_experts=len(subset) if n_experts is None else n_experts,
        accuracy=accuracy,
        accuracy_by_category=_number_map(obj, "accuracy_by_category"),
        validation_objective=_number(obj, "validation_objective"),
        upper_bound=_number(obj, "upper_bound"),
        evaluations=_integer(obj, "evaluations"),
        solve_s=_number(obj, "solve_s"),
        predicted_energy_j=_number(obj, "predicted_energy_j"),
        predicted_latency_s=_number(obj, "predicted_latency_s"),
        predicted_latency_by_category_s=_number_map(obj, "predicted_latency_by_category_s"),
        expert_usage=_usage_map(obj, "expert_usage"),
        emulated=_boolean(obj, "emulated"),
        energy_sources=_strings(obj, "energy_sources"),
        test_hits=_hits(obj, "test_hits"),
        realised_energy_j=_number(obj, "realised_energy_j"),
    )


def _hits(obj: Mapping[str, Any], key: str) -> tuple[int, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(v in (0, 1) for v in value):
        raise _FieldError(f"{key!r} must be a list of 0/1")
    return tuple(int(v) for v in value)


def _parse_live(obj: Mapping[str, Any]) -> LiveRow:
    energy_budget_j = _required_number(obj, "energy_budget_j")
    delay_budget_s = _required_number(obj, "delay_budget_s")
    latency_s = _required_number(obj, "latency_s")
    energy_j = _number(obj, "energy_j")
    within_delay = _boolean(obj, "within_delay_budget")
    if within_delay is None:
        within_delay = latency_s <= delay_budget_s
    within_energy = _boolean(obj, "within_energy_budget")
    if within_energy is None and energy_j is not None:
        within_energy = energy_j <= energy_budget_j
    return LiveRow(
        point=_required_integer(obj, "point"),
        energy_budget_j=energy_budget_j,
        delay_budget_s=delay_budget_s,
        latency_s=latency_s,
        within_delay_budget=within_delay,
        top_k=_integer(obj, "top_k"),
        category=_string(obj, "category") or "",
        item_id=_string(obj, "item_id") or "",
        correct=_boolean(obj, "correct"),
        energy_j=energy_j,
        predicted_latency_s=_number(obj, "predicted_latency_s"),
        predicted_energy_j=_number(obj, "predicted_energy_j"),
        within_energy_budget=within_energy,
        experts=_strings(obj, "experts"),
        outcomes=_string_map(obj, "outcomes"),
        energy_source=_string(obj, "energy_source"),
        emulated=_boolean(obj, "emulated"),
        error=_string(obj, "error"),
        early_exit=bool(_boolean(obj, "early_exit")),
    )


def _read_jsonl(path: Path, parse: Callable[[Mapping[str, Any]], _T]) -> list[_T]:
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
    rows: list[_T] = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        number = index + 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as error:
            if index == last:
                # A writer killed mid-line leaves exactly this: keep what was complete.
                logger.warning("%s:%d: skipping torn last line (%s)", path, number, error.msg)
                continue
            raise ResultsError(f"{path}:{number}: not valid JSON: {error.msg}") from error
        if not isinstance(obj, dict):
            raise ResultsError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
        try:
            rows.append(parse(obj))
        except _FieldError as error:
            raise ResultsError(f"{path}:{number}: {error}") from error
    return rows


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
    return _read_jsonl(path, _parse_result)


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
    return _read_jsonl(path, _parse_live)


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
    target = Path(path)
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below, renamed or removed
        mode="w",
        encoding="utf-8",
        newline="",
        dir=target.parent,
        prefix=f".{target.name}.",
        suffix=".tmp",
        delete=False,
    )
    try:
        with handle:
            writer = csv.writer(handle, lineterminator="\n")
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
        os.replace(handle.name, target)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
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
