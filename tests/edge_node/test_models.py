"""The built-in model catalogue: resolution, assembly and checksum verification."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge_node import models
from edge_node.errors import CorruptModelError, ModelNotFoundError


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_single_file_model_is_used_in_place_and_verified(cache: Path) -> None:
    model_id, path = models.resolve("smollm2-135m")
    assert model_id == "smollm2-135m"
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "site-packages" in str(path)
    assert list((cache / "verified").iterdir())  # the sidecar remembers the verified digest


def test_chunked_model_is_assembled_once_into_the_cache(cache: Path) -> None:
    path = models.model_path("gemma3-270m")
    assert path == cache / "gemma-3-270m-q4_k_m.gguf"
    assert path.stat().st_size == models.CATALOGUE["gemma3-270m"].size_bytes
    mtime = path.stat().st_mtime_ns
    assert models.model_path("gemma3-270m") == path
    assert path.stat().st_mtime_ns == mtime  # not re-assembled
    assert not list(cache.glob(".tmp-*"))  # no partial files left behind


def test_a_corrupted_cached_file_fails_its_checksum(cache: Path) -> None:
    path = models.model_path("gemma3-270m")
    with path.open("r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CorruptModelError, match="does not match"):
        models.model_path("gemma3-270m")


def test_unknown_names_list_the_catalogue() -> None:
    with pytest.raises(ModelNotFoundError, match=r"built-in models: smollm2-135m, gemma3-270m"):
        models.resolve("gpt-5")


def test_paths_must_be_gguf_files(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        models.resolve(str(tmp_path / "absent.gguf"))
    directory = tmp_path / "dir.gguf"
    directory.mkdir()
    with pytest.raises(ModelNotFoundError, match="is not a file"):
        models.resolve(str(directory))
    fake = tmp_path / "weights.gguf"
    fake.write_bytes(b"PK\x03\x04zip")
    with pytest.raises(CorruptModelError, match="is not a GGUF file"):
        models.resolve(str(fake))
    real = tmp_path / "copy.gguf"
    real.write_bytes(b"GGUF" + b"\x00" * 16)
    assert models.resolve(str(real)) == ("copy", real)


def test_optional_model_reports_how_to_install_it(cache: Path) -> None:
    if models.is_installed("qwen2.5-1.5b"):
        pytest.skip("the optional model is installed here")
    with pytest.raises(ModelNotFoundError, match=re.escape("edge-node models pull qwen2.5-1.5b")):
        models.model_path("qwen2.5-1.5b")
