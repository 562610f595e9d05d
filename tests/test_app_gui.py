"""The desktop window against a fake engine backend (pytest-qt, offscreen): drop, progress, ask, stream,
cancel, settings, errors, responsiveness."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QMimeData, QPointF, Qt, QTimer, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from app.fake_backend import FakeBackend
from app.main_window import MainWindow
from app.settings import load_settings
from app.widgets.settings_dialog import SettingsDialog

DOCUMENT = ("# The Lighthouse\n\nThe lighthouse on Varnholm was designed by Ingrid Solberg in 1861.\n\n"
            "The first head keeper was Anders Holm, who served for thirty-one years.\n\n"
            "Puffins nest on the northern cliffs in summer.\n")
LONG_ANSWER = " ".join(f"word{i}" for i in range(400))


@pytest.fixture
def document(tmp_path):
    path = tmp_path / "lighthouse.md"
    path.write_text(DOCUMENT, encoding="utf-8")
    return path


def drop(window: MainWindow, *paths) -> None:
    """Simulate dragging files from a file manager onto the window and dropping them."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    center = window.rect().center()
    enter = QDragEnterEvent(QPointF(center), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window, enter)
    assert enter.isAccepted()
    event = QDropEvent(QPointF(center), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window, event)


def open_and_wait(qtbot, window: MainWindow, path) -> None:
    drop(window, path)
    qtbot.waitUntil(lambda: not window.controller.busy and window.current_doc is not None, timeout=5000)


def ask(qtbot, window: MainWindow, question: str) -> None:
    window.prompt.setFocus()
    window.prompt.setPlainText(question)
    qtbot.keyClick(window.prompt, Qt.Key.Key_Return)


def test_first_run_screen_then_drop_reaches_100_percent(qtbot, make_window, document):
    window = make_window()
    assert window.stack.currentWidget() is window.welcome
    assert "Ask your documents" in window.welcome.findChild(type(window.doc_title), "welcomeTitle").text()
    assert window.windowTitle() == "Folio" and not window.windowIcon().isNull()
    percents: dict[str, int] = {}
    window.controller.worker.progress.connect(
        lambda stage, done, total, *_: percents.__setitem__(stage, max(percents.get(stage, 0), 100 * done // total)))
    open_and_wait(qtbot, window, document)
    assert percents["prefill"] == percents["index"] == percents["saving"] == 100
    [entry] = window.library.entries()
    assert (entry.title, entry.pages, entry.cached) == ("lighthouse", 1, True)
    assert entry.tokens > 20 and entry.cache_bytes > 0
    assert window.library_panel.tree.topLevelItemCount() == 1
    assert window.library_panel.tree.topLevelItem(0).text(3) == "cached"
    assert window.stack.currentWidget() is window.chat_view and window.chat_view.state.doc_id == entry.id
    assert "ready" in window.statusBar().currentMessage()


def test_ask_streams_a_markdown_answer_with_citations_and_stats(qtbot, make_window, document):
    window = make_window()
    open_and_wait(qtbot, window, document)
    tokens: list[str] = []
    window.controller.worker.token.connect(lambda _doc, text: tokens.append(text))
    ask(qtbot, window, "Who was the first head keeper?")
    assert window.prompt.toPlainText() == ""  # Enter sent it
    card = window.chat_view.last_card
    qtbot.waitUntil(lambda: card.done and not window.controller.busy, timeout=5000)  # buttons are checked idle
    assert len(tokens) > 5  # streamed token by token
    assert card.text == FakeBackend().answer
    assert "the answer" in card.view.toPlainText() and "**" not in card.view.toPlainText()  # rendered Markdown
    assert card.citations and "head keeper" in card.citations[0].text
    assert card.sources.isVisible()
    assert "of 8,192 tokens" in window.context_label.text()
    assert "tokens/s" in window.speed_label.text() and "first token" in window.speed_label.text()
    assert window.memory_label.text() == "1.2 GiB RAM"
    assert window.model_label.text() == "Model: SmolLM2 135M Instruct" and window.device_label.text().startswith("cpu")
    card.copy_button.click()
    assert QApplication.clipboard().text() == card.text
    assert window.send_button.isEnabled() and not window.stop_button.isEnabled()


def test_shift_enter_is_a_new_line(qtbot, make_window, document):
    window = make_window()
    open_and_wait(qtbot, window, document)
    window.prompt.setFocus()
    qtbot.keyClicks(window.prompt, "line one")
    qtbot.keyClick(window.prompt, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(window.prompt, "line two")
    assert window.prompt.toPlainText() == "line one\nline two"
    assert not window.chat_view.cards


def test_escape_stops_a_long_answer_and_buttons_return_to_idle(qtbot, make_window, document):
    window = make_window(FakeBackend(step_s=0.01, answer=LONG_ANSWER))
    open_and_wait(qtbot, window, document)
    ask(qtbot, window, "Tell me everything")
    card = window.chat_view.last_card
    qtbot.waitUntil(lambda: len(card.text) > 20, timeout=5000)
    assert window.stop_button.isEnabled() and not window.send_button.isEnabled()
    qtbot.keyClick(window.prompt, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: not window.controller.busy, timeout=3000)
    card = window.chat_view.last_card  # the chat as kept: the stopped answer is its last turn
    assert card.done and card.info.text() == "Stopped."
    assert 0 < len(card.text) < len(LONG_ANSWER)
    assert window.send_button.isEnabled() and not window.stop_button.isEnabled()
    assert not window.progress_panel.isVisible()
    window.controller.worker.backend.step_s = 0.0005
    card.regenerate_button.click()  # the app keeps working after a cancel
    qtbot.waitUntil(lambda: not window.controller.busy and window.chat_view.last_card.done, timeout=5000)
    chat = window.chat_view
    assert len(chat.cards) == 1 and chat.last_card.text == LONG_ANSWER
    assert chat.last_card.versions == 2  # the stopped answer stays as the first version


def test_cancel_during_ingest_keeps_the_document_uncached(qtbot, make_window, document):
    window = make_window(FakeBackend(step_s=0.05))
    drop(window, document)
    qtbot.waitUntil(lambda: window.progress_panel.stage == "prefill", timeout=5000)
    assert window.progress_panel.isVisible()
    window.progress_panel.cancel_button.click()
    qtbot.waitUntil(lambda: not window.controller.busy, timeout=3000)
    [entry] = window.library.entries()
    assert not entry.cached


def test_window_stays_responsive_while_the_engine_works(qtbot, make_window, document):
    window = make_window(FakeBackend(step_s=0.15), wait_loaded=False)  # model load takes ~0.75 s
    assert window.controller.busy
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(10)
    qtbot.wait(400)
    timer.stop()
    assert window.controller.busy and len(ticks) >= 15  # the GUI thread kept turning the event loop
    window.resize(900, 600)
    qtbot.wait(20)
    assert window.width() == 900
    drop(window, document)  # queued behind the model load
    assert window.controller.pending_jobs() == ["open"]
    qtbot.waitUntil(lambda: len(window.library) == 1 and not window.controller.busy, timeout=10000)


def test_bad_file_shows_its_message_and_leaves_the_library_unchanged(qtbot, make_window, document, tmp_path):
    window = make_window()
    open_and_wait(qtbot, window, document)
    before = window.library.entries()
    bad = tmp_path / "report.docx"
    bad.write_bytes(b"PK\x03\x04 not a text file")
    drop(window, bad)
    qtbot.waitUntil(lambda: window.error_banner.isVisible(), timeout=5000)
    assert "'.docx' are not supported" in window.error_banner.message
    assert "Traceback" not in window.error_banner.message
    binary = tmp_path / "data.txt"
    binary.write_bytes(b"\x00\x01\x02 binary")
    drop(window, binary)
    qtbot.waitUntil(lambda: "NUL bytes" in window.error_banner.message, timeout=5000)
    qtbot.waitUntil(lambda: not window.controller.busy, timeout=3000)
    assert window.library.entries() == before
    ask(qtbot, window, "Still working?")  # the app keeps working
    qtbot.waitUntil(lambda: window.chat_view.last_card.done, timeout=5000)


def test_document_too_long_for_the_context_is_refused_before_heavy_work(qtbot, make_window, tmp_path):
    window = make_window(FakeBackend(step_s=0.005, context=64))
    path = tmp_path / "long.txt"
    path.write_text("word " * 500)
    stages = []
    window.controller.worker.progress.connect(lambda stage, *_: stages.append(stage))
    drop(window, path)
    qtbot.waitUntil(lambda: window.error_banner.isVisible() and not window.controller.busy, timeout=5000)
    assert "the model handles at most 64" in window.error_banner.message
    assert "prefill" not in stages and len(window.library) == 0


def test_reopening_a_cached_document_says_so(qtbot, make_window, document):
    window = make_window()
    open_and_wait(qtbot, window, document)
    drop(window, document)
    qtbot.waitUntil(lambda: "cached — ready in" in window.statusBar().currentMessage(), timeout=5000)
    assert len(window.library) == 1


def test_model_load_error_is_a_message_and_the_app_keeps_working(qtbot, make_window, document):
    window = make_window(FakeBackend(step_s=0.005, fail_load="The model folder /nope has no config.json."),
                         wait_loaded=False)
    qtbot.waitUntil(lambda: window.error_banner.isVisible() and not window.controller.busy, timeout=5000)
    assert "no config.json" in window.error_banner.message
    assert window.model_label.text() == "Model: not loaded"
    window.controller.worker.backend.fail_load = None
    window.apply_settings(window.settings.with_changes(model="other"))
    qtbot.waitUntil(lambda: window.model_info is not None, timeout=5000)


def test_settings_round_trip_through_the_dialog_and_disk(qtbot, make_window, config_dir):
    window = make_window()
    dialog = SettingsDialog(window.settings, window, confirm=False)
    qtbot.addWidget(dialog)
    dialog.top_k.setValue(300)
    dialog.attention_share.setValue(97.5)
    dialog.temperature.setValue(0.4)
    dialog.attention.setCurrentIndex(dialog.attention.findData("full"))
    dialog.accept()
    assert dialog.result_settings is not None
    window.apply_settings(dialog.result_settings)
    saved, warning = load_settings(config_dir / "settings.json")
    assert warning is None and saved == dialog.result_settings
    assert (saved.engine.top_k, saved.engine.temperature, saved.engine.attention) == (300, 0.4, "full")
    assert saved.engine.attention_share == 0.975
    reopened = SettingsDialog(saved, window, confirm=False)
    qtbot.addWidget(reopened)
    assert reopened.edited_settings() == saved


def test_settings_dialog_refuses_invalid_values_with_a_message(qtbot, make_window):
    window = make_window()
    dialog = SettingsDialog(window.settings, window, confirm=False)
    qtbot.addWidget(dialog)
    dialog.device.setEditText("tpu")
    dialog.data_folder.setText("")
    dialog.accept()
    assert dialog.result_settings is None
    assert "device must be one of" in dialog.error.text() and "data folder must be set" in dialog.error.text()


def test_new_chat_delete_and_citation_click(qtbot, make_window, document, tmp_path):
    import pymupdf

    pdf_path = tmp_path / "two-pages.pdf"
    pdf = pymupdf.open()
    for text in ("Page one talks about puffins.", "Page two names the keeper Anders Holm."):
        pdf.new_page().insert_text((72, 72), text)
    pdf.save(pdf_path)
    window = make_window()
    open_and_wait(qtbot, window, pdf_path)
    ask(qtbot, window, "Which keeper is named?")
    chat = window.chat_view
    qtbot.waitUntil(lambda: chat.last_card.done and not window.controller.busy, timeout=5000)  # new chat waits
    passage = chat.last_card.citations[0]
    assert passage.page == 2 and "keeper" in passage.text
    from app.widgets.chat_view import CitationItem

    item = chat.last_card.findChildren(CitationItem)[0]
    item.button.click()
    assert item.text.isVisible() and "Anders Holm" in item.text.text()
    assert "page 2" in window.statusBar().currentMessage()
    window.new_chat()
    qtbot.waitUntil(lambda: window.chat_view is not chat and not window.controller.busy, timeout=5000)
    assert not window.chat_view.cards and window.chat_list.list.count() == 2
    doc_id = window.current_doc
    window.delete_document(doc_id)
    assert len(window.library) == 0 and window.stack.currentWidget() is window.welcome
    assert window.library_panel.empty.isVisible()


def test_progress_text_gives_counts_a_reader_can_use():
    from app.widgets.progress_panel import describe

    assert describe("index", 3, 30, "layers", 12) == "Building the index · 3 of 30 layers · about 12 s left"
    # a layer-by-layer prefill counts tokens × layers: the bar's percent and the ETA say it better
    assert describe("prefill", 4_000, 90_000, "token-layers", 30) == "Reading the document (prefill) · about 30 s left"
