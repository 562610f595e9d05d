"""Environment the installed (PyInstaller-frozen) app sets before the engine loads; a no-op from source."""

from __future__ import annotations

import sys

from app.backend import default_model_gguf, use_bundled_default_model
from app.resources import resource_path


def bundled_gguf_path() -> str:
    """Where packaging/folio.spec puts the default model's GGUF, relative to the resources."""
    return f"models/{default_model_gguf()}"


def is_frozen() -> bool:
    return bool(getattr(sys, "frozen", False))


def configure_frozen_environment() -> None:
    """Point the engine at the bundled default model and numba's compile cache at a writable folder."""
    if is_frozen():
        use_bundled_default_model(resource_path(bundled_gguf_path()))
