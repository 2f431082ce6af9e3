"""Budgets: one value, validated once, with one meaning of "no budget" (None)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.budgets import (
    MAX_DELAY_BUDGET_S,
    SERVER_REPLY_SLACK_S,
    Budgets,
    BudgetValueError,
    rpc_timeout_s,
)
from orchestrator.config import ClusterConfig
from orchestrator.planner import Planner
from orchestrator.profiles import CategoryStats, ExpertProfile, Profile, ProfileBook


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"energy_budget_j": 0.0}, r"^energy_budget_j: must be a finite positive number, got 0"),
        ({"delay_budget_s": math.inf}, r"^delay_budget_s: must be a finite positive"),
        ({"delay_budget_s": math.nan}, r"^delay_budget_s: must be a finite positive"),
        ({"delay_budget_s": 2 * MAX_DELAY_BUDGET_S}, r"^delay_budget_s: 7200 exceeds"),
        ({"category_delay_budget_s": {"qa": -1.0}}, r"^delay_budget_s\[qa\]: must be"),
    ],
)
def test_a_bad_budget_is_refused_when_built_naming_its_field(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(BudgetValueError, match=message):
        Budgets.of(**fields)  # type: ignore[arg-type]


def test_none_is_the_only_no_budget_and_an_unknown_energy_is_not_a_pass() -> None:
    none = Budgets()
    assert not none.has_delay
    assert none.delay_by_category(["qa", "sst2"]) is None
    assert none.within_delay(1e9)
    assert none.within_energy(1e9) is None  # no energy budget: nothing to keep
    capped = Budgets(energy_budget_j=2.0)
    assert capped.within_energy(1.5) is True
    assert capped.within_energy(2.5) is False
    assert capped.within_energy(None) is None  # unknown is not zero


def test_a_scalar_delay_budget_applies_to_every_category_and_named_ones_override() -> None:
    scalar = Budgets(delay_budget_s=1.5)
    assert scalar.delay_by_category(["qa", "sst2"]) == {"qa": 1.5, "sst2": 1.5}
    assert scalar.categories(["qa", "sst2"]) == ["qa", "sst2"]
    named = Budgets.of(category_delay_budget_s={"sst2": 0.5, "qa": 2.0})
    assert named.categories(["ignored"]) == ["qa", "sst2"]
    assert named.delay_by_category(named.categories([])) == {"qa": 2.0, "sst2": 0.5}
    assert named == Budgets.of(category_delay_budget_s={"qa": 2.0, "sst2": 0.5})  # order-free
    assert hash(named) == hash(Budgets.of(category_delay_budget_s={"qa": 2.0, "sst2": 0.5}))


def test_the_request_wins_and_defaults_fill_only_what_it_left_unset() -> None:
    defaults = ClusterConfig(energy_budget_j=3.0, delay_budget_s=2.0).budgets
    assert Budgets().or_defaults(defaults) == Budgets(3.0, 2.0)
    assert Budgets(energy_budget_j=1.0).or_defaults(defaults) == Budgets(1.0, 2.0)
    assert Budgets(delay_budget_s=0.5).or_defaults(defaults) == Budgets(3.0, 0.5)
    named = Budgets.of(category_delay_budget_s={"qa": 0.5})
    assert named.or_defaults(defaults).delay_by_category(["qa"]) == {"qa": 0.5}


@given(
    budget=st.floats(min_value=1e-3, max_value=100.0),
    elapsed=st.floats(min_value=0.0, max_value=100.0),
    margin=st.floats(min_value=0.0, max_value=1.0),
)
def test_the_dispatch_deadline_is_what_is_left_of_the_budget(
    budget: float, elapsed: float, margin: float
) -> None:
    left = Budgets(delay_budget_s=budget).dispatch_deadline_s(
        elapsed, margin_s=margin, default_s=60.0
    )
    assert left == pytest.approx(budget - margin - elapsed)
    assert Budgets().dispatch_deadline_s(elapsed, margin_s=margin, default_s=60.0) == 60.0


def test_the_sdk_deadline_leaves_the_server_room_to_answer() -> None:
    assert rpc_timeout_s(None) is None
    assert rpc_timeout_s(-1.0) is None  # the server refuses it with INVALID_ARGUMENT
    assert rpc_timeout_s(2.0) == 2.0 + SERVER_REPLY_SLACK_S


def test_the_planner_counts_what_it_solves_and_serves_the_rest_from_its_cache() -> None:
    figures = dict.fromkeys(("p50", "p95", "max"), 0.1)
    stats = {
        "qa": CategoryStats(
            samples=5, latency_s=figures, energy_j={k: 10 * v for k, v in figures.items()}
        )
    }
    book = ProfileBook(
        Profile(experts={name: ExpertProfile(categories=stats) for name in ("a", "b")})
    )
    planner = Planner(book, aggregation_s=0.0)
    ask: dict[str, Any] = {"categories": ["qa"], "top_k": 1, "fleet_version": 0}
    first, solved = planner.planned(["a", "b"], budgets=Budgets(delay_budget_s=1.0), **ask)
    again, solved_again = planner.planned(["a", "b"], budgets=Budgets(delay_budget_s=1.0), **ask)
    assert (solved, solved_again, planner.solves) == (True, False, 1)
    assert again is first
    # no energy budget is planned as a bound no subset can exceed: both experts fit
    both = planner.planned(["a", "b"], budgets=Budgets(), **{**ask, "top_k": 2})[0]
    assert set(both.subset) == {"a", "b"}
    assert planner.solves == 2
    tight = planner.planned(
        ["a", "b"], budgets=Budgets(energy_budget_j=1.0), **{**ask, "top_k": 2}
    )[0]
    assert len(tight.subset) == 1  # the top-2 worst case (2 J) breaks a 1 J budget
