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
