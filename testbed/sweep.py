"""The budget sweep (`moe2 sweep`): record once, train the gate once, sweep budgets, validate live.

Steps, each resumable or cheap to redo:
1. start the fleet (local nodes, emulated devices and links) or use the given addresses;
2. sample each category's prompts and split them train/validation/test (seeded, stratified);
3. record every expert's answer to every prompt (``DIR/responses``, resumable);
4. derive the profile (worst-case latency per category, energy per request, accuracy) from the
   training and validation answers, and train the gate once on the training split;
5. for every budget point × top_k × method, pick S on the train + validation answers, score the
   test split;
6. serve test prompts through the real orchestrator at a few budget points and measure what
   happened against the budgets (``live.jsonl``);
7. write ``config.toml``, ``env.json``, ``results.jsonl``, ``summary.csv`` and the figures.

This module is the pipeline; its parts live in the modules named for them: ``testbed.environment``
(``env.json``), ``testbed.embeddings`` (the prompt-embedding cache), ``testbed.live`` (step 6),
``testbed.evaluation`` (the splits and step 5), ``testbed.training`` (the fine level).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_node.files import atomic_write_text
from optimizer import Problem
from optimizer.fine import AgreementModel, ExitOrder, FusionRule, LinearPool
from orchestrator.planner import OutOfFoldHits
from orchestrator.profiles import CategoryStats, ExpertProfile, Profile, summarise
from testbed.categories import Item, load_items, split_items
from testbed.embeddings import embed
from testbed.environment import environment, node_infos
from testbed.evaluation import (
    PointContext,
    SplitData,
    budget_grid,
    build_split,
    concat,
    evaluate_method,
    pad_to,
    worst_case_costs,
)
from testbed.fleet import Fleet, NodeSpec
from testbed.live import live_validation, write_live
from testbed.recording import ResponseStore, load_matrix, record_all
from testbed.results import ResultRow, write_rows
from testbed.sweep_config import SweepConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SweepOutcome:
    """Where the outputs are and the headline numbers."""

    out_dir: Path
    results: list[dict[str, Any]]
    live: list[dict[str, Any]]
    figures: list[Path]


def sample_items(config: SweepConfig) -> dict[str, list[Item]]:
    """The sampled prompts split into train/validation/test (seeded, stratified)."""
    items: list[Item] = []
    for category, count in config.categories.items():
        items.extend(load_items(category, limit=count, seed=config.seed))
    splits = split_items(items, seed=config.seed, fractions=config.splits)
    return {name: list(values) for name, values in splits.items()}


def node_specs(config: SweepConfig) -> list[NodeSpec]:
    """The fleet to start (or reach) for this sweep."""
    return [
        NodeSpec(
            name=e.name,
            model=e.model,
            address=e.address,
            engine=e.engine,
            device=e.device,
            delay_ms=e.delay_ms,
            rate_mbit=e.rate_mbit,
            n_ctx=config.node.n_ctx,
            n_threads=config.node.n_threads,
            fake_token_delay_s=e.fake_token_delay_s,
        )
        for e in config.experts
    ]


def write_config(config: SweepConfig, path: Path) -> None:
    """The resolved configuration as TOML (defaults filled in)."""
    import tomli_w

    document = config.model_dump(mode="json", exclude_none=True)
    atomic_write_text(path, tomli_w.dumps(document))


def build_profile(
    data: SplitData, experts: Sequence[str], categories: Sequence[str], infos: dict[str, Any]
) -> Profile:
    """profile.json from the training and validation answers."""
    profiles = {}
    for n, expert in enumerate(experts):
        stats = {}
        for category in categories:
            rows = data.categories == category
            energies = data.energy_j[rows, n]
            known = energies[np.isfinite(energies)]
            stats[category] = CategoryStats(
                samples=int(rows.sum()),
                latency_s=summarise(list(data.latency_s[rows, n])),
                energy_j=summarise(list(known)) if len(known) == rows.sum() else None,
                accuracy=float(data.correct[rows, n].mean()),
            )
        info = infos.get(expert, {})
        profiles[expert] = ExpertProfile(
            categories=stats,
            address=str(info.get("address", "")),
            model_id=str(info.get("model_id", "")),
            device_kind=str(info.get("emulated_device") or info.get("device_kind", "")),
            energy_source=str(info.get("energy_source", "")),
            energy_scope=str(info.get("energy_scope", "")),
        )
    return Profile(experts=profiles, hardware={})


def run_sweep(
    config: SweepConfig, out_dir: Path, *, progress: bool = True, record_only: bool = False
) -> SweepOutcome:
    """Run the whole sweep (see module docstring); every process started is stopped."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_config(config, out_dir / "config.toml")
    return asyncio.run(_run(config, out_dir, progress=progress, record_only=record_only))


async def _run(
    config: SweepConfig, out_dir: Path, *, progress: bool, record_only: bool
) -> SweepOutcome:
    # The steps between recording and live validation are CPU work with nothing else running
    # on this loop, so they run inline rather than in threads.
    experts = [e.name for e in config.experts]
    categories = list(config.categories)
    splits = sample_items(config)
    every_item = splits["train"] + splits["validation"] + splits["test"]
    fleet = Fleet(node_specs(config), network=config.emulation.network)
    try:
        targets = await fleet.start()
        infos = await node_infos(targets, config)
        atomic_write_text(
            out_dir / "env.json", json.dumps(environment(fleet, infos), indent=2) + "\n"
        )
        store = ResponseStore(out_dir / "responses")
        new = await record_all(store, targets, every_item, progress=progress)
        logger.info("recorded %d new answers", new)
        if record_only:
            return SweepOutcome(out_dir, [], [], [])
        matrix = load_matrix(store, experts, every_item)
        data = {name: build_split(items, experts, matrix) for name, items in splits.items()}
        width = max(d.option_probs.shape[2] for d in data.values())
        profiling = planning_split(data, width)
        profile = build_profile(profiling, experts, categories, infos)
        profile.save(out_dir / "profile.json")
        gate, logits, out_of_fold = train_gate(config, data, experts, categories, width, out_dir)
        overhead_s = measure_gate_overhead(gate, splits["test"][:12], categories)
        env = json.loads((out_dir / "env.json").read_text())
        env["gate_overhead_s"] = overhead_s
        atomic_write_text(out_dir / "env.json", json.dumps(env, indent=2) + "\n")
        sources = sorted(
            {r.energy_source for responses in matrix.values() for r in responses.values()}
        )
        results = evaluate_grid(
            config,
            data,
            logits,
            experts,
            categories,
            profiling,
            sources,
            overhead_s,
            gate.fusion,
            gate.exit_threshold,
            out_of_fold,
            gate.exit_model,
            gate.exit_order,
        )
        write_results(out_dir / "results.jsonl", results)
        from testbed.story import ceilings

        atomic_write_text(
            out_dir / "ceilings.json",
            json.dumps(
                dataclasses.asdict(ceilings(_padded(data["test"], width), experts, gate.fusion)),
                indent=2,
            )
            + "\n",
        )
        write_selection(
            out_dir / "selection.npz",
            experts,
            profiling,
            np.concatenate([logits["train"], logits["validation"]]),
            width,
            held_out_rows(data, refitted=out_of_fold is not None),
            out_of_fold,
        )
        live = await live_validation(
            config, out_dir, targets, results, splits["test"], progress=progress
        )
        write_live(out_dir / "live.jsonl", live)
    finally:
        await fleet.aclose()
    figures = write_outputs(out_dir)
    return SweepOutcome(out_dir, results, live, figures)


def gate_features(
    data: dict[str, SplitData], categories: list[str], out_dir: Path
) -> tuple[dict[str, np.ndarray], str, int]:
    """Gate inputs per split (prompt embedding + category one-hot), encoder name and width."""
    every = data["train"].items + data["validation"].items + data["test"].items
    vectors, encoder_name = embed(every, out_dir / "embeddings.npz")
    offsets = np.cumsum([0, data["train"].size, data["validation"].size, data["test"].size])
    features = {}
    for index, name in enumerate(("train", "validation", "test")):
        block = vectors[offsets[index] : offsets[index + 1]]
        onehot = np.zeros((len(block), len(categories)))
        for row, category in enumerate(data[name].categories):
            onehot[row, categories.index(str(category))] = 1.0
        features[name] = np.concatenate([block, onehot], axis=1)
    return features, encoder_name, int(vectors.shape[1])


def load_recorded(out_dir: Path) -> tuple[SweepConfig, list[str], dict[str, SplitData]]:
    """A finished sweep's configuration, experts and recorded splits, from its files alone."""
    from testbed.sweep_config import load_sweep_config

    config = load_sweep_config(out_dir / "config.toml")
    experts = [e.name for e in config.experts]
    splits = sample_items(config)
    every = splits["train"] + splits["validation"] + splits["test"]
    matrix = load_matrix(ResponseStore(out_dir / "responses"), experts, every)
    data = {name: build_split(items, experts, matrix) for name, items in splits.items()}
    width = max(d.option_probs.shape[2] for d in data.values())
    return config, experts, {name: _padded(d, width) for name, d in data.items()}


def train_gate(
    config: SweepConfig,
    data: dict[str, SplitData],
    experts: list[str],
    categories: list[str],
    width: int,
    out_dir: Path,
) -> tuple[Any, dict[str, np.ndarray], OutOfFoldHits | None]:
    """Train the fine level once (gate + fusion rule, chosen on validation); every split's logits.

    The gate is trained once on the full expert set (the optimality-preserving property); its
    hyper-parameters and the fusion rule are chosen on the validation split
    (:mod:`testbed.training`), never on the test split. The choice and every candidate's
    validation score are written to ``DIR/fine_level.json``.
    """
    from testbed.training import train_fine_level

    features, encoder_name, encoder_dim = gate_features(data, categories, out_dir)
    padded = {name: _padded(split, width) for name, split in data.items()}
    try:  # early exit runs the cheapest expert first: the planner's per-expert energy
        cost_j, _ = worst_case_costs(
            planning_split(data, width), experts, categories, config.statistic
        )
    except ValueError:
        cost_j = None  # unknown energy: no early-exit threshold is chosen
    fine = train_fine_level(
        features,
        padded,
        experts,
        categories,
        top_ks=config.top_k,
        encoder_name=encoder_name,
        encoder_dim=encoder_dim,
        seed=config.seed,
        cost_j=cost_j,
    )
    from testbed.training import (
        calibrated_alone,
        choose_exit_threshold,
        fit_early_exit,
        out_of_fold,
        refit_choice,
    )

    planning = planning_split(data, width)
    planning_features = np.concatenate([features["train"], features["validation"]])
    # Which experts answer alone calibrated: decided out of fold, before the folds that give
    # the guard and early exit their evidence, so that those answer as the final gate will.
    choice = dict(fine.choice)
    choice["calibrated_alone"] = calibrated_alone(
        choice, planning, experts, categories, seed=config.seed
    )
    oof = out_of_fold(
        choice,
        planning,
        planning_features,
        experts,
        categories,
        config.top_k,
        encoder_name=encoder_name,
        encoder_dim=encoder_dim,
        cost_j=cost_j,
        seed=config.seed,
    )
    gate = fine.gate
    if oof is not None:
        # The guard's evidence is out of fold, so no planning prompt need stay unseen: the
        # chosen fine level is refitted on all of them (train + validation), early exit's
        # order and agreement model with it, and its threshold is chosen on the out-of-fold
        # outcomes (every planning prompt, each unseen by the fit that answered it).
        gate = refit_choice(
            choice,
            planning,
            planning_features,
            experts,
            categories,
            encoder_name=encoder_name,
            encoder_dim=encoder_dim,
            seed=config.seed,
        )
        choice["fitted_on"] = "train+validation"
        if cost_j is not None and oof.exit is not None:
            gate = fit_early_exit(
                gate,
                planning,
                gate.logits(planning_features),
                categories,
                cost_j,
                config.top_k,
                seed=config.seed,
            )
            threshold = choose_exit_threshold(oof.exit)
            gate = dataclasses.replace(gate, exit_threshold=threshold)
            choice["exit_threshold"] = threshold
            choice["exit_threshold_chosen_on"] = "out-of-fold planning prompts"
    atomic_write_text(
        out_dir / "fine_level.json",
        json.dumps(
            {
                "choice": choice,
                "validation_accuracy": fine.validation_accuracy,
                "candidates": list(fine.candidates),
            },
            indent=2,
        )
        + "\n",
    )
    gate.save(out_dir / "gate.npz")
    return (
        gate,
        {name: gate.logits(f) for name, f in features.items()},
        (None if oof is None else oof.hits),
    )


def measure_gate_overhead(gate: Any, items: Sequence[Item], categories: list[str]) -> float:
    """p95 of one prompt's encoder + gate time, rounded up to 5 ms (what the orchestrator adds).

    The orchestrator measures the same quantity live and plans with it; using it here keeps
    the offline plans and the live ones comparable.
    """
    import math

    from orchestrator.encoder import load_encoder

    encoder = load_encoder(gate.metadata.encoder_name)
    times = []
    for item in items:
        started = time.perf_counter()
        features = gate.features(encoder.encode([item.prompt]), [item.category])
        gate.logits(features)
        times.append(time.perf_counter() - started)
    if not times:
        return 0.0
    p95 = float(np.quantile(times, 0.95))
    return math.ceil(p95 / 0.005) * 0.005


def write_selection(
    path: Path,
    experts: list[str],
    validation: SplitData,
    logits: np.ndarray,
    width: int,
    held_out: np.ndarray | None = None,
    out_of_fold: OutOfFoldHits | None = None,
) -> None:
    """The recorded answers the orchestrator's gated objective plans with.

    Train + validation, as in the offline evaluation, so both choose S from the same figures;
    ``held_out`` marks the validation rows (the single-expert guard's evidence).
    """
    from orchestrator.planner import SelectionData

    SelectionData(
        experts=tuple(experts),
        categories=validation.categories,
        gate_logits=logits,
        option_probs=pad_to(validation, width),
        labels=validation.labels,
        n_options=validation.n_options,
        held_out=held_out,
        out_of_fold=out_of_fold,
    ).save(path)


def evaluate_grid(
    config: SweepConfig,
    data: dict[str, SplitData],
    logits: dict[str, np.ndarray],
    experts: list[str],
    categories: list[str],
    profiling: SplitData,
    energy_sources: list[str],
    overhead_s: float,
    fusion: FusionRule | None = None,
    exit_threshold: float | None = None,
    out_of_fold: OutOfFoldHits | None = None,
    exit_model: AgreementModel | None = None,
    exit_order: ExitOrder | None = None,
) -> list[dict[str, Any]]:
    """Every budget point × top_k × method.

    Early exit runs its stages in ``exit_order`` (the gate's), else cheapest first by the
    planned energy.

    The delay budgets cover the whole request: expert latency (transmission included, as
    recorded) plus aggregation plus the orchestrator's measured encoder + gate time.
    """
    aggregation_s = config.aggregation_s + overhead_s
    energy, latency = worst_case_costs(profiling, experts, categories, config.statistic)
    width = max(d.option_probs.shape[2] for d in data.values())
    # S is chosen on the training and validation answers together: three times the prompts of
    # the validation split alone, so the choice between subsets is less often a coin toss. The
    # training answers flatter the fine level fitted on them, so a subset of two or more
    # experts must also clearly beat the best single expert on the validation rows alone
    # (MoE²'s single-expert guard, optimizer.evidence).
    planning = planning_split(data, width)
    planning_logits = np.concatenate([logits["train"], logits["validation"]])
    held_out = held_out_rows(data, refitted=out_of_fold is not None)
    test = _padded(data["test"], width)
    rows: list[dict[str, Any]] = []
    point = 0
    worst_latency = np.max(np.stack(list(latency.values())), axis=0)
    for top_k in config.top_k:
        energies = (
            budget_grid(energy, top_k, config.budgets.points)
            if config.budgets.energy_j == "auto"
            else list(config.budgets.energy_j)
        )
        delays = (
            budget_grid(worst_latency, 1, config.budgets.points, add=aggregation_s, combine="max")
            if config.budgets.delay_s == "auto"
            else list(config.budgets.delay_s)
        )
        for energy_budget in energies:
            for delay_budget in delays:
                problem = Problem.build(
                    experts=experts,
                    energy_j=energy,
                    energy_budget_j=energy_budget,
                    top_k=top_k,
                    latency_s={c: latency[c] for c in categories},
                    delay_budget_s=dict.fromkeys(categories, delay_budget),
                    aggregation_s=aggregation_s,
                )
                ctx = PointContext(
                    problem,
                    tuple(experts),
                    planning,
                    test,
                    planning_logits,
                    logits["test"],
                    top_k,
                    config.seed + point,
                    fusion if fusion is not None else LinearPool(),
                    exit_threshold,
                    exit_order or ExitOrder.cheapest(energy),
                    held_out,
                    out_of_fold,
                    exit_model,
                )
                for method in config.methods:
                    row = {
                        "point": point,
                        "energy_budget_j": energy_budget,
                        "delay_budget_s": delay_budget,
                        "top_k": top_k,
                        **evaluate_method(ctx, method),
                        "emulated": any(e.device for e in config.experts),
                        "energy_sources": energy_sources,
                    }
                    rows.append(row)
                point += 1
    return rows


def held_out_rows(data: dict[str, SplitData], *, refitted: bool = False) -> np.ndarray:
    """Which planning rows (train, then validation) the fine level was not fitted on.

    The validation rows, unless the fine level was ``refitted`` on every planning prompt
    (:func:`testbed.sweep.train_gate`): then none.
    """
    return np.concatenate(
        [
            np.zeros(data["train"].size, dtype=bool),
            np.full(data["validation"].size, not refitted, dtype=bool),
        ]
    )


def planning_split(data: dict[str, SplitData], width: int) -> SplitData:
    """The planning prompts: train, then validation, padded to ``width`` options.

    Where the profile, the costs and S come from, in the order of ``held_out_rows``.
    """
    return _padded(concat(data["train"], data["validation"]), width)


def _padded(data: SplitData, width: int) -> SplitData:
    return replace(data, option_probs=pad_to(data, width))


def write_results(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """``results.jsonl``: every row validated against :class:`ResultRow`, written atomically."""
    write_rows(path, [ResultRow.model_validate(row, strict=False) for row in rows])


def write_outputs(out_dir: Path) -> list[Path]:
    """summary.csv and the figures, from the files alone (as `moe2 plot` does)."""
    from testbed.plots import draw_all
    from testbed.results import load_results, write_summary_csv

    write_summary_csv(load_results(out_dir), out_dir / "summary.csv")
    return draw_all(out_dir)
