"""The fault matrix, the window: a damaged PDF that MuPDF repaired opens with a visible warning naming what was lost
(against the fake backend, which reads documents with the engine's real reader)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from app.fake_backend import FakeBackend
from app.main_window import MainWindow
from app.settings import AppSettings
from tests.faults import text_pdf


def test_a_repaired_pdf_opens_with_a_warning_in_the_window(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("FOLIO_CONFIG_DIR", str(tmp_path / "config"))
    window = MainWindow(FakeBackend(step_s=0.001), AppSettings().with_changes(folder=str(tmp_path / "data")),
                        tmp_path / "config" / "settings.json")
    qtbot.addWidget(window)
    window.show()
    try:
        qtbot.waitUntil(lambda: window.model_info is not None and not window.controller.busy, timeout=5000)
        whole = text_pdf(["Alpha page one", "Beta page two", "Gamma page three"])
        half = tmp_path / "half.pdf"
        half.write_bytes(whole[: len(whole) // 2])
        window.open_files([str(half)])
        qtbot.waitUntil(lambda: not window.controller.busy and window.current_doc is not None, timeout=5000)
        assert window.error_banner.isVisible()
        assert "half.pdf is damaged; MuPDF repaired it, but pages 2–3 came out with no text" in \
            window.error_banner.message
        assert window.library.entries()[0].cached  # the document is usable
    finally:
        window.controller.shutdown()


DAMAGED = ("The document library is damaged (…/folio.db: file is not a database), so Folio answers without it and "
           "caches nothing.")


def test_a_damaged_library_is_said_at_start_with_an_offer_to_start_a_new_one(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("FOLIO_CONFIG_DIR", str(tmp_path / "config"))
    backend = FakeBackend(step_s=0.001, library_damaged=DAMAGED)
    window = MainWindow(backend, AppSettings().with_changes(folder=str(tmp_path / "data")),
                        tmp_path / "config" / "settings.json")
    qtbot.addWidget(window)
    window.show()
    try:
        qtbot.waitUntil(lambda: window.model_info is not None and not window.controller.busy, timeout=5000)
        assert window.error_banner.isVisible() and DAMAGED in window.error_banner.message
        assert window.error_banner.action_button.isVisible()
        assert window.error_banner.action_button.text() == "Start a new library"
        window.error_banner.action_button.click()
        qtbot.waitUntil(lambda: not window.error_banner.isVisible() and not window.controller.busy, timeout=5000)
        assert backend.library_resets == 1
        assert "new library" in window.statusBar().currentMessage()
    finally:
        window.controller.shutdown()


def test_the_real_backend_reports_a_damaged_library_and_starts_a_new_one(tiny_model_dir, tmp_path):
    from app.backend import EngineConfig, LibraryConfig, RealBackend
    from engine.store import Store

    data = tmp_path / "data"
    Store(data).close()
    (data / "folio.db").write_bytes(b"not a database at all" * 100)
    backend = RealBackend()
    info = backend.load_model(EngineConfig(model=str(tiny_model_dir), device="cpu", dtype="float32"),
                              LibraryConfig(folder=str(data)), lambda event: None)
    assert "library is damaged" in info.library_damaged and backend.library_entries() == []
    message = backend.reset_library()
    assert "new library" in message and "kept in" in message
    assert backend.store is not None and backend.library_entries() == []
    assert list((data / "damaged").iterdir())
