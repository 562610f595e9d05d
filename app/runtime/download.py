"""Fetching one file (a local path or an http(s) URL) with progress, resume and a sha256 check."""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from app.runtime.errors import ChecksumError, DownloadCancelled

HTTP_TIMEOUT_S = 30
CHUNK_SIZE = 1 << 20

Progress = Callable[[int, int | None], None]
Cancel = Callable[[], bool]


def read_sidecar(path: Path) -> str | None:
    """The sha256 in ``<wheel>.sha256`` (``sha256sum`` format or bare hex), or None."""
    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.is_file():
        return None
    words = sidecar.read_text(encoding="utf-8").split()
    return words[0].lower() if words else None


def sha_from_url(url: str) -> str | None:
    """The ``#sha256=`` fragment of an index link, or None."""
    fragment = urllib.parse.urlsplit(url).fragment
    match = re.search(r"sha256=([0-9a-fA-F]{64})", fragment)
    return match.group(1).lower() if match else None


def _is_url(location: str) -> bool:
    return bool(re.match(r"https?://", location, re.IGNORECASE))


def size_of(location: str) -> int | None:
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


def sha256_of(path: Path) -> str:
    """The sha256 of a file, as lowercase hex."""
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
        sha256 = sha_from_url(location) if remote else read_sidecar(Path(location))
    dest = Path(dest_folder)
    dest.mkdir(parents=True, exist_ok=True)
    final, part = dest / name, dest / f"{name}.part"
    if final.exists() and (sha256 is None or sha256_of(final) == sha256.lower()):
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
    actual = sha256_of(part)
    if actual != sha256.lower():
        part.unlink(missing_ok=True)
        raise ChecksumError(f"the download of {part.name.removesuffix('.part')} is corrupt (sha256 {actual}, "
                            f"expected {sha256.lower()}); it was removed, try again")
