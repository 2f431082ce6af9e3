"""The production engine: one llama.cpp context through llama-cpp-python.

Everything here runs on the node's single engine thread (``SerializedEngine``); nothing is
thread-safe and nothing needs to be. ``llama_cpp`` is imported inside ``LlamaEngine.load`` so the
rest of the node (and ``edge-node --help``) works where llama-cpp-python is not built.
"""

from __future__ import annotations

import codecs
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_node.engine import (
    FinishReason,
    GenerateParams,
    Generation,
    ModelInfo,
    Scores,
    TokenCallback,
)
from edge_node.errors import ContextOverflowError, RequestCancelledError

logger = logging.getLogger(__name__)

# GGUF general.file_type -> llama.cpp's quantisation names (llama_ftype), for GetInfo.
_FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    32: "BF16",
}


@dataclass(frozen=True, slots=True)
class LlamaOptions:
    """Context options; mirrors the node settings that concern llama.cpp."""

    n_ctx: int = 2048
    n_batch: int = 512
    n_threads: int | None = None
    n_gpu_layers: int = 0
    seed: int = 0
    use_mmap: bool = False


def _block_count(metadata: dict[str, str]) -> int:
    """The model's transformer blocks (GGUF ``<arch>.block_count``; 0: unknown)."""
    value = metadata.get(f"{metadata.get('general.architecture', '')}.block_count", "")
    return int(value) if value.isdigit() else 0


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (the vocabularies are up to 262k wide)."""
    rows = logits.astype(np.float64, copy=False)
    peak = rows.max(axis=-1, keepdims=True)
    shifted = rows - peak
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return result


def _common_prefix(first: Sequence[int], second: Sequence[int]) -> int:
    length = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        length += 1
    return length


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                longest = max(longest, size)
                break
    return longest


class LlamaEngine:
    """A llama-cpp-python ``Llama`` behind the ``Engine`` protocol.

    Generate formats the prompt with the GGUF's chat template when it has one (unless raw), and
    streams tokens through ``llama.generate`` (which reuses a cached prompt prefix). Score
    evaluates the prompt prefix shared by all choices once and then only each choice's own tokens,
    reading every continuation position's logits from one batched decode.
    """

    def __init__(self, llm: Any, info: ModelInfo, chat_formatter: Any | None) -> None:
        self._llm = llm
        self._formatter = chat_formatter
        self.info = info
        import llama_cpp

        self._llama_cpp = llama_cpp
        self._n_vocab = int(llm.n_vocab())

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        model_id: str,
        options: LlamaOptions,
        sha256: str = "",
    ) -> LlamaEngine:
        """Load a GGUF file into a fresh context (blocking; seconds for the larger models)."""
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=options.n_ctx,
            n_batch=min(options.n_batch, options.n_ctx),
            n_threads=options.n_threads,
            n_threads_batch=options.n_threads,
            n_gpu_layers=options.n_gpu_layers,
            seed=options.seed,
            use_mmap=options.use_mmap,
            logits_all=False,
            verbose=False,
        )
        metadata: dict[str, str] = dict(llm.metadata)
        template = metadata.get("tokenizer.chat_template")
        formatter = None
        if template:
            model = llm._model
            eos = model.token_eos()
            bos = model.token_bos()
            formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=model.token_get_text(eos) if eos >= 0 else "",
                bos_token=model.token_get_text(bos) if bos >= 0 else "",
            )
        file_type = int(metadata.get("general.file_type", -1))
        info = ModelInfo(
            model_id=model_id,
            family=metadata.get("general.architecture", "unknown"),
            quantization=_FILE_TYPES.get(file_type, f"file_type {file_type}"),
            context_tokens=int(llm.n_ctx()),
            chat_template=formatter is not None,
            engine="llama",
            size_bytes=path.stat().st_size,
            sha256=sha256,
            n_threads=int(llm.context_params.n_threads),
            n_gpu_layers=options.n_gpu_layers,
            gpu_offload_supported=bool(llama_cpp.llama_supports_gpu_offload()),
            model_layers=_block_count(metadata),
        )
        logger.info(
            "loaded %s (%s %s, n_ctx %d, chat template %s)",
            model_id,
            info.family,
            info.quantization,
            info.context_tokens,
            info.chat_template,
        )
        return cls(llm, info, formatter)

    # -- prompt handling ---------------------------------------------------------------------

    def _prompt_tokens(self, prompt: str, use_template: bool) -> tuple[list[int], tuple[str, ...]]:
        """Tokens of the (optionally templated) prompt and the template's own stop strings."""
        if use_template and self._formatter is not None:
            formatted = self._formatter(messages=[{"role": "user", "content": prompt}])
            tokens = self._llm.tokenize(
                formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True
            )
            stops = tuple(s for s in (formatted.stop or []) if s)
            return list(tokens), stops
        return list(self._llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)), ()

    def count_tokens(self, prompt: str, *, use_template: bool = False) -> int:
        """How many tokens the prompt takes (for profiling and validation)."""
        return len(self._prompt_tokens(prompt, use_template)[0])

    # -- Generate ------------------------------------------------------------------------------

    def generate(
        self, params: GenerateParams, on_token: TokenCallback, cancel: threading.Event
    ) -> Generation:
        """Stream up to max_tokens tokens; stop at EOG, a stop string, the context end or cancel."""
        llm = self._llm
        tokens, template_stops = self._prompt_tokens(params.prompt, not params.raw)
        n_ctx = self.info.context_tokens
        if len(tokens) >= n_ctx:
            raise ContextOverflowError("prompt", len(tokens), n_ctx)
        budget = min(params.max_tokens, n_ctx - len(tokens))
        stops = tuple(s for s in (*params.stop, *template_stops) if s)
        if params.seed is not None:
            llm.set_seed(params.seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        vocab = llm._model.vocab
        text = ""
        emitted = 0
        pending_tokens = 0
        completion = 0
        first_token_s: float | None = None
        finish: FinishReason = "length"
        stream = llm.generate(
            tokens,
            temp=params.temperature,
            top_k=40 if params.temperature > 0 else 1,
            top_p=0.95 if params.temperature > 0 else 1.0,
            min_p=0.05 if params.temperature > 0 else 0.0,
            repeat_penalty=1.0,
            reset=True,
        )
        try:
            for token in stream:
                now = time.monotonic()
                if first_token_s is None:
                    first_token_s = now
                if self._llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                completion += 1
                pending_tokens += 1
                text += decoder.decode(llm.detokenize([token]))
                cut = min(
                    (i for s in stops if (i := text.find(s, max(0, emitted - len(s)))) >= 0),
                    default=-1,
                )
                if cut >= 0:
                    text = text[:cut]
                    finish = "stop"
                    break
                safe_end = len(text) - _held_back(text, stops)
                if safe_end > emitted:
                    on_token(text[emitted:safe_end], pending_tokens, now)
                    emitted, pending_tokens = safe_end, 0
                if cancel.is_set():
                    finish = "cancelled"
                    break
                if completion >= budget:
                    finish = "length"
                    break
        finally:
            stream.close()
        text += decoder.decode(b"", final=True) if finish != "stop" else ""
        if len(text) > emitted and finish != "cancelled":
            on_token(text[emitted:], pending_tokens, time.monotonic())
        return Generation(text, len(tokens), completion, finish, first_token_s)

    # -- Score ---------------------------------------------------------------------------------

    def score(
        self, prompt: str, choices: Sequence[str], chat_template: bool, cancel: threading.Event
    ) -> Scores:
        """Summed log-probability of each choice's tokens given the prompt.

        Tokenisation follows lm-eval: the choice's tokens are those of tokenize(prompt + choice)
        past its common prefix with tokenize(prompt), so merges across the boundary are scored
        the way the model would see the joined text. The prefix shared by all choices is
        evaluated once (reusing the context's KV cache where an earlier request left the same
        tokens), then each choice's remaining tokens are decoded in one batch with logits for
        every position and the KV cache is trimmed back to the shared prefix.
        """
        llm = self._llm
        context, _ = self._prompt_tokens(prompt, chat_template)
        if chat_template and self._formatter is not None:
            # The choice follows the assistant turn's start: tokenise the joined text the same way.
            wholes = [self._join_templated(prompt, c) for c in choices]
        else:
            wholes = [
                list(llm.tokenize((prompt + c).encode("utf-8"), add_bos=True, special=False))
                for c in choices
            ]
        n_ctx = self.info.context_tokens
        longest = max(len(w) for w in wholes)
        if longest > n_ctx:
            raise ContextOverflowError("prompt plus the longest choice", longest, n_ctx)
        starts = [_common_prefix(context, w) for w in wholes]
        # Shared prefix of every whole sequence; keep at least one token of each choice after it.
        shared = min(min(starts), *(len(w) - 1 for w in wholes))
        for whole in wholes[1:]:
            shared = min(shared, _common_prefix(wholes[0], whole))
        if shared <= 0:
            raise ContextOverflowError("prompt", 0, n_ctx)  # unreachable with a BOS token
        evaluated = self._eval_prefix(wholes[0][:shared])
        last_logprobs = _log_softmax(self._last_logits())
        logprobs: list[float] = []
        counts: list[int] = []
        batch_size = int(llm.n_batch)
        try:
            for whole, start in zip(wholes, starts, strict=True):
                if cancel.is_set():
                    raise RequestCancelledError("cancelled")
                rest = whole[shared:]
                previous = last_logprobs[0]
                total = 0.0
                scored = 0
                for offset in range(0, len(rest), batch_size):
                    chunk = rest[offset : offset + batch_size]
                    rows = self._decode(chunk, shared + offset)
                    evaluated += len(chunk)
                    logp_rows = _log_softmax(rows)
                    for index, token in enumerate(chunk):
                        position = shared + offset + index
                        if position >= start:
                            total += float(previous[token])
                            scored += 1
                        previous = logp_rows[index]
                logprobs.append(total)
                counts.append(scored)
                llm._ctx.kv_cache_seq_rm(-1, shared, -1)
        finally:
            llm._ctx.kv_cache_seq_rm(-1, shared, -1)
            llm.n_tokens = shared
            llm._requires_eval = True  # the context's logits belong to a choice, not the prefix
        return Scores(tuple(logprobs), tuple(counts), len(context), evaluated)

    def _join_templated(self, prompt: str, choice: str) -> list[int]:
        assert self._formatter is not None
        formatted = self._formatter(messages=[{"role": "user", "content": prompt}])
        return list(
            self._llm.tokenize(
                (formatted.prompt + choice).encode("utf-8"),
                add_bos=not formatted.added_special,
                special=True,
            )
        )

    def _eval_prefix(self, prefix: list[int]) -> int:
        """Bring the KV cache to exactly ``prefix`` with fresh last-token logits; tokens decoded."""
        llm = self._llm
        reuse = _common_prefix(list(llm.input_ids[: llm.n_tokens]), prefix)
        reuse = min(reuse, len(prefix) - 1)  # re-decode at least the last token for its logits
        llm._ctx.kv_cache_seq_rm(-1, reuse, -1)
        llm.n_tokens = reuse
        llm.eval(prefix[reuse:])
        return len(prefix) - reuse

    def _last_logits(self) -> np.ndarray:
        pointer = self._llama_cpp.llama_get_logits_ith(self._llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(1, self._n_vocab)).copy()

    def _decode(self, tokens: list[int], n_past: int) -> np.ndarray:
        """Decode tokens at positions n_past.. with logits for every one; [len, n_vocab]."""
        llm = self._llm
        llm._batch.set_batch(batch=tokens, n_past=n_past, logits_all=True)
        llm._ctx.decode(llm._batch)
        pointer = llm._ctx.get_logits()
        return np.ctypeslib.as_array(pointer, shape=(len(tokens), self._n_vocab)).copy()

    def close(self) -> None:
        """Free the context and the model."""
        close = getattr(self._llm, "close", None)
        if close is not None:
            close()
