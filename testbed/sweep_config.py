"""``sweep.toml``: what a budget sweep runs. Unknown keys are errors naming the key.

Example (see testbed/configs/quick.toml)::

    seed = 0
    top_k = [1, 2]
    methods = ["moe2", "best-single", "random-k", "uniform-ensemble", "greedy", "oracle"]

    [[experts]]
    name = "smollm2-135m"
    model = "smollm2-135m"      # built-in name or .gguf path: started locally
    device = "orin-agx"         # optional emulated device profile
    delay_ms = 5                # optional emulated link (one way)
    rate_mbit = 100

    [[experts]]
    name = "remote"
    address = "10.0.0.7:50051"  # a node that is already running

    [categories]                # name = number of prompts (split train/validation/test)
    sst2 = 40
    boolq = 40

    [budgets]
    energy_j = "auto"           # or a list of joules
    delay_s = "auto"            # or a list of seconds (the same for every category)
    points = 4                  # grid points per axis for "auto"

    [emulation]
    network = "auto"            # auto | netns | proxy | none

    [live]
    points = 3                  # budget points served live through the orchestrator
    prompts = 24                # test prompts per point
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Method = Literal[
    "moe2",
    "moe2-exit",
    "best-single",
    "category-best",
    "random-k",
    "uniform-ensemble",
    "greedy",
    "oracle",
]
ALL_METHODS: tuple[Method, ...] = get_args(Method)


class SweepConfigError(Exception):
    """A sweep.toml problem: one line naming the file and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExpertConfig(_Strict):
    """One expert: a local model (started by the sweep) or a running node's address."""

    name: str = Field(min_length=1, max_length=64)
    model: str = Field(default="", description="built-in name or .gguf path")
    address: str = Field(default="", description="host:port of a running edge node")
    engine: Literal["llama", "fake"] = "llama"
    device: str | None = Field(default=None, description="emulated device profile")
    delay_ms: float = Field(default=0.0, ge=0, le=10_000)
    rate_mbit: float | None = Field(default=None, gt=0)
    fake_token_delay_s: float = Field(default=0.0, ge=0, le=10)

    @model_validator(mode="after")
    def _model_or_address(self) -> ExpertConfig:
        if bool(self.model) == bool(self.address) and self.engine == "llama":
            raise ValueError("give exactly one of model or address")
        if self.device is not None:
            from edge_node.emulation import DEVICE_PROFILES

            if self.device not in DEVICE_PROFILES:
                raise ValueError(f"device must be one of {', '.join(DEVICE_PROFILES)}")
        return self


class BudgetConfig(_Strict):
    """The budget grid."""

    energy_j: Literal["auto"] | list[float] = "auto"
    delay_s: Literal["auto"] | list[float] = "auto"
    points: int = Field(default=4, ge=1, le=50)

    @model_validator(mode="after")
    def _positive(self) -> BudgetConfig:
        for name in ("energy_j", "delay_s"):
            values = getattr(self, name)
            if isinstance(values, list) and (not values or any(not v > 0 for v in values)):
                raise ValueError(f"{name} must be 'auto' or a non-empty list of positive numbers")
        return self


class EmulationConfig(_Strict):
    """How the fleet's heterogeneity is emulated."""

    network: Literal["auto", "netns", "proxy", "none"] = "auto"


class LiveConfig(_Strict):
    """Live validation through the running orchestrator."""

    points: int = Field(default=3, ge=0, le=50)
    prompts: int = Field(default=24, ge=1, le=10_000)


class NodeConfig(_Strict):
    """Settings for the nodes the sweep starts."""

    n_ctx: int = Field(default=1024, ge=128, le=32768)
    n_threads: int = Field(default=1, ge=1, le=256, description="per node; nodes run in parallel")


class SweepConfig(_Strict):
    """A whole sweep."""

    seed: int = 0
    top_k: list[int] = Field(default_factory=lambda: [1, 2])
    methods: list[Method] = Field(default_factory=lambda: list(ALL_METHODS))
    splits: tuple[float, float, float] = (0.5, 0.25, 0.25)
    experts: list[ExpertConfig] = Field(min_length=1)
    categories: dict[str, int] = Field(min_length=1)
    budgets: BudgetConfig = Field(default_factory=BudgetConfig)
    emulation: EmulationConfig = Field(default_factory=EmulationConfig)
    live: LiveConfig = Field(default_factory=LiveConfig)
    node: NodeConfig = Field(default_factory=NodeConfig)
    aggregation_s: float = Field(default=0.002, ge=0)
    statistic: Literal["p50", "p95", "max"] = "p95"

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        names = [e.name for e in self.experts]
        if len(set(names)) != len(names):
            raise ValueError("experts: names must be unique")
        if any(k < 1 for k in self.top_k) or not self.top_k:
            raise ValueError("top_k: values must be >= 1")
        if any(n < 3 for n in self.categories.values()):
            raise ValueError("categories: every category needs at least 3 prompts")
        if abs(sum(self.splits) - 1.0) > 1e-9 or any(f <= 0 for f in self.splits):
            raise ValueError("splits: three positive fractions summing to 1")
        from testbed.categories import CATEGORIES

        unknown = [c for c in self.categories if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"categories: unknown {', '.join(unknown)}")
        return self


def load_sweep_config(path: Path) -> SweepConfig:
    """Read and validate a sweep file.

    Raises:
        SweepConfigError: unreadable, invalid TOML, unknown key or bad value (one line).
    """
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SweepConfigError(f"sweep config {path} does not exist") from None
    except OSError as err:
        raise SweepConfigError(f"sweep config {path} cannot be read: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise SweepConfigError(f"sweep config {path} is not valid TOML: {err}") from None
    try:
        return SweepConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise SweepConfigError(f"{path}: {where}: {message}") from None
