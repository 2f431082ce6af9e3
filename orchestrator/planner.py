"""The coarse level: pick the expert subset S for given budgets with the optimizer (DMO).

Inputs are the experts that are up, their worst-case latency per category and energy per
request from the ProfileBook, and an objective: ``gated`` (the MoE² objective over recorded
validation responses and the train-once gate), ``best-of`` (profiled per-category accuracy), or
``coverage`` (|S|/N: more experts, when nothing is known about quality). Plans are cached per
(budgets, category, k, method, fleet version, profile version), so a plan is recomputed exactly
when the fleet or a drifting profile may have changed feasibility.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from edge_node.files import atomic_write_bytes
from optimizer import (
    METHODS,
    BestOfObjective,
    GatedObjective,
    Method,
    Problem,
    SetObjective,
    Solution,
    solve,
)
from optimizer.evidence import HitsFunction, guarded_plan
from optimizer.fine import FusionRule, LinearPool, LogLinearPool
from orchestrator.budgets import Budgets
from orchestrator.profiles import ProfileBook

logger = logging.getLogger(__name__)

ObjectiveKind = Literal["gated", "best-of", "coverage"]
FloatArray = npt.NDArray[np.float64]


class PlanError(Exception):
    """No non-empty subset meets the budgets; the message names the budget that cannot be met."""


class SelectionDataError(Exception):
    """The recorded validation responses file is unusable."""


@dataclass(frozen=True, slots=True)
class OutOfFoldHits:
    """Per planning prompt, whether the fine level refitted without that prompt answers it.

    The single-expert guard's evidence (``optimizer.evidence``): every prompt of the planning
    split (train + validation) answered by a fine level fitted on the other folds, for every
    subset S of the experts and every top_k the sweep planned for. Three times the prompts of
    the validation split alone, none of them flattering the fit that answers them.

    Attributes:
        subsets: ``[M, N]`` booleans, one row per subset S.
        top_ks: ``[K]`` the top_k values.
        hits: ``[M, K, P]`` booleans.
    """

    subsets: npt.NDArray[np.bool_]
    top_ks: npt.NDArray[np.int64]
    hits: npt.NDArray[np.bool_]

    def covers(self, n_experts: int, top_k: int) -> bool:
        """Whether every subset of up to ``n_experts`` has hits recorded for ``top_k``."""
        recorded = self.top_ks.tolist()
        width = self.subsets.shape[1]
        complete = self.subsets.shape[0] == 2**width - 1 and n_experts <= width
        return complete and all(
            any(min(int(k), size) == min(top_k, size) for k in recorded)
            for size in range(1, n_experts + 1)
        )

    def lookup(
        self, members: Sequence[int], top_k: int, rows: npt.NDArray[np.bool_]
    ) -> npt.NDArray[np.bool_] | None:
        """The hits of S = ``members`` (expert indices) with ``top_k`` on ``rows``; None if absent.

        A ``top_k`` of at least |S| is the same configuration as the largest recorded one of
        at least |S| (every member of S answers).
        """
        mask = np.zeros(self.subsets.shape[1], dtype=bool)
        mask[list(members)] = True
        found = np.flatnonzero((self.subsets == mask).all(axis=1))
        if found.size == 0:
            return None
        size = int(mask.sum())
        effective = min(top_k, size)
        columns = [j for j, k in enumerate(self.top_ks.tolist()) if min(int(k), size) == effective]
        if not columns:
            return None
        return np.asarray(self.hits[found[0], columns[0]][rows])


@dataclass(frozen=True, slots=True)
class SelectionData:
    """Recorded validation responses for the gated objective (written by the testbed).

    File: one ``.npz`` with ``experts`` [N] (str), ``categories`` [P] (str), ``gate_logits``
    [P, N], ``option_probs`` [P, N, O] (zero-padded), ``labels`` [P], ``n_options`` [P]
    (real options per prompt; files without it are read as having all O) and ``held_out``
    [P] (bool: rows the fine level was not fitted on, the single-expert guard's evidence;
    files without it plan without the guard).
    """

    experts: tuple[str, ...]
    categories: npt.NDArray[np.str_]
    gate_logits: npt.NDArray[np.float64]
    option_probs: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int64]
    n_options: npt.NDArray[np.int64] | None = None
    held_out: npt.NDArray[np.bool_] | None = None
    out_of_fold: OutOfFoldHits | None = None

    @classmethod
    def load(cls, path: Path) -> SelectionData:
        """Read and check shapes; raises SelectionDataError naming the file and array."""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as err:
            raise SelectionDataError(f"selection file {path} cannot be read: {err}") from None
        for key in ("experts", "categories", "gate_logits", "option_probs", "labels"):
            if key not in arrays:
                raise SelectionDataError(f"{path}: missing array {key!r}")
        data = cls(
            experts=tuple(str(e) for e in arrays["experts"]),
            categories=arrays["categories"].astype(str),
            gate_logits=arrays["gate_logits"].astype(np.float64),
            option_probs=arrays["option_probs"].astype(np.float64),
            labels=arrays["labels"].astype(np.int64),
            n_options=arrays["n_options"].astype(np.int64) if "n_options" in arrays else None,
            held_out=arrays["held_out"].astype(bool) if "held_out" in arrays else None,
            out_of_fold=(
                OutOfFoldHits(
                    subsets=arrays["oof_subsets"].astype(bool),
                    top_ks=arrays["oof_top_ks"].astype(np.int64),
                    hits=arrays["oof_hits"].astype(bool),
                )
                if {"oof_subsets", "oof_top_ks", "oof_hits"} <= set(arrays)
                else None
            ),
        )
        prompts, experts = data.gate_logits.shape
        if data.n_options is not None and data.n_options.shape != (prompts,):
            raise SelectionDataError(f"{path}: n_options must have {prompts} entries")
        if data.held_out is not None and data.held_out.shape != (prompts,):
            raise SelectionDataError(f"{path}: held_out must have {prompts} entries")
        oof = data.out_of_fold
        if oof is not None and (
            oof.subsets.ndim != 2
            or oof.subsets.shape[1] != experts
            or oof.hits.shape != (oof.subsets.shape[0], oof.top_ks.shape[0], prompts)
        ):
            raise SelectionDataError(f"{path}: oof_subsets/oof_top_ks/oof_hits shapes disagree")
        if experts != len(data.experts) or data.option_probs.shape[:2] != (prompts, experts):
            raise SelectionDataError(f"{path}: gate_logits/option_probs shapes disagree")
        if data.labels.shape != (prompts,) or data.categories.shape != (prompts,):
            raise SelectionDataError(f"{path}: labels/categories must have {prompts} entries")
        return data

    def single_accuracy(self, experts: Sequence[str]) -> FloatArray:
        """Each expert's own (raw) accuracy on every planning row: the best single's evidence."""
        probs = self.option_probs[:, [self.experts.index(e) for e in experts]]
        correct = probs.argmax(axis=2) == self.labels[:, None]
        return np.asarray(correct.mean(axis=0), dtype=np.float64)

    def save(self, path: Path) -> None:
        """Write the .npz (atomically)."""
        buffer = io.BytesIO()
        extra: dict[str, Any] = {} if self.held_out is None else {"held_out": self.held_out}
        if self.out_of_fold is not None:
            extra.update(
                oof_subsets=self.out_of_fold.subsets,
                oof_top_ks=self.out_of_fold.top_ks,
                oof_hits=self.out_of_fold.hits,
            )
        np.savez_compressed(
            buffer,
            **extra,
            experts=np.array(self.experts),
            categories=self.categories,
            gate_logits=self.gate_logits,
            option_probs=self.option_probs,
            labels=self.labels,
            n_options=(
                self.n_options
                if self.n_options is not None
                else np.full(len(self.labels), self.option_probs.shape[2], dtype=np.int64)
            ),
        )
        atomic_write_bytes(path, buffer.getvalue())


@dataclass(frozen=True, slots=True)
class Plan:
    """A coarse-level plan and its certificate."""

    subset: tuple[str, ...]
    candidates: tuple[str, ...]
    objective: ObjectiveKind
    value: float
    upper_bound: float
    evaluations: int
    solve_s: float
    predicted_energy_j: float
    predicted_latency_s: dict[str, float]
    top_k: int
    method: str
    energy_j: dict[str, float]  # worst-case energy per expert used for planning
    latency_s: dict[str, dict[str, float]]  # category -> expert -> worst-case latency


class Planner:
    """Coarse-level planning with a cache; thread-safe (plans run in worker threads)."""

    def __init__(
        self,
        book: ProfileBook,
        *,
        aggregation_s: float,
        selection: SelectionData | None = None,
        objective: Literal["auto", "gated", "best-of", "coverage"] = "auto",
        fusion: FusionRule | None = None,
        fusion_experts: Sequence[str] = (),
    ) -> None:
        """Binds the planner's inputs.

        Args:
        book: Measured latency, energy and accuracy per expert and category.
        aggregation_s: T^agg planned for on top of the experts' latency.
        selection: Recorded validation answers for the gated objective.
        objective: Which set objective to plan with.
        fusion: The fine level's fusion rule (the gate's), over ``fusion_experts``.
        fusion_experts: The experts the fusion rule's parameters cover, in order.
        """
        self._book = book
        self._aggregation_s = aggregation_s
        self._selection = selection
        self._fusion: FusionRule = fusion if fusion is not None else LinearPool()
        self._fusion_experts = tuple(fusion_experts)
        self._objective = objective
        self._lock = threading.Lock()
        self._cache: dict[tuple[object, ...], Plan] = {}
        self.solves = 0
        """Plans solved (not served from the cache) since start."""

    def planned(
        self,
        candidates: Sequence[str],
        *,
        budgets: Budgets,
        categories: Sequence[str],
        top_k: int,
        fleet_version: int,
        method: str = "dmo",
        overhead_s: float = 0.0,
    ) -> tuple[Plan, bool]:
        """S for these budgets over these candidates, and whether it was solved now (not cached).

        ``categories`` are the categories whose delay budgets apply (a request's own category,
        or every planned category). ``overhead_s`` is the orchestrator's own time per request
        (prompt encoder and gate), added to the aggregation delay so the plan's worst case
        covers the whole request.

        Raises:
            PlanError: no non-empty subset is feasible; names the binding budget.
        """
        delay = budgets.delay_by_category(categories)
        key = (
            tuple(sorted(candidates)),
            budgets.energy_budget_j,
            None if delay is None else tuple(sorted(delay.items())),
            tuple(categories),
            top_k,
            method,
            fleet_version,
            self._book.version,
            overhead_s,
        )
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached, False
        plan = self._solve(
            list(candidates),
            budgets.energy_budget_j,
            delay,
            list(categories),
            top_k,
            method,
            self._aggregation_s + overhead_s,
        )
        with self._lock:
            self.solves += 1
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = plan
        return plan, True

    def _figures(
        self, candidates: list[str], categories: list[str], need_energy: bool
    ) -> tuple[list[str], dict[str, float], dict[str, dict[str, float]], list[str]]:
        """Experts with known figures, their worst-case energy and latency, and the excluded."""
        usable: list[str] = []
        excluded: list[str] = []
        energy: dict[str, float] = {}
        latency: dict[str, dict[str, float]] = {c: {} for c in categories}
        # Energy: the largest per-category figure over every profiled category, whatever the
        # request's category, as the sweep plans (testbed.evaluation.worst_case_costs).
        energy_categories = self._book.categories() or categories or ["*"]
        for name in candidates:
            energies = [
                e for c in energy_categories if (e := self._book.energy_j(name, c)) is not None
            ]
            latencies = {c: self._book.latency_s(name, c) for c in categories}
            if any(v is None for v in latencies.values()) or (need_energy and not energies):
                excluded.append(name)
                continue
            usable.append(name)
            energy[name] = max(energies) if energies else 0.0
            for c, value in latencies.items():
                assert value is not None
                latency[c][name] = value
        return usable, energy, latency, excluded

    def _objective_for(
        self, experts: list[str], categories: list[str], top_k: int
    ) -> tuple[ObjectiveKind, SetObjective, HitsFunction | None]:
        """The objective to plan with and, for the gated one, the guard's evidence (or None)."""
        kind = self._objective
        selection = self._selection
        if (
            kind in ("auto", "gated")
            and selection is not None
            and set(experts) <= set(selection.experts)
        ):
            # Every planning row, whatever the request's category: the gate conditions on the
            # category already, and one category's rows are too few evidence for the guard
            # (docs/method.md §2.6). The sweep's moe2 rows score plans made the same way.
            every = np.ones(len(selection.labels), dtype=bool)
            planning = self._gated(selection, experts, every, top_k)
            return "gated", planning, self._guard_evidence(selection, experts, top_k)
        if kind == "gated":
            raise PlanError("objective 'gated' needs a selection file covering every expert")
        rows_of = categories or self._book.categories()
        accuracy = [[self._book.accuracy(e, c) for e in experts] for c in rows_of]
        if (
            kind in ("auto", "best-of")
            and accuracy
            and all(v is not None for row in accuracy for v in row)
        ):
            return "best-of", BestOfObjective(np.array(accuracy, dtype=np.float64)), None
        return "coverage", BestOfObjective(np.eye(len(experts))), None

    def _guard_evidence(
        self,
        selection: SelectionData,
        experts: list[str],
        top_k: int,
    ) -> HitsFunction | None:
        """Per-prompt hits of a subset on prompts its fine level was not fitted on.

        The out-of-fold hits of every planning prompt when the file has them (None for a
        top_k they do not cover); else the validation rows answered by the fine level itself;
        else None (no guard).
        """
        columns = [selection.experts.index(e) for e in experts]
        oof = selection.out_of_fold
        if oof is not None:  # a top_k it does not cover has no evidence (the rows were fitted)
            if not oof.covers(len(experts), top_k):
                return None
            rows = np.ones(len(selection.labels), dtype=bool)

            def out_of_fold(members: Sequence[int]) -> npt.NDArray[np.bool_]:
                found = oof.lookup([columns[m] for m in members], top_k, rows)
                if found is None:  # the sweep records every subset and top_k it plans for
                    raise PlanError(
                        f"the selection file has no out-of-fold answers for "
                        f"{[experts[m] for m in members]} at top_k {top_k}"
                    )
                return found

            return out_of_fold
        if selection.held_out is not None and selection.held_out.sum() >= 2:
            return self._gated(selection, experts, selection.held_out, top_k).hits
        return None

    def _gated(
        self,
        selection: SelectionData,
        experts: list[str],
        rows: npt.NDArray[np.bool_],
        top_k: int,
    ) -> GatedObjective:
        """The gated objective over these experts on these recorded rows."""
        columns = [selection.experts.index(e) for e in experts]
        fusion = self._fusion
        category_rows = None
        if isinstance(fusion, LogLinearPool):
            if not set(experts) <= set(self._fusion_experts):
                raise PlanError("the gate's fusion rule does not cover every expert")
            fusion = fusion.restrict([self._fusion_experts.index(e) for e in experts])
            category_rows = fusion.category_rows(selection.categories[rows].tolist())
        return GatedObjective(
            selection.gate_logits[np.ix_(rows, np.asarray(columns))],
            selection.option_probs[rows][:, columns],
            selection.labels[rows],
            top_k=top_k,
            fusion=fusion,
            n_options=None if selection.n_options is None else selection.n_options[rows],
            category_rows=category_rows,
        )

    def _solve(
        self,
        candidates: list[str],
        energy_budget_j: float | None,
        delay_budget_s: dict[str, float] | None,
        categories: list[str],
        top_k: int,
        method: str,
        aggregation_s: float,
    ) -> Plan:
        planned_categories = categories if delay_budget_s is not None else []
        usable, energy, latency, excluded = self._figures(
            candidates, planned_categories, need_energy=energy_budget_j is not None
        )
        if excluded:
            logger.info("not planning with %s: no profile for the budgets' categories", excluded)
        if not usable:
            if not candidates:
                raise PlanError("no expert is up")
            what = f"category {', '.join(planned_categories)}" if planned_categories else "energy"
            raise PlanError(
                f"budgets need measured figures, but no expert that is up has a profile for "
                f"{what}: run `moe2 profile --cluster CLUSTER --out profile.json` and set "
                '`profile = "profile.json"` in the cluster file (or ask without budgets)'
            )
        if method not in METHODS:
            raise PlanError(f"method: must be one of {', '.join(METHODS)}, got {method!r}")
        # The optimizer takes finite budgets: without an energy budget, the whole fleet's
        # worst case, which no subset can exceed.
        budget_e = sum(energy.values()) if energy_budget_j is None else energy_budget_j
        objectives: dict[int, tuple[ObjectiveKind, SetObjective, HitsFunction | None]] = {}

        def objective_at(k: int) -> tuple[ObjectiveKind, SetObjective, HitsFunction | None]:
            if k not in objectives:
                objectives[k] = self._objective_for(usable, categories, k)
            return objectives[k]

        def solve_at(k: int) -> tuple[Problem, Solution]:
            problem = Problem.build(
                experts=usable,
                energy_j=[energy[e] for e in usable],
                energy_budget_j=budget_e,
                top_k=k,
                latency_s={c: [latency[c][e] for e in usable] for c in planned_categories},
                delay_budget_s={c: (delay_budget_s or {})[c] for c in planned_categories},
                aggregation_s=aggregation_s,
            )
            return problem, solve(problem, objective_at(k)[1], method=cast(Method, method))

        kind = objective_at(top_k)[0]
        selection = self._selection
        if method == "dmo" and selection is not None:
            # MoE²'s single-expert guard and its choice of fewer experts per prompt
            # (optimizer.evidence.guarded_plan)
            _, solution, planned_k = guarded_plan(
                solve_at,
                top_k,
                selection.single_accuracy(usable),
                lambda k: objective_at(k)[2],
            )
        else:
            _, solution = solve_at(top_k)
            planned_k = top_k
        if not solution.feasible or not solution.subset_names:
            raise PlanError(
                self._why_infeasible(
                    usable,
                    energy,
                    latency,
                    energy_budget_j,
                    delay_budget_s,
                    planned_categories,
                    aggregation_s,
                )
            )
        return Plan(
            subset=tuple(solution.subset_names),
            candidates=tuple(usable),
            objective=kind,
            value=solution.value,
            upper_bound=solution.upper_bound,
            evaluations=solution.evaluations,
            solve_s=solution.seconds,
            predicted_energy_j=solution.energy_j,
            predicted_latency_s=dict(solution.latency_s),
            top_k=planned_k,
            method=solution.method,
            energy_j=energy,
            latency_s=latency,
        )

    def _why_infeasible(
        self,
        experts: list[str],
        energy: dict[str, float],
        latency: dict[str, dict[str, float]],
        energy_budget_j: float | None,
        delay_budget_s: dict[str, float] | None,
        categories: list[str],
        aggregation_s: float,
    ) -> str:
        for c in categories:
            fastest = min(latency[c].values())
            budget = (delay_budget_s or {})[c]
            if fastest + aggregation_s > budget:
                return (
                    f"delay_budget_s {budget:g} s cannot be met for category {c}: the fastest "
                    f"expert's worst case is {fastest:.3f} s plus {aggregation_s:.3f} s "
                    "aggregation and gating"
                )
        cheapest = min(energy.values())
        if energy_budget_j is not None and cheapest > energy_budget_j:
            return (
                f"energy_budget_j {energy_budget_j:g} J cannot be met: the cheapest expert's "
                f"worst case is {cheapest:.3f} J per request"
            )
        return "energy_budget_j and delay_budget_s cannot be met together by any expert"
