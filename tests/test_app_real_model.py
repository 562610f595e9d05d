"""End to end with the real default model: the window loads it, opens the sample, answers with citations."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from app.backend import RealBackend
from app.main_window import MainWindow
from app.resources import resource_path
from app.settings import AppSettings

QUESTION = "Who was the first head keeper of the lighthouse, and how long did he serve?"


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["full", "retrieval"])
def test_real_model_answers_the_sample_question_in_the_window(qtbot, tmp_path, monkeypatch, attention):
    from engine.default_model import is_default_model_ready

    if not is_default_model_ready():
        pytest.skip("the default model is not converted yet (bash packaging/dev.sh setup, or set FOLIO_CACHE_DIR)")
    monkeypatch.setenv("FOLIO_CONFIG_DIR", str(tmp_path / "config"))
    settings = AppSettings().with_changes(attention=attention, max_new_tokens=48, folder=str(tmp_path / "data"),
                                          gpu_runtime_auto_download=False)  # no multi-GB download on a GPU test machine
    window = MainWindow(RealBackend(), settings, tmp_path / "config" / "settings.json")
    qtbot.addWidget(window)
    window.show()
    try:
        qtbot.waitUntil(lambda: window.model_info is not None and not window.controller.busy, timeout=180_000)
        assert window.model_info.name == "SmolLM2-135M-Instruct"
        percents = []
        window.controller.worker.progress.connect(lambda stage, done, total, *_: percents.append((stage, done, total)))
        window.open_files([str(resource_path("sample.md"))])
        qtbot.waitUntil(lambda: window.current_doc is not None and not window.controller.busy, timeout=600_000)
        assert not window.error_banner.isVisible(), window.error_banner.message
        [entry] = window.library.entries()
        assert entry.cached and entry.tokens > 1000
        if attention == "retrieval":
            assert ("saving", percents[-1][2], percents[-1][2]) == percents[-1]  # stored in engine.store
        window.prompt.setPlainText(QUESTION)
        window.send()
        card = window.chat_view.last_card
        qtbot.waitUntil(lambda: card.done, timeout=600_000)
        assert not window.error_banner.isVisible(), window.error_banner.message
        assert "Brekke" in card.text
        assert "of 8,192 tokens" in window.context_label.text() and "tokens/s" in window.speed_label.text()
        if attention == "full":  # full attention: citations from the top attention positions
            assert card.citations and "head keeper" in card.citations[0].text
    finally:
        window.controller.shutdown()
