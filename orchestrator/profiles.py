"""Expert profiles: latency and energy per (expert, category), measured live.

``profile.json`` is written by `moe2 profile` and read by `moe2 serve`; while serving, every
response adds an observation to a bounded window per (expert, category), and the statistics the
planner uses are recomputed from it. A plan is recomputed when a statistic drifts by more than
``drift_ratio`` from the value it was planned with (``ProfileBook.version`` changes).

File format (``format: "moe2-profile/1"``)::

    {"format": "moe2-profile/1", "created_unix_s": 1.7e9, "hardware": {...},
     "experts": {"NAME": {"address": "h:p", "model_id": "...", "device_kind": "cpu",
        "energy_source": "estimated", "energy_scope": "...",
        "categories": {"CAT": {"samples": 8,
            "latency_s": {"p50": .., "p95": .., "max": ..},
            "energy_j": {"p50": .., "p95": .., "max": .., "mean": ..} | null,
            "accuracy": 0.75 | null}}}}}

``energy_j`` is null when the node could not report energy (unknown is never 0).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edge_node.files import atomic_write_text

FORMAT = "moe2-profile/1"
Statistic = Literal["p50", "p95", "max"]
ANY_CATEGORY = "*"
ProfileSource = Literal["file", "probe", "live"]


class ProfileError(Exception):
    """A profile file problem, as one line naming the file and the field."""


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of a non-empty sequence (q in [0, 1])."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(values: Sequence[float]) -> dict[str, float]:
    """p50, p95, max and mean of a non-empty sample."""
    return {
        "p50": quantile(values, 0.5),
        "p95": quantile(values, 0.95),
        "max": max(values),
        "mean": sum(values) / len(values),
    }


@dataclass(frozen=True, slots=True)
class CategoryStats:
    """Profiled figures of one expert on one category."""

    samples: int
    latency_s: Mapping[str, float]
    energy_j: Mapping[str, float] | None
    accuracy: float | None = None


@dataclass(frozen=True, slots=True)
class ExpertProfile:
    """Profiled figures of one expert."""

    categories: Mapping[str, CategoryStats]
    address: str = ""
    model_id: str = ""
    device_kind: str = ""
    energy_source: str = ""
    energy_scope: str = ""


@dataclass(frozen=True, slots=True)
class Profile:
    """A whole profile file."""

    experts: Mapping[str, ExpertProfile]
    created_unix_s: float = field(default_factory=time.time)
    hardware: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The file's JSON document."""
        return {
            "format": FORMAT,
            "created_unix_s": self.created_unix_s,
            "hardware": dict(self.hardware),
            "experts": {
                name: {
                    "address": expert.address,
                    "model_id": expert.model_id,
                    "device_kind": expert.device_kind,
                    "energy_source": expert.energy_source,
                    "energy_scope": expert.energy_scope,
                    "categories": {
                        category: {
                            "samples": stats.samples,
                            "latency_s": dict(stats.latency_s),
                            "energy_j": None if stats.energy_j is None else dict(stats.energy_j),
                            "accuracy": stats.accuracy,
                        }
                        for category, stats in expert.categories.items()
                    },
                }
                for name, expert in self.experts.items()
            },
        }

    def save(self, path: Path) -> None:
        """Write atomically (a crash never leaves a half-written profile)."""
        atomic_write_text(path, json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Profile:
        """Read and validate a profile file.

        Raises:
            ProfileError: missing file, invalid JSON, wrong format or a bad field.
        """
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            raise ProfileError(f"profile file {path} does not exist") from None
        except (OSError, ValueError) as err:
            raise ProfileError(f"profile file {path} cannot be read: {err}") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ProfileError(f"{path}: format: expected {FORMAT!r}")
        experts: dict[str, ExpertProfile] = {}
        try:
            for name, raw in document["experts"].items():
                categories = {}
                for category, stats in raw["categories"].items():
                    where = f"experts.{name}.categories.{category}"
                    latency = _stats(stats["latency_s"], f"{where}.latency_s")
                    energy = stats.get("energy_j")
                    categories[category] = CategoryStats(
                        samples=int(stats["samples"]),
                        latency_s=latency,
                        energy_j=None if energy is None else _stats(energy, f"{where}.energy_j"),
                        accuracy=stats.get("accuracy"),
                    )
                experts[name] = ExpertProfile(
                    categories=categories,
                    address=str(raw.get("address", "")),
                    model_id=str(raw.get("model_id", "")),
                    device_kind=str(raw.get("device_kind", "")),
                    energy_source=str(raw.get("energy_source", "")),
                    energy_scope=str(raw.get("energy_scope", "")),
                )
        except ProfileError as err:
            raise ProfileError(f"{path}: {err}") from None
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise ProfileError(f"{path}: experts: malformed entry ({err!r})") from None
        return cls(
            experts=experts,
            created_unix_s=float(document.get("created_unix_s", 0.0)),
            hardware=dict(document.get("hardware", {})),
        )


def _stats(raw: Any, where: str) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: expected an object with p50/p95/max")
    out = {}
    for key in ("p50", "p95", "max"):
        value = raw.get(key)
        if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ProfileError(f"{where}.{key}: must be a finite number >= 0, got {value!r}")
        out[key] = float(value)
    if "mean" in raw:
        out["mean"] = float(raw["mean"])
    return out


@dataclass(slots=True)
class _Window:
    latency_s: deque[float]
    energy_j: deque[float]
    updated_unix_s: float = 0.0


class ProfileBook:
    """Current per-(expert, category) worst-case figures: a profile file plus live updates.

    Thread-safe for its callers (the event loop and planning threads). ``version`` increases
    whenever a statistic used for planning drifts by more than ``drift_ratio``, so plan caches
    keyed on it are invalidated exactly when feasibility may have changed.
    """

    def __init__(
        self,
        profile: Profile | None = None,
        *,
        statistic: Statistic = "p95",
        window: int = 64,
        drift_ratio: float = 0.1,
        min_live_samples: int = 8,
    ) -> None:
        self._profile = profile or Profile(experts={})
        self._statistic = statistic
        self._window = window
        self._drift_ratio = drift_ratio
        self._min_live = min_live_samples
        self._lock = threading.Lock()
        self._live: dict[tuple[str, str], _Window] = {}
        self._planned: dict[tuple[str, str, str], float] = {}
        # Where each expert's non-live figures came from, and when: the file, or a probe.
        self._sources: dict[str, tuple[ProfileSource, float]] = {
            name: ("file", self._profile.created_unix_s) for name in self._profile.experts
        }
        self.version = 0

    @property
    def profile(self) -> Profile:
        """The loaded profile file (with any probed experts added)."""
        return self._profile

    def replace_profile(self, profile: Profile) -> None:
        """Plan from a re-read profile file (SIGHUP); probed experts and live windows stay."""
        with self._lock:
            probed = {
                name: self._profile.experts[name]
                for name, (source, _) in self._sources.items()
                if source == "probe" and name not in profile.experts
            }
            self._profile = Profile(
                experts={**probed, **profile.experts},
                created_unix_s=profile.created_unix_s,
                hardware=profile.hardware,
            )
            self._sources = {
                **{n: v for n, v in self._sources.items() if n in probed},
                **{name: ("file", profile.created_unix_s) for name in profile.experts},
            }
            self.version += 1

    def add_probed(self, expert: str, figures: ExpertProfile) -> None:
        """An expert's figures measured by the orchestrator's probe (orchestrator.probe)."""
        with self._lock:
            self._profile = Profile(
                experts={**self._profile.experts, expert: figures},
                created_unix_s=self._profile.created_unix_s,
                hardware=self._profile.hardware,
            )
            self._sources[expert] = ("probe", time.time())
            self.version += 1

    def has_figures(self, expert: str) -> bool:
        """Whether the expert has any latency figure to plan with (file, probe or live)."""
        with self._lock:
            if any(e == expert for e, _ in self._live):
                return True
        return expert in self._profile.experts

    def source(self, expert: str) -> ProfileSource | None:
        """Where the figures planned with come from (None when the expert has none).

        ``live`` once served traffic fills a window, else ``file`` or ``probe``.
        """
        with self._lock:
            if any(
                e == expert and len(w.latency_s) >= self._min_live
                for (e, _), w in self._live.items()
            ):
                return "live"
        entry = self._sources.get(expert)
        return None if entry is None else entry[0]

    def categories(self) -> list[str]:
        """Categories with any profiled or observed figures."""
        names = {c for e in self._profile.experts.values() for c in e.categories}
        names.update(c for _, c in self._live)
        names.discard(ANY_CATEGORY)
        return sorted(names)

    def observe(self, expert: str, category: str, latency_s: float, energy_j: float | None) -> None:
        """Add one live observation (wall latency at the orchestrator, node-reported energy)."""
        with self._lock:
            window = self._live.get((expert, category))
            if window is None:
                window = _Window(deque(maxlen=self._window), deque(maxlen=self._window))
                self._live[(expert, category)] = window
            window.latency_s.append(latency_s)
            if energy_j is not None:
                window.energy_j.append(energy_j)
            window.updated_unix_s = time.time()
            self._check_drift(expert, category, window)

    def _check_drift(self, expert: str, category: str, window: _Window) -> None:
        if len(window.latency_s) < self._min_live:
            return
        for quantity, values in (("latency", window.latency_s), ("energy", window.energy_j)):
            if len(values) < self._min_live:
                continue
            current = self._statistic_of(values)
            planned = self._planned.get((expert, category, quantity))
            if planned is None or abs(current - planned) > self._drift_ratio * max(planned, 1e-9):
                self._planned[(expert, category, quantity)] = current
                self.version += 1

    def _statistic_of(self, values: Iterable[float]) -> float:
        ordered = list(values)
        return (
            max(ordered)
            if self._statistic == "max"
            else quantile(ordered, 0.5 if self._statistic == "p50" else 0.95)
        )

    def latency_s(self, expert: str, category: str) -> float | None:
        """Worst-case latency of expert on category: live window if full enough, else file."""
        with self._lock:
            window = self._live.get((expert, category))
            if window is not None and len(window.latency_s) >= self._min_live:
                return self._planned.get((expert, category, "latency")) or self._statistic_of(
                    window.latency_s
                )
        stats = self._file_stats(expert, category)
        return None if stats is None else stats.latency_s[self._statistic]

    def energy_j(self, expert: str, category: str) -> float | None:
        """Worst-case energy per request of expert on category; None when unknown."""
        with self._lock:
            window = self._live.get((expert, category))
            if window is not None and len(window.energy_j) >= self._min_live:
                return self._planned.get((expert, category, "energy")) or self._statistic_of(
                    window.energy_j
                )
        stats = self._file_stats(expert, category)
        if stats is None or stats.energy_j is None:
            return None
        return stats.energy_j[self._statistic]

    def accuracy(self, expert: str, category: str) -> float | None:
        """Profiled accuracy, when the profile measured it on labelled prompts."""
        stats = self._file_stats(expert, category)
        return None if stats is None else stats.accuracy

    def _file_stats(self, expert: str, category: str) -> CategoryStats | None:
        profile = self._profile.experts.get(expert)
        if profile is None:
            return None
        return profile.categories.get(category) or profile.categories.get(ANY_CATEGORY)

    def samples(self, expert: str) -> int:
        """Observations behind an expert's figures (file samples plus live ones)."""
        profile = self._profile.experts.get(expert)
        from_file = sum(s.samples for s in profile.categories.values()) if profile else 0
        with self._lock:
            live = sum(len(w.latency_s) for (e, _), w in self._live.items() if e == expert)
        return from_file + live

    def age_s(self, expert: str) -> float | None:
        """Seconds since the expert's figures were last updated; None if never profiled."""
        with self._lock:
            live = [w.updated_unix_s for (e, _), w in self._live.items() if e == expert]
        if live:
            return max(0.0, time.time() - max(live))
        entry = self._sources.get(expert)
        if entry is not None:
            return max(0.0, time.time() - entry[1])
        return None
