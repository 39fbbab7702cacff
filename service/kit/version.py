"""The running build's version, as the package metadata gives it (pyproject.toml)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def _version() -> str:
    try:
        return version("slotpool")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


VERSION = _version()
PRODUCT = f"slotpool {VERSION}"
