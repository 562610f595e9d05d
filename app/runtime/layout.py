"""Where a GPU runtime lives and whether it is complete: its per-user folder and VERSION.json stamp."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import platformdirs

from app.runtime.builds import RuntimeBuild

RUNTIME_DIR_ENV = "FOLIO_RUNTIME_DIR"
STAMP_FILE = "VERSION.json"
SITE_DIR = "site-packages"
DOWNLOADS_DIR = "downloads"


def runtime_root(env: dict[str, str] | None = None) -> Path:
    """The per-user runtime folder: ``FOLIO_RUNTIME_DIR`` or ``user_data_dir("folio")/runtime``."""
    override = (env if env is not None else os.environ).get(RUNTIME_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_data_dir("folio", appauthor=False)) / "runtime"


def runtime_path(build: RuntimeBuild, env: dict[str, str] | None = None) -> Path:
    """``<runtime root>/<tag>``."""
    return runtime_root(env) / build.tag


def read_stamp(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The parsed ``VERSION.json`` of a runtime folder, or None if missing or unreadable."""
    try:
        data = json.loads((Path(path) / STAMP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def runtime_ready(path: str | os.PathLike[str], torch_version: str | None = None) -> bool:
    """Whether a runtime folder is complete: a stamp (for ``torch_version`` if given) and its site-packages."""
    stamp = read_stamp(path)
    if stamp is None or not (Path(path) / SITE_DIR).is_dir():
        return False
    return torch_version is None or stamp.get("torch_version") == torch_version


def write_stamp(path: Path, build: RuntimeBuild, wheel_name: str, sha256: str,
                dependencies: Sequence[str] = ()) -> None:
    """Write ``VERSION.json`` atomically (temp file + rename); this marks the runtime as ready.

    ``dependencies`` are the file names of the dependency wheels unpacked with torch.
    """
    stamp = {"torch_version": build.torch_version, "tag": build.tag, "wheel": wheel_name, "sha256": sha256,
             "dependencies": list(dependencies), "date": datetime.now(UTC).isoformat(timespec="seconds")}
    temp = path / (STAMP_FILE + ".tmp")
    temp.write_text(json.dumps(stamp, indent=2), encoding="utf-8")
    os.replace(temp, path / STAMP_FILE)
