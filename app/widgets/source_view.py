"""The source viewer: a cited passage where it stands in its document. For a PDF, the page itself, rendered, with the
passage highlighted, zoomable (−, +, Fit width, Ctrl+wheel, Ctrl++ / Ctrl+−, Ctrl+0) and with page navigation; for
a text file, the passage highlighted in its surrounding text.

A side panel next to the chat rather than a dialog: the point is to read the answer and its source side by side, and
the panel stays while the user clicks one source after another. It reads the document from its stored path; a file
that has moved, vanished or changed gives a message naming the problem and the fix, above the cited text.
"""

from __future__ import annotations

import re

from PySide6.QtCore import QEvent, QObject, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QImage, QKeySequence, QPainter, QPixmap, QShortcut, QTextCursor
from PySide6.QtWidgets import (
    QFrame,
    QGraphicsDropShadowEffect,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QStackedWidget,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)

from app.backend import FolioError, Passage, PdfPages, is_pdf, text_excerpt
from app.widgets.text import source_share_words

ZOOM_STEP = 1.25
MIN_ZOOM, MAX_ZOOM = 0.25, 6.0  # pixels per PDF point
PAGE_MARGIN = 16  # pixels around the page in its scroll area
HIGHLIGHT = QColor(255, 212, 0)  # multiplied over the page, so the text under it stays dark
MARKER = QColor(232, 120, 0)  # the bar in the margin beside the highlighted lines
TEXT_HIGHLIGHT = QColor(255, 226, 92)
# a line end inside a paragraph: after a line of 40+ characters, before one that starts with a word
_SOFT_BREAK = re.compile(r"(?<=[^\n]{40})\n(?!\d+[.)]\s)(?=[^\W_]|[(\"'“‘])")


class SourceView(QFrame):
    """A side panel showing one cited passage in its document; `show_passage` fills it, × hides it."""

    closed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("sourceView")
        self.pdf: PdfPages | None = None
        self.path, self.passage = "", None
        self.page, self.zoom, self.fit = 1, 1.0, True
        self.highlights: list[tuple[float, float, float, float]] = []  # the passage on its page, in PDF points
        self.image: QImage | None = None  # the page as shown, highlight included
        self._scroll_targets = [0, 0]
        self._build()
        self._resize_timer = QTimer(self)
        self._resize_timer.setSingleShot(True)
        self._resize_timer.setInterval(60)
        self._resize_timer.timeout.connect(self._refit)
        for keys, slot in ((QKeySequence.StandardKey.ZoomIn, self.zoom_in), ("Ctrl+=", self.zoom_in),
                           (QKeySequence.StandardKey.ZoomOut, self.zoom_out), ("Ctrl+0", self.fit_width),
                           (QKeySequence.StandardKey.MoveToPreviousPage, self.previous_page),
                           (QKeySequence.StandardKey.MoveToNextPage, self.next_page)):
            shortcut = QShortcut(QKeySequence(keys), self)
            shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            shortcut.activated.connect(slot)

    def _build(self) -> None:
        self.title = QLabel()
        self.title.setObjectName("sourceTitle")
        self.title.setTextFormat(Qt.TextFormat.PlainText)
        self.title.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.close_button = self._button("×", "Close the source viewer", self.close_source)
        self.close_button.setObjectName("sourceClose")
        self.previous_button = self._button("◀", "The previous page (Page Up)", self.previous_page)
        self.next_button = self._button("▶", "The next page (Page Down)", self.next_page)
        self.page_label = QLabel()
        self.page_label.setObjectName("sourcePage")
        self.cited_button = self._button("Back to the cited page", "Show the page the answer cites again",
                                         self.show_cited_page)
        self.zoom_out_button = self._button("−", "Zoom out (Ctrl+−, Ctrl+wheel)", self.zoom_out)
        self.zoom_label = QLabel()
        self.zoom_label.setObjectName("sourceZoom")
        self.zoom_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.zoom_label.setMinimumWidth(44)
        self.zoom_in_button = self._button("+", "Zoom in (Ctrl++, Ctrl+wheel)", self.zoom_in)
        self.fit_button = self._button("Fit width", "Fit the page to the panel's width (Ctrl+0)", self.fit_width)
        header = QHBoxLayout()
        header.addWidget(self.title, 1)
        header.addWidget(self.close_button)
        tools = QHBoxLayout()
        for widget in (self.previous_button, self.page_label, self.next_button, self.cited_button):
            tools.addWidget(widget)
        tools.addStretch(1)
        for widget in (self.zoom_out_button, self.zoom_label, self.zoom_in_button, self.fit_button):
            tools.addWidget(widget)
        self.problem = QLabel()
        self.problem.setObjectName("sourceProblem")
        self.problem.setTextFormat(Qt.TextFormat.PlainText)
        self.problem.setWordWrap(True)
        self.problem.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.problem.hide()
        self.canvas = QLabel()  # the rendered page
        self.canvas.setObjectName("sourceCanvas")
        self.canvas.setAlignment(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop)
        self.canvas.setContentsMargins(PAGE_MARGIN, PAGE_MARGIN, PAGE_MARGIN, PAGE_MARGIN)
        shadow = QGraphicsDropShadowEffect(self.canvas)
        shadow.setBlurRadius(14)
        shadow.setOffset(0, 2)
        shadow.setColor(QColor(0, 0, 0, 90))
        self.canvas.setGraphicsEffect(shadow)
        self.page_area = QScrollArea()
        self.page_area.setObjectName("sourcePageArea")
        self.page_area.setWidgetResizable(True)
        self.page_area.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        self.page_area.setWidget(self.canvas)
        self.page_area.viewport().installEventFilter(self)
        self.text_view = QPlainTextEdit()  # plain text: a document's text never becomes markup
        self.text_view.setObjectName("sourceText")
        self.text_view.setReadOnly(True)
        self.text_view.document().setDocumentMargin(10)
        self.text_view.viewport().installEventFilter(self)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.page_area)
        self.stack.addWidget(self.text_view)
        self.caption = QLabel()
        self.caption.setObjectName("sourceCaption")
        self.caption.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 8)
        layout.setSpacing(6)
        layout.addLayout(header)
        layout.addLayout(tools)
        layout.addWidget(self.problem)
        layout.addWidget(self.stack, 1)
        layout.addWidget(self.caption)
        self.setMinimumWidth(280)  # beside a chat of 320+ px in a 640 px window

    def _button(self, text: str, tip: str, slot) -> QPushButton:
        button = QPushButton(text)
        button.setToolTip(tip)
        button.clicked.connect(slot)
        if len(text) == 1:
            button.setFixedWidth(32)
        return button

    # -- what is shown -------------------------------------------------------------------------------
    def show_passage(self, path: str, title: str, passage: Passage) -> None:
        """Show `passage` of the document stored at `path` (its page for a PDF, its context for a text file)."""
        if self.pdf is not None and path != self.path:
            self._close_pdf()
        self.path, self.passage = path, passage
        self.title.setText(title or path)
        self.title.setToolTip(path)
        self.problem.hide()
        where = f"page {passage.page}, " if is_pdf(path) else ""
        self.caption.setText(f"Highlighted: the passage the answer cites ({where}"
                             f"{source_share_words(passage.score)}).")
        if is_pdf(path):
            self._show_pdf()
        else:
            self._show_text()
        self.show()

    def _show_pdf(self) -> None:
        try:
            if self.pdf is None:
                self.pdf = PdfPages(self.path)
            self.highlights = self.pdf.passage_rects(self.passage.page, self.passage.text)
        except FolioError as error:
            self._close_pdf()
            self._show_problem(str(error))
            return
        if not self.highlights:
            self._say(f"The cited text was not found on page {self.passage.page} of this file: it may have changed "
                      "since Folio read it. Open it again (Ctrl+O) to ask about the current version.")
        self._set_tools(pdf=True)
        self.stack.setCurrentWidget(self.page_area)
        self.page = self.passage.page
        self.fit = True
        self._render(scroll_to_passage=True)
        self.page_area.setFocus()

    def _show_text(self) -> None:
        self._set_tools(pdf=False)
        passage = self.passage
        try:
            excerpt = text_excerpt(self.path, passage.start, passage.end, passage.text)
        except FolioError as error:
            self._show_problem(str(error))
            return
        lead = "…\n" if excerpt.cut_before else ""
        text = lead + reflow(excerpt.text) + ("\n…" if excerpt.cut_after else "")
        self._show_plain(text, len(lead) + excerpt.start, len(lead) + excerpt.end)

    def _show_problem(self, message: str) -> None:
        """The file cannot show the passage: say why, and show the cited text as Folio read it."""
        self._say(message)
        self._set_tools(pdf=False)
        self.caption.setText(f"The cited text (page {self.passage.page}), as Folio read it.")
        self._show_plain(self.passage.text, 0, len(self.passage.text))

    def _say(self, message: str) -> None:
        self.problem.setText(message)
        self.problem.show()

    def _show_plain(self, text: str, start: int, end: int) -> None:
        self.stack.setCurrentWidget(self.text_view)
        self.text_view.setPlainText(text)
        cursor = QTextCursor(self.text_view.document())
        cursor.setPosition(_utf16(text, start))
        cursor.setPosition(_utf16(text, end), QTextCursor.MoveMode.KeepAnchor)
        selection = QTextEdit.ExtraSelection()
        selection.cursor = cursor
        selection.format.setBackground(TEXT_HIGHLIGHT)
        selection.format.setForeground(QColor("black"))
        self.text_view.setExtraSelections([selection])
        self._scroll_to_span()
        QTimer.singleShot(0, self._scroll_to_span)  # again once the panel has its width (the text wraps to it)
        self.text_view.setFocus()

    def _scroll_to_span(self) -> None:
        """The highlighted span in view: its start a little above the middle, its end too where it fits."""
        selections = self.text_view.extraSelections()
        if not selections:
            return
        span = selections[0].cursor
        cursor = QTextCursor(span)
        cursor.setPosition(span.selectionEnd())
        self.text_view.setTextCursor(cursor)
        self.text_view.ensureCursorVisible()
        cursor.setPosition(span.selectionStart())
        self.text_view.setTextCursor(cursor)
        self.text_view.ensureCursorVisible()

    def _set_tools(self, pdf: bool) -> None:
        for widget in (self.previous_button, self.page_label, self.next_button):
            widget.setVisible(pdf)
        for widget in (self.zoom_out_button, self.zoom_label, self.zoom_in_button, self.fit_button):
            widget.setEnabled(True)
        self.cited_button.hide()
        self.fit_button.setText("Fit width" if pdf else "Reset")
        self.fit_button.setToolTip("Fit the page to the panel's width (Ctrl+0)" if pdf else
                                   "Show the text at its normal size (Ctrl+0)")
        if not pdf:
            self.zoom_label.setText("")

    @property
    def highlighted_text(self) -> str:
        """The text the text view highlights (plain; '' when none)."""
        selections = self.text_view.extraSelections()
        return selections[0].cursor.selectedText().replace("\u2029", "\n") if selections else ""

    # -- pages and zoom ------------------------------------------------------------------------------
    def show_page(self, page: int) -> None:
        if self.pdf is None or not 1 <= page <= self.pdf.pages:
            return
        self.page = page
        cited = page == self.passage.page
        self._render(scroll_to_passage=cited)
        if not cited:
            self.page_area.verticalScrollBar().setValue(0)

    def previous_page(self) -> None:
        self.show_page(self.page - 1)

    def next_page(self) -> None:
        self.show_page(self.page + 1)

    def show_cited_page(self) -> None:
        if self.passage is not None:
            self.show_page(self.passage.page)

    def zoom_in(self) -> None:
        self._zoom_by(ZOOM_STEP)

    def zoom_out(self) -> None:
        self._zoom_by(1 / ZOOM_STEP)

    def _zoom_by(self, factor: float) -> None:
        if self.stack.currentWidget() is self.text_view:
            self.text_view.zoomIn(1 if factor > 1 else -1)
            return
        if self.pdf is not None:
            self.set_zoom(self.zoom * factor)

    def set_zoom(self, zoom: float) -> None:
        """Show the page at `zoom` pixels per PDF point (kept within 25%–600%); leaves fit-width mode."""
        self.fit = False
        self._rezoom(min(MAX_ZOOM, max(MIN_ZOOM, zoom)))

    def fit_width(self) -> None:
        if self.stack.currentWidget() is self.text_view:
            self.text_view.setFont(self.font())
            return
        if self.pdf is not None:
            self.fit = True
            self._rezoom(self._fit_zoom())

    def _rezoom(self, zoom: float) -> None:
        """Render at `zoom`, keeping the middle of the view where it was on the page."""
        bars = self.page_area.horizontalScrollBar(), self.page_area.verticalScrollBar()
        viewport = self.page_area.viewport()
        middles = [(bar.value() + half) / self.zoom for bar, half in zip(bars, (viewport.width() / 2,
                                                                               viewport.height() / 2), strict=True)]
        self.zoom = zoom
        self._render()
        self._scroll_targets = [int(middle * zoom - half) for middle, half in
                                zip(middles, (viewport.width() / 2, viewport.height() / 2), strict=True)]
        QTimer.singleShot(0, self._scroll_after_zoom)  # once the scroll area has taken the new page size

    def _scroll_after_zoom(self) -> None:
        bars = self.page_area.horizontalScrollBar(), self.page_area.verticalScrollBar()
        for bar, value in zip(bars, self._scroll_targets, strict=True):
            bar.setValue(value)

    def _fit_zoom(self) -> float:
        width, _ = self.pdf.page_size(self.page)
        self.layout().activate()  # the panel may have just been shown or resized
        scroll_bar = self.page_area.verticalScrollBar().sizeHint().width()
        room = self.page_area.viewport().width() - 2 * PAGE_MARGIN - scroll_bar
        return min(MAX_ZOOM, max(MIN_ZOOM, room / max(width, 1.0)))

    def _render(self, scroll_to_passage: bool = False) -> None:
        if self.pdf is None:
            return
        if self.fit:
            self.zoom = self._fit_zoom()
        ratio = self.devicePixelRatioF()
        try:
            page = self.pdf.render(self.page, self.zoom * ratio)
        except FolioError as error:
            self._say(str(error))
            return
        image = QImage(page.samples, page.width, page.height, page.stride, QImage.Format.Format_RGB888)
        image = image.convertToFormat(QImage.Format.Format_ARGB32_Premultiplied)  # a copy that owns its pixels
        if self.page == self.passage.page:
            _paint_highlights(image, self.highlights, page.zoom)
        self.image = image
        pixmap = QPixmap.fromImage(image)
        pixmap.setDevicePixelRatio(ratio)
        self.canvas.setPixmap(pixmap)
        self.page_label.setText(f"Page {self.page} of {self.pdf.pages}")
        self.previous_button.setEnabled(self.page > 1)
        self.next_button.setEnabled(self.page < self.pdf.pages)
        self.cited_button.setVisible(self.page != self.passage.page)
        self.zoom_label.setText(f"{self.zoom:.0%}")
        self.zoom_out_button.setEnabled(self.zoom > MIN_ZOOM + 1e-6)
        self.zoom_in_button.setEnabled(self.zoom < MAX_ZOOM - 1e-6)
        if scroll_to_passage and self.highlights:
            QTimer.singleShot(0, self._scroll_to_passage)

    def _scroll_to_passage(self) -> None:
        top = min(y0 for _, y0, _, _ in self.highlights) * self.zoom + PAGE_MARGIN
        self.page_area.verticalScrollBar().setValue(max(0, int(top - self.page_area.viewport().height() / 4)))

    def _refit(self) -> None:
        if self.fit and self.pdf is not None and self.isVisible() and abs(self._fit_zoom() - self.zoom) > 0.005:
            self._render()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if self.fit:
            self._resize_timer.start()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        """Ctrl+wheel zooms the page (or the text) instead of scrolling."""
        if event.type() == QEvent.Type.Wheel and event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            delta = event.angleDelta().y()
            if delta:
                self.zoom_in() if delta > 0 else self.zoom_out()
            return True
        return super().eventFilter(watched, event)

    def close_source(self) -> None:
        self.hide()
        self._close_pdf()
        self.closed.emit()

    def _close_pdf(self) -> None:
        if self.pdf is not None:
            self.pdf.close()
            self.pdf = None


def _paint_highlights(image: QImage, rects: list[tuple[float, float, float, float]], zoom: float) -> None:
    """Paint `rects` (PDF points) on `image` (rendered at `zoom` pixels per point): a highlighter's yellow over each
    line and a bar in the margin beside them."""
    if not rects:
        return
    painter = QPainter(image)
    painter.setCompositionMode(QPainter.CompositionMode.CompositionMode_Multiply)
    pad = 1.5 * zoom
    for x0, y0, x1, y1 in rects:
        painter.fillRect(QRectF(x0 * zoom - pad, y0 * zoom, (x1 - x0) * zoom + 2 * pad, (y1 - y0) * zoom), HIGHLIGHT)
    painter.setCompositionMode(QPainter.CompositionMode.CompositionMode_SourceOver)
    left = min(x0 for x0, _, _, _ in rects) * zoom
    top, bottom = min(r[1] for r in rects) * zoom, max(r[3] for r in rects) * zoom
    painter.fillRect(QRectF(max(0.0, left - 8 * zoom), top, 2.5 * zoom, bottom - top), MARKER)
    painter.end()


def reflow(text: str) -> str:
    """`text` with the line ends inside its paragraphs turned into spaces (hard-wrapped text reads badly when the
    panel wraps it again); lists, headings, indented and short lines keep theirs. Same length, so offsets hold."""
    return _SOFT_BREAK.sub(" ", text)


def _utf16(text: str, index: int) -> int:
    """Qt's position (UTF-16 code units) of Python's text[index]."""
    return len(text[:index].encode("utf-16-le")) // 2
