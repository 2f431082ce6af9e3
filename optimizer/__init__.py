"""Coarse-level expert selection for MoE² (pure: dataclasses and numpy arrays in and out).

Typical use::

    from optimizer import BestOfObjective, Problem, solve

    problem = Problem.build(experts=["a", "b"], energy_j=[1.0, 2.0], energy_budget_j=2.5)
    solution = solve(problem, BestOfObjective(scores), method="dmo")

See docs/optimizer.md for the algorithm, its modes and the instance file.
"""

from optimizer.instance import Instance, InstanceError, parse_instance, solution_to_dict
from optimizer.monotonic import DmoMode, solve_dmo
from optimizer.objectives import (
    BestOfObjective,
    GatedMetric,
    GatedObjective,
    MonotonicityReport,
    SetObjective,
    check_monotonicity,
)
from optimizer.problem import Problem
from optimizer.reference import maximal_feasible_subsets
from optimizer.result import Solution
from optimizer.selection import METHODS, Method, solve

__all__ = [
    "METHODS",
    "BestOfObjective",
    "DmoMode",
    "GatedMetric",
    "GatedObjective",
    "Instance",
    "InstanceError",
    "Method",
    "MonotonicityReport",
    "Problem",
    "SetObjective",
    "Solution",
    "check_monotonicity",
    "maximal_feasible_subsets",
    "parse_instance",
    "solution_to_dict",
    "solve",
    "solve_dmo",
]
