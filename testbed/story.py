"""What a finished sweep says, in three lines and a few tables (the end of `moe2 sweep/demo`).

The headline is MoE²'s gain over the best single feasible expert, with a 95 % confidence
interval from a paired bootstrap over the test prompts (both methods answered the same
prompts, so the resampling keeps each prompt's pair together); then the live phase's budget
adherence with refused requests counted; then where the figures are. The tables round budgets
to three significant digits, give n, and count the budget points where nothing fits instead of
printing rows of dashes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optimizer.fine import FusionRule, LogLinearPool
from testbed.evaluation import SplitData
from testbed.results import LiveRow, ResultRow, ordered_methods

BOOTSTRAP_SAMPLES = 2000
"""Resamples of the paired bootstrap."""


@dataclass(frozen=True, slots=True)
class Gain:
    """MoE² minus a baseline at one budget point, in accuracy points, with its 95 % interval."""

    point: int
    top_k: int
    n_prompts: int
    n_feasible_experts: int
    gain_points: float
    low_points: float
    high_points: float


def paired_bootstrap(
    hits: Sequence[int],
    reference: Sequence[int],
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean difference of two 0/1 vectors over the same prompts and its 95 % interval (points)."""
    a = np.asarray(hits, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("paired samples must be non-empty and of equal length")
    diff = a - b
    rng = np.random.default_rng(seed)
    draws = diff[rng.integers(0, diff.size, size=(samples, diff.size))].mean(axis=1)
    low, high = np.quantile(draws, [0.025, 0.975])
    return 100 * float(diff.mean()), 100 * float(low), 100 * float(high)


def _cells(rows: Sequence[ResultRow]) -> dict[tuple[int, str], ResultRow]:
    return {(row.point, row.method): row for row in rows}


def gains(rows: Sequence[ResultRow], baseline: str = "best-single") -> list[Gain]:
    """MoE²'s gain over ``baseline`` at every point where both answered the same prompts.

    ``n_feasible_experts`` is the size of the largest feasible subset there (the oracle's, a
    maximal one), so "where two or more experts fit" is ``n_feasible_experts >= 2``.
    """
    cells = _cells(rows)
    out = []
    for (point, method), row in sorted(cells.items()):
        if method != "moe2" or not row.feasible or not row.test_hits:
            continue
        other = cells.get((point, baseline))
        if other is None or not other.feasible or len(other.test_hits) != len(row.test_hits):
            continue
        oracle = cells.get((point, "oracle"))
        fit = max(row.n_experts, oracle.n_experts if oracle and oracle.feasible else 0)
        gain, low, high = paired_bootstrap(row.test_hits, other.test_hits, seed=point)
        out.append(Gain(point, row.top_k, len(row.test_hits), fit, gain, low, high))
    return out


def story(
    rows: Sequence[ResultRow], live: Sequence[LiveRow], figures: Sequence[Path], out_dir: Path
) -> list[str]:
    """The three lines: gain with its interval, live adherence, where the figures are."""
    several = [g for g in gains(rows) if g.n_feasible_experts >= 2]
    lines = []
    if several:
        values = [g.gain_points for g in several]
        loosest = max(several, key=lambda g: (g.n_feasible_experts, g.top_k, g.point))
        lines.append(
            f"MoE² vs the best single feasible expert where 2+ experts fit ({len(several)} "
            f"points): median {np.median(values):+.1f} points (range {min(values):+.1f} to "
            f"{max(values):+.1f}); at the loosest point (top_k={loosest.top_k}) "
            f"{loosest.gain_points:+.1f} [{loosest.low_points:+.1f}, {loosest.high_points:+.1f}] "
            f"(95 % CI, paired bootstrap over n={loosest.n_prompts} test prompts)"
        )
    else:
        lines.append("MoE² vs the best single expert: no budget point admits two experts")
    if live:
        refused = sum(1 for r in live if r.error == "FAILED_PRECONDITION")
        failed = sum(1 for r in live if r.error and r.error != "FAILED_PRECONDITION")
        known = [r for r in live if r.within_energy_budget is not None]
        lines.append(
            f"live: {len(live)} requests through the orchestrator: "
            f"{sum(r.within_delay_budget for r in live)}/{len(live)} within the delay budget, "
            f"{sum(bool(r.within_energy_budget) for r in known)}/{len(known)} within the "
            f"energy budget (energy known for {len(known)}), {refused} refused, {failed} failed"
        )
    else:
        lines.append("live: no requests served")
    lines.append(
        f"figures: {out_dir} ({len(figures)} files: {', '.join(sorted({f.stem for f in figures}))})"
        if figures
        else f"figures: none written in {out_dir}"
    )
    return lines


def _budget(value: float) -> str:
    return f"{value:.3g}"


def accuracy_tables(rows: Sequence[ResultRow], *, markdown: bool = False) -> str:
    """One table per top_k: rounded budgets, n, each method's accuracy, MoE²'s gain and CI."""
    blocks = []
    interval = {(g.point): g for g in gains(rows)}
    for top_k in sorted({r.top_k for r in rows}):
        selected = [r for r in rows if r.top_k == top_k]
        methods = ordered_methods(selected)
        cells = _cells(selected)
        points = sorted(
            {(r.energy_budget_j, r.delay_budget_s, r.point) for r in selected},
        )
        header = ["E budget (J)", "T budget (s)", "n", *methods, "MoE² subset", "gain (95 % CI)"]
        body = []
        empty = 0
        for energy_j, delay_s, point in points:
            moe2 = cells.get((point, "moe2"))
            if moe2 is None or not moe2.feasible:
                empty += 1
                continue
            line = [_budget(energy_j), _budget(delay_s), str(len(moe2.test_hits) or "?")]
            for method in methods:
                cell = cells.get((point, method))
                value = cell.accuracy if cell is not None and cell.feasible else None
                line.append("-" if value is None else f"{100 * value:.1f}")
            routed = moe2.plan_top_k is not None and moe2.plan_top_k < moe2.top_k
            line.append("+".join(moe2.subset) + (f" (k={moe2.plan_top_k})" if routed else ""))
            gain = interval.get(point)
            line.append(
                f"{gain.gain_points:+.1f} [{gain.low_points:+.1f}, {gain.high_points:+.1f}]"
                if gain
                else "-"
            )
            body.append(line)
        title = f"top_k={top_k}: test accuracy in % ({empty} budget points where nothing fits)"
        blocks.append(_render(title, header, body, markdown))
    return "\n\n".join(blocks)


def _render(title: str, header: list[str], body: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = [f"**{title}**", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines += ["| " + " | ".join(line) + " |" for line in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    render = [
        "  ".join(col.rjust(widths[i]) for i, col in enumerate(line)).rstrip()
        for line in [header, *body]
    ]
    return "\n".join([title, render[0], "-" * len(render[0]), *render[1:]])


def early_exit_line(rows: Sequence[ResultRow]) -> str | None:
    """Early exit at the loosest point: realised joules and accuracy against all of K."""
    cells = _cells(rows)
    pairs = [
        (cells[(p, "moe2")], row)
        for (p, m), row in cells.items()
        if m == "moe2-exit" and row.feasible and (p, "moe2") in cells
    ]
    pairs = [(a, b) for a, b in pairs if a.realised_energy_j and b.realised_energy_j is not None]
    if not pairs:
        return None
    full, staged = max(pairs, key=lambda pair: (pair[0].n_experts, pair[0].top_k, pair[0].point))
    if full.realised_energy_j is None or staged.realised_energy_j is None:
        return None
    saved = 1 - staged.realised_energy_j / full.realised_energy_j
    delta = (
        paired_bootstrap(staged.test_hits, full.test_hits)
        if staged.test_hits and len(staged.test_hits) == len(full.test_hits)
        else (math.nan, math.nan, math.nan)
    )
    return (
        f"early exit at the loosest point (top_k={full.top_k}, S={'+'.join(full.subset)}): "
        f"{staged.realised_energy_j:.3g} J vs {full.realised_energy_j:.3g} J per request "
        f"({100 * saved:.0f} % fewer joules), accuracy {100 * (staged.accuracy or 0):.1f} % vs "
        f"{100 * (full.accuracy or 0):.1f} % ({delta[0]:+.1f} points, 95 % CI "
        f"[{delta[1]:+.1f}, {delta[2]:+.1f}])"
    )


@dataclass(frozen=True, slots=True)
class Ceilings:
    """Each expert's raw and calibrated test accuracy, and what any router could reach.

    ``co_failure_ceiling`` is 1 − β, β the fraction of test prompts every expert gets wrong
    (the per-prompt oracle over all experts); ``category_ceiling`` the accuracy of the best
    expert of each category, chosen on the test split itself (a per-category oracle);
    ``chance_oracle`` what the per-prompt oracle would score if every expert guessed at random
    (1 − (1 − 1/c)^N for a c-option prompt): on 2-way tasks most of the oracle is luck.
    """

    n_prompts: int
    raw_accuracy: dict[str, float]
    calibrated_accuracy: dict[str, float]
    co_failure_ceiling: float
    category_ceiling: float
    chance_oracle: float

    def line(self) -> str:
        """One line for the end of a sweep."""
        experts = ", ".join(
            f"{e} {100 * v:.1f}/{100 * self.calibrated_accuracy[e]:.1f}"
            for e, v in self.raw_accuracy.items()
        )
        return (
            f"experts, raw/calibrated test accuracy %: {experts}; ceilings over all experts: "
            f"per prompt (1 - β) {100 * self.co_failure_ceiling:.1f} %, per category "
            f"{100 * self.category_ceiling:.1f} %; the per-prompt oracle of experts guessing "
            f"at random would score {100 * self.chance_oracle:.1f} %"
        )


def ceilings(test: SplitData, experts: Sequence[str], fusion: FusionRule) -> Ceilings:
    """The :class:`Ceilings` of a test split (calibration: the fusion rule's, if any)."""
    calibrated = test.correct
    if isinstance(fusion, LogLinearPool):
        log_q = fusion.calibrated_log_probs(
            test.option_probs, test.n_options, test.category_rows(fusion)
        )
        calibrated = log_q.argmax(axis=2) == test.labels[:, None]
    categories = sorted(set(test.categories.tolist()))
    per_category_best = [
        float(test.correct[test.categories == c].mean(axis=0).max()) for c in categories
    ]
    weights = [float(np.mean(test.categories == c)) for c in categories]
    chance = 1 - (1 - 1 / test.n_options.astype(np.float64)) ** len(experts)
    return Ceilings(
        n_prompts=test.size,
        raw_accuracy={e: float(test.correct[:, n].mean()) for n, e in enumerate(experts)},
        calibrated_accuracy={e: float(calibrated[:, n].mean()) for n, e in enumerate(experts)},
        co_failure_ceiling=float(test.correct.any(axis=1).mean()),
        category_ceiling=float(np.dot(per_category_best, weights)),
        chance_oracle=float(chance.mean()),
    )


def read_ceilings_line(out_dir: Path) -> str | None:
    """The ceilings line of a finished sweep (``DIR/ceilings.json``), if it has one."""
    import json

    path = out_dir / "ceilings.json"
    if not path.is_file():
        return None
    try:
        return Ceilings(**json.loads(path.read_text())).line()
    except (ValueError, TypeError):
        return None
