"""Which torch this process runs on, and using a ready GPU runtime at startup (before ``import torch``).

:func:`use_ready_runtime` is called first thing in the app's ``main()``: with an NVIDIA GPU, a CPU build of torch
installed, and the matching CUDA runtime already downloaded (its ``VERSION.json`` written), it puts the runtime
first on ``sys.path`` so the coming ``import torch`` loads the CUDA build and no restart is needed.

Qt-free and torch-free: nothing here imports either (torch's version comes from its package metadata).
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from app.runtime.activate import ACTIVE_ENV, apply_runtime
from app.runtime.builds import all_builds, candidate_builds
from app.runtime.detect import GpuInfo, detect_nvidia
from app.runtime.errors import NoCudaBuild
from app.runtime.layout import runtime_path, runtime_ready

Detector = Callable[[], GpuInfo | None]


@dataclass(frozen=True)
class InstalledTorch:
    """The torch distribution the next ``import torch`` would load (the first one on ``sys.path``)."""

    version: str  # "2.13.0+cpu"
    cpu_only: bool  # True for a CPU build: a CUDA runtime can be fetched for it


def is_cpu_build(version: str, requirements: list[str] | None = None) -> bool:
    """Whether a torch build is CPU-only, from its version and ``Requires-Dist`` lines.

    ``+cpu`` is the CPU build and ``+cu…``/``+rocm…``/``+xpu…`` are GPU builds; a version without a local tag is
    PyPI's wheel, which is the CUDA build exactly when it requires ``nvidia-*`` packages here (Linux x86_64).
    """
    local = version.split("+", 1)[1].lower() if "+" in version else ""
    if local:
        return local.startswith("cpu")
    for line in requirements or []:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if not requirement.name.lower().startswith("nvidia"):
            continue
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            return False
    return True


def installed_torch() -> InstalledTorch | None:
    """The torch that ``import torch`` would load, from package metadata only; None when none is found."""
    try:
        distribution = importlib.metadata.distribution("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    version = distribution.version
    return InstalledTorch(version, is_cpu_build(version, distribution.requires))


def use_ready_runtime(detect: Detector = detect_nvidia, env: dict[str, str] | None = None) -> str | None:
    """Before torch is imported: use this machine's GPU runtime if it is downloaded and complete.

    Detects the GPU (nvidia-smi), picks the CUDA build for the installed CPU torch's version, and when
    ``<runtime root>/<tag>`` holds a ready runtime for exactly that build (``VERSION.json`` written last),
    puts its site-packages first on ``sys.path``. Returns a one-line description of the runtime in use (also
    when a restart already put it on the path, see ``FOLIO_RUNTIME_ACTIVE``), or None when the process stays
    on the installed torch: no GPU, no CUDA build for the driver, a GPU build already installed, no ready
    runtime, or torch already imported. Never raises for these; ``env`` defaults to ``os.environ``.
    """
    env = dict(os.environ) if env is None else env
    active = env.get(ACTIVE_ENV)
    torch = installed_torch()
    if torch is None:
        return None
    if not torch.cpu_only:
        if active and _on_path(active):
            return f"GPU runtime torch {torch.version} ({Path(active).parent})"
        return None
    # Disk first: most starts have no runtime, and then nvidia-smi (up to seconds) is not run at all.
    ready = [build for build in all_builds(torch.version)
             if runtime_ready(runtime_path(build, env), build.torch_version)]
    if not ready:
        return None
    gpu = detect()
    if gpu is None:
        return None
    try:
        supported = {build.tag for build in candidate_builds(gpu, torch.version)}
    except NoCudaBuild:
        return None
    for build in ready:  # the newest downloaded build the driver supports
        path = runtime_path(build, env)
        if build.tag in supported and apply_runtime(path, build.torch_version):
            return f"GPU runtime torch {build.torch_version} for {gpu.name} ({path})"
    return None


def _on_path(entry: str) -> bool:
    """Whether ``entry`` (a site-packages folder) is on ``sys.path``."""
    target = os.path.realpath(entry)
    return any(os.path.realpath(item) == target for item in sys.path if item)
