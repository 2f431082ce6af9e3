"""Edge-node settings. Precedence: CLI flags > EDGE_NODE_* env vars > TOML file > defaults."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from edge_node.addresses import NODE_PORT
from edge_node.energy import EnergySettings

if sys.version_info >= (3, 11):  # noqa: UP036 (the node supports 3.10)
    import tomllib
else:  # the node supports Python 3.10 (JetPack 6); tomli is tomllib's origin
    import tomli as tomllib


class ConfigError(Exception):
    """A configuration problem, reported as one line naming the field or file."""


class EdgeNodeSettings(BaseSettings):
    """Everything `edge-node serve` needs; validated once at start-up.

    Nested tables use ``__`` in environment variables: ``EDGE_NODE_ENERGY__BACKEND=rapl``.
    """

    model_config = SettingsConfigDict(
        env_prefix="EDGE_NODE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    model: str = Field(
        default="smollm2-135m", description="built-in model name or a path to a .gguf file"
    )
    engine: Literal["llama", "fake"] = Field(
        default="llama", description="llama.cpp, or the deterministic fake for tests"
    )
    host: str = Field(default="127.0.0.1", description="address to bind; 0.0.0.0 for all")
    port: int = Field(default=NODE_PORT, ge=0, le=65535, description="0 picks a free port")
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Prometheus /metrics on this port (0 picks a free one); None = off",
    )
    n_ctx: int = Field(default=2048, ge=64, le=262144, description="context window in tokens")
    n_batch: int = Field(default=512, ge=8, le=8192, description="prompt batch in tokens")
    n_threads: int | None = Field(default=None, ge=1, le=512, description="None = all cores")
    n_gpu_layers: int = Field(default=0, ge=-1, description="layers offloaded; -1 = all")
    allow_cpu_fallback: bool = Field(
        default=False,
        description="with n_gpu_layers != 0 on a build that cannot offload: run on the CPU with "
        "a warning instead of refusing to start",
    )
    seed: int = Field(default=0, ge=0, description="default sampling seed")
    use_mmap: bool = Field(
        default=False,
        description="map the GGUF instead of reading it into memory; mapped weights can be "
        "evicted by the kernel and re-read mid-request (seconds per token were seen on a VM)",
    )
    max_queue_depth: int = Field(
        default=8, ge=1, le=10_000, description="requests waiting or running before refusal"
    )
    default_max_tokens: int = Field(default=128, ge=1, le=32768)
    max_prompt_bytes: int = Field(
        default=262_144, ge=1, le=3_000_000, description="UTF-8 bytes; longer is refused"
    )
    max_choices: int = Field(default=32, ge=1, le=1024, description="Score choices per request")
    max_choice_bytes: int = Field(default=4096, ge=1, le=65_536, description="bytes per choice")
    max_stops: int = Field(default=16, ge=0, le=256, description="Generate stop strings")
    max_stop_bytes: int = Field(default=256, ge=1, le=4096, description="bytes per stop string")
    shutdown_grace_s: float = Field(
        default=10.0, ge=0, description="time to finish in-flight work on SIGTERM"
    )
    fake_token_delay_s: float = Field(default=0.0, ge=0, le=60, description="fake engine only")
    fake_prefill_delay_s: float = Field(default=0.0, ge=0, le=60, description="fake engine only")
    energy: EnergySettings = Field(default_factory=EnergySettings)
    emulate_device: str | None = Field(
        default=None,
        description="testbed only: an emulated device profile (rtx-4090, orin-agx, orin-nx, "
        "orin-nano, host; docs/devices.md); stretches compute time and charges the device's "
        "modeled energy, labelled estimated and emulated",
    )
    emulate_timing: Literal["sleep", "account"] = Field(
        default="sleep",
        description="testbed only, with emulate_device: 'sleep' waits out the emulated compute "
        "time (live serving); 'account' computes at host speed and adds it to the reported "
        "latency instead (recording); a request may override it with moe2-emulate-timing metadata",
    )

    tls_cert: Path | None = Field(default=None, description="PEM certificate chain: serve TLS")
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert")
    tls_client_ca: Path | None = Field(
        default=None, description="PEM CA: require client certificates it signed (mutual TLS)"
    )
    token_file: Path | None = Field(
        default=None,
        description="file holding the bearer token callers must send (else EDGE_NODE_TOKEN)",
    )
    insecure: bool = Field(
        default=False, description="allow a non-loopback bind without TLS and a token"
    )
    reflection: bool | None = Field(
        default=None, description="gRPC reflection; default on for loopback binds only"
    )

    @field_validator("emulate_device")
    @classmethod
    def _known_device(cls, value: str | None) -> str | None:
        from edge_node.emulation import DEVICE_PROFILES

        if value is not None and value not in DEVICE_PROFILES:
            raise ValueError(f"must be one of {', '.join(DEVICE_PROFILES)}, got {value!r}")
        return value

    @field_validator("model")
    @classmethod
    def _model_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a built-in model or a .gguf file")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win. No .env or secrets dir: configuration lives in one TOML file.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def describe_validation_error(err: ValidationError, origin: str) -> str:
    """One line naming the first bad field, e.g. ``node.toml: n_ctx: Input should be ...``."""
    first = err.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "(root)"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{origin}: {location}: {message}{more}"


def load_settings(toml_path: Path | None = None, **cli_flags: Any) -> EdgeNodeSettings:
    """Build settings from a TOML file, the environment and CLI flags (None = not given).

    Raises:
        ConfigError: unreadable or malformed file, unknown key, or a value out of bounds.
    """
    origin = str(toml_path) if toml_path else "settings"
    if toml_path is not None:
        try:
            with toml_path.open("rb") as handle:
                tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"config file {toml_path} does not exist") from None
        except OSError as err:
            raise ConfigError(f"config file {toml_path} cannot be read: {err.strerror}") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {toml_path} is not valid TOML: {err}") from None
        except UnicodeDecodeError as err:
            raise ConfigError(
                f"config file {toml_path} is not valid UTF-8 (byte {err.start})"
            ) from None

    class _FromFile(EdgeNodeSettings):
        model_config = SettingsConfigDict(toml_file=toml_path)

    try:
        return _FromFile(**{k: v for k, v in cli_flags.items() if v is not None})
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, origin)) from None
