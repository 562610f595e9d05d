"""Environment the installed (PyInstaller-frozen) app sets before the engine loads; a no-op from source."""

from __future__ import annotations

import os
import sys
from pathlib import PurePosixPath

from app.resources import resource_path
from engine.default_model import GGUF_ENV, GGUF_MEMBER, cache_dir

BUNDLED_GGUF = f"models/{PurePosixPath(GGUF_MEMBER).name}"  # where packaging/folio.spec puts it


def is_frozen() -> bool:
    return bool(getattr(sys, "frozen", False))


def configure_frozen_environment() -> None:
    """Point the engine at the bundled default model and numba's compile cache at a writable folder.

    The install folder (/opt/folio, Program Files) is read-only for users, so numba cannot cache next to the
    engine's sources there; without a cache it would recompile the graph index's kernels on every start.
    """
    if not is_frozen():
        return
    bundled = resource_path(BUNDLED_GGUF)
    if bundled.is_file():
        os.environ.setdefault(GGUF_ENV, str(bundled))
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir() / "numba"))
