"""Hand-made expert profiles for orchestrator tests."""

from __future__ import annotations

from orchestrator.profiles import CategoryStats, ExpertProfile, Profile


def profile(figures: dict[str, tuple[float, float]], category: str = "qa") -> Profile:
    """A profile with (latency_s, energy_j) per expert, the same for p50/p95/max."""
    return Profile(
        experts={
            name: ExpertProfile(
                categories={
                    category: CategoryStats(
                        samples=10,
                        latency_s={"p50": lat, "p95": lat, "max": lat},
                        energy_j={"p50": joules, "p95": joules, "max": joules},
                    )
                }
            )
            for name, (lat, joules) in figures.items()
        }
    )
