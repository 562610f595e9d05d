"""The GPU runtime in the window (pytest-qt, offscreen, offline): a fake detector, a local folder of small fake
wheels as the source, a temporary runtime folder, and a recording spawner instead of a real restart."""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import sys
import threading
import time
import urllib.error
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QObject, Qt, Slot

from app.backend import RealBackend
from app.fake_backend import FakeBackend
from app.main_window import MainWindow
from app.runtime.activate import ACTIVE_ENV
from app.runtime.banner import DOWNLOADING, FAILED, INFO, OFFER, PAUSED, READY, progress_text
from app.runtime.builds import choose_build
from app.runtime.detect import GpuInfo
from app.runtime.errors import ChecksumError, WheelNotFound
from app.runtime.install import install_runtime
from app.runtime.layout import DOWNLOADS_DIR, SITE_DIR, runtime_ready
from app.runtime.messages import download_problem
from app.runtime.source import RuntimeSource
from app.runtime.startup import InstalledTorch
from app.runtime.worker import RuntimeOptions, spawn_detached
from app.settings import AppSettings, load_settings, save_settings
from app.widgets.settings_dialog import SettingsDialog
from tests.test_gpu_runtime import CUBLAS_WHEEL, TORCH, TORCH_REQUIRES, WHEEL_NAME, make_dep_wheel, make_wheel

CHUNK = 4096
GPU = GpuInfo("NVIDIA GeForce RTX 4090", "560.35.03", 24564, "12.6")
CPU_TORCH = InstalledTorch(f"{TORCH}+cpu", cpu_only=True)
READY_MESSAGE = "GPU runtime ready — restart Folio to use the NVIDIA GeForce RTX 4090."


class Spawner:
    """Records restart commands instead of starting a process."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    def __call__(self, argv: list[str], env: dict[str, str]) -> None:
        self.calls.append((argv, env))


class BannerRecorder(QObject):
    """Lives on the GUI thread: records the banner's text after each progress report."""

    def __init__(self, window: MainWindow, seen: list[str]) -> None:
        super().__init__(window)
        self.window, self.seen = window, seen

    @Slot(object, object, float)
    def record(self, _done: object, _total: object, _eta: float) -> None:
        self.seen.append(self.window.runtime_banner.message)


class Gate:
    """A detector that waits until the test has connected its spies, then reports ``gpu``."""

    def __init__(self, gpu: GpuInfo | None) -> None:
        self.gpu = gpu
        self.event = threading.Event()

    def __call__(self) -> GpuInfo | None:
        assert self.event.wait(10), "the test never opened the gate"
        return self.gpu


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    folder = tmp_path / "wheels"
    make_wheel(folder, requires=TORCH_REQUIRES)
    make_dep_wheel(folder)
    return folder


@pytest.fixture
def options(tmp_path: Path, wheels: Path) -> RuntimeOptions:
    return RuntimeOptions(detect=lambda: GPU, installed=lambda: CPU_TORCH,
                          source=RuntimeSource("folder", str(wheels)), root=tmp_path / "runtime", spawn=Spawner(),
                          chunk_size=CHUNK)


@pytest.fixture
def make_window(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("FOLIO_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv(ACTIVE_ENV, raising=False)
    windows: list[MainWindow] = []

    def make(options: RuntimeOptions | None, auto_download: bool = True, backend: FakeBackend | None = None,
             device: str = "auto") -> MainWindow:
        settings = AppSettings().with_changes(folder=str(tmp_path / "data"), gpu_runtime_auto_download=auto_download,
                                              device=device)
        window = MainWindow(backend or FakeBackend(step_s=0.005), settings, tmp_path / "config" / "settings.json",
                            gpu_runtime=options)
        qtbot.addWidget(window)
        window.show()
        windows.append(window)
        return window

    yield make
    for window in windows:
        window.close()


def wait_state(qtbot, window: MainWindow, state: str) -> None:
    qtbot.waitUntil(lambda: window.runtime_banner.state == state and not window.runtime.busy, timeout=10_000)


def runtime_folder(options: RuntimeOptions) -> Path:
    assert options.root is not None
    return options.root / "cu126"


# ------------------------------------------------------------------------------------------------ happy path


def test_gpu_found_downloads_installs_and_restart_now_spawns_the_restart(qtbot, make_window, options, wheels):
    gate = Gate(GPU)
    options = dataclasses.replace(options, detect=gate)
    window = make_window(options)
    statuses, progress, shown = [], [], []
    worker = window.runtime.worker
    worker.status.connect(lambda state, message: statuses.append((state, message)))
    worker.progress.connect(lambda done, total, eta: progress.append((done, total)))
    recorder = BannerRecorder(window, shown)
    worker.progress.connect(recorder.record)  # queued to the GUI thread, after the banner's own update
    gate.event.set()

    wait_state(qtbot, window, READY)

    assert statuses == [(DOWNLOADING, "NVIDIA GeForce RTX 4090 found — downloading the GPU runtime (2.3 GiB)")]
    total = (wheels / WHEEL_NAME).stat().st_size + (wheels / CUBLAS_WHEEL).stat().st_size
    assert len(progress) > 10 and progress[-1] == (total, total)
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)
    assert any(text.startswith(statuses[0][1] + " … ") and text.endswith("% · running on the CPU until then")
               for text in shown)
    folder = runtime_folder(options)
    assert runtime_ready(folder, f"{TORCH}+cu126")
    assert (folder / SITE_DIR / "torch" / "__init__.py").is_file()
    assert (folder / SITE_DIR / "nvidia" / "cublas" / "__init__.py").is_file()
    banner = window.runtime_banner
    assert banner.message == READY_MESSAGE and banner.action_button.text() == "Restart now"
    assert banner.action_button.isVisible() and not banner.cancel_button.isVisible() and not banner.bar.isVisible()
    qtbot.waitUntil(lambda: window.model_info is not None, timeout=5000)  # the engine ran meanwhile, on the CPU

    qtbot.mouseClick(banner.action_button, Qt.MouseButton.LeftButton)

    [(argv, env)] = options.spawn.calls
    site = str(folder.resolve() / SITE_DIR)
    assert argv == [sys.executable, *sys.orig_argv[1:]]
    assert env["PYTHONPATH"].split(os.pathsep)[0] == site and env[ACTIVE_ENV] == site
    assert not window.isVisible()  # closed cleanly after starting the new process


def test_the_newest_build_the_source_offers_is_fetched(qtbot, make_window, options):
    """A CUDA 13 driver prefers cu130, but this torch release was only built for cu126 here: fetch that one."""
    newer = GpuInfo("NVIDIA GeForce RTX 5090", "590.44.01", 32607, "13.1")
    window = make_window(dataclasses.replace(options, detect=lambda: newer))
    wait_state(qtbot, window, READY)
    assert window.runtime.worker.build.tag == "cu126"
    assert runtime_ready(runtime_folder(options), f"{TORCH}+cu126")
    assert sorted(path.name for path in options.root.iterdir()) == ["cu126"]


def test_a_ready_runtime_at_start_offers_the_restart_without_downloading(qtbot, make_window, options, tmp_path):
    build = choose_build(GPU, CPU_TORCH.version)
    install_runtime(build, options.source, path=runtime_folder(options))
    window = make_window(dataclasses.replace(options, source=RuntimeSource("folder", str(tmp_path / "none"))))
    wait_state(qtbot, window, READY)
    assert window.runtime_banner.message == READY_MESSAGE and window.runtime.ready_path == str(runtime_folder(options))


def test_busy_engine_postpones_the_restart(qtbot, make_window, options, tmp_path):
    window = make_window(options, backend=FakeBackend(step_s=0.02))
    wait_state(qtbot, window, READY)
    document = tmp_path / "doc.md"
    document.write_text("# Doc\n\n" + "Words and more words. " * 400, encoding="utf-8")
    window.open_files([str(document)])
    assert window.controller.busy
    window.restart_for_gpu()
    assert options.spawn.calls == [] and window.isVisible()
    assert "busy" in window.statusBar().currentMessage()


# -------------------------------------------------------------------------------------------- other states


def test_no_gpu_says_cpu_and_downloads_nothing(qtbot, make_window, options):
    window = make_window(dataclasses.replace(options, detect=lambda: None))
    wait_state(qtbot, window, INFO)
    banner = window.runtime_banner
    assert banner.message == "No NVIDIA GPU found — running on the CPU."
    assert not banner.action_button.isVisible() and not banner.bar.isVisible()
    assert not options.root.exists()
    qtbot.mouseClick(banner.hide_button, Qt.MouseButton.LeftButton)
    assert not banner.isVisible()


def test_old_driver_says_why_and_stays_on_cpu(qtbot, make_window, options):
    old = GpuInfo("Tesla K80", "470.57.02", None, "11.4")
    window = make_window(dataclasses.replace(options, detect=lambda: old))
    wait_state(qtbot, window, INFO)
    message = window.runtime_banner.message
    assert message.startswith("NVIDIA Tesla K80 found, but its driver 470.57.02 supports CUDA 11.4")
    assert message.endswith("running on the CPU.") and not options.root.exists()


def test_gpu_build_of_torch_already_hides_the_banner(qtbot, make_window, options):
    window = make_window(dataclasses.replace(options, installed=lambda: InstalledTorch(f"{TORCH}+cu126", False)))
    qtbot.waitUntil(lambda: not window.runtime.busy and "Running on the GPU" in window.statusBar().currentMessage(),
                    timeout=10_000)
    assert not window.runtime_banner.isVisible() and not options.root.exists()


@pytest.mark.parametrize(("auto_download", "device"), [(False, "auto"), (True, "cpu")])
def test_automatic_download_off_or_cpu_device_offers_it(qtbot, make_window, options, auto_download, device):
    window = make_window(options, auto_download=auto_download, device=device)
    wait_state(qtbot, window, OFFER)
    banner = window.runtime_banner
    assert "not downloaded automatically" in banner.message and banner.action_button.text() == "Download"
    assert not options.root.exists()
    qtbot.mouseClick(banner.action_button, Qt.MouseButton.LeftButton)
    wait_state(qtbot, window, READY)
    assert runtime_ready(runtime_folder(options))


def test_fake_backend_checks_nothing_by_default(qtbot, make_window):
    window = make_window(None)
    assert window.runtime is None and not window.runtime_banner.isVisible()
    assert RealBackend.offers_gpu_runtime and not getattr(FakeBackend(), "offers_gpu_runtime", False)


# ------------------------------------------------------------------------------------------------- failures


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_source_names_the_problem_and_the_app_keeps_working(qtbot, make_window, options, tmp_path):
    source = RuntimeSource("index", f"http://127.0.0.1:{closed_port()}/whl/cu126")
    window = make_window(dataclasses.replace(options, source=source))
    wait_state(qtbot, window, FAILED)
    banner = window.runtime_banner
    assert banner.message.startswith("NVIDIA GeForce RTX 4090 found, but the GPU runtime could not be downloaded: "
                                     "the download server could not be reached (")
    assert "Check the internet connection" in banner.message and banner.message.endswith("Folio runs on the CPU.")
    assert banner.action_button.text() == "Retry" and not window.error_banner.isVisible()

    document = tmp_path / "doc.md"
    document.write_text("# Doc\n\nThe keeper was Anders Holm.\n", encoding="utf-8")
    window.open_files([str(document)])
    qtbot.waitUntil(lambda: window.current_doc is not None and not window.controller.busy, timeout=5000)
    window.prompt.setPlainText("Who was the keeper?")
    window.send()
    card = window.chat_view.last_card
    qtbot.waitUntil(lambda: card.done, timeout=5000)
    assert card.text and not window.error_banner.isVisible()


def test_missing_wheels_then_retry(qtbot, make_window, options, tmp_path):
    empty = tmp_path / "later"
    window = make_window(dataclasses.replace(options, source=RuntimeSource("folder", str(empty))))
    wait_state(qtbot, window, FAILED)
    message = window.runtime_banner.message
    assert "the download source has no GPU runtime for this computer" in message and "FOLIO_RUNTIME_SOURCE" in message
    make_wheel(empty)
    qtbot.mouseClick(window.runtime_banner.action_button, Qt.MouseButton.LeftButton)
    wait_state(qtbot, window, READY)
    assert runtime_ready(runtime_folder(options), f"{TORCH}+cu126")


def test_full_disk_is_named_before_downloading(qtbot, make_window, options):
    window = make_window(dataclasses.replace(options, free_bytes=lambda _folder: 10**9))
    wait_state(qtbot, window, FAILED)
    assert "the disk is full" in window.runtime_banner.message
    assert "Free at least 4.7 GiB there" in window.runtime_banner.message
    assert not (runtime_folder(options) / DOWNLOADS_DIR).exists()


def test_a_crashing_detector_becomes_a_message(qtbot, make_window, options):
    def detect() -> GpuInfo | None:
        raise RuntimeError("boom")

    window = make_window(dataclasses.replace(options, detect=detect))
    wait_state(qtbot, window, FAILED)
    assert window.runtime_banner.message == ("Folio could not check for an NVIDIA GPU (RuntimeError: boom); "
                                             "running on the CPU.")


@pytest.mark.parametrize(("error", "words"), [
    (urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")),
     "the download server could not be reached (Connection refused). Check the internet connection"),
    (WheelNotFound("could not read the index"), "the download source has no GPU runtime for this computer"),
    (OSError(errno.ENOSPC, "No space left on device"), "the disk is full (/rt). Free at least 4.7 GiB there"),
    (PermissionError(errno.EACCES, "Permission denied"), "Folio may not write to /rt (Permission denied). Set "
                                                         "FOLIO_RUNTIME_DIR"),
    (urllib.error.HTTPError("http://x/t.whl", 503, "Service Unavailable", None, None),  # type: ignore[arg-type]
     "the download server answered “503 Service Unavailable” for http://x/t.whl"),
    (ChecksumError("the download of t.whl is corrupt"), "the download of t.whl is corrupt."),
    (ValueError("odd"), "something went wrong (ValueError: odd)"),
])
def test_download_problem_names_problem_and_fix(error: BaseException, words: str) -> None:
    assert words in download_problem(error, Path("/rt"), 5 * 10**9)


def test_network_error_behind_wheel_not_found_is_a_network_problem() -> None:
    try:
        try:
            raise urllib.error.URLError(TimeoutError("timed out"))
        except OSError as exc:
            raise WheelNotFound("could not read the index") from exc
    except WheelNotFound as error:
        assert download_problem(error, Path("/rt"), None).startswith("the download server could not be reached")


# ---------------------------------------------------------------------------------------------- cancel/resume


def test_cancel_mid_download_keeps_the_part_and_resume_continues(qtbot, make_window, options, tmp_path):
    wheels = tmp_path / "plain"
    wheel = make_wheel(wheels)  # the torch wheel alone
    gate = Gate(GPU)
    options = dataclasses.replace(options, detect=gate, source=RuntimeSource("folder", str(wheels)))
    window = make_window(options)
    worker = window.runtime.worker

    def cancel_after_three_chunks(done: int, _total: int | None, _eta: float) -> None:
        if done >= 3 * CHUNK:  # runs on the worker thread, before it reads the next chunk
            window.runtime.cancel()

    worker.progress.connect(cancel_after_three_chunks, Qt.ConnectionType.DirectConnection)
    gate.event.set()
    wait_state(qtbot, window, PAUSED)

    total = wheel.stat().st_size
    banner = window.runtime_banner
    assert banner.message == (f"GPU runtime download paused at {100 * 3 * CHUNK // total}% — running on the CPU. "
                              "Resume continues where it stopped.")
    assert banner.action_button.text() == "Resume"
    part = runtime_folder(options) / DOWNLOADS_DIR / f"{WHEEL_NAME}.part"
    assert part.stat().st_size == 3 * CHUNK and not runtime_ready(runtime_folder(options))

    worker.progress.disconnect(cancel_after_three_chunks)
    progress = []
    worker.progress.connect(lambda done, total, eta: progress.append((done, total)))
    qtbot.mouseClick(banner.action_button, Qt.MouseButton.LeftButton)
    wait_state(qtbot, window, READY)
    assert progress[0] == (3 * CHUNK, total) and progress[-1] == (total, total)  # continued, not restarted
    assert not part.exists() and runtime_ready(runtime_folder(options), f"{TORCH}+cu126")


# ------------------------------------------------------------------------------------------------ text, settings


def test_progress_text() -> None:
    head = "NVIDIA GeForce RTX 4090 found — downloading the GPU runtime (2.3 GiB)"
    assert progress_text(head, 925, 2500, 240.0) == f"{head} … 37%, about 4 min 00 s left"
    assert progress_text(head, 925, 2500, -1.0) == f"{head} … 37%"
    assert progress_text(head, 2500, 2500, 0.0) == f"{head} … 100%"
    assert progress_text(head, 120_000_000, None, -1.0) == f"{head} … 114.4 MiB so far"


def test_auto_download_setting_round_trips_and_is_validated(tmp_path, qtbot):
    path = tmp_path / "settings.json"
    settings = AppSettings().with_changes(folder=str(tmp_path / "d"), gpu_runtime_auto_download=False)
    save_settings(settings, path)
    assert load_settings(path) == (settings, None)
    path.write_text(path.read_text().replace('"gpu_runtime_auto_download": false', '"gpu_runtime_auto_download": 0'))
    loaded, warning = load_settings(path)
    assert loaded.gpu_runtime_auto_download is True and "not true or false" in warning
    dialog = SettingsDialog(settings, confirm=False)
    qtbot.addWidget(dialog)
    assert not dialog.gpu_runtime.isChecked()
    dialog.gpu_runtime.setChecked(True)
    assert dialog.edited_settings().gpu_runtime_auto_download is True


def test_default_spawner_starts_an_independent_process(tmp_path):
    out = tmp_path / "child.txt"
    code = f"import os, pathlib; pathlib.Path({str(out)!r}).write_text(os.environ['FOLIO_TEST_MARK'])"
    spawn_detached([sys.executable, "-c", code], {**os.environ, "FOLIO_TEST_MARK": "restarted"})
    for _ in range(600):  # up to a minute for the child to start and write
        if out.exists() and out.read_text() == "restarted":
            break
        time.sleep(0.1)
    assert out.exists() and out.read_text() == "restarted"


def test_hiding_the_no_gpu_line_is_remembered_after_a_restart(qtbot, make_window, options, tmp_path):
    no_gpu = dataclasses.replace(options, detect=lambda: None)
    window = make_window(no_gpu)
    wait_state(qtbot, window, INFO)
    qtbot.mouseClick(window.runtime_banner.hide_button, Qt.MouseButton.LeftButton)
    window.close()
    settings, warning = load_settings(tmp_path / "config" / "settings.json")  # as Folio starts again
    assert warning is None
    again = MainWindow(FakeBackend(step_s=0.005), settings, tmp_path / "config" / "settings.json", gpu_runtime=no_gpu)
    qtbot.addWidget(again)
    again.show()
    try:
        wait_state(qtbot, again, INFO)
        assert not again.runtime_banner.isVisible()
    finally:
        again.close()
    old = GpuInfo("Tesla K80", "470.57.02", None, "11.4")  # another message: shown again
    third = MainWindow(FakeBackend(step_s=0.005), settings, tmp_path / "config" / "settings.json",
                       gpu_runtime=dataclasses.replace(options, detect=lambda: old))
    qtbot.addWidget(third)
    third.show()
    try:
        wait_state(qtbot, third, INFO)
        assert third.runtime_banner.isVisible() and "Tesla K80" in third.runtime_banner.message
    finally:
        third.close()
