"""First-run GPU runtime: detect an NVIDIA GPU, pick a CUDA torch build, fetch and unpack it per user.

The app ships (or is installed with) the CPU build of torch. On first run it calls :func:`detect_nvidia`; with a
GPU it picks the matching CUDA build (:func:`choose_build`), finds the wheel in a :class:`RuntimeSource` (an index
URL or a local folder of wheels, ``FOLIO_RUNTIME_SOURCE`` overrides), downloads it with progress and resume
(:func:`download`), fetches the CUDA libraries its METADATA requires (``nvidia-*``, ``triton``, and anything the
main environment lacks) from the same source, unpacks them all into a per-user runtime folder and writes
``VERSION.json`` last (:func:`install_runtime`). Until :func:`runtime_ready` is true the app runs on the CPU and says so
(:func:`status_message`); then it restarts into the runtime (:func:`restart_command`) or, before torch is first
imported, puts it on ``sys.path`` (:func:`apply_runtime`).

This module must not import Qt or torch: it runs before either is loaded and in a background thread.
"""

from __future__ import annotations

import email.parser
import functools
import hashlib
import html.parser
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import platformdirs
from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag, sys_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

SOURCE_ENV = "FOLIO_RUNTIME_SOURCE"
RUNTIME_DIR_ENV = "FOLIO_RUNTIME_DIR"
ACTIVE_ENV = "FOLIO_RUNTIME_ACTIVE"
STAMP_FILE = "VERSION.json"
SITE_DIR = "site-packages"
DOWNLOADS_DIR = "downloads"
DEFAULT_INDEX_TEMPLATE = "https://download.pytorch.org/whl/{tag}"
SMI_QUERY = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"]
SMI_TIMEOUT_S = 10
HTTP_TIMEOUT_S = 30
CHUNK_SIZE = 1 << 20
# Requirements of the CUDA torch wheel that are always fetched into the runtime, even when the main environment
# has a version that fits: they only exist for the CUDA build (canonical names; ``nvidia-*`` by prefix).
ALWAYS_FETCH = ("triton", "pytorch-triton")

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

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]
Progress = Callable[[int, int | None], None]
Cancel = Callable[[], bool]


class GpuRuntimeError(Exception):
    """Base class for GPU-runtime errors; the message is meant for the user."""


class NoCudaBuild(GpuRuntimeError):
    """No CUDA build fits this GPU/driver; the message is the reason (the app stays on the CPU)."""


class WheelNotFound(GpuRuntimeError):
    """The runtime source has no wheel for the chosen build and this Python."""


class ChecksumError(GpuRuntimeError):
    """The downloaded file's sha256 does not match; the partial download has been removed."""


class DownloadCancelled(GpuRuntimeError):
    """The download was cancelled; the ``.part`` file is kept so the next try resumes."""


# --------------------------------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class GpuInfo:
    """The first NVIDIA GPU nvidia-smi reports."""

    name: str
    driver_version: str
    memory_mib: int | None = None
    cuda_version: str | None = None  # the newest CUDA the driver supports ("12.4"), from the nvidia-smi header


def _run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a command with a timeout, capturing text output (the default runner for :func:`detect_nvidia`)."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=SMI_TIMEOUT_S, check=False)


def _smi_output(run: Runner, argv: Sequence[str]) -> str | None:
    """stdout of ``argv``, or None when the command is missing, fails or times out."""
    try:
        result = run(argv)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout or ""


def parse_smi_query(text: str) -> tuple[str, str, int | None] | None:
    """Parse the first line of ``--query-gpu=name,driver_version,memory.total`` csv output."""
    for line in text.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) >= 3 and parts[0] and re.fullmatch(r"\d+(\.\d+)*", parts[1]):
            memory = int(float(parts[2])) if re.fullmatch(r"\d+(\.\d+)?", parts[2]) else None
            return parts[0], parts[1], memory
    return None


def parse_smi_cuda_version(text: str) -> str | None:
    """The "CUDA Version: 12.4" from the plain nvidia-smi header, or None."""
    match = re.search(r"CUDA Version\s*:\s*(\d+\.\d+)", text)
    return match.group(1) if match else None


def detect_nvidia(run: Runner = _run_command) -> GpuInfo | None:
    """Detect an NVIDIA GPU and its driver with nvidia-smi; None without one (or without a working driver).

    ``run`` takes an argv and returns a ``CompletedProcess`` (tests feed fake outputs); it may raise
    FileNotFoundError when nvidia-smi is not installed.
    """
    query = _smi_output(run, SMI_QUERY)
    parsed = parse_smi_query(query) if query is not None else None
    if parsed is None:
        return None
    name, driver, memory = parsed
    header = _smi_output(run, ["nvidia-smi"])
    cuda = parse_smi_cuda_version(header) if header else None
    return GpuInfo(name=name, driver_version=driver, memory_mib=memory, cuda_version=cuda)


# ----------------------------------------------------------------------------------------------- build choice


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


# ------------------------------------------------------------------------------------------------ wheel source


def interpreter_tag() -> str:
    """The CPython wheel tag of this interpreter, e.g. ``cp311``."""
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def _platform_ok(platform_tag: str) -> bool:
    """Whether a wheel platform tag (``linux_x86_64``, ``manylinux_2_28_x86_64``, ``win_amd64``) fits here."""
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine) if sys.platform != "darwin" else machine
    tags = platform_tag.lower().split(".")
    if sys.platform.startswith("linux"):
        return any("linux" in tag and tag.endswith(machine) for tag in tags)
    if sys.platform == "win32":
        return any(tag == ("win_amd64" if machine == "x86_64" else f"win_{machine}") for tag in tags)
    if sys.platform == "darwin":
        return any(tag.startswith("macosx") and (tag.endswith(machine) or tag.endswith("universal2")) for tag in tags)
    return False


def wheel_fits(filename: str, torch_version: str) -> bool:
    """Whether ``filename`` is the torch wheel of ``torch_version`` for this interpreter and platform."""
    prefix = f"torch-{torch_version}-"
    if not (filename.startswith(prefix) and filename.endswith(".whl")):
        return False
    parts = filename[len(prefix):-len(".whl")].split("-")
    if len(parts) != 3:  # python tag, abi tag, platform tag (no build tag in torch wheels)
        return False
    py, abi, plat = parts
    return interpreter_tag() in py.split(".") and interpreter_tag() in abi and _platform_ok(plat)


@dataclass(frozen=True)
class WheelRef:
    """A located wheel: a local path or an http(s) URL, with its sha256 when the source states it."""

    name: str
    location: str
    sha256: str | None = None


class _LinkParser(html.parser.HTMLParser):
    """Collects ``href`` values of ``<a>`` tags (a PEP 503 simple index page)."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(value for key, value in attrs if key == "href" and value)


def _read_sidecar(path: Path) -> str | None:
    """The sha256 in ``<wheel>.sha256`` (``sha256sum`` format or bare hex), or None."""
    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.is_file():
        return None
    words = sidecar.read_text(encoding="utf-8").split()
    return words[0].lower() if words else None


def _sha_from_url(url: str) -> str | None:
    """The ``#sha256=`` fragment of an index link, or None."""
    fragment = urllib.parse.urlsplit(url).fragment
    match = re.search(r"sha256=([0-9a-fA-F]{64})", fragment)
    return match.group(1).lower() if match else None


@dataclass(frozen=True)
class RuntimeSource:
    """Where wheels come from: an index URL (``kind="index"``) or a local folder of wheels (``kind="folder"``).

    The torch wheel is found by :meth:`find_wheel`, the wheels it depends on by :meth:`find_requirement`.
    """

    kind: str
    location: str

    @classmethod
    def for_build(cls, build: RuntimeBuild, env: dict[str, str] | None = None) -> RuntimeSource:
        """``FOLIO_RUNTIME_SOURCE`` (a URL, ``{tag}`` allowed, or a folder) if set, else the build's index."""
        value = (env if env is not None else os.environ).get(SOURCE_ENV, "").strip()
        if not value:
            return cls("index", build.index_url)
        if re.match(r"https?://", value, re.IGNORECASE):
            return cls("index", value.format(tag=build.tag))
        if value.lower().startswith("file://"):
            value = urllib.request.url2pathname(urllib.parse.urlsplit(value).path)
        return cls("folder", str(Path(value).expanduser()))

    def find_wheel(self, build: RuntimeBuild) -> WheelRef:
        """Locate the build's wheel; raises :class:`WheelNotFound` with the place searched."""
        return self._find_in_folder(build) if self.kind == "folder" else self._find_in_index(build)

    def _find_in_folder(self, build: RuntimeBuild) -> WheelRef:
        """Match ``torch-<version>+<tag>-*.whl``, preferring a wheel for this interpreter and platform."""
        folder = Path(self.location)
        matches = sorted(folder.glob(build.wheel_glob)) if folder.is_dir() else []
        fitting = [path for path in matches if wheel_fits(path.name, build.torch_version)]
        chosen = (fitting or matches or [None])[0]
        if chosen is None:
            raise WheelNotFound(f"no {build.wheel_glob} in {folder}")
        return WheelRef(chosen.name, str(chosen), _read_sidecar(chosen))

    def _find_in_index(self, build: RuntimeBuild) -> WheelRef:
        """Read the simple index page ``<index>/torch/`` and pick the wheel for this interpreter and platform."""
        page_url = self.location.rstrip("/") + "/torch/"
        try:
            with urllib.request.urlopen(page_url, timeout=HTTP_TIMEOUT_S) as response:
                page = response.read().decode("utf-8", errors="replace")
        except OSError as exc:
            raise WheelNotFound(f"could not read the index {page_url}: {exc}") from exc
        parser = _LinkParser()
        parser.feed(page)
        for href in parser.hrefs:
            url = urllib.parse.urljoin(page_url, href)
            name = urllib.parse.unquote(PurePosixPath(urllib.parse.urlsplit(url).path).name)
            if wheel_fits(name, build.torch_version):
                return WheelRef(name, url, _sha_from_url(url))
        raise WheelNotFound(f"no torch {build.torch_version} wheel for {interpreter_tag()} on {page_url}")

    def find_requirement(self, requirement: Requirement) -> WheelRef:
        """The newest wheel in the source that satisfies ``requirement``, preferring tags that fit here.

        Index: the simple page ``<index>/<normalized-name>/``, wheels that fit here only; folder: wheels named
        after the project, one that does not fit only when none does (as for torch). Raises
        :class:`WheelNotFound` naming the requirement when none is there.
        """
        name = canonicalize_name(requirement.name)
        if self.kind == "folder":
            folder = Path(self.location)
            where = str(folder)
            files = sorted(folder.glob("*.whl")) if folder.is_dir() else []
            candidates = [WheelRef(path.name, str(path), _read_sidecar(path)) for path in files]
        else:
            where = self.location.rstrip("/") + f"/{name}/"
            try:
                with urllib.request.urlopen(where, timeout=HTTP_TIMEOUT_S) as response:
                    page = response.read().decode("utf-8", errors="replace")
            except OSError as exc:
                raise WheelNotFound(f"no wheel for {requirement} (the dependency of torch): could not read the "
                                    f"index {where}: {exc}") from exc
            parser = _LinkParser()
            parser.feed(page)
            candidates = []
            for href in parser.hrefs:
                url = urllib.parse.urljoin(where, href)
                candidates.append(WheelRef(urllib.parse.unquote(PurePosixPath(urllib.parse.urlsplit(url).path).name),
                                           url, _sha_from_url(url)))
        best = _best_wheel(requirement, candidates, allow_unfitting=self.kind == "folder")
        if best is None:
            raise WheelNotFound(f"no wheel for {requirement} (the dependency of torch) in {where}")
        return best


@functools.cache
def _supported_tags() -> dict[Tag, int]:
    """This interpreter's supported wheel tags and their preference (lower is better)."""
    ranks: dict[Tag, int] = {}
    for rank, tag in enumerate(sys_tags()):
        ranks.setdefault(tag, rank)
    return ranks


def _tag_rank(tags: frozenset[Tag]) -> int | None:
    """The preference of the best of a wheel's tags here (lower is better), or None when none fits."""
    supported = _supported_tags()
    ranks = [supported[tag] for tag in tags if tag in supported]
    return min(ranks) if ranks else None


def _best_wheel(requirement: Requirement, candidates: Sequence[WheelRef], *,
                allow_unfitting: bool = False) -> WheelRef | None:
    """The newest candidate wheel of the requirement's project whose version it allows, among those with tags
    that fit this interpreter; with ``allow_unfitting``, one that does not fit when none does."""
    name = canonicalize_name(requirement.name)
    scored: list[tuple[bool, Version, int, WheelRef]] = []
    for ref in candidates:
        try:
            wheel_name, version, _build, tags = parse_wheel_filename(ref.name)
        except (InvalidWheelFilename, ValueError):
            continue
        if wheel_name != name or not requirement.specifier.contains(version, prereleases=True):
            continue
        rank = _tag_rank(tags)
        if rank is None and not allow_unfitting:
            continue
        scored.append((rank is not None, version, -(rank if rank is not None else 0), ref))
    if not scored:
        return None
    return max(scored, key=lambda item: item[:3])[3]


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


# --------------------------------------------------------------------------------------------------- download


def _is_url(location: str) -> bool:
    return bool(re.match(r"https?://", location, re.IGNORECASE))


def _size_of(location: str) -> int | None:
    """The size of a local file, or a URL's Content-Length from a HEAD request; None when unknown."""
    if not _is_url(location):
        try:
            return Path(location).stat().st_size
        except OSError:
            return None
    request = urllib.request.Request(urllib.parse.urldefrag(location).url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            return int(length) if length is not None else None
    except (OSError, ValueError):
        return None


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_SIZE), b""):
            digest.update(block)
    return digest.hexdigest()


def _copy_stream(read: Callable[[int], bytes], out_path: Path, done: int, total: int | None, progress: Progress,
                 cancel: Cancel | None, chunk_size: int) -> None:
    """Append chunks from ``read`` to ``out_path`` (already ``done`` bytes long), reporting progress."""
    with out_path.open("ab") as out:
        progress(done, total)
        while True:
            if cancel is not None and cancel():
                raise DownloadCancelled(f"download of {out_path.name} cancelled at {done} bytes")
            block = read(chunk_size)
            if not block:
                return
            out.write(block)
            out.flush()
            done += len(block)
            progress(done, total)


def _fetch_local(source: Path, part: Path, progress: Progress, cancel: Cancel | None, chunk_size: int) -> None:
    """Copy a local file into ``part``, continuing from the part's size."""
    total = source.stat().st_size
    done = part.stat().st_size if part.exists() else 0
    if done > total:
        part.unlink()
        done = 0
    with source.open("rb") as handle:
        handle.seek(done)
        _copy_stream(handle.read, part, done, total, progress, cancel, chunk_size)


def _fetch_http(url: str, part: Path, progress: Progress, cancel: Cancel | None, chunk_size: int) -> None:
    """Download ``url`` into ``part``, resuming with a Range request; restarts if the server ignores Range."""
    done = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(urllib.parse.urldefrag(url).url)
    if done:
        request.add_header("Range", f"bytes={done}-")
    try:
        response = urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and done:  # nothing left to fetch: the part is complete (the sha256 check decides)
            return
        raise
    with response:
        length = response.headers.get("Content-Length")
        if done and response.status != 206:  # the server sent the whole file: start over
            part.unlink()
            done = 0
        total = done + int(length) if length is not None else None
        _copy_stream(response.read, part, done, total, progress, cancel, chunk_size)


def download(source: str | os.PathLike[str], dest_folder: str | os.PathLike[str], progress: Progress,
             cancel: Cancel | None = None, *, sha256: str | None = None, name: str | None = None,
             chunk_size: int = CHUNK_SIZE) -> Path:
    """Fetch a local file or an http(s) URL into ``dest_folder`` and return the final path.

    Streams into ``<dest>/<name>.part`` and resumes from its size if it exists (local: seek; HTTP: Range).
    ``progress(done, total)`` is called per chunk (total may be None); ``cancel()`` returning True stops with
    :class:`DownloadCancelled`. Any interruption keeps the ``.part`` for the next call. The sha256 is checked
    when known (``sha256``, else a local ``<file>.sha256`` sidecar, else a URL's ``#sha256=`` fragment); on a
    mismatch the ``.part`` is removed and :class:`ChecksumError` raised. Only then is it renamed to ``name``.
    """
    location = os.fspath(source)
    remote = _is_url(location)
    if name is None:
        raw = PurePosixPath(urllib.parse.urlsplit(location).path).name if remote else Path(location).name
        name = urllib.parse.unquote(raw) if remote else raw
    if sha256 is None:
        sha256 = _sha_from_url(location) if remote else _read_sidecar(Path(location))
    dest = Path(dest_folder)
    dest.mkdir(parents=True, exist_ok=True)
    final, part = dest / name, dest / f"{name}.part"
    if final.exists() and (sha256 is None or _sha256_of(final) == sha256.lower()):
        return final
    if remote:
        _fetch_http(location, part, progress, cancel, chunk_size)
    else:
        _fetch_local(Path(location), part, progress, cancel, chunk_size)
    _verify(part, sha256)
    os.replace(part, final)
    return final


def _verify(part: Path, sha256: str | None) -> None:
    """Check the sha256 of a finished ``.part``; remove it and raise :class:`ChecksumError` on a mismatch."""
    if sha256 is None:
        return
    actual = _sha256_of(part)
    if actual != sha256.lower():
        part.unlink(missing_ok=True)
        raise ChecksumError(f"the download of {part.name.removesuffix('.part')} is corrupt (sha256 {actual}, "
                            f"expected {sha256.lower()}); it was removed, try again")


# ---------------------------------------------------------------------------------------------------- install


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


def _member_target(member: str) -> PurePosixPath | None:
    """Where a wheel member goes inside site-packages (``*.data/purelib|platlib`` flattened), or None to skip."""
    parts = PurePosixPath(member).parts
    if not parts or member.endswith("/") or any(part == ".." for part in parts) or member.startswith("/"):
        return None
    if parts[0].endswith(".data"):
        if len(parts) > 2 and parts[1] in ("purelib", "platlib"):
            return PurePosixPath(*parts[2:])
        return None  # scripts, headers, data: not needed to import torch
    return PurePosixPath(*parts)


def unpack_wheel(wheel: Path, site_dir: Path) -> None:
    """Extract a wheel (a zip) into ``site_dir`` via a temporary folder, replacing any earlier partial unpack."""
    unpack_wheels([wheel], site_dir)


def unpack_wheels(wheels: Sequence[Path], site_dir: Path) -> None:
    """Extract wheels (zips) together into ``site_dir`` via a temporary folder, replacing what was there."""
    staging = site_dir.with_name(site_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                target = _member_target(info.filename)
                if target is None:
                    continue
                out = staging.joinpath(*target.parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK_SIZE)
                mode = (info.external_attr >> 16) & 0o777
                if mode & 0o111:
                    out.chmod(mode | 0o600)
    shutil.rmtree(site_dir, ignore_errors=True)
    os.replace(staging, site_dir)


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


def _no_progress(_done: int, _total: int | None) -> None:
    """The default progress callback."""


def install_runtime(build: RuntimeBuild, source: RuntimeSource | None = None, progress: Progress = _no_progress,
                    cancel: Cancel | None = None, *, path: Path | None = None, keep_wheel: bool = False,
                    chunk_size: int = CHUNK_SIZE) -> Path:
    """Download, verify and unpack the build's wheel and its dependencies into its runtime folder; return it.

    After the torch wheel, the requirements in its METADATA that apply here (:func:`runtime_requirements`:
    the CUDA libraries, triton, anything the main environment lacks) are fetched from the same source and
    unpacked into the same site-packages; a missing one raises :class:`WheelNotFound` naming it. Progress is
    reported over all wheels (the total grows to include the dependencies once torch's METADATA is read).
    Idempotent: a ready runtime is returned at once; an interrupted download resumes (downloaded wheels are
    kept until the unpack); an interrupted unpack (no stamp) is redone. The stamp, listing the dependency
    wheels, is written last. Exceptions from :func:`download` propagate.
    """
    path = path if path is not None else runtime_path(build)
    if runtime_ready(path, build.torch_version):
        return path
    source = source if source is not None else RuntimeSource.for_build(build)
    ref = source.find_wheel(build)
    (path / STAMP_FILE).unlink(missing_ok=True)
    downloads = path / DOWNLOADS_DIR
    wheel = download(ref.location, downloads, progress, cancel, sha256=ref.sha256, name=ref.name,
                     chunk_size=chunk_size)
    digest = ref.sha256 or _sha256_of(wheel)
    deps = [source.find_requirement(req) for req in runtime_requirements(wheel_requirements(wheel))]
    wheels = [wheel]
    if deps:
        done = wheel.stat().st_size
        sizes = [_size_of(dep.location) for dep in deps]
        total = None if None in sizes else done + sum(size or 0 for size in sizes)
        for dep in deps:
            offset = done

            def dep_progress(dep_done: int, _dep_total: int | None, offset: int = offset) -> None:
                progress(offset + dep_done, total)

            dep_wheel = download(dep.location, downloads, dep_progress, cancel, sha256=dep.sha256, name=dep.name,
                                 chunk_size=chunk_size)
            wheels.append(dep_wheel)
            done += dep_wheel.stat().st_size
        progress(done, total if total is not None else done)
    unpack_wheels(wheels, path / SITE_DIR)
    write_stamp(path, build, ref.name, digest, [dep.name for dep in deps])
    if not keep_wheel:
        for item in wheels:
            item.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------------------------------- restart


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


# ----------------------------------------------------------------------------------------------------- status


def format_size(size: int | None) -> str:
    """2_500_000_000 -> "2.5 GB"."""
    if not size:
        return ""
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def display_name(gpu: GpuInfo) -> str:
    """The GPU's name as shown to the user, "NVIDIA" first ("Tesla T4" -> "NVIDIA Tesla T4")."""
    return gpu.name if gpu.name.upper().startswith("NVIDIA") else f"NVIDIA {gpu.name}"


def status_message(gpu: GpuInfo | None, ready: bool, reason: str | None = None,
                   build: RuntimeBuild | None = None) -> str:
    """The user-facing line about where the model runs."""
    if gpu is None:
        return "No NVIDIA GPU found — running on the CPU."
    if ready:
        version = f" (torch {build.torch_version})" if build is not None else ""
        return f"GPU runtime ready{version}."
    if reason:
        return f"{display_name(gpu)} found, but {reason} — running on the CPU."
    size = format_size(build.approx_size if build is not None else None)
    sized = f" ({size})" if size else ""
    return (f"{display_name(gpu)} found — downloading the GPU runtime{sized} in the background; "
            "running on the CPU until it is ready.")
