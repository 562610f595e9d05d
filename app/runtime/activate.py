"""Using a ready runtime: put it on sys.path before torch is imported, or restart into it."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from app.runtime.layout import SITE_DIR, runtime_ready

ACTIVE_ENV = "FOLIO_RUNTIME_ACTIVE"


@dataclass(frozen=True)
class Activation:
    """How a process imports torch from a runtime: the ``sys.path`` entry and the environment for a restart."""

    sys_path_entry: str
    env: dict[str, str]


def activate_runtime(path: str | os.PathLike[str], base_env: dict[str, str] | None = None) -> Activation:
    """The site-packages entry to prepend and a copy of ``base_env`` (default os.environ) with it on PYTHONPATH.

    ``FOLIO_RUNTIME_ACTIVE`` is set too, so the restarted process knows not to restart again.
    """
    entry = str(Path(path).resolve() / SITE_DIR)
    env = dict(os.environ if base_env is None else base_env)
    env["PYTHONPATH"] = os.pathsep.join([entry, *filter(None, [env.get("PYTHONPATH")])])
    env[ACTIVE_ENV] = entry
    return Activation(entry, env)


def restart_command(path: str | os.PathLike[str],
                    base_env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The argv and environment to re-exec the current program with the runtime active (not executed here).

    A frozen app re-runs its executable with its arguments; a script re-runs the interpreter with its original
    arguments (``-m app`` included).
    """
    args = sys.argv[1:] if getattr(sys, "frozen", False) else sys.orig_argv[1:]
    return [sys.executable, *args], activate_runtime(path, base_env).env


def apply_runtime(path: str | os.PathLike[str], torch_version: str | None = None) -> bool:
    """Before torch is imported: put a ready runtime first on ``sys.path``; True if it was applied.

    This avoids the restart when the app can check for the runtime before its first ``import torch`` (and is
    the way for frozen builds that ignore PYTHONPATH).
    """
    if "torch" in sys.modules or not runtime_ready(path, torch_version):
        return False
    entry = activate_runtime(path, {}).sys_path_entry
    if entry not in sys.path:
        sys.path.insert(0, entry)
    return True
