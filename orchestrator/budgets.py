"""What a budget may be, and how much planning work one request may ask for, written once.

Used by Ask and Plan (core and servicer) and by the cluster file's default budgets. A budget is a
finite positive number below a sanity bound: ``inf`` and NaN are not "no budget" (leave the field
unset for that), and a delay budget becomes the gRPC deadline of every dispatched call, so it
must stay far below what a deadline can hold (1e10 s overflows it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MAX_DELAY_BUDGET_S = 3600.0
"""One hour: the longest delay budget (and per-call deadline) accepted."""

MAX_ENERGY_BUDGET_J = 1e6
"""One megajoule (0.28 kWh) per request: the largest energy budget accepted."""

MAX_ENUMERATION_EXPERTS = 16
"""Plan methods that enumerate subsets (exhaustive, maximal) run over at most this many experts
(2^16 subsets, well under a second); larger fleets must use dmo, greedy or milp."""

ENUMERATING_METHODS = frozenset({"exhaustive", "maximal"})


class BudgetValueError(ValueError):
    """A budget that is not a finite positive number within bounds; the message names the field."""


def check_budget(field: str, value: float, maximum: float) -> float:
    """The value itself, or BudgetValueError naming ``field`` (no prefix when it is empty)."""
    prefix = f"{field}: " if field else ""
    if not math.isfinite(value) or value <= 0:
        raise BudgetValueError(f"{prefix}must be a finite positive number, got {value}")
    if value > maximum:
        raise BudgetValueError(f"{prefix}{value:g} exceeds the maximum of {maximum:g}")
    return value


def check_delay_budget_s(value: float, field: str = "delay_budget_s") -> float:
    """A delay budget in seconds (0 < value <= MAX_DELAY_BUDGET_S)."""
    return check_budget(field, value, MAX_DELAY_BUDGET_S)


def check_energy_budget_j(value: float, field: str = "energy_budget_j") -> float:
    """An energy budget in joules (0 < value <= MAX_ENERGY_BUDGET_J)."""
    return check_budget(field, value, MAX_ENERGY_BUDGET_J)


def check_plan_work(method: str, experts: int) -> None:
    """Refuse an enumerating method over more than MAX_ENUMERATION_EXPERTS experts."""
    if method in ENUMERATING_METHODS and experts > MAX_ENUMERATION_EXPERTS:
        raise BudgetValueError(
            f"method: {method} enumerates subsets and is limited to "
            f"{MAX_ENUMERATION_EXPERTS} experts, {experts} are up; use dmo, greedy or milp"
        )


SERVER_REPLY_SLACK_S = 1.0
"""The SDK's RPC deadline is a request's delay budget plus this: room for the orchestrator to
answer with its own status (a budget it refuses is INVALID_ARGUMENT from the server, a budget
it overran DEADLINE_EXCEEDED with the experts' outcomes, never a bare client-side timeout)."""


def rpc_timeout_s(delay_budget_s: float | None) -> float | None:
    """The client-side deadline of an Ask with this delay budget (None: no deadline)."""
    if delay_budget_s is None or not delay_budget_s > 0:  # the server refuses a bad one
        return None
    return delay_budget_s + SERVER_REPLY_SLACK_S


@dataclass(frozen=True, slots=True)
class Budgets:
    """One request's budgets, validated when built; ``None`` is "no budget", its only encoding.

    ``delay_budget_s`` applies to every category a request plans for, except those named in
    ``category_delay_budget_s`` (Plan's per-category budgets; when any are named they are the
    categories planned for). Raises BudgetValueError naming the field when a value is out of
    bounds (``check_budget``).
    """

    energy_budget_j: float | None = None
    delay_budget_s: float | None = None
    category_delay_budget_s: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.energy_budget_j is not None:
            check_energy_budget_j(self.energy_budget_j)
        if self.delay_budget_s is not None:
            check_delay_budget_s(self.delay_budget_s)
        for name, value in self.category_delay_budget_s:
            check_delay_budget_s(value, f"delay_budget_s[{name}]")
        object.__setattr__(
            self,
            "category_delay_budget_s",
            tuple(sorted(dict(self.category_delay_budget_s).items())),
        )

    @classmethod
    def of(
        cls,
        *,
        energy_budget_j: float | None = None,
        delay_budget_s: float | None = None,
        category_delay_budget_s: Mapping[str, float] | None = None,
    ) -> Budgets:
        """Budgets from a request's fields (a mapping of per-category delay budgets)."""
        return cls(energy_budget_j, delay_budget_s, tuple((category_delay_budget_s or {}).items()))

    @property
    def has_delay(self) -> bool:
        """Whether any delay budget applies."""
        return self.delay_budget_s is not None or bool(self.category_delay_budget_s)

    def or_defaults(self, defaults: Budgets) -> Budgets:
        """Each budget this request left unset taken from ``defaults`` (the cluster's)."""
        energy = (
            self.energy_budget_j if self.energy_budget_j is not None else defaults.energy_budget_j
        )
        if self.has_delay:
            return Budgets(energy, self.delay_budget_s, self.category_delay_budget_s)
        return Budgets(energy, defaults.delay_budget_s, defaults.category_delay_budget_s)

    def categories(self, known: Sequence[str]) -> list[str]:
        """The categories planned for: the named ones if any, else ``known``."""
        return [name for name, _ in self.category_delay_budget_s] or list(known)

    def delay_by_category(self, categories: Sequence[str]) -> dict[str, float] | None:
        """Each category's delay budget (the scalar → per-category expansion); None: no budget."""
        if not self.has_delay:
            return None
        named = dict(self.category_delay_budget_s)
        delays = {c: named.get(c, self.delay_budget_s) for c in categories}
        return {c: d for c, d in delays.items() if d is not None}

    def dispatch_deadline_s(self, elapsed_s: float, *, margin_s: float, default_s: float) -> float:
        """What a call dispatched now may take (seconds; zero or less: the budget is spent).

        Ask's delay budget less ``margin_s`` (kept for fusion) and the ``elapsed_s`` already
        spent, or ``default_s`` without a delay budget.
        """
        if self.delay_budget_s is None:
            return default_s
        return self.delay_budget_s - margin_s - elapsed_s

    def within_delay(self, latency_s: float) -> bool:
        """Whether a request that took ``latency_s`` kept its delay budget (True: none)."""
        return self.delay_budget_s is None or latency_s <= self.delay_budget_s

    def within_energy(self, energy_j: float | None) -> bool | None:
        """Whether ``energy_j`` kept the energy budget; None when unknown (never a guess)."""
        if self.energy_budget_j is None or energy_j is None:
            return None
        return energy_j <= self.energy_budget_j
