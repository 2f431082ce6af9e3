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
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.budgets import Budgets, check_delay_budget_s, check_energy_budget_j

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


NodeKind = Literal["edge-node", "openai"]
MultipleChoice = Literal["auto", "logprobs", "generate"]
_OPENAI_ONLY = ("base_url", "model", "api_key_file", "power_w", "multiple_choice", "endpoint")


class NodeEntry(BaseModel):
    """One expert: an edge node (``address``) or an OpenAI-compatible server (``kind = "openai"``).

    ``kind = "edge-node"`` (the default) is `edge-node serve` at ``address``. ``kind = "openai"``
    is any server speaking OpenAI's HTTP API (llama-server, Ollama, vLLM) at ``base_url``
    (docs/openai-experts.md); it takes the keys after ``tls`` instead of ``address``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128, description="expert name, unique")
    kind: NodeKind = Field(default="edge-node", description="edge-node (gRPC) or openai (HTTP)")
    address: str = Field(default="", description="host:port of the edge node")
    device: str = Field(default="", description="free-form device label (e.g. jetson-orin)")
    tls: TlsEntry | None = Field(default=None, description="overrides the [tls] table's keys")
    base_url: str | None = Field(
        default=None, description='openai: the API root, e.g. "http://host:8080/v1"'
    )
    model: str | None = Field(
        default=None, min_length=1, max_length=256, description="openai: the model field sent"
    )
    api_key_file: Path | None = Field(
        default=None, description="openai: file holding the API key (sent as a bearer token)"
    )
    power_w: float | None = Field(
        default=None,
        gt=0,
        le=100_000,
        description="openai: configured power model; energy = power_w x latency, 'estimated'",
    )
    multiple_choice: MultipleChoice = Field(
        default="auto",
        description="openai: score choices by prompt log-probabilities (echo), by generation "
        "and answer matching, or auto (log-probabilities where the server returns them)",
    )
    endpoint: Literal["completions", "chat"] = Field(
        default="completions",
        description="openai: open prompts through /v1/completions or /v1/chat/completions",
    )

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        match = _ADDRESS.match(value)
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise ValueError(f"must be host:port, got {value!r}")
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials (use api_key_file)")
        if parts.query or parts.fragment:
            raise ValueError(f"must have no query or fragment, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _keys_of_kind(self) -> NodeEntry:
        if self.kind == "edge-node":
            if not self.address:
                raise ValueError("address: required (host:port of the edge node)")
            for key in _OPENAI_ONLY:
                if key in self.model_fields_set:
                    raise ValueError(f'{key}: only for kind = "openai"')
            return self
        if "address" in self.model_fields_set:
            raise ValueError('address: not for kind = "openai" (use base_url)')
        if self.tls is not None:
            raise ValueError('tls: not for kind = "openai" (https base_url, api_key_file)')
        if self.base_url is None:
            raise ValueError('base_url: required for kind = "openai"')
        if self.model is None:
            raise ValueError('model: required for kind = "openai"')
        return self

    @property
    def target(self) -> str:
        """Where the expert is reached: ``address``, or ``base_url`` for an OpenAI server."""
        return self.base_url if self.kind == "openai" and self.base_url else self.address


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
        description="multiple choice: ask the top-k experts one at a time in the gate's exit "
        "order and stop once the answer looks final (the gate's stop score and threshold; "
        "per request: early_exit)",
    )
    # Bounds: orchestrator.budgets (the validators below), the same rule as a request's.
    energy_budget_j: float | None = Field(default=None, description="default budget")
    delay_budget_s: float | None = Field(default=None, description="default budget")
    aggregation_s: float = Field(default=0.002, ge=0, description="T^agg added to each plan")
    deadline_margin_s: float = Field(
        default=0.005, ge=0, description="kept back from the delay budget for fusion"
    )
    default_timeout_s: float = Field(default=60.0, description="deadline without budget")
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

    @property
    def budgets(self) -> Budgets:
        """The default budgets, for requests that set none of their own."""
        return Budgets(self.energy_budget_j, self.delay_budget_s)

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
    nodes = tuple(_resolved_node(node, base) for node in config.nodes)
    return config.model_copy(update={**updates, "nodes": nodes})


def _resolved_node(node: NodeEntry, base: Path) -> NodeEntry:
    """A node's relative file paths resolved against the cluster file's folder."""
    update: dict[str, object] = {}
    if node.tls is not None:
        update["tls"] = node.tls.resolved(base)
    if node.api_key_file is not None and not node.api_key_file.is_absolute():
        update["api_key_file"] = base / node.api_key_file
    return node.model_copy(update=update) if update else node
