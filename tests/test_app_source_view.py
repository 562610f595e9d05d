"""A cited source opens on its page (pytest-qt, offscreen, fake backend): the PDF page rendered with the passage
highlighted, zoom and page navigation, a text file's passage in its context, a vanished file's message; and an answer
whose number or name its sources lack shows the cited text to compare."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

import pymupdf
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication

from app.fake_backend import FakeBackend
from app.main_window import MainWindow
from app.widgets.chat_view import CitationItem

CITED = "The lighthouse keeper Anders Brekke first lit the lamp in 1865, after two winters of work."
BEFORE = " ".join(f"Puffins nest on cliff number {i} of the island." for i in range(14))
AFTER = " ".join(f"The reef number {i} is hidden at high tide." for i in range(14))
PAGES = ["The island of Varnholm lies at the mouth of the fjord.", f"{BEFORE} {CITED} {AFTER}",
         "The reef called the Grey Teeth is hidden at high tide."]
TEXT = ("# Varnholm\n\n" + "\n\n".join(f"Paragraph {i} says nothing about the light." for i in range(40))
        + f"\n\n{CITED}\n\n" + "\n\n".join(f"Later paragraph {i} is about puffins." for i in range(40)) + "\n")
QUESTION = "Which keeper first lit the lamp?"


@pytest.fixture
def make_source_window(make_window):
    """A 1400 x 900 window whose fake answers (`answer`) cite the document."""
    return lambda answer=None: make_window(FakeBackend(step_s=0.002, **({"answer": answer} if answer else {})),
                                           size=(1400, 900))


@pytest.fixture
def pdf_path(tmp_path):
    path = tmp_path / "varnholm.pdf"
    pdf = pymupdf.open()
    for text in PAGES:
        pdf.new_page().insert_textbox(pymupdf.Rect(72, 72, 540, 760), text, fontsize=11)
    pdf.save(path)
    return path


@pytest.fixture
def text_path(tmp_path):
    path = tmp_path / "varnholm.md"
    path.write_text(TEXT, encoding="utf-8")
    return path


def answered(qtbot, window: MainWindow, path, question: str = QUESTION):
    """Open `path`, ask `question`, wait for the answer; its card."""
    window.open_files([str(path)])
    qtbot.waitUntil(lambda: not window.controller.busy and window.chat_view is not None, timeout=5000)
    window.prompt.setPlainText(question)
    window.send()
    qtbot.waitUntil(lambda: window.chat_view.last_card.done and not window.controller.busy, timeout=5000)
    return window.chat_view.last_card


def click_source(qtbot, window: MainWindow, card) -> None:
    item = next(item for item in card.findChildren(CitationItem) if "Brekke" in item.passage.text)
    qtbot.mouseClick(item.button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.source_view.isVisible(), timeout=2000)
    QApplication.processEvents()


def intersects(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def yellow(view, rect) -> float:
    """The share of the pixels inside `rect` (PDF points) of the page as shown that are highlighter-yellow."""
    zoom = view.image.width() / view.pdf.page_size(view.page)[0]
    pixels = [view.image.pixelColor(x, y) for x in range(int(rect[0] * zoom) + 1, int(rect[2] * zoom) - 1)
              for y in range(int(rect[1] * zoom) + 1, int(rect[3] * zoom) - 1)]
    assert pixels
    return sum(c.red() > 200 and c.green() > 160 and c.blue() < 90 for c in pixels) / len(pixels)


def test_a_clicked_source_opens_its_pdf_page_with_the_cited_text_highlighted(qtbot, make_source_window, pdf_path):
    window = make_source_window()
    card = answered(qtbot, window, pdf_path)
    click_source(qtbot, window, card)
    view = window.source_view
    assert view.page == 2 and view.page_label.text() == "Page 2 of 3" and view.image is not None
    passage = view.passage
    assert CITED in " ".join(passage.text.split()) and "number 0 of" not in passage.text  # part of the page
    with pymupdf.open(pdf_path) as pdf:
        page = pdf[1]
        cited = [tuple(r) for r in page.search_for("Anders Brekke first lit the lamp")]
        cited += [tuple(r) for r in page.search_for("after two winters of work")]
        elsewhere = [tuple(r) for r in page.search_for("Puffins nest on cliff number 0 of")]
    assert cited and elsewhere
    assert all(any(intersects(h, c) for h in view.highlights) for c in cited)
    assert not any(intersects(h, e) for h in view.highlights for e in elsewhere)
    assert all(yellow(view, c) > 0.3 for c in cited)  # painted on the page as shown
    assert yellow(view, elsewhere[0]) == 0
    assert view.title.text() == "varnholm"  # the document's title
    # its score is its part of what the answer drew beyond the question-agnostic baseline, and says so
    assert f"page 2, {passage.score:.0%} of what this answer drew from the document beyond a plain summary" in \
        view.caption.text()


def test_the_pdf_page_zooms_and_pages_turn(qtbot, make_source_window, pdf_path):
    window = make_source_window()
    click_source(qtbot, window, answered(qtbot, window, pdf_path))
    view = window.source_view
    fitted = view.image.width()
    assert fitted <= view.page_area.viewport().width() - 2 * 16  # fits the panel's width
    view.zoom_in_button.click()
    assert view.image.width() > fitted * 1.2 and not view.fit
    qtbot.keyClick(view.page_area, Qt.Key.Key_Minus, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClick(view.page_area, Qt.Key.Key_Minus, Qt.KeyboardModifier.ControlModifier)
    smaller = view.image.width()
    assert smaller < fitted * 0.9 and view.zoom_label.text() == f"{view.zoom:.0%}"
    wheel = QWheelEvent(QPointF(50, 50), QPointF(50, 50), QPoint(0, 0), QPoint(0, 120), Qt.MouseButton.NoButton,
                        Qt.KeyboardModifier.ControlModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(view.page_area.viewport(), wheel)
    assert view.image.width() > smaller
    view.fit_button.click()
    assert abs(view.image.width() - fitted) <= 2 and view.fit
    view.next_button.click()
    assert view.page == 3 and not view.next_button.isEnabled() and view.cited_button.isVisible()
    assert all(yellow(view, h) == 0 for h in view.highlights)  # the highlight belongs to page 2
    view.cited_button.click()
    assert view.page == 2 and all(yellow(view, h) > 0.3 for h in view.highlights)


def test_a_text_file_shows_the_passage_highlighted_in_its_context(qtbot, make_source_window, text_path):
    window = make_source_window()
    click_source(qtbot, window, answered(qtbot, window, text_path))
    view = window.source_view
    assert view.stack.currentWidget() is view.text_view and not view.page_label.isVisible()
    assert view.highlighted_text == CITED
    shown = view.text_view.toPlainText()
    assert "Paragraph 39 says nothing" in shown and "Later paragraph 0 is about puffins" in shown
    cursor_top = view.text_view.cursorRect().top()
    assert 0 <= cursor_top < view.text_view.viewport().height()  # scrolled to the passage
    assert view.text_view.verticalScrollBar().value() > 0


def test_in_a_640_px_window_the_library_steps_aside_for_the_source_and_comes_back(qtbot, make_source_window, text_path):
    window = make_source_window()
    window.resize(640, 480)
    click_source(qtbot, window, answered(qtbot, window, text_path))
    chat = window.chat_view
    assert not window.library_side.isVisible()
    assert not chat.horizontalScrollBar().isVisible() and chat.widget().width() <= chat.viewport().width()
    window.source_view.close_source()
    assert window.library_side.isVisible() and not window.source_view.isVisible()


def test_a_vanished_file_says_so_and_still_shows_the_cited_text(qtbot, make_source_window, pdf_path, tmp_path):
    window = make_source_window()
    card = answered(qtbot, window, pdf_path)
    pdf_path.rename(tmp_path / "moved.pdf")
    click_source(qtbot, window, card)
    view = window.source_view
    assert view.problem.isVisible()
    message = view.problem.text()
    assert str(pdf_path) in message and "moved, renamed or deleted" in message and "Ctrl+O" in message
    assert view.stack.currentWidget() is view.text_view and "Anders Brekke" in view.highlighted_text
    view.close_button.click()
    assert not view.isVisible()


def test_an_answer_with_a_year_its_sources_lack_shows_the_cited_text_to_compare(qtbot, make_source_window, text_path):
    window = make_source_window(answer="Anders Brekke first lit the lamp in 1863.")
    card = answered(qtbot, window, text_path)
    qtbot.waitUntil(lambda: card.grounding is not None and card.grounding.isVisible(), timeout=2000)
    assert "1863" in card.grounding.heading.text() and "does not appear in the cited passages" in \
        card.grounding.heading.text()
    [quote] = card.grounding.quotes
    assert "1865" in quote.text() and "Anders Brekke first lit" in quote.text()


def test_a_grounded_answer_shows_no_notice(qtbot, make_source_window, text_path):
    window = make_source_window(answer="Anders Brekke first lit the lamp in 1865.")
    card = answered(qtbot, window, text_path)
    assert card.citations and card.grounding is None


def test_the_cited_text_in_the_notice_is_escaped(qtbot, make_source_window, tmp_path):
    path = tmp_path / "markup.md"
    path.write_text("Intro.\n\nThe keeper <b>Anders Brekke</b> lit the lamp in 1865 <img src=x>.\n", encoding="utf-8")
    window = make_source_window(answer="Anders Brekke lit the lamp in 1863.")
    card = answered(qtbot, window, path)
    [quote] = card.grounding.quotes
    assert "&lt;b&gt;Anders Brekke&lt;/b&gt;" in quote.text() and "<img" not in quote.text()


def test_the_sample_typeset_as_a_pdf_reads_back_with_its_title_and_text(tmp_path):
    from app.backend import read_document
    from app.sample.sample_pdf import write_sample_pdf

    document = read_document(write_sample_pdf(tmp_path / "sample.pdf"))
    assert document.title == "The Lighthouse at Varnholm" and document.pages >= 2
    assert "The first head keeper of Varnholm was Anders Brekke" in " ".join(document.text.split())
