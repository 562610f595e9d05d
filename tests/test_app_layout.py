"""Issue 22, layout and behaviour (pytest-qt, offscreen, fake backend): the window wraps and keeps every control in
reach down to 640 px wide, the status bar fits and shows only the current document's numbers, Copy's note goes away,
the question's prefill says so, one token count, the banner's Hide is remembered, quitting cancels the work in flight,
every failed file is reported, and the model load names the model and the device."""

from __future__ import annotations

import os
import threading
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QPoint
from PySide6.QtWidgets import QApplication, QLabel, QPushButton

from app.backend import Progress
from app.fake_backend import FakeBackend
from app.main_window import MainWindow
from app.widgets.chat_view import CitationItem
from tests import test_app_gui as gui

document = gui.document  # the window's document fixture
ask, open_and_wait, drop = gui.ask, gui.open_and_wait, gui.drop

LONG_URL = "https://example.org/" + "/".join(f"section-{i}-of-a-very-long-address" for i in range(6)) + "/index.html"
LONG_WORD = "Donaudampfschifffahrtselektrizitätenhauptbetriebswerkbauunterbeamtengesellschaft" * 2
LONG_ANSWER = (f"The keeper's log is online at {LONG_URL} and it names the {LONG_WORD} that built the lamp.\n\n"
               + " ".join(["The first head keeper served for thirty-one years on the island."] * 6))
WIDE_DOCUMENT = (f"# The Lighthouse\n\nThe first head keeper's logbook lives at {LONG_URL} today.\n\n"
                 f"The keeper ordered the lamp from the {LONG_WORD} in Paris.\n\n"
                 "Puffins nest on the northern cliffs in summer.\n")


def right_edge_in(widget, ancestor) -> int:
    """The x of `widget`'s right edge in `ancestor`'s coordinates."""
    return widget.mapTo(ancestor, QPoint(widget.width(), 0)).x()


def text_fits(label: QLabel) -> bool:
    """The label's text as shown (elided or not) fits its width."""
    shown = getattr(label, "shown_text", label.text)()
    return label.fontMetrics().horizontalAdvance(shown) <= label.contentsRect().width()


@pytest.mark.parametrize("size", [(960, 700), (640, 480)])
def test_the_window_wraps_and_keeps_every_control_in_reach(qtbot, make_window, tmp_path, size):
    path = tmp_path / "wide.md"
    path.write_text(WIDE_DOCUMENT, encoding="utf-8")
    window = make_window(FakeBackend(step_s=0.002, answer=LONG_ANSWER))
    window.resize(*size)
    open_and_wait(qtbot, window, path)
    ask(qtbot, window, f"Which keeper and which {LONG_WORD} are named at {LONG_URL}?")
    view = window.chat_view
    card = view.last_card
    qtbot.waitUntil(lambda: card.done and not window.controller.busy, timeout=5000)
    for item in card.findChildren(CitationItem):
        item.button.setChecked(True)  # the passages' text too (it holds the long address)
    window.statusBar().showMessage("Folio is busy: wait for the current job or press Esc to stop it, then ask again.")
    qtbot.wait(50)
    QApplication.processEvents()
    assert (window.width(), window.height()) == size
    assert not view.horizontalScrollBar().isVisible()
    viewport = view.viewport()
    assert view.widget().width() <= viewport.width()
    assert card.sources.isVisible() and card.citations
    assert card.view.document().size().width() <= card.view.viewport().width() + 1  # the answer wraps
    for item in card.findChildren(CitationItem):  # each source's button: its text ends in "…", not cut off
        assert item.button.fontMetrics().horizontalAdvance(item.button.text()) < item.button.width()
    for button in (card.copy_button, card.regenerate_button, view.questions[-1].edit_button):
        assert button.isVisible() and button.width() >= button.minimumSizeHint().width(), button.text()
        assert button.mapTo(viewport, QPoint(0, 0)).x() >= 0 and right_edge_in(button, viewport) <= viewport.width()
    for widget in (window.prompt, window.send_button, window.stop_button):
        assert widget.isVisible() and right_edge_in(widget, window) <= window.width()
    bar = window.statusBar()
    status_bar_fits(bar)
    assert any("press Esc to stop it, then ask again" in label.toolTip()  # the whole message
               for label in bar.findChildren(QLabel) if label.isVisible())
    bar.clearMessage()  # then the numbers, all of them
    QApplication.processEvents()
    status_bar_fits(bar)
    for label in (window.model_label, window.device_label, window.context_label, window.speed_label):
        assert label.isVisible() and label.text() in label.toolTip(), label.text()


def status_bar_fits(bar) -> None:
    """Each label shown is inside the bar, not squeezed below its least width, and its text (elided) fits."""
    labels = [label for label in bar.findChildren(QLabel) if label.isVisible()]
    assert labels
    for label in labels:
        assert right_edge_in(label, bar) <= bar.width() and text_fits(label), label.text()
        assert label.width() >= label.minimumSizeHint().width(), label.text()


def test_copied_note_gives_the_numbers_back(qtbot, make_window, document, monkeypatch):
    from app.widgets import chat_view

    monkeypatch.setattr(chat_view, "NOTE_MS", 30, raising=False)
    window = make_window()
    open_and_wait(qtbot, window, document)
    ask(qtbot, window, "Who was the first head keeper?")
    card = window.chat_view.last_card
    qtbot.waitUntil(lambda: card.done and not window.controller.busy, timeout=5000)
    numbers = card.info.text()
    assert "tokens/s" in numbers
    card.copy_button.click()
    assert card.info.text() == "Copied to the clipboard." and QApplication.clipboard().text() == card.text
    qtbot.waitUntil(lambda: card.info.text() == numbers, timeout=2000)


def test_the_status_bar_shows_only_the_current_documents_speed(qtbot, make_window, document, tmp_path):
    window = make_window(FakeBackend(step_s=0.01, answer=gui.LONG_ANSWER[:400]))
    open_and_wait(qtbot, window, document)
    ask(qtbot, window, "Who was the first head keeper?")
    qtbot.waitUntil(lambda: window.chat_view.last_card.done and not window.controller.busy, timeout=10000)
    assert "tokens/s" in window.speed_label.text()
    other = tmp_path / "other.md"
    other.write_text("# Other\n\nA second document about puffins and their cliffs.\n", encoding="utf-8")
    open_and_wait(qtbot, window, other)
    qtbot.waitUntil(lambda: window.chat_view is not None and not window.controller.busy, timeout=5000)
    assert window.speed_label.text() == "" and window.speed_label.toolTip() == ""  # not the first document's
    window.controller.worker.backend.answer = gui.LONG_ANSWER
    ask(qtbot, window, "Tell me about the puffins")
    card = window.chat_view.last_card
    qtbot.waitUntil(lambda: len(card.text) > 20, timeout=5000)
    window.stop()
    qtbot.waitUntil(lambda: card.done and not window.controller.busy, timeout=5000)
    assert window.speed_label.text() == ""  # a stopped answer has no speed, and the earlier one is not this one's


def test_a_question_on_a_cached_document_says_it_reads_the_question(qtbot, make_window, document):
    window = make_window(FakeBackend(step_s=0.02))
    open_and_wait(qtbot, window, document)
    details: list[str] = []
    shown = window.progress_panel.set_detail
    window.progress_panel.set_detail = lambda text: (details.append(text), shown(text))
    ask(qtbot, window, "Who was the first head keeper?")
    qtbot.waitUntil(lambda: window.chat_view.last_card.done and not window.controller.busy, timeout=5000)
    assert details and all(text == "Reading your question" for text in details), details
    assert "Reading your question" in window.progress_panel.bar.format()


def test_the_progress_panel_and_the_header_give_one_token_count(qtbot, tmp_path, config_dir, tiny_model_dir):
    import re

    from app.backend import RealBackend
    from app.settings import AppSettings

    path = tmp_path / "lighthouse.md"
    path.write_text(gui.DOCUMENT + "\n\n", encoding="utf-8")  # trailing blank lines: not part of the prompt
    settings = AppSettings().with_changes(model=str(tiny_model_dir), attention="exact", n_sink=4, n_window=16,
                                          max_new_tokens=4, folder=str(tmp_path / "data"),
                                          gpu_runtime_auto_download=False)
    window = MainWindow(RealBackend(), settings, config_dir / "settings.json", gpu_runtime=None)
    qtbot.addWidget(window)
    details: list[str] = []
    shown = window.progress_panel.set_detail
    window.progress_panel.set_detail = lambda text: (details.append(text), shown(text))
    try:
        qtbot.waitUntil(lambda: window.model_info is not None and not window.controller.busy, timeout=60_000)
        for _ in range(2):  # opening it, then opening it again (the document is open in the engine already)
            details.clear()
            open_and_wait(qtbot, window, path)
            [counted] = {int(n.replace(",", "")) for n in re.findall(r"([\d,]+) tokens of", " ".join(details))}
            assert f"{counted:,} tokens" in window.doc_title.text()
            assert window.library.entries()[0].tokens == counted
    finally:
        window.controller.shutdown()


class LongPrefill(FakeBackend):
    """A document's prefill is one chunk that takes LONG_CHUNK_S and cannot stop midway (as a big prefill chunk or
    an index build in the engine); the cancel flag is seen after it."""

    LONG_CHUNK_S = 3.0

    def __init__(self) -> None:
        super().__init__(step_s=0.002)
        self.in_chunk = threading.Event()
        self.saw_cancel = False

    def prepare(self, doc_id, progress, cancel):
        progress(Progress("prefill", 0, 1, "tokens"))
        self.in_chunk.set()
        time.sleep(self.LONG_CHUNK_S)
        self.saw_cancel = cancel.cancelled
        cancel.raise_if_cancelled()
        return super().prepare(doc_id, progress, cancel)


def test_closing_the_window_cancels_the_work_in_flight_without_waiting_for_it(qtbot, make_window, document):
    backend = LongPrefill()
    window = make_window(backend)
    drop(window, document)
    qtbot.waitUntil(backend.in_chunk.is_set, timeout=5000)
    window.close()
    assert not window.isVisible()
    assert window.controller.thread.isRunning()  # close() did not wait for the long chunk to end
    qtbot.waitUntil(lambda: not window.controller.thread.isRunning())  # then the job stopped, and its thread
    assert backend.saw_cancel and not window.library.entries()[0].cached


def test_every_file_that_fails_to_open_is_reported(qtbot, make_window, document, tmp_path):
    window = make_window()
    report = tmp_path / "report.docx"
    report.write_bytes(b"PK\x03\x04 not a text file")
    binary = tmp_path / "data.txt"
    binary.write_bytes(b"\x00\x01\x02 binary")
    empty = tmp_path / "empty.md"
    empty.write_text("", encoding="utf-8")
    drop(window, report, binary, document, empty)
    qtbot.waitUntil(lambda: not window.controller.busy and window.current_doc is not None, timeout=10000)
    message = window.error_banner.message
    for name in ("report.docx", "data.txt", "empty.md"):
        assert name in message, message
    assert "'.docx' are not supported" in message and "NUL bytes" in message
    assert [entry.title for entry in window.library.entries()] == ["lighthouse"]  # the good one opened
    window.error_banner.findChild(QPushButton, "dismissError").click()
    drop(window, report)  # a later failure starts a new list
    qtbot.waitUntil(lambda: not window.controller.busy and window.error_banner.isVisible(), timeout=5000)
    assert "report.docx" in window.error_banner.message and "data.txt" not in window.error_banner.message


@pytest.mark.parametrize(("answer", "passes"), [
    ("The first head keeper of the lighthouse was Anders Brekke, who served from 1865 until 1891.", True),
    ("Anders Brekke's service ran from 1865 to 1891.", True),
    # The bundled SmolLM2-135M's own answer (full, retrieval, int8, float32 and plain transformers alike): the keeper
    # and both years are there, with his granddaughter's surname added; the self-test checks Folio, not the model.
    ("The first head keeper of the lighthouse was Anders Brekke Lund, who served from 1865 until 1891.", True),
    ("It was Solveig Brekke Lund, from 1923.", False),
    ("The first head keeper was Anders Brekke.", False),  # how long he served is part of the question
    ("Brekke served from 1865 until 1891.", False),  # not his full name
])
def test_the_self_test_checks_the_whole_fact(qtbot, config_dir, capsys, answer, passes):
    from app.sample.self_test import run_self_test

    assert run_self_test(timeout_s=60, backend=FakeBackend(step_s=0.002, answer=answer)) == (0 if passes else 1)
    output = capsys.readouterr()
    assert ("self-test passed" in output.out) == passes, output.err
    if not passes:
        assert "self-test FAILED: the answer" in output.err


def test_loading_the_model_names_the_model_and_the_device_in_words(qtbot, make_window):
    window = make_window(FakeBackend(step_s=0.05), wait_loaded=False)
    assert window.settings.engine.model == "default" and window.settings.engine.device == "auto"
    detail = window.progress_panel.detail
    qtbot.waitUntil(lambda: "on the CPU" in detail.text(), timeout=5000)
    assert detail.text() == "Loading SmolLM2 135M Instruct on the CPU"
    qtbot.waitUntil(lambda: window.model_info is not None and not window.controller.busy, timeout=5000)
    # the same words once it is loaded (the engine's name for the bundled model is its folder's)
    assert window.welcome.model_line.text().startswith("Model ready: SmolLM2 135M Instruct on the CPU")
    assert window.model_label.text() == "Model: SmolLM2 135M Instruct"


def test_every_stage_of_preparing_an_answer_is_in_words_and_titles_stay_plain_text(qtbot):
    from app.widgets.progress_panel import ProgressPanel, stage_words

    assert stage_words("citation baseline") == "Preparing the sources (once per document)"
    panel = ProgressPanel()
    qtbot.addWidget(panel)
    panel.start("Opening <i>notes</i>.md")  # a file's name is the user's text, never markup
    assert "&lt;i&gt;notes&lt;/i&gt;" in panel.title.text()
