"""Result values shared by the solvers: the raw search outcome and the public Solution."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SearchResult:
    """What one solver found, before timing and cost figures are attached.

    Attributes:
        mask: Bitmask of the chosen subset (0 when no non-empty feasible subset exists).
        value: F of the chosen subset (F(∅) when mask is 0).
        upper_bound: A valid upper bound on F over all non-empty feasible subsets, as far as
            the method can certify it (``inf`` when it cannot say anything).
        nodes: Search nodes visited (0 for methods that do not search a tree).
    """

    mask: int
    value: float
    upper_bound: float
    nodes: int = 0


@dataclass(frozen=True, slots=True)
class Solution:
    """The coarse-level decision with its certificate and cost figures.

    Attributes:
        subset: Chosen expert indices, ascending; empty when no non-empty subset is feasible.
        subset_names: Their names, same order.
        value: F(subset) (F(∅) for the empty answer).
        feasible: Whether a non-empty feasible subset was returned.
        energy_j: Worst-case energy of the subset, E^wc(S) (joules).
        latency_s: Worst-case latency per category, T_c^wc(S) (seconds).
        upper_bound: Certified upper bound on the optimum (``inf`` when unknown); equal to
            ``value`` when the method proved optimality.
        evaluations: Distinct F evaluations spent by this call.
        seconds: Wall-clock time of the call (seconds).
        method: The method that produced it.
        nodes: Search-tree nodes visited (DMO only; 0 otherwise).
    """

    subset: tuple[int, ...]
    subset_names: tuple[str, ...]
    value: float
    feasible: bool
    energy_j: float
    latency_s: Mapping[str, float]
    upper_bound: float
    evaluations: int
    seconds: float
    method: str
    nodes: int = 0

    @property
    def gap(self) -> float:
        """upper_bound - value: 0 when optimality is certified, ``inf`` when unknown."""
        if math.isinf(self.upper_bound):
            return math.inf
        return max(0.0, self.upper_bound - self.value)

    @property
    def proven_optimal(self) -> bool:
        """Whether the certificate closes: the bound equals the value (up to 1e-12)."""
        return self.gap <= 1e-12 * max(1.0, abs(self.value))
