"""The installed package's version, for GetInfo and both CLIs' ``--version``."""

from __future__ import annotations

from importlib import metadata


def package_version() -> str:
    """The installed moe2-edge version, or "dev" from a bare checkout."""
    try:
        return metadata.version("moe2-edge")
    except metadata.PackageNotFoundError:
        return "dev"
