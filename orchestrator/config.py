"""The cluster file (`moe2 serve --cluster cluster.toml`): nodes plus optional orchestrator keys.

The minimal form (docs/architecture.md §7) is a list of ``[[nodes]]`` with ``name`` and
``address``. Every other key is optional and documented on its field. Unknown keys are errors
naming the key; relative file paths are resolved against the cluster file's folder.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.budgets import check_delay_budget_s, check_energy_budget_j

_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


class ClusterError(Exception):
    """A cluster-file problem, as one line naming the file and the field."""


class TlsEntry(BaseModel):
    """How the orchestrator reaches nodes: a ``[tls]`` table, or a node's own ``tls`` table.

    TLS is used when ``ca`` (or a client ``cert``) is set; the token in ``token_file`` is sent
    as ``authorization: Bearer`` metadata. A node's table overrides the keys it sets.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca: Path | None = Field(default=None, description="PEM CA that signed the node certificates")
    cert: Path | None = Field(default=None, description="PEM client certificate (mutual TLS)")
    key: Path | None = Field(default=None, description="PEM key of cert")
    token_file: Path | None = Field(default=None, description="file with the nodes' token")

    def over(self, base: TlsEntry | None) -> TlsEntry:
        """This table's keys over base's."""
        if base is None:
            return self
        return base.model_copy(update=self.model_dump(exclude_none=True))

    def resolved(self, folder: Path) -> TlsEntry:
        """Relative paths resolved against the cluster file's folder."""
        return self.model_copy(
            update={
                key: folder / value
                for key, value in self.model_dump(exclude_none=True).items()
                if isinstance(value, Path) and not value.is_absolute()
            }
        )


class NodeEntry(BaseModel):
    """One edge node: an expert name and the host:port of its `edge-node serve`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128, description="expert name, unique")
    address: str = Field(description="host:port of the edge node")
    device: str = Field(default="", description="free-form device label (e.g. jetson-orin)")
    tls: TlsEntry | None = Field(default=None, description="overrides the [tls] table's keys")

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        match = _ADDRESS.match(value)
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise ValueError(f"must be host:port, got {value!r}")
        return value


class ClusterConfig(BaseModel):
    """Everything `moe2 serve` reads from the cluster file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nodes: tuple[NodeEntry, ...] = Field(default=(), description="the edge nodes")
    tls: TlsEntry | None = Field(default=None, description="how to reach TLS/token nodes")
    gate: Path | None = Field(default=None, description="trained gate file (.npz); else uniform")
    profile: Path | None = Field(default=None, description="profile.json from `moe2 profile`")
    probe: bool = Field(
        default=True,
        description="measure experts that have no figures (no profile, or joining later) with "
        "a few probe requests before planning with them (orchestrator/probe.py)",
    )
    probe_wait_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="at start-up, how long to wait for the probes before serving (the rest "
        "finish in the background)",
    )
    selection: Path | None = Field(
        default=None,
        description="recorded validation responses (.npz) for the gated objective; else best-of",
    )
    top_k: int = Field(default=2, ge=1, le=64, description="experts per prompt (fine level)")
    early_exit: bool = Field(
        default=False,
        description="multiple choice: ask the top-k experts cheapest first and stop once the "
        "fused answer passes the gate's confidence threshold (per request: early_exit)",
    )
    energy_budget_j: float | None = Field(default=None, gt=0, description="default budget")
    delay_budget_s: float | None = Field(default=None, gt=0, description="default budget")
    aggregation_s: float = Field(default=0.002, ge=0, description="T^agg added to each plan")
    deadline_margin_s: float = Field(
        default=0.005, ge=0, description="kept back from the delay budget for fusion"
    )
    default_timeout_s: float = Field(default=60.0, gt=0, description="deadline without budget")
    profile_statistic: Literal["p50", "p95", "max"] = Field(
        default="p95", description="which profiled statistic is the worst case"
    )
    drift_ratio: float = Field(
        default=0.1, gt=0, description="re-plan when a live statistic moves by this fraction"
    )
    profile_window: int = Field(default=64, ge=4, le=100_000, description="live observations kept")
    categories: tuple[str, ...] = Field(default=(), description="categories planned for")
    objective: Literal["auto", "gated", "best-of", "coverage"] = "auto"

    @field_validator("energy_budget_j")
    @classmethod
    def _energy_budget(cls, value: float | None) -> float | None:
        return None if value is None else check_energy_budget_j(value, "")

    @field_validator("delay_budget_s", "default_timeout_s")
    @classmethod
    def _delay_budget(cls, value: float | None) -> float | None:
        return None if value is None else check_delay_budget_s(value, "")

    @model_validator(mode="after")
    def _unique_names(self) -> ClusterConfig:
        seen: set[str] = set()
        for node in self.nodes:
            if node.name in seen:
                raise ValueError(f"duplicate node name {node.name!r}")
            seen.add(node.name)
        return self


def load_cluster(path: Path) -> ClusterConfig:
    """Read and validate a cluster file.

    Raises:
        ClusterError: unreadable file, invalid TOML, unknown key or bad value.
    """
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ClusterError(f"cluster file {path} does not exist") from None
    except OSError as err:
        raise ClusterError(f"cluster file {path} cannot be read: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ClusterError(f"cluster file {path} is not valid TOML: {err}") from None
    except UnicodeDecodeError as err:
        raise ClusterError(f"cluster file {path} is not valid UTF-8 (byte {err.start})") from None
    try:
        config = ClusterConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        message = message.removeprefix("Value error, ")
        raise ClusterError(f"{path}: {where}: {message}") from None
    base = path.resolve().parent
    updates: dict[str, object] = {
        key: (base / value if not value.is_absolute() else value)
        for key in ("gate", "profile", "selection")
        if isinstance(value := getattr(config, key), Path)
    }
    if config.tls is not None:
        updates["tls"] = config.tls.resolved(base)
    nodes = tuple(
        node.model_copy(update={"tls": node.tls.resolved(base)}) if node.tls else node
        for node in config.nodes
    )
    return config.model_copy(update={**updates, "nodes": nodes})
