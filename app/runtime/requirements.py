"""Which of the CUDA torch wheel's requirements the runtime fetches."""

from __future__ import annotations

import email.parser
import importlib.metadata
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

# Requirements of the CUDA torch wheel that are always fetched into the runtime, even when the main environment
# has a version that fits: they only exist for the CUDA build (canonical names; ``nvidia-*`` by prefix).
ALWAYS_FETCH = ("triton", "pytorch-triton")
# Wheels the runtime adds beside CUDA torch when its source has them: the quantization library for 8-bit and 4-bit
# weights (engine/quantize.py's QUANT_REQUIREMENT; a test keeps the two equal). One wheel serves every CUDA
# version. Without it the runtime still works, with full weights only.
OPTIONAL_REQUIREMENTS = ("bitsandbytes==0.50.2",)
PYPI_SIMPLE = "https://pypi.org/simple"  # where they come from beside the PyTorch index


def wheel_requirements(wheel: Path) -> list[str]:
    """The ``Requires-Dist`` lines of a wheel's top-level ``*.dist-info/METADATA``."""
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            parts = PurePosixPath(member).parts
            if len(parts) == 2 and parts[0].endswith(".dist-info") and parts[1] == "METADATA":
                text = archive.read(member).decode("utf-8", errors="replace")
                return list(email.parser.Parser().parsestr(text, headersonly=True).get_all("Requires-Dist") or [])
    return []


def _installed_version(name: str) -> str | None:
    """The version of ``name`` installed in the main environment, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def runtime_requirements(lines: Sequence[str]) -> list[Requirement]:
    """The requirements the runtime must fetch: markers true for this interpreter (no extras), and either
    ``nvidia-*`` / triton (always) or not satisfied by the main environment. Unparsable lines are skipped."""
    wanted: list[Requirement] = []
    seen: set[str] = set()
    for line in lines:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        name = canonicalize_name(requirement.name)
        if name in seen or (requirement.marker is not None and not requirement.marker.evaluate({"extra": ""})):
            continue
        if not (name.startswith("nvidia-") or name in ALWAYS_FETCH):
            installed = _installed_version(name)
            if installed is not None and requirement.specifier.contains(installed, prereleases=True):
                continue
        seen.add(name)
        wanted.append(requirement)
    return wanted
