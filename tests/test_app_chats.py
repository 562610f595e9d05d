"""Chats in the window (pytest-qt, offscreen): the chat list (new, switch, rename, delete), follow-ups in place,
regenerate with ←/→ between versions, edit and resend, export, the chat's own token count, a chat another model
made, the layout at 960 px, and (real engine, tiny model) a chat that survives closing the window."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt

from app.fake_backend import FakeBackend
from app.main_window import MainWindow
from app.settings import AppSettings
from tests import test_app_gui as gui

document = gui.document  # the window's document fixture
ask, open_and_wait = gui.ask, gui.open_and_wait


def idle(qtbot, window: MainWindow) -> None:
    qtbot.waitUntil(lambda: not window.controller.busy and window.chat_view is not None
                    and all(card.done for card in window.chat_view.cards), timeout=5000)


def ask_and_wait(qtbot, window: MainWindow, question: str) -> None:
    ask(qtbot, window, question)
    idle(qtbot, window)


def titles(window: MainWindow) -> list[str]:
    return [window.chat_list.list.item(i).text() for i in range(window.chat_list.list.count())]


def test_follow_ups_stay_in_one_chat_and_the_status_bar_counts_its_tokens(qtbot, make_window, document):
    window = make_window()
    open_and_wait(qtbot, window, document)
    idle(qtbot, window)
    start = window.context_label.text()
    ask_and_wait(qtbot, window, "Who designed the lighthouse?")
    first = window.context_label.text()
    ask_and_wait(qtbot, window, "And when?")
    view = window.chat_view
    assert [bubble.question for bubble in view.questions] == ["Who designed the lighthouse?", "And when?"]
    assert len(view.cards) == 2 and all(card.done for card in view.cards)
    counts = [int(text.split(" of ")[0].replace(",", "")) for text in (start, first, window.context_label.text())]
    assert counts[0] < counts[1] < counts[2] and window.context_label.text().endswith("of 8,192 tokens")
    assert titles(window) == ["Who designed the lighthouse?"]  # the first question names the chat


def test_chat_list_new_switch_rename_and_delete(qtbot, make_window, document):
    window = make_window()
    open_and_wait(qtbot, window, document)
    ask_and_wait(qtbot, window, "Who designed the lighthouse?")
    first_key = window.current_chat
    window.chat_list.new_button.click()
    qtbot.waitUntil(lambda: window.current_chat != first_key and not window.controller.busy, timeout=5000)
    assert not window.chat_view.cards and titles(window) == ["New chat", "Who designed the lighthouse?"]
    ask_and_wait(qtbot, window, "Where on the island do the puffins nest in summer?")
    second_key = window.current_chat
    tokens_second = window.context_label.text()
    window.chat_list.list.item(1).setSelected(True)  # back to the first chat
    qtbot.waitUntil(lambda: window.current_chat == first_key and not window.controller.busy, timeout=5000)
    assert [b.question for b in window.chat_view.questions] == ["Who designed the lighthouse?"]
    assert window.context_label.text() != tokens_second  # each chat has its own count
    window.chat_list.list.item(0).setText("Puffins")  # rename in place (as a double-click edit does)
    qtbot.waitUntil(lambda: "Puffins" in titles(window) and not window.controller.busy, timeout=5000)
    assert window.controller.worker.backend.chat_store[second_key].title == "Puffins"
    window.chat_list.list.item(0).setSelected(True)
    qtbot.waitUntil(lambda: not window.controller.busy, timeout=5000)
    window.chat_list.delete_button.click()  # deletes the selected chat; another one opens
    qtbot.waitUntil(lambda: len(titles(window)) == 1 and not window.controller.busy, timeout=5000)
    assert window.current_chat is not None and window.stack.currentWidget() is window.chat_view


def test_regenerate_keeps_versions_and_arrows_move_between_them(qtbot, make_window, document):
    backend = FakeBackend(step_s=0.002, answer="The first answer.")
    window = make_window(backend)
    open_and_wait(qtbot, window, document)
    ask_and_wait(qtbot, window, "Who designed the lighthouse?")
    backend.answer = "The second answer."
    window.chat_view.last_card.regenerate_button.click()
    idle(qtbot, window)
    card = window.chat_view.last_card
    assert card.text == "The second answer." and card.version_label.text() == "2/2"
    assert card.previous_button.isEnabled() and not card.next_button.isEnabled()
    card.previous_button.click()
    qtbot.waitUntil(lambda: window.chat_view.last_card.version_label.text() == "1/2", timeout=5000)
    idle(qtbot, window)
    card = window.chat_view.last_card
    assert "The first answer." in card.view.toPlainText() and card.next_button.isEnabled()
    ask_and_wait(qtbot, window, "And then?")  # the chat continues from the version shown
    first = window.chat_view.cards[0]
    assert first.version_label.text() == "1/2" and not first.previous_button.isEnabled()  # only the last turn moves
    assert not first.regenerate_button.isVisible()


def test_edit_and_resend_cuts_the_chat_at_the_edited_question(qtbot, make_window, document):
    window = make_window()
    open_and_wait(qtbot, window, document)
    for question in ("Who designed it?", "When was it built?", "Who kept it?"):
        ask_and_wait(qtbot, window, question)
    window.chat_view.questions[1].edit_button.click()
    assert window.prompt.toPlainText() == "When was it built?" and window.edit_bar.isVisible()
    assert "drops the 1 answer after it" in window.edit_note.text()
    window.prompt.setPlainText("When was it first lit?")
    qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    idle(qtbot, window)
    assert [b.question for b in window.chat_view.questions] == ["Who designed it?", "When was it first lit?"]
    assert not window.edit_bar.isVisible()
    window.chat_view.questions[0].edit_button.click()
    qtbot.keyClick(window.prompt, Qt.Key.Key_Escape)  # Esc gives up editing
    assert not window.edit_bar.isVisible() and window.editing is None


def test_export_writes_every_turn(qtbot, make_window, document, tmp_path):
    window = make_window()
    open_and_wait(qtbot, window, document)
    for question in ("Who designed it?", "Who kept it?"):
        ask_and_wait(qtbot, window, question)
    path = tmp_path / "chat.md"
    window.export_chat(path=str(path))
    qtbot.waitUntil(lambda: path.exists() and "exported" in window.statusBar().currentMessage(), timeout=5000)
    text = path.read_text()
    assert "> Who designed it?" in text and "> Who kept it?" in text and "- page 1" in text


def test_a_chat_made_with_another_model_says_so_and_offers_a_new_chat(qtbot, make_window, document):
    backend = FakeBackend(step_s=0.002)
    window = make_window(backend)
    open_and_wait(qtbot, window, document)
    ask_and_wait(qtbot, window, "Who designed it?")
    backend.chat_store[window.current_chat].model = "OtherLM-7B"
    window.new_chat()
    idle(qtbot, window)
    window.chat_list.list.item(1).setSelected(True)
    qtbot.waitUntil(lambda: window.chat_view.problem_bar.isVisible() and not window.controller.busy, timeout=5000)
    assert "OtherLM-7B" in window.chat_view.problem.text()
    old_key = window.current_chat
    window.chat_view.new_chat_button.click()
    qtbot.waitUntil(lambda: window.current_chat != old_key and not window.controller.busy, timeout=5000)
    assert not window.chat_view.cards and not window.chat_view.problem_bar.isVisible()


def test_the_chat_stays_usable_at_960_px(qtbot, make_window, document):
    window = make_window()
    window.resize(960, 640)
    open_and_wait(qtbot, window, document)
    ask_and_wait(qtbot, window, "Who designed the lighthouse?")
    qtbot.wait(50)
    assert window.width() == 960
    view = window.chat_view
    assert view.width() >= 480 and not view.horizontalScrollBar().isVisible()
    for widget in (window.prompt, window.send_button, window.stop_button, window.chat_list.new_button,
                   window.chat_list.export_button, view.last_card.regenerate_button, view.questions[0].edit_button):
        assert widget.isVisible() and widget.width() >= min(widget.sizeHint().width(), 40), widget


@pytest.mark.slow
def test_a_chat_survives_closing_the_window_with_the_real_engine(qtbot, tmp_path, config_dir, tiny_model_dir,
                                                                  document):
    from app.backend import RealBackend

    settings = AppSettings().with_changes(model=str(tiny_model_dir), attention="exact", n_sink=4, n_window=16,
                                          max_new_tokens=4, folder=str(tmp_path / "data"),
                                          gpu_runtime_auto_download=False)

    def open_window() -> MainWindow:
        window = MainWindow(RealBackend(), settings, config_dir / "settings.json", gpu_runtime=None)
        qtbot.addWidget(window)
        window.show()
        qtbot.waitUntil(lambda: window.model_info is not None and not window.controller.busy, timeout=60_000)
        return window

    window = open_window()
    try:
        open_and_wait(qtbot, window, document)
        for question in ("Who designed it?", "And when?"):
            ask(qtbot, window, question)
            qtbot.waitUntil(lambda: not window.controller.busy and window.chat_view.last_card.done, timeout=60_000)
        assert not window.error_banner.isVisible(), window.error_banner.message
    finally:
        window.controller.shutdown()
    window.close()
    again = open_window()
    try:
        assert [entry.title for entry in again.library.entries()] == ["lighthouse"]
        again.show_document(again.library.entries()[0].id)
        qtbot.waitUntil(lambda: again.chat_view is not None and not again.controller.busy, timeout=60_000)
        assert [b.question for b in again.chat_view.questions] == ["Who designed it?", "And when?"]
        ask(qtbot, again, "Why?")
        qtbot.waitUntil(lambda: not again.controller.busy and len(again.chat_view.cards) == 3
                        and again.chat_view.last_card.done, timeout=60_000)
        assert not again.error_banner.isVisible(), again.error_banner.message
    finally:
        again.controller.shutdown()


def test_the_real_backend_keeps_chats_across_settings_changes_and_model_reloads(tiny_model_dir, document, tmp_path):
    from dataclasses import replace

    from app.backend import CancelToken, EngineConfig, LibraryConfig, RealBackend

    backend = RealBackend()
    config = EngineConfig(model=str(tiny_model_dir), attention="exact", n_sink=4, n_window=16, max_new_tokens=4)
    library = LibraryConfig(folder=str(tmp_path / "data"))
    backend.load_model(config, library, lambda _: None)
    doc_id = backend.open_document(str(document), lambda _: None, CancelToken()).id

    def ask_in(key: str, question: str) -> None:
        backend.ask(doc_id, key, question, lambda _: None, lambda _: None, CancelToken())

    stored = backend.open_chat(doc_id, None).key
    ask_in(stored, "Who designed it?")
    backend.store = backend.sessions[doc_id].store = None  # as if the library had failed: a chat in memory only
    memory_only = backend.open_chat(doc_id, None).key
    ask_in(memory_only, "When?")
    session = backend.sessions[doc_id]
    backend.apply_settings(replace(config, top_k=8), library)  # a search setting: the session answers on with it
    assert backend.sessions[doc_id] is session and session.config.top_k == 8
    backend.apply_settings(replace(config, top_k=8, n_window=32), library)  # another index: sessions made again
    assert not backend.live_chats  # no chat holds on to the old session (and its cache)
    assert [t.question for t in backend.open_chat(doc_id, memory_only).turns] == ["When?"]
    ask_in(stored, "And then?")
    backend.load_model(replace(config, dtype="float32"), library, lambda _: None)  # the model is loaded again
    assert [t.question for t in backend.open_chat(doc_id, stored).turns] == ["Who designed it?", "And then?"]
    assert {c.key for c in backend.chats(doc_id)} == {stored, memory_only}
    backend.forget(doc_id)
    assert not backend.live_chats and not backend.unsaved
