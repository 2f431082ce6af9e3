"""What a budget may be, and how much planning work one request may ask for, written once.

Used by Ask and Plan (core and servicer) and by the cluster file's default budgets. A budget is a
finite positive number below a sanity bound: ``inf`` and NaN are not "no budget" (leave the field
unset for that), and a delay budget becomes the gRPC deadline of every dispatched call, so it
must stay far below what a deadline can hold (1e10 s overflows it).
"""

from __future__ import annotations

import math

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
