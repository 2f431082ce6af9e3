"""Probe which prompt formulation gives the tiny expert models the most signal per category.

For every (model, category, formulation) it scores ``--n`` validation items (``split_items`` with
seed 0, then a seeded sample) the way the edge node's Score RPC does: the summed natural-log
probability of each choice's tokens given the prompt, plus the number of choice tokens. It
appends one JSON line per item to ``--out`` (re-runs skip what is recorded there) and prints a
markdown accuracy table per model x category x formulation/scoring.

Example::

    .venv/bin/python benchmarks/category_probe.py --n 40 --out /tmp/probe.jsonl \
        --models smollm2-135m,gemma3-270m,qwen2.5-0.5b --categories sst2,boolq,copa

Runs on CPU with ``n_threads=2`` and ``n_ctx=1024``. Prompt tokens are evaluated once per item
with logits for the last position only (Gemma's 262k-entry output layer makes full-prompt logits
expensive); each multi-token choice is then evaluated from the cached prompt with logits for
all of its positions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np
import numpy.typing as npt

from testbed.categories import (
    CATEGORIES,
    MMLU_GROUPS,
    Formulation,
    Item,
    Scoring,
    load_items,
    option_distribution,
    split_items,
)

logger = logging.getLogger("category_probe")

DEFAULT_MODELS = ("smollm2-135m", "gemma3-270m", "qwen2.5-0.5b")
BASE_CATEGORIES = tuple(
    name for name, c in CATEGORIES.items() if c.group != "mmlu" and not name.startswith("mmlu:")
)
PROBE_CATEGORIES = (*BASE_CATEGORIES, *(f"mmlu_{g}" for g in MMLU_GROUPS))
SCORINGS: tuple[Scoring, ...] = get_args(Scoring)


def probe_items(category: str, formulation: Formulation, n: int, seed: int) -> list[Item]:
    """The n validation items of a category probed in every run (same ids across formulations)."""
    items = load_items(category, formulation=formulation)
    validation = split_items(items, seed=0)["validation"]
    if n >= len(validation):
        return validation
    return random.Random(f"probe\x1f{category}\x1f{seed}").sample(validation, n)


def _log_softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    values = logits.astype(np.float64)
    shifted = values - values.max(axis=-1, keepdims=True)
    result: npt.NDArray[np.float64] = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return result


class ChoiceScorer:
    """Summed log-probabilities of continuations under one llama.cpp model (not thread-safe)."""

    def __init__(self, model_path: Path, n_ctx: int, n_threads: int) -> None:
        # ggml's OpenMP workers spin-wait by default, burning a core the other sessions on a
        # shared 2-core machine need; must be set before llama.cpp's library is loaded.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import llama_cpp

        self._llama_cpp = llama_cpp
        # logits_all=True only sizes `scores` to n_ctx rows; the flag is switched per eval below.
        self._llm: Any = llama_cpp.Llama(
            model_path=str(model_path),
            n_ctx=n_ctx,
            n_batch=n_ctx,
            n_threads=n_threads,
            logits_all=True,
            verbose=False,
        )
        self.n_ctx = n_ctx

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        tokens: list[int] = self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos)
        return tokens

    def continuation_tokens(self, prompt_tokens: list[int], prompt: str, choice: str) -> list[int]:
        """Tokens of choice as they follow prompt (split the joint tokenisation if it agrees)."""
        full = self.tokenize(prompt + choice, add_bos=True)
        n = len(prompt_tokens)
        if full[:n] == prompt_tokens and len(full) > n:
            return full[n:]
        return self.tokenize(choice, add_bos=False)

    def score(self, prompt: str, choices: Sequence[str]) -> tuple[list[float], list[int]]:
        """Return (summed log-prob, token count) per choice."""
        llm = self._llm
        prompt_tokens = self.tokenize(prompt, add_bos=True)
        conts = [self.continuation_tokens(prompt_tokens, prompt, c) for c in choices]
        longest = max(len(c) for c in conts)
        if len(prompt_tokens) + longest > self.n_ctx:
            prompt_tokens = prompt_tokens[:1] + prompt_tokens[-(self.n_ctx - longest - 1) :]
        n_prompt = len(prompt_tokens)
        llm.reset()
        llm._logits_all = False  # last-position logits only
        llm.eval(prompt_tokens)
        last = np.ctypeslib.as_array(
            self._llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),)
        )
        last_logprobs = _log_softmax(last.copy())
        logprobs: list[float] = []
        for cont in conts:
            total = float(last_logprobs[cont[0]])
            if len(cont) > 1:
                llm.n_tokens = n_prompt  # rewind to the cached prompt
                llm._logits_all = True
                llm.eval(cont[:-1])  # the last token's own logits are never needed
                rows = _log_softmax(np.asarray(llm.scores[n_prompt : n_prompt + len(cont) - 1]))
                total += float(rows[np.arange(len(cont) - 1), cont[1:]].sum())
            logprobs.append(total)
        return logprobs, [len(c) for c in conts]


def _recorded(path: Path) -> set[tuple[str, str, str, str]]:
    """(model, category, formulation, item_id) of every item already in the output file."""
    if not path.exists():
        return set()
    done = set()
    for line in path.read_text().splitlines():
        if line:
            r = json.loads(line)
            done.add((str(r["model"]), str(r["category"]), str(r["formulation"]), r["item_id"]))
    return done


def run(args: argparse.Namespace) -> int:
    """Score every missing (model, category, formulation, item) and append it to args.out."""
    from edge_node.models import model_path

    out = Path(args.out)
    done = _recorded(out)
    formulations: list[Formulation] = args.formulations
    scorers: dict[str, ChoiceScorer] = {}
    # Category-major, so an interrupted run still leaves complete rows of the table.
    for formulation in formulations:
        for category in args.categories:
            if formulation == "mc" and category not in args.mc:
                continue
            for model in args.models:
                items = [
                    item
                    for item in probe_items(category, formulation, args.n, args.seed)
                    if (model, category, formulation, item.item_id) not in done
                ]
                if not items:
                    continue
                if model not in scorers:
                    scorers[model] = ChoiceScorer(model_path(model), args.n_ctx, args.threads)
                scorer = scorers[model]
                started_s = time.perf_counter()
                n_tokens = 0
                with out.open("a") as handle:
                    for item in items:
                        logprobs, counts = scorer.score(item.prompt, item.choices)
                        n_tokens += len(scorer.tokenize(item.prompt, add_bos=True)) + sum(counts)
                        record = {
                            "model": model,
                            "category": category,
                            "formulation": formulation,
                            "item_id": item.item_id,
                            "label": item.label,
                            "choices": list(item.choices),
                            "logprobs": logprobs,
                            "choice_tokens": counts,
                        }
                        handle.write(json.dumps(record) + "\n")
                        handle.flush()
                    elapsed_s = time.perf_counter() - started_s
                    logger.info(
                        "%s %s %s: %d items, %.1f s, ~%.0f tok/s",
                        model,
                        category,
                        formulation,
                        len(items),
                        elapsed_s,
                        n_tokens / max(elapsed_s, 1e-9),
                    )
    return 0


def accuracy_table(path: Path) -> str:
    """Markdown table: rows category x formulation/scoring, columns models, cells accuracy.

    Besides the three scorings, ``mc/sum+cal`` and (for label-word categories, whose items all
    share one choice tuple) ``rc/sum+cal`` show label-free prior correction: each choice
    position's mean log-probability over the probed items is subtracted before the argmax. It
    measures how much of a model's error is a constant bias towards one label, which a router
    can learn per (expert, category).
    """
    records: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    models: list[str] = []
    for line in path.read_text().splitlines():
        if line:
            record = json.loads(line)
            key = (record["model"], record["category"], record["formulation"], record["item_id"])
            records.setdefault(key, record)
            if record["model"] not in models:
                models.append(str(record["model"]))
    groups: defaultdict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for (model, category, formulation, _), record in records.items():
        groups[(category, formulation, model)].append(record)
    accuracy: dict[tuple[str, str, str], tuple[float, int]] = {}
    n_choices: dict[str, int] = {}
    for (category, formulation, model), group in groups.items():
        n_choices[category] = len(group[0]["choices"])
        labels = np.array([r["label"] for r in group])
        scorings: tuple[Scoring, ...] = ("sum",) if formulation == "mc" else SCORINGS
        for scoring in scorings:
            hits = [
                int(
                    np.argmax(
                        option_distribution(
                            r["logprobs"], r["choice_tokens"], r["choices"], scoring
                        )
                    )
                )
                == r["label"]
                for r in group
            ]
            accuracy[(category, f"{formulation}/{scoring}", model)] = (
                float(np.mean(hits)),
                len(hits),
            )
        same_choices = len({tuple(r["choices"]) for r in group}) == 1
        if formulation == "mc" or same_choices:
            matrix = np.array([r["logprobs"] for r in group], dtype=np.float64)
            calibrated = matrix - matrix.mean(axis=0, keepdims=True)
            hits_cal = np.argmax(calibrated, axis=1) == labels
            accuracy[(category, f"{formulation}/sum+cal", model)] = (
                float(hits_cal.mean()),
                len(group),
            )
    rows = sorted({(k[0], k[1]) for k in accuracy}, key=lambda r: (_order(r[0]), r[1]))
    lines = [
        "| category | formulation/scoring | chance | " + " | ".join(models) + " |",
        "|---|---|---|" + "---|" * len(models),
    ]
    for category, variant in rows:
        cells = []
        for model in models:
            cell = accuracy.get((category, variant, model))
            cells.append(f"{cell[0]:.2f} ({cell[1]})" if cell else "-")
        chance = 1 / n_choices[category]
        lines.append(f"| {category} | {variant} | {chance:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _order(category: str) -> int:
    names = list(PROBE_CATEGORIES)
    return names.index(category) if category in names else len(names)


def _csv(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--models", type=_csv, default=list(DEFAULT_MODELS))
    parser.add_argument("--categories", type=_csv, default=list(PROBE_CATEGORIES))
    parser.add_argument("--formulations", type=_csv, default=["rc", "mc"])
    parser.add_argument(
        "--mc",
        type=_csv,
        default=["copa", "arc_easy", "arc_challenge", "openbookqa", "commonsenseqa", "mmlu_stem"],
        help="categories also probed in the mc (letters) formulation",
    )
    parser.add_argument("--n", type=int, default=40, help="validation items per category")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-ctx", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="category_probe.jsonl")
    parser.add_argument("--table-only", action="store_true", help="only print the table of --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for f in args.formulations:
        if f not in get_args(Formulation):
            parser.error(f"unknown formulation {f!r}")
    for c in args.categories:
        if c not in CATEGORIES:
            parser.error(f"unknown category {c!r}")
    if not args.table_only:
        run(args)
    sys.stdout.write(accuracy_table(Path(args.out)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
