"""The library panel in the window (fake backend, offscreen): a row's size follows its cache when the cache is
rebuilt, and clicking a row neither moves the rows nor loses the click."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt

from app.backend import format_bytes
from tests import test_app_gui as gui

document = gui.document  # the window's document fixture
ask, open_and_wait = gui.ask, gui.open_and_wait

SIZE = 4  # the library panel's column


def row_text(window, doc_id: str, column: int) -> str:
    tree = window.library_panel.tree
    rows = window.library_panel.rows()
    return tree.topLevelItem(rows.index(doc_id)).text(column)


@pytest.mark.parametrize("change", [{"n_window": 1024}, {"kv_dtype": "float32"}], ids=["index", "kv"])
def test_the_size_column_shows_the_new_size_after_a_rebuild(qtbot, make_window, document, change):
    window = make_window()
    backend = window.controller.worker.backend
    open_and_wait(qtbot, window, document)
    doc_id = window.current_doc
    before = backend.stored[doc_id].cache_bytes
    assert row_text(window, doc_id, SIZE) == format_bytes(before)
    window.apply_settings(window.settings.with_changes(**change))
    qtbot.waitUntil(lambda: window.model_info is not None and not window.controller.busy, timeout=5000)
    ask(qtbot, window, "Who designed the lighthouse?")  # the document is read (or indexed) again first
    qtbot.waitUntil(lambda: backend.stored[doc_id].cache_bytes != before and not window.controller.busy,
                    timeout=5000)
    after = backend.stored[doc_id].cache_bytes
    qtbot.waitUntil(lambda: row_text(window, doc_id, SIZE) == format_bytes(after), timeout=5000)
    assert row_text(window, doc_id, 3) == "cached"


def test_clicking_a_row_keeps_the_order_and_selects_that_document(qtbot, make_window, document, tmp_path):
    window = make_window()
    second = tmp_path / "puffins.md"
    second.write_text("# Puffins\n\nPuffins nest on the northern cliffs of Varnholm in summer.\n", encoding="utf-8")
    open_and_wait(qtbot, window, document)
    open_and_wait(qtbot, window, second)
    window.apply_settings(window.settings.with_changes(model="another"))  # every document must be opened again
    qtbot.waitUntil(lambda: window.model_info is not None and not window.controller.busy, timeout=5000)
    panel = window.library_panel
    order = panel.rows()
    clicked = order[-1]  # the least recently used: opening it makes it the most recently used
    tree = panel.tree
    qtbot.mouseClick(tree.viewport(), Qt.MouseButton.LeftButton,
                     pos=tree.visualItemRect(tree.topLevelItem(len(order) - 1)).center())
    qtbot.waitUntil(lambda: window.current_doc == clicked and not window.controller.busy, timeout=5000)
    qtbot.waitUntil(lambda: window.library.get(clicked).last_used == max(e.last_used for e in window.library.entries()),
                    timeout=5000)
    assert panel.rows() == order
    assert panel.current_id() == clicked
