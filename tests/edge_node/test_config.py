"""Settings precedence (flag > env > TOML > default) and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_node.config import ConfigError, load_settings


def test_precedence_is_flag_then_env_then_file_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        "n_ctx = 1024\nmax_queue_depth = 3\nport = 7000\n[energy]\nbackend = 'rapl'\n"
    )
    monkeypatch.setenv("EDGE_NODE_MAX_QUEUE_DEPTH", "5")
    monkeypatch.setenv("EDGE_NODE_PORT", "7100")
    monkeypatch.setenv("EDGE_NODE_ENERGY__BACKEND", "estimate")
    settings = load_settings(config, port=7200, n_threads=None)
    assert settings.port == 7200  # flag beats env and file
    assert settings.max_queue_depth == 5  # env beats file
    assert settings.n_ctx == 1024  # file beats default
    assert settings.energy.backend == "estimate"  # nested env var
    assert settings.n_batch == 512  # default


def test_unknown_key_and_bad_values_are_named(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("max_queue_depht = 3\n")
    with pytest.raises(ConfigError, match=r"node.toml: max_queue_depht: unknown key"):
        load_settings(config)
    config.write_text("n_gpu_layers = -2\n")
    with pytest.raises(ConfigError, match=r"n_gpu_layers: Input should be greater than or equal"):
        load_settings(config)
    config.write_text("n_ctx = [\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_settings(config)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="port"):
        load_settings(None, port=70000)
