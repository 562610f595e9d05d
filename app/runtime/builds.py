"""Which CUDA torch builds Folio knows and which of them a GPU's driver supports."""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.runtime.detect import GpuInfo
from app.runtime.errors import NoCudaBuild

DEFAULT_INDEX_TEMPLATE = "https://download.pytorch.org/whl/{tag}"

# (tag, minimum CUDA version the driver must support, minimum Linux driver, approximate wheel size in bytes),
# newest first. The driver minimums are NVIDIA's "toolkit driver version" table, used only when nvidia-smi
# does not print the "CUDA Version" header. Sizes are for the status line only.
CUDA_BUILDS: tuple[tuple[str, tuple[int, int], tuple[int, ...], int], ...] = (
    # cu130: torch 2.13.0's CUDA 13 build and the wheels it requires measured 2.74 GB on PyPI (Linux, cp311).
    ("cu130", (13, 0), (580, 65), 2_750_000_000),
    ("cu129", (12, 9), (575, 51), 2_700_000_000),
    ("cu128", (12, 8), (570, 26), 2_700_000_000),
    ("cu126", (12, 6), (560, 28), 2_500_000_000),
    ("cu124", (12, 4), (550, 54), 2_500_000_000),
    ("cu121", (12, 1), (530, 30), 2_400_000_000),
    ("cu118", (11, 8), (520, 61), 2_300_000_000),
)


@dataclass(frozen=True)
class RuntimeBuild:
    """The CUDA torch build to fetch for this machine."""

    tag: str  # "cu126"
    torch_version: str  # "2.13.0+cu126" (local version included)
    index_url: str  # "https://download.pytorch.org/whl/cu126"
    approx_size: int | None = None  # bytes, for the status line

    @property
    def requirement(self) -> str:
        """A pip requirement for the build, e.g. ``torch==2.13.0+cu126``."""
        return f"torch=={self.torch_version}"

    @property
    def wheel_glob(self) -> str:
        """The wheel filename pattern, e.g. ``torch-2.13.0+cu126-*.whl``."""
        return f"torch-{self.torch_version}-*.whl"


def _version_tuple(text: str | None) -> tuple[int, ...] | None:
    """"12.4" -> (12, 4); None for anything unparsable."""
    if not text or not re.fullmatch(r"\d+(\.\d+)*", text.strip()):
        return None
    return tuple(int(part) for part in text.strip().split("."))


def _driver_cuda(gpu: GpuInfo) -> tuple[int, ...] | None:
    """The newest CUDA the driver supports: from the header, else estimated from the driver version."""
    cuda = _version_tuple(gpu.cuda_version)
    if cuda is not None:
        return cuda
    driver = _version_tuple(gpu.driver_version)
    if driver is None:
        return None
    for _tag, needs_cuda, needs_driver, _size in CUDA_BUILDS:
        if driver >= needs_driver:
            return needs_cuda
    return (0, 0)


def base_torch_version(torch_version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``."""
    return torch_version.split("+", 1)[0]


def all_builds(torch_version: str, index_template: str = DEFAULT_INDEX_TEMPLATE) -> list[RuntimeBuild]:
    """Every CUDA build of ``torch_version`` Folio knows, newest first (whatever the driver supports)."""
    return [RuntimeBuild(tag=tag, torch_version=f"{base_torch_version(torch_version)}+{tag}",
                         index_url=index_template.format(tag=tag), approx_size=size)
            for tag, _cuda, _driver, size in CUDA_BUILDS]


def candidate_builds(gpu: GpuInfo, torch_version: str,
                     index_template: str = DEFAULT_INDEX_TEMPLATE) -> list[RuntimeBuild]:
    """The CUDA builds of ``torch_version`` the GPU's driver supports, newest first.

    Not every torch release is built for every CUDA version, so callers try them in order until one is found.
    Raises :class:`NoCudaBuild` (its message is the reason, for the status line) when the driver is too old
    or its CUDA version is unknown. ``index_template`` may contain ``{tag}``.
    """
    cuda = _driver_cuda(gpu)
    if cuda is None:
        raise NoCudaBuild(f"could not tell which CUDA version driver {gpu.driver_version} supports")
    needs = {tag: needs_cuda for tag, needs_cuda, _driver, _size in CUDA_BUILDS}
    builds = [build for build in all_builds(torch_version, index_template) if cuda >= needs[build.tag]]
    if not builds:
        oldest = ".".join(map(str, CUDA_BUILDS[-1][1]))
        shown = ".".join(map(str, cuda))
        raise NoCudaBuild(f"its driver {gpu.driver_version} supports CUDA {shown}, and the GPU runtime needs CUDA "
                          f"{oldest} or newer (update the NVIDIA driver to use the GPU)")
    return builds


def choose_build(gpu: GpuInfo, torch_version: str, index_template: str = DEFAULT_INDEX_TEMPLATE) -> RuntimeBuild:
    """The newest CUDA torch build of ``torch_version`` that the GPU's driver supports (see candidate_builds)."""
    return candidate_builds(gpu, torch_version, index_template)[0]
