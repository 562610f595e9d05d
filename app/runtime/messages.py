"""The GPU runtime's user-facing lines: where the model runs, the download's state, and what stopped it."""

from __future__ import annotations

import errno
import http.client
import urllib.error
import zipfile
from pathlib import Path

from app.backend import format_bytes
from app.runtime.builds import RuntimeBuild
from app.runtime.detect import GpuInfo
from app.runtime.errors import ChecksumError, WheelNotFound


def display_name(gpu: GpuInfo) -> str:
    """The GPU's name as shown to the user, "NVIDIA" first ("Tesla T4" -> "NVIDIA Tesla T4")."""
    return gpu.name if gpu.name.upper().startswith("NVIDIA") else f"NVIDIA {gpu.name}"


def _sized(size: int | None) -> str:
    """" (2.3 GiB)" for a known size, "" for None or 0."""
    return f" ({format_bytes(size)})" if size else ""


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
    sized = _sized(build.approx_size if build is not None else None)
    return (f"{display_name(gpu)} found — downloading the GPU runtime{sized} in the background; "
            "running on the CPU until it is ready.")


def _network_reason(error: BaseException) -> str | None:
    """The reason, when ``error`` (or what caused it) is a network failure rather than an HTTP answer."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, urllib.error.HTTPError):
            return None
        if isinstance(seen, urllib.error.URLError):
            reason = seen.reason
            return reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        if isinstance(seen, TimeoutError | ConnectionError | http.client.HTTPException):
            return str(seen) or type(seen).__name__
        seen = seen.__cause__ or seen.__context__
    return None


def download_problem(error: BaseException, folder: Path, need_bytes: int | None) -> str:
    """What stopped the download and how to fix it, as a sentence that follows "could not be downloaded: "."""
    retry = "then press Retry (the download continues where it stopped)"
    reason = _network_reason(error)
    if reason is not None:
        return f"the download server could not be reached ({reason}). Check the internet connection, {retry}."
    if isinstance(error, urllib.error.HTTPError):
        return f"the download server answered “{error.code} {error.reason}” for {error.url}. Try again later."
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        need = f" at least {format_bytes(need_bytes)}" if need_bytes else " some space"
        return f"the disk is full ({folder}). Free{need} there, {retry}."
    if isinstance(error, PermissionError) or (isinstance(error, OSError) and error.errno == errno.EROFS):
        return (f"Folio may not write to {folder} ({error.strerror or error}). Set FOLIO_RUNTIME_DIR to a folder "
                "you can write to and restart Folio.")
    if isinstance(error, WheelNotFound):
        return (f"the download source has no GPU runtime for this computer ({error}). Set FOLIO_RUNTIME_SOURCE to "
                "an index URL or a folder of wheels that has it, and restart Folio.")
    if isinstance(error, ChecksumError):
        return f"{error}."
    if isinstance(error, zipfile.BadZipFile):
        return f"a downloaded file was damaged and has been removed ({error}); press Retry to fetch it again."
    if isinstance(error, OSError):
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror or error}{where}; {retry}."
    return f"something went wrong ({type(error).__name__}: {error}); details are in the log."


def failed_message(gpu: GpuInfo, problem: str) -> str:
    """The download failed: ``problem`` (from :func:`download_problem`) says why."""
    return f"{display_name(gpu)} found, but the GPU runtime could not be downloaded: {problem} Folio runs on the CPU."


def downloading_message(gpu: GpuInfo, build: RuntimeBuild) -> str:
    """The download has started (the banner adds the progress)."""
    return f"{display_name(gpu)} found — downloading the GPU runtime{_sized(build.approx_size)}"


def offer_message(gpu: GpuInfo, build: RuntimeBuild) -> str:
    """A runtime to fetch, but automatic download is off."""
    return (f"{display_name(gpu)} found — running on the CPU. The GPU runtime{_sized(build.approx_size)} is "
            "not downloaded automatically (Settings).")


def ready_message(gpu: GpuInfo) -> str:
    """The runtime is ready: restart into it."""
    return f"GPU runtime ready — restart Folio to use the {display_name(gpu)}."


def cancelled_message(percent: int | None) -> str:
    """The download was paused at ``percent`` (None: unknown)."""
    at = f" at {percent}%" if percent is not None else ""
    return f"GPU runtime download paused{at} — running on the CPU. Resume continues where it stopped."
