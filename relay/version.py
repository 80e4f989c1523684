"""The installed stsguard's version, for `--version`, `relay.started` and build-info metrics."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def stsguard_version() -> str:
    """The package version (``0+unknown`` from a checkout that was never installed)."""
    try:
        return version("stsguard")
    except PackageNotFoundError:  # pragma: no cover
        return "0+unknown"
