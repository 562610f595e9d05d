"""Paths of bundled resources (icon, sample document), from source or from a PyInstaller bundle."""

from __future__ import annotations

import sys
from pathlib import Path


def resources_dir() -> Path:
    """The resources/ folder: next to the app package from source, under sys._MEIPASS when frozen."""
    frozen_root = getattr(sys, "_MEIPASS", None)
    if frozen_root:
        return Path(frozen_root) / "resources"
    return Path(__file__).resolve().parents[1] / "resources"


def resource_path(name: str) -> Path:
    """The path of resources/`name` (it may not exist: callers fall back gracefully)."""
    return resources_dir() / name


APP_NAME = "Folio"
ICON_FILE = "folio.svg"
ICON_PNG = "folio.png"
