"""Folio's version: the installed distribution's metadata (bundled into the frozen app), else pyproject.toml."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path


def app_version() -> str:
    try:
        return importlib.metadata.version("folio")
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        try:
            return tomllib.loads(pyproject.read_text())["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"
