"""Where the runtime's wheels come from (an index URL or a folder) and which wheel fits here."""

from __future__ import annotations

import functools
import html.parser
import os
import platform
import re
import sys
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from packaging.requirements import Requirement
from packaging.tags import Tag, sys_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from app.runtime.builds import RuntimeBuild
from app.runtime.download import HTTP_TIMEOUT_S, read_sidecar, sha_from_url
from app.runtime.errors import WheelNotFound

SOURCE_ENV = "FOLIO_RUNTIME_SOURCE"


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
        return WheelRef(chosen.name, str(chosen), read_sidecar(chosen))

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
                return WheelRef(name, url, sha_from_url(url))
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
            candidates = [WheelRef(path.name, str(path), read_sidecar(path)) for path in files]
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
                                           url, sha_from_url(url)))
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
