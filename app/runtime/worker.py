"""The GPU-runtime thread: a RuntimeWorker QObject on a QThread finds the GPU and fetches the CUDA runtime.

RuntimeController (GUI thread) starts the thread, asks for the check, starts, resumes and cancels the download,
and restarts Folio into a ready runtime. RuntimeWorker (its own thread, never the engine's) does the slow parts
with the app.runtime modules: nvidia-smi, the download, the unpack, and reports through typed signals. The app
runs on the CPU meanwhile, and every error here becomes a message naming the problem and its fix.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QCoreApplication, QObject, Qt, QThread, Signal, Slot

from app.runtime.activate import ACTIVE_ENV, restart_command
from app.runtime.builds import RuntimeBuild, candidate_builds
from app.runtime.detect import GpuInfo, detect_nvidia
from app.runtime.download import CHUNK_SIZE, HTTP_TIMEOUT_S
from app.runtime.errors import DownloadCancelled, NoCudaBuild, WheelNotFound
from app.runtime.install import install_runtime
from app.runtime.layout import DOWNLOADS_DIR, runtime_ready, runtime_root
from app.runtime.messages import (
    cancelled_message,
    display_name,
    download_problem,
    downloading_message,
    failed_message,
    offer_message,
    ready_message,
    status_message,
)
from app.runtime.source import RuntimeSource
from app.runtime.startup import InstalledTorch, installed_torch

log = logging.getLogger("folio.app.runtime")

# What the check found (the `status` signal's first argument).
CPU = "cpu"  # no NVIDIA GPU: the CPU it is
ACTIVE = "active"  # torch is already a GPU build (the runtime is in use, or a CUDA torch is installed)
UNSUPPORTED = "unsupported"  # a GPU, but no runtime for it (old driver, unknown torch): the CPU
OFFER = "offer"  # a GPU and a runtime to fetch, but automatic download is off
DOWNLOADING = "downloading"  # the download has started

Spawner = Callable[[list[str], dict[str, str]], None]


def spawn_detached(argv: list[str], env: dict[str, str]) -> None:
    """Start ``argv`` with ``env`` as an independent process (it outlives this one); raises OSError."""
    if sys.platform == "win32":
        flags = subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, creationflags=flags)
    else:
        subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True)


def disk_free(folder: Path) -> int:
    """Free bytes on the disk that holds ``folder`` (or its nearest existing parent)."""
    path = folder
    while not path.exists() and path.parent != path:
        path = path.parent
    return shutil.disk_usage(path).free


@dataclass(frozen=True)
class RuntimeOptions:
    """What the check and the download use; tests swap each part (no nvidia-smi, no network, no spawn)."""

    detect: Callable[[], GpuInfo | None] = detect_nvidia
    installed: Callable[[], InstalledTorch | None] = installed_torch  # read on the worker thread, no torch import
    source: RuntimeSource | None = None  # None: FOLIO_RUNTIME_SOURCE, else the build's index
    root: Path | None = None  # None: runtime_root() (FOLIO_RUNTIME_DIR, else the per-user data folder)
    spawn: Spawner = spawn_detached
    free_bytes: Callable[[Path], int] = disk_free
    chunk_size: int = CHUNK_SIZE

    def folder(self, build: RuntimeBuild) -> Path:
        """Where the build's runtime lives."""
        return (self.root if self.root is not None else runtime_root()) / build.tag


# ------------------------------------------------------------------------------------------------- worker


class RuntimeWorker(QObject):
    """Lives on the runtime thread. ``check`` finds the GPU and the build; ``install`` fetches the runtime."""

    status = Signal(str, str)  # state (CPU, ACTIVE, UNSUPPORTED, OFFER, DOWNLOADING), message
    progress = Signal(object, object, float)  # done bytes, total bytes (None: unknown), eta_s (-1: unknown)
    ready = Signal(str, str)  # the runtime folder, message: restart into it
    failed = Signal(str)  # message (the app runs on the CPU)
    cancelled = Signal(str)  # message; the partial download is kept for the next try
    idle = Signal()  # a check or a download ended, however it ended

    def __init__(self, options: RuntimeOptions, cancel: threading.Event) -> None:
        super().__init__()
        self.options = options
        self._cancel = cancel
        self.gpu: GpuInfo | None = None
        self.build: RuntimeBuild | None = None  # the build to fetch (the newest of `builds` the source offers)
        self.builds: list[RuntimeBuild] = []  # the builds the driver supports, newest first
        self._percent: int | None = None

    @Slot(bool)
    def check(self, auto_download: bool) -> None:
        """Detect the GPU, choose the build, and report; download at once when ``auto_download``."""
        try:
            if self._check():
                if auto_download:
                    self._install()
                else:
                    assert self.gpu is not None and self.build is not None
                    self.status.emit(OFFER, offer_message(self.gpu, self.build))
        except Exception as error:  # never let the check take the app down
            log.error("GPU runtime check failed:\n%s", traceback.format_exc())
            self.failed.emit(f"Folio could not check for an NVIDIA GPU ({type(error).__name__}: {error}); "
                             "running on the CPU.")
        finally:
            self.idle.emit()

    @Slot()
    def install(self) -> None:
        """Download and unpack the runtime chosen by the last check (the Download/Retry/Resume button)."""
        try:
            if self.gpu is not None and self.build is not None:
                self._install()
        finally:
            self.idle.emit()

    def _check(self) -> bool:
        """Report what was found; True when a runtime should be downloaded (a GPU and nothing ready yet)."""
        self.gpu = gpu = self.options.detect()
        if gpu is None:
            self.status.emit(CPU, status_message(None, False))
            return False
        torch = self.options.installed()
        if torch is None:
            self.status.emit(UNSUPPORTED, status_message(gpu, False, "Folio could not tell which torch it runs on"))
            return False
        if not torch.cpu_only:
            self.status.emit(ACTIVE, f"Running on the GPU: {display_name(gpu)} (torch {torch.version}).")
            return False
        try:
            self.builds = candidate_builds(gpu, torch.version)
        except NoCudaBuild as reason:
            self.status.emit(UNSUPPORTED, status_message(gpu, False, str(reason)))
            return False
        self.build = self.builds[0]
        for build in self.builds:
            folder = self.options.folder(build)
            if runtime_ready(folder, build.torch_version):
                if os.environ.get(ACTIVE_ENV):  # restarted into it, yet torch is still the CPU build
                    self.status.emit(UNSUPPORTED, status_message(gpu, False, "the GPU runtime did not load after "
                                                                              "the restart"))
                    return False
                self.ready.emit(str(folder), ready_message(gpu))
                return False
        return True

    def _offered_build(self) -> tuple[RuntimeBuild, RuntimeSource]:
        """The newest supported build whose torch wheel the source has (torch releases skip some CUDA versions)."""
        first_missing: WheelNotFound | None = None
        for build in self.builds:
            source = self.options.source or RuntimeSource.for_build(build)
            try:
                source.find_wheel(build)
            except WheelNotFound as missing:
                log.info("GPU runtime %s not offered: %s", build.tag, missing)
                first_missing = first_missing or missing
                continue
            return build, source
        assert first_missing is not None
        raise first_missing

    def _install(self) -> None:
        gpu, build = self.gpu, self.build
        assert gpu is not None and build is not None
        folder = self.options.folder(build)
        need = 2 * build.approx_size if build.approx_size else None  # the wheels, and the unpacked runtime
        self._percent = None
        self.status.emit(DOWNLOADING, downloading_message(gpu, build))
        try:
            if need is not None and self.options.free_bytes(folder) < need:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
            build, source = self._offered_build()  # self.builds is set whenever self.build is
            self.build, folder = build, self.options.folder(build)
            path = install_runtime(build, source, self._progress_reporter(), self._cancel.is_set, path=folder,
                                   chunk_size=self.options.chunk_size)
        except DownloadCancelled:
            self.cancelled.emit(cancelled_message(self._percent))
        except Exception as error:
            log.error("GPU runtime download failed:\n%s", traceback.format_exc())
            if isinstance(error, zipfile.BadZipFile):  # a damaged file that no checksum caught: fetch it again
                shutil.rmtree(folder / DOWNLOADS_DIR, ignore_errors=True)
            self.failed.emit(failed_message(gpu, download_problem(error, folder, need)))
        else:
            self.ready.emit(str(path), ready_message(gpu))

    def _progress_reporter(self) -> Callable[[int, int | None], None]:
        """A progress callback that emits once per 0.1% (or per MiB when the size is unknown), with an ETA
        measured from this run's first report (so a resumed download's earlier bytes do not count)."""
        start: list[float] = []
        last: list[int] = [-1]

        def report(done: int, total: int | None) -> None:
            now = time.monotonic()
            if not start:
                start.extend((now, float(done)))
            step = done * 1000 // total if total else done >> 20
            if step == last[0] and done != total:
                return
            last[0] = step
            if total:
                self._percent = min(100, math.floor(100 * done / total))
            elapsed, rate_bytes = now - start[0], done - start[1]
            eta = (total - done) * elapsed / rate_bytes if total and elapsed >= 2 and rate_bytes > 0 else -1.0
            self.progress.emit(done, total, float(eta))

        return report


# --------------------------------------------------------------------------------------------- controller


class RuntimeController(QObject):
    """GUI-thread side: owns the runtime thread, starts the check and the download, cancels, restarts.

    The thread runs only while a job does (it quits when the worker goes idle), so nothing is left running
    when the controller is dropped between jobs; ``shutdown`` (the window's close, or the application quitting)
    stops a download that runs.
    """

    _check = Signal(bool)
    _install = Signal()

    def __init__(self, options: RuntimeOptions | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.options = options or RuntimeOptions()
        self._cancel = threading.Event()
        self.thread = QThread()
        self.thread.setObjectName("folio-gpu-runtime")
        self.worker = RuntimeWorker(self.options, self._cancel)
        self.worker.moveToThread(self.thread)
        self._check.connect(self.worker.check)
        self._install.connect(self.worker.install)
        self.worker.idle.connect(self.thread.quit, Qt.ConnectionType.DirectConnection)  # the job's end, its thread
        self.worker.idle.connect(self._idle)
        self.worker.ready.connect(self._ready)
        self.busy = False
        self.ready_path: str | None = None
        app = QCoreApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)

    def start(self, auto_download: bool = True) -> None:
        """Check for the GPU in the background (and download when ``auto_download``); ignored while busy."""
        self._run(self._check, auto_download)

    def download(self) -> None:
        """Start or resume the download (ignored while the check or a download runs)."""
        self._run(self._install)

    def _run(self, signal: Signal, *args: object) -> None:
        if self.busy:
            return
        self.thread.wait()  # the last job's thread is quitting (at once: its event loop was told to stop)
        self._cancel.clear()
        self.busy = True
        self.thread.start()
        signal.emit(*args)

    def cancel(self) -> None:
        """Stop the download at its next chunk; the partial file stays for the next try."""
        self._cancel.set()

    def restart(self) -> None:
        """Start Folio again with the ready runtime active (raises OSError if it cannot be started)."""
        if self.ready_path is None:
            raise RuntimeError("the GPU runtime is not ready")
        argv, env = restart_command(self.ready_path)
        self.options.spawn(argv, env)

    def shutdown(self) -> None:
        """Cancel a running download and wait for its thread: it stops at its next chunk, which takes at most
        the HTTP timeout when the connection stalls."""
        self._cancel.set()
        self.thread.quit()
        if not self.thread.wait((HTTP_TIMEOUT_S + 5) * 1000):
            log.warning("the GPU runtime thread did not stop")

    @Slot(str, str)
    def _ready(self, path: str, _message: str) -> None:
        self.ready_path = path

    @Slot()
    def _idle(self) -> None:
        self.busy = False
