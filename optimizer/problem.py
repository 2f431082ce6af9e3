"""The coarse-level selection problem: experts, worst-case costs and budgets (pure; no I/O).

The model follows docs/method.md §1.3 and §2.1 (instance file: docs/architecture.md §5).
A subset S of experts is feasible when

* energy: the sum of the ``top_k`` largest ``energy_j`` in S is ≤ ``energy_budget_j``
  (any k-subset of S may be activated by the fine level, so the coarse level pays the worst one);
* delay: for every category c, ``max_{n∈S} latency_s[c, n] + aggregation_s`` ≤
  ``delay_budget_s[c]`` (selected experts run in parallel; the slowest one bounds the delay).

Both constraints are non-decreasing in S, so the feasible family is down-closed. The delay
constraint decomposes per expert (S is delay-feasible iff every member is), which is why the
solvers first shrink the ground set to :meth:`Problem.allowed_mask` and then deal only with the
top-k energy sum. Budget comparisons allow a relative slack of :data:`BUDGET_RTOL` so that a
budget written as ``0.2 + 0.002`` in decimal is not missed by one ulp.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

logger = logging.getLogger(__name__)

BUDGET_RTOL = 1e-9
"""Relative slack on every budget comparison (dimensionless)."""


def fits_budget(value: float, budget: float) -> bool:
    """Whether a worst-case cost fits its budget, up to :data:`BUDGET_RTOL`.

    Args:
        value: The cost (joules or seconds).
        budget: The budget, same unit.

    Returns:
        True when ``value <= budget`` up to the relative slack.
    """
    return value <= budget + BUDGET_RTOL * max(1.0, abs(budget))


def members_of(mask: int) -> list[int]:
    """The expert indices set in a bitmask, ascending."""
    members = []
    index = 0
    while mask:
        if mask & 1:
            members.append(index)
        mask >>= 1
        index += 1
    return members


def mask_of(members: Iterable[int]) -> int:
    """The bitmask of a collection of expert indices."""
    mask = 0
    for index in members:
        mask |= 1 << int(index)
    return mask


@dataclass(frozen=True, slots=True, eq=False)
class Problem:
    """One coarse-level instance: experts with worst-case costs, top_k and the budgets.

    Attributes:
        experts: Expert names, one per expert (𝒩 in docs/method.md §1.1).
        categories: Application category names (C).
        top_k: Experts activated per prompt at the fine level (k); ``top_k >= |S|`` means every
            selected expert answers every request.
        energy_j: Shape (N,); worst-case energy of one request served by each expert (joules).
        latency_s: Shape (C, N); worst-case latency of expert n on category c (seconds).
        aggregation_s: Aggregation delay added to every request (T^agg, seconds).
        energy_budget_j: Energy budget Ē (joules).
        delay_budget_s: Shape (C,); per-category delay budget T̄_c (seconds).
    """

    experts: tuple[str, ...]
    categories: tuple[str, ...]
    top_k: int
    energy_j: NDArray[np.float64]
    latency_s: NDArray[np.float64]
    aggregation_s: float
    energy_budget_j: float
    delay_budget_s: NDArray[np.float64]

    def __post_init__(self) -> None:
        n_experts = len(self.experts)
        energy = np.array(self.energy_j, dtype=np.float64).reshape(-1)
        latency = np.array(self.latency_s, dtype=np.float64)
        delay = np.array(self.delay_budget_s, dtype=np.float64).reshape(-1)
        if latency.ndim == 1 and latency.size == 0:
            latency = latency.reshape(len(self.categories), n_experts)
        if energy.shape != (n_experts,):
            raise ValueError(f"energy_j must have {n_experts} values, got {energy.shape}")
        if latency.shape != (len(self.categories), n_experts):
            raise ValueError(
                f"latency_s must have shape ({len(self.categories)}, {n_experts}), "
                f"got {latency.shape}"
            )
        if delay.shape != (len(self.categories),):
            raise ValueError(f"delay_budget_s must have {len(self.categories)} values")
        if self.top_k < 1:
            raise ValueError("top_k must be >= 1")
        if len(set(self.experts)) != n_experts:
            raise ValueError("expert names must be unique")
        if len(set(self.categories)) != len(self.categories):
            raise ValueError("category names must be unique")
        for name, array in (("energy_j", energy), ("latency_s", latency), ("delay", delay)):
            if not np.all(np.isfinite(array)) or np.any(array < 0):
                raise ValueError(f"{name} must be finite and non-negative")
        for name, scalar in (
            ("aggregation_s", self.aggregation_s),
            ("energy_budget_j", self.energy_budget_j),
        ):
            if not np.isfinite(scalar) or scalar < 0:
                raise ValueError(f"{name} must be finite and non-negative")
        for array in (energy, latency, delay):
            array.flags.writeable = False
        # Frozen dataclass: store the validated read-only copies.
        object.__setattr__(self, "energy_j", energy)
        object.__setattr__(self, "latency_s", latency)
        object.__setattr__(self, "delay_budget_s", delay)
        object.__setattr__(self, "aggregation_s", float(self.aggregation_s))
        object.__setattr__(self, "energy_budget_j", float(self.energy_budget_j))

    @classmethod
    def build(
        cls,
        *,
        experts: Sequence[str],
        energy_j: ArrayLike,
        energy_budget_j: float,
        top_k: int = 1,
        latency_s: Mapping[str, ArrayLike] | None = None,
        delay_budget_s: Mapping[str, float] | None = None,
        aggregation_s: float = 0.0,
    ) -> Problem:
        """Build a problem from plain Python values (categories are the keys of latency_s).

        Args:
            experts: Expert names.
            energy_j: Worst-case energy per request of each expert (joules).
            energy_budget_j: Energy budget (joules).
            top_k: Fine-level k.
            latency_s: Category -> worst-case latency of each expert (seconds); None for none.
            delay_budget_s: Category -> delay budget (seconds); must have the same keys.
            aggregation_s: Aggregation delay (seconds).

        Returns:
            The validated problem.

        Raises:
            ValueError: When shapes or keys disagree or a value is negative or not finite.
        """
        latency = dict(latency_s or {})
        delay = dict(delay_budget_s or {})
        if set(latency) != set(delay):
            raise ValueError("latency_s and delay_budget_s must name the same categories")
        categories = tuple(latency)
        return cls(
            experts=tuple(experts),
            categories=categories,
            top_k=int(top_k),
            energy_j=np.asarray(energy_j, dtype=np.float64).reshape(-1),
            latency_s=np.array([latency[c] for c in categories], dtype=np.float64).reshape(
                len(categories), len(experts)
            ),
            aggregation_s=aggregation_s,
            energy_budget_j=energy_budget_j,
            delay_budget_s=np.array([delay[c] for c in categories], dtype=np.float64),
        )

    @property
    def n_experts(self) -> int:
        """Number of experts N."""
        return len(self.experts)

    def delay_ok(self) -> NDArray[np.bool_]:
        """Shape (N,); whether each expert alone meets every category's delay budget."""
        ok = np.ones(self.n_experts, dtype=bool)
        for c in range(len(self.categories)):
            for n in range(self.n_experts):
                if not fits_budget(
                    float(self.latency_s[c, n]) + self.aggregation_s,
                    float(self.delay_budget_s[c]),
                ):
                    ok[n] = False
        return ok

    def allowed_mask(self) -> int:
        """Bitmask of experts that are feasible as singletons (delay and energy).

        Every feasible subset lies inside it: delay feasibility is per expert, and a member whose
        own energy exceeds the budget breaks the top-k sum for any k ≥ 1.
        """
        ok = self.delay_ok()
        mask = 0
        for n in range(self.n_experts):
            if ok[n] and fits_budget(float(self.energy_j[n]), self.energy_budget_j):
                mask |= 1 << n
        return mask

    def energy_order(self) -> list[int]:
        """Expert indices sorted by energy, largest first (ties: lower index first)."""
        return sorted(range(self.n_experts), key=lambda n: (-float(self.energy_j[n]), n))

    def worst_case_energy_j(self, members: Iterable[int]) -> float:
        """E^wc(S): the sum of the top_k largest energies in S (joules); 0 for ∅."""
        energies = sorted((float(self.energy_j[n]) for n in members), reverse=True)
        return float(sum(energies[: self.top_k]))

    def worst_case_latency_s(self, members: Iterable[int]) -> dict[str, float]:
        """T_c^wc(S) per category: slowest member plus aggregation (seconds); 0 for ∅."""
        chosen = list(members)
        if not chosen:
            return dict.fromkeys(self.categories, 0.0)
        return {
            category: float(np.max(self.latency_s[c, chosen])) + self.aggregation_s
            for c, category in enumerate(self.categories)
        }

    def is_feasible(self, members: Iterable[int]) -> bool:
        """Whether S meets the energy budget and every category's delay budget."""
        chosen = list(members)
        if not fits_budget(self.worst_case_energy_j(chosen), self.energy_budget_j):
            return False
        latency = self.worst_case_latency_s(chosen)
        return all(
            fits_budget(latency[category], float(self.delay_budget_s[c]))
            for c, category in enumerate(self.categories)
        )

    def is_feasible_mask(self, mask: int) -> bool:
        """:meth:`is_feasible` for a subset given as a bitmask."""
        return self.is_feasible(members_of(mask))

    def with_budgets(
        self,
        *,
        energy_budget_j: float | None = None,
        delay_budget_s: Mapping[str, float] | None = None,
    ) -> Problem:
        """A copy with some budgets replaced (what a budget sweep varies)."""
        delay = self.delay_budget_s.copy()
        for category, budget in (delay_budget_s or {}).items():
            delay[self.categories.index(category)] = budget
        return Problem(
            experts=self.experts,
            categories=self.categories,
            top_k=self.top_k,
            energy_j=self.energy_j,
            latency_s=self.latency_s,
            aggregation_s=self.aggregation_s,
            energy_budget_j=(
                self.energy_budget_j if energy_budget_j is None else float(energy_budget_j)
            ),
            delay_budget_s=delay,
        )

    def feasible_masks(self, masks: NDArray[np.int64]) -> NDArray[np.bool_]:
        """Vectorised feasibility of many subsets given as integer bitmasks.

        Args:
            masks: Shape (B,); bitmasks over the N experts.

        Returns:
            Shape (B,); True where the subset is feasible.
        """
        allowed = self.allowed_mask()
        inside = (masks & ~np.int64(allowed)) == 0
        energy = self.topk_energy_of_masks(masks)
        limit = self.energy_budget_j + BUDGET_RTOL * max(1.0, abs(self.energy_budget_j))
        feasible: NDArray[np.bool_] = inside & (energy <= limit)
        return feasible

    def topk_energy_of_masks(self, masks: NDArray[np.int64]) -> NDArray[np.float64]:
        """Vectorised E^wc for integer bitmasks: one pass per expert, largest energy first."""
        total = np.zeros(masks.shape, dtype=np.float64)
        count = np.zeros(masks.shape, dtype=np.int64)
        for n in self.energy_order():
            bit = ((masks >> n) & 1).astype(bool)
            take = bit & (count < self.top_k)
            total[take] += float(self.energy_j[n])
            count += bit
        return total
