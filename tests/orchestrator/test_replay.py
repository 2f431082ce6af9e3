"""Offline and online fine levels agree: recorded answers replayed through both give one answer.

Three real edge nodes (fake engine: deterministic, so a recorded answer is what the node says
again), real benchmark prompts, the sweep's own recording, training and evaluation code, and the
running orchestrator over gRPC. For each fusion rule and top_k, every test prompt's answer and
fused distribution from ``Ask`` must equal the offline evaluation's; with early exit, the
experts asked and the answer must be the offline stages' (the fused confidence as the stop score
with the log-linear pool, the trained agreement model with the linear one).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from edge_node.engine import FakeEngine
from optimizer.fine import (
    ExitOrder,
    LogLinearPool,
    early_exit,
    exit_scores,
    fused_answers,
    gate_ranks,
    staged_answers,
    top_k_members,
)
from orchestrator.client import AsyncClient
from orchestrator.config import ClusterConfig, NodeEntry
from orchestrator.encoder import HashingEncoder
from orchestrator.exit_training import SplitAnswers, fit_agreement_model
from orchestrator.gate import Gate, make_features
from orchestrator.server import start_orchestrator
from testbed.categories import load_items, split_items
from testbed.evaluation import SplitData, build_split, concat
from testbed.recording import ResponseStore, load_matrix, record_all
from testbed.training import out_of_fold, train_fine_level
from tests.helpers.nodes import StartNode

EXPERTS = ("alpha", "beta", "gamma")
CATEGORIES = ("sst2", "copa", "arc_easy")


@pytest.mark.parametrize("rule", ["linear", "log-linear"])
async def test_orchestrator_answers_as_the_offline_evaluation_scores(
    node_factory: StartNode, tmp_path: Path, rule: str
) -> None:
    nodes = {name: await node_factory(FakeEngine(model_id=f"fake-{name}")) for name in EXPERTS}
    targets = {name: f"127.0.0.1:{node.port}" for name, node in nodes.items()}
    items = [item for c in CATEGORIES for item in load_items(c, limit=40, seed=1)]
    splits = split_items(items, seed=1)
    store = ResponseStore(tmp_path / "responses")
    await record_all(store, targets, items, progress=False)
    matrix = load_matrix(store, EXPERTS, items)
    width = max(len(item.choices) for item in items)
    data: dict[str, SplitData] = {}
    for name, split in splits.items():
        built = build_split(split, EXPERTS, matrix)
        padded = np.zeros((built.size, len(EXPERTS), width))
        padded[:, :, : built.option_probs.shape[2]] = built.option_probs
        data[name] = dataclasses.replace(built, option_probs=padded)
    encoder = HashingEncoder()
    features: dict[str, np.ndarray] = {
        name: make_features(
            encoder.encode([i.prompt for i in split.items]), split.categories.tolist(), CATEGORIES
        )
        for name, split in data.items()
    }
    fine = train_fine_level(
        features,
        data,
        EXPERTS,
        CATEGORIES,
        top_ks=(1, 2),
        encoder_name=encoder.name,
        encoder_dim=encoder.dim,
        rules=(rule,),
    )
    # The guard's evidence: every planning prompt answered by the same fine level refitted
    # without its fold. An expert alone answers raw, so its out-of-fold hits are its own.
    planning = concat(data["train"], data["validation"])
    folds = out_of_fold(
        fine.choice,
        planning,
        np.concatenate([features["train"], features["validation"]]),
        EXPERTS,
        CATEGORIES,
        (1, 2),
        encoder_name=encoder.name,
        encoder_dim=encoder.dim,
    )
    assert folds is not None and folds.exit is None  # no planned energies: no exit outcomes
    oof = folds.hits
    assert oof.hits.shape == (7, 2, planning.size)
    every = np.ones(planning.size, dtype=bool)
    for expert in range(len(EXPERTS)):
        alone = oof.lookup([expert], 2, every)
        assert alone is not None
        assert alone.tolist() == planning.correct[:, expert].tolist()
    assert oof.covers(3, 2) and oof.covers(2, 5)  # k >= |S| is all of S
    assert not oof.covers(3, 5) and not oof.covers(4, 2)  # never recorded
    # A low early-exit threshold, so that some prompts stop after their first expert; a stage
    # order of its own per category (sst2: beta first; copa: gamma; arc_easy and unknown ones:
    # alpha); the stop weighed against each prompt's joules still to spend (the recorded means,
    # a different scale per category).
    mean_j = np.nanmean(data["train"].energy_j, axis=0)
    exit_order = ExitOrder(
        CATEGORIES,
        np.array([[3.0, 1.0, 2.0], [2.0, 3.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0]]),
        np.array([1.0, 2.0, 0.5, 1.0])[:, None] * mean_j[None, :],
        float(np.nansum(data["train"].energy_j, axis=1).mean()),
    )
    gate = dataclasses.replace(fine.gate, exit_threshold=0.6, exit_order=exit_order)
    if rule == "linear":  # the agreement model's score, at its median after the first stage
        answers = SplitAnswers(
            gate.fusion,
            gate.logits(features["train"]),
            data["train"].option_probs,
            data["train"].categories.tolist(),
            data["train"].n_options,
        )
        model = fit_agreement_model(answers, CATEGORIES, exit_order, (1, 2, 3))
        assert model is not None
        test_logits = gate.logits(features["test"])
        order = exit_order.order(
            top_k_members(gate_ranks(test_logits), np.arange(len(EXPERTS)), 3),
            data["test"].categories.tolist(),
        )
        first = staged_answers(
            gate.fusion, order, test_logits, data["test"].option_probs, data["test"].n_options
        )[0]
        model_rows = model.category_rows(data["test"].categories.tolist())
        share = exit_order.rest_share(
            order, 1, data["test"].energy_j, data["test"].categories.tolist()
        )
        median = float(np.median(exit_scores(first, order, 1, model, model_rows, share)))
        gate = dataclasses.replace(gate, exit_model=model, exit_threshold=median)
    assert gate.fusion.name == rule
    gate_path = gate.save(tmp_path / "gate.npz")
    test = data["test"]
    logits = gate.logits(features["test"])
    config = ClusterConfig.model_validate(
        {
            "nodes": [NodeEntry(name=n, address=t) for n, t in targets.items()],
            "gate": gate_path,
        }
    )
    running = await start_orchestrator(config)
    try:
        async with AsyncClient(f"127.0.0.1:{running.port}") as client:
            for top_k in (1, 2):
                rows = (
                    gate.fusion.category_rows(test.categories.tolist())
                    if isinstance(gate.fusion, LogLinearPool)
                    else None
                )
                weights, fused = fused_answers(
                    gate.fusion,
                    logits,
                    np.ones(len(EXPERTS), dtype=bool),
                    top_k,
                    test.option_probs,
                    test.n_options,
                    rows,
                )
                for row, item in enumerate(test.items):
                    answer = await client.ask(
                        item.prompt,
                        choices=item.choices,
                        category=item.category,
                        top_k=top_k,
                        scoring=item.scoring,
                    )
                    offline = {EXPERTS[n] for n in np.flatnonzero(weights[row])}
                    assert {e.expert for e in answer.experts} == offline, item.item_id
                    count = len(item.choices)
                    assert list(answer.fused_probs) == pytest.approx(
                        fused[row, :count].tolist(), abs=1e-9
                    )
                    assert answer.choice_index == int(np.argmax(fused[row])), item.item_id
            await _replay_early_exit(client, gate, logits, test)
    finally:
        await running.stop(None)


async def _replay_early_exit(
    client: AsyncClient, gate: Gate, logits: np.ndarray, test: SplitData
) -> None:
    """Early exit online (staged dispatch) stops where the offline stages stop.

    The stop weighs the joules the experts that answered report, which the fake engine's
    modelled meter times afresh: each prompt's offline stages are replayed with the joules the
    online answer reported (a stage's decision reads only those of the experts before it).
    """
    assert gate.exit_threshold is not None
    threshold = gate.exit_threshold
    rows = test.category_rows(gate.fusion)
    model = gate.exit_model
    model_rows = None if model is None else model.category_rows(test.categories.tolist())
    members = top_k_members(gate_ranks(logits), np.arange(len(EXPERTS)), 3)
    assert gate.exit_order is not None
    order = gate.exit_order.order(members, test.categories.tolist())
    assert len({tuple(o) for o in order}) == 3  # each category its own order
    categories = test.categories.tolist()

    def offline(energy_j: np.ndarray, at: slice) -> tuple[np.ndarray, np.ndarray]:
        return early_exit(
            gate.fusion,
            order[at],
            logits[at],
            test.option_probs[at],
            threshold,
            test.n_options[at],
            None if rows is None else rows[at],
            model,
            None if model_rows is None else model_rows[at],
            exit_order=gate.exit_order,
            energy_j=energy_j,
            prompt_categories=categories[at],
        )

    _, ran_recorded = offline(test.energy_j, slice(None))
    assert 1 < ran_recorded.mean() < 3  # some prompts stop early, some do not
    ran_online = []
    for row, item in enumerate(test.items):
        answer = await client.ask(
            item.prompt,
            choices=item.choices,
            category=item.category,
            top_k=3,
            scoring=item.scoring,
            early_exit=True,
        )
        assert answer.early_exit
        reported = np.full((1, len(EXPERTS)), np.nan)
        for expert in answer.experts:
            assert expert.energy is not None and expert.energy.energy_j is not None
            reported[0, EXPERTS.index(expert.expert)] = expert.energy.energy_j
        fused, ran = offline(reported, slice(row, row + 1))
        asked = [e.expert for e in answer.experts]
        assert asked == [EXPERTS[n] for n in order[row, : ran[0]]], item.item_id
        assert answer.experts_skipped == 3 - ran[0]
        assert answer.choice_index == int(np.argmax(fused[0])), item.item_id
        ran_online.append(int(ran[0]))
    assert 1 < np.mean(ran_online) < 3
