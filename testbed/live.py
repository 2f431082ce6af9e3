"""The sweep's live phase: test prompts served through the real orchestrator, against the budgets.

A few feasible ``moe2`` budget points (evenly spaced; the loosest twice: all of K, then early
exit) are served round-robin over the categories through ``moe2 serve`` over the sweep's own
fleet, with the sweep's gate, profile and selection files, and each request's latency, energy
and budget adherence is written to ``live.jsonl`` as it comes.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from testbed.categories import Item
from testbed.results import LiveRow, write_rows
from testbed.sweep_config import SweepConfig

if TYPE_CHECKING:
    from orchestrator.config import ClusterConfig


def write_live(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """``live.jsonl``: every row validated against :class:`LiveRow`, written atomically."""
    write_rows(path, [LiveRow.model_validate(row, strict=False) for row in rows])


def sweep_cluster(config: SweepConfig, out_dir: Path, targets: dict[str, str]) -> ClusterConfig:
    """The cluster ``moe2 serve`` runs over a finished sweep.

    Its gate, profile and selection files, statistic and aggregation delay, with ``targets``
    (expert -> address) as the nodes.
    """
    from orchestrator.config import ClusterConfig, NodeEntry

    return ClusterConfig(
        nodes=tuple(NodeEntry(name=n, address=a) for n, a in targets.items()),
        gate=out_dir / "gate.npz",
        profile=out_dir / "profile.json",
        selection=out_dir / "selection.npz",
        aggregation_s=config.aggregation_s,
        profile_statistic=config.statistic,
    )


async def live_validation(
    config: SweepConfig,
    out_dir: Path,
    targets: dict[str, str],
    results: list[dict[str, Any]],
    test_items: list[Item],
    *,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Serve test prompts through the orchestrator at a few budget points; measure adherence.

    ``live.jsonl`` is rewritten after every request, so a crash loses at most the one in
    flight; ``progress`` shows a bar with an ETA.
    """
    from tqdm import tqdm

    if config.live.points == 0:
        return []
    import grpc

    from orchestrator.client import AsyncClient
    from orchestrator.server import start_orchestrator

    feasible = sorted(
        (r for r in results if r["method"] == "moe2" and r["feasible"]),
        key=lambda r: (r["top_k"], r["energy_budget_j"], r["delay_budget_s"]),
    )
    if not feasible:
        return []
    picks = sorted({round(i) for i in np.linspace(0, len(feasible) - 1, config.live.points)})
    # Round-robin over categories, so every category is served at every point.
    by_category: dict[str, list[Item]] = {}
    for item in test_items:
        by_category.setdefault(item.category, []).append(item)
    interleaved = [
        item
        for group in itertools.zip_longest(*by_category.values())
        for item in group
        if item is not None
    ]
    served = interleaved[: config.live.prompts]
    # The loosest point is served twice: all of K, then with early exit (the gate's exit order).
    passes = [(index, False) for index in picks] + [(picks[-1], True)]
    running = await start_orchestrator(sweep_cluster(config, out_dir, targets))
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(passes) * len(served), desc="live", unit="request", disable=not progress)
    try:
        async with AsyncClient(f"127.0.0.1:{running.port}", retries=0) as client:
            for index, early_exit in passes:
                point = feasible[index]
                for item in served:
                    base = {
                        "point": point["point"],
                        "energy_budget_j": point["energy_budget_j"],
                        "delay_budget_s": point["delay_budget_s"],
                        "top_k": point["top_k"],
                        "category": item.category,
                        "item_id": item.item_id,
                        "early_exit": early_exit,
                    }
                    if rows:  # what was served so far survives a crash
                        write_live(out_dir / "live.jsonl", rows)
                    bar.update(1)
                    started = time.monotonic()
                    try:
                        answer = await client.ask(
                            item.prompt,
                            choices=item.choices,
                            category=item.category,
                            scoring=item.scoring,
                            energy_budget_j=point["energy_budget_j"],
                            delay_budget_s=point["delay_budget_s"],
                            top_k=point["top_k"],
                            timeout_s=point["delay_budget_s"] + 30,
                            early_exit=early_exit,
                        )
                    except grpc.aio.AioRpcError as err:
                        # Refused (FAILED_PRECONDITION) or failed: no answer within the budget.
                        rows.append(
                            {
                                **base,
                                "error": err.code().name,
                                "correct": False,
                                "latency_s": time.monotonic() - started,
                                "energy_j": None,
                                "within_delay_budget": False,
                                "within_energy_budget": None,
                            }
                        )
                        continue
                    sources = {e.energy.source for e in answer.experts if e.energy}
                    rows.append(
                        {
                            **base,
                            "correct": answer.choice_index == item.label,
                            "latency_s": answer.latency_s,
                            "energy_j": answer.energy_j,
                            "predicted_latency_s": answer.predicted_latency_s,
                            "predicted_energy_j": answer.predicted_energy_j,
                            "within_delay_budget": answer.within_delay_budget,
                            "within_energy_budget": answer.within_energy_budget,
                            "experts": [e.expert for e in answer.experts],
                            "outcomes": {e.expert: e.outcome for e in answer.experts},
                            "energy_source": ",".join(sorted(sources)) or "unknown",
                            "emulated": any(e.energy and e.energy.emulated for e in answer.experts),
                            "encode_s": answer.encode_s,
                            "gate_s": answer.gate_s,
                            "staged": answer.early_exit,
                            "experts_skipped": answer.experts_skipped,
                        }
                    )
    finally:
        bar.close()
        await running.stop(None)
    return rows
