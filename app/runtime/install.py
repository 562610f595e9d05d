"""Installing a runtime: fetch the torch wheel and the wheels it requires, unpack them, write the stamp."""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from packaging.requirements import Requirement

from app.runtime.builds import RuntimeBuild
from app.runtime.download import CHUNK_SIZE, Cancel, Progress, download, sha256_of, size_of
from app.runtime.errors import WheelNotFound
from app.runtime.layout import DOWNLOADS_DIR, SITE_DIR, STAMP_FILE, runtime_path, runtime_ready, write_stamp
from app.runtime.requirements import OPTIONAL_REQUIREMENTS, PYPI_SIMPLE, runtime_requirements, wheel_requirements
from app.runtime.source import SOURCE_ENV, RuntimeSource, WheelRef


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


def optional_wheels(source: RuntimeSource) -> list[WheelRef]:
    """The OPTIONAL_REQUIREMENTS wheels `source` has (PyPI beside the PyTorch index; a custom source's own folder or
    index otherwise); one it lacks is left out."""
    found = []
    for line in OPTIONAL_REQUIREMENTS:
        try:
            found.append(source.find_requirement(Requirement(line)))
        except WheelNotFound:
            continue
    return found


def _no_progress(_done: int, _total: int | None) -> None:
    """The default progress callback."""


def install_runtime(build: RuntimeBuild, source: RuntimeSource | None = None, progress: Progress = _no_progress,
                    cancel: Cancel | None = None, *, path: Path | None = None, keep_wheel: bool = False,
                    chunk_size: int = CHUNK_SIZE) -> Path:
    """Download, verify and unpack the build's wheel and its dependencies into its runtime folder; return it.

    After the torch wheel, the requirements in its METADATA that apply here (:func:`runtime_requirements`:
    the CUDA libraries, triton, anything the main environment lacks) are fetched from the same source and
    unpacked into the same site-packages; a missing one raises :class:`WheelNotFound` naming it. The quantization
    library (:func:`optional_wheels`) joins them where its source has it. Progress is
    reported over all wheels (the total grows to include the dependencies once torch's METADATA is read).
    Idempotent: a ready runtime is returned at once; an interrupted download resumes (downloaded wheels are
    kept until the unpack); an interrupted unpack (no stamp) is redone. The stamp, listing the dependency
    wheels, is written last. Exceptions from :func:`download` propagate.
    """
    path = path if path is not None else runtime_path(build)
    if runtime_ready(path, build.torch_version):
        return path
    default_source = source is None and not os.environ.get(SOURCE_ENV, "").strip()
    source = source if source is not None else RuntimeSource.for_build(build)
    ref = source.find_wheel(build)
    (path / STAMP_FILE).unlink(missing_ok=True)
    downloads = path / DOWNLOADS_DIR
    wheel = download(ref.location, downloads, progress, cancel, sha256=ref.sha256, name=ref.name,
                     chunk_size=chunk_size)
    digest = ref.sha256 or sha256_of(wheel)
    deps = [source.find_requirement(req) for req in runtime_requirements(wheel_requirements(wheel))]
    deps += optional_wheels(RuntimeSource("index", PYPI_SIMPLE) if default_source else source)
    wheels = [wheel]
    if deps:
        done = wheel.stat().st_size
        sizes = [size_of(dep.location) for dep in deps]
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
