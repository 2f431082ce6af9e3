"""A hand-checkable coarse-level instance file (moe2 optimize --instance)."""

from __future__ import annotations

from typing import Any

INSTANCE: dict[str, Any] = {
    "experts": ["smollm2-135m", "gemma3-270m", "qwen2.5-0.5b"],
    "categories": ["sst2", "boolq"],
    "top_k": 1,
    "energy_j": [0.8, 1.5, 3.9],
    "latency_s": {"sst2": [0.2, 0.4, 0.9], "boolq": [0.3, 0.6, 1.4]},
    "aggregation_s": 0.002,
    "energy_budget_j": 2.0,
    "delay_budget_s": {"sst2": 1.0, "boolq": 1.0},
    "objective": {"kind": "best-of", "scores": [[0.9, 0.1, 0.4], [0.2, 0.8, 0.3]]},
}
