"""Where the model computes: GPU offload as the llama.cpp build allows it.

One decision, made before anything is loaded: the layers asked for (``--n-gpu-layers``), whether
this llama-cpp-python build can offload at all, and whether a CPU fallback was allowed. A CPU-only
build asked for GPU layers is a one-line start-up error naming the flag (a silent CPU run would
report CPU speed and, worse, a GPU board's energy for CPU work). The result also tells the energy
detection which device computes, so NVML is chosen only when the model's layers are on the GPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from edge_node.errors import ModelError

logger = logging.getLogger(__name__)

ComputeDevice = Literal["cpu", "gpu"]


class OffloadError(ModelError):
    """GPU layers were asked for on a build (or engine) that cannot offload."""


def build_supports_offload() -> bool:
    """Whether the installed llama-cpp-python was built with a GPU backend (CUDA, Metal, ...)."""
    try:
        import llama_cpp
    except ImportError:
        return False
    return bool(llama_cpp.llama_supports_gpu_offload())


@dataclass(frozen=True, slots=True)
class Offload:
    """The offload decision.

    Attributes:
        requested_layers: ``--n-gpu-layers`` as given (-1: all).
        supported: Whether the build (and engine) can offload.
        layers: What is passed to llama.cpp: ``requested_layers``, or 0 after a CPU fallback.
        fell_back: GPU layers were asked for, the build cannot offload, and the fallback to the
            CPU was allowed.
    """

    requested_layers: int
    supported: bool
    layers: int
    fell_back: bool = False

    @property
    def compute_device(self) -> ComputeDevice:
        """The device the model's layers run on (the one to meter)."""
        return "gpu" if self.layers != 0 else "cpu"


def plan_offload(requested_layers: int, *, supported: bool, allow_cpu_fallback: bool) -> Offload:
    """Decide the layers to offload.

    Raises:
        OffloadError: GPU layers asked for, the build cannot offload and no fallback allowed.
    """
    if requested_layers == 0 or supported:
        return Offload(requested_layers, supported, requested_layers)
    if not allow_cpu_fallback:
        raise OffloadError(
            f"--n-gpu-layers {requested_layers}: this llama-cpp-python build cannot offload to "
            "a GPU (it is CPU-only); build the GPU wheel with `make setup LLAMA_BACKEND=cuda`, "
            "or run on the CPU with --n-gpu-layers 0 (or --allow-cpu-fallback)"
        )
    logger.warning(
        "--n-gpu-layers %d: this llama-cpp-python build cannot offload; running on the CPU "
        "(--allow-cpu-fallback)",
        requested_layers,
    )
    return Offload(requested_layers, supported, 0, fell_back=True)
