"""Prompt embeddings for the gate, cached in the sweep folder (``embeddings.npz``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from testbed.categories import Item


def embed(items: Sequence[Item], cache: Path) -> tuple[np.ndarray, str]:
    """Prompt embeddings (cached by item id in DIR/embeddings.npz) and the encoder's name."""
    from orchestrator.encoder import load_encoder, minilm_model_dir

    # The static encoder distilled from MiniLM: the fine level in well under a millisecond
    # (docs/gate.md); hashing where the MiniLM package is not installed.
    encoder = load_encoder("static" if minilm_model_dir() is not None else "hashing")
    stored: dict[str, np.ndarray] = {}
    if cache.exists():
        with np.load(cache, allow_pickle=False) as data:
            if str(data["encoder"]) == encoder.name:
                stored = dict(zip(data["ids"].tolist(), data["vectors"], strict=True))
    missing = [item for item in items if item.item_id not in stored]
    if missing:
        vectors = encoder.encode([item.prompt for item in missing])
        stored.update({item.item_id: v for item, v in zip(missing, vectors, strict=True)})
        import io

        from edge_node.files import atomic_write_bytes

        buffer = io.BytesIO()
        ids = sorted(stored)
        np.savez(
            buffer,
            encoder=np.array(encoder.name),
            ids=np.array(ids),
            vectors=np.stack([stored[i] for i in ids]),
        )
        atomic_write_bytes(cache, buffer.getvalue())
    return np.stack([stored[item.item_id] for item in items]), encoder.name
