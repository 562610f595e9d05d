"""One document's chat: questions, streaming Markdown answers, copy / regenerate, and citations."""

from __future__ import annotations

import math
import re

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from app.backend import Answer, Passage

PARAGRAPHS = re.compile(r"\n\s*\n")
RENDER_INTERVAL_MS = 40  # coalesce streamed tokens: re-render the Markdown at most 25 times a second


class MarkdownView(QTextBrowser):
    """A read-only Markdown view as tall as its content (the chat scrolls, not the view)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setOpenExternalLinks(True)
        self.setAcceptDrops(False)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.viewport().setAutoFillBackground(False)
        self.setStyleSheet("QTextBrowser { background: transparent; }")
        self.document().setDocumentMargin(2)
        self.document().documentLayout().documentSizeChanged.connect(self._fit_height)
        self._fit_height()

    def _fit_height(self, *_args) -> None:
        height = math.ceil(self.document().size().height()) + 2 * self.frameWidth() + 2
        self.setFixedHeight(max(height, 22))

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit_height()


class CitationItem(QWidget):
    """One cited passage: a link-like button (page, share, first words); click shows the passage."""

    clicked = Signal(object)  # Passage

    def __init__(self, passage: Passage, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.passage = passage
        preview = " ".join(passage.text.split())
        preview = preview if len(preview) <= 90 else preview[:88].rstrip() + "…"
        self.button = QPushButton(f"p. {passage.page}  ·  {passage.score:.0%}   “{preview}”")
        self.button.setObjectName("citationButton")
        self.button.setToolTip(f"Show the passage on page {passage.page}")
        self.button.setCheckable(True)
        self.button.setFlat(True)
        self.button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.button.toggled.connect(self._toggle)
        self.text = QLabel(f"<b>Page {passage.page}</b> — characters {passage.start:,}–{passage.end:,}<br>"
                           + "<br><br>".join(_escape(" ".join(p.split())) for p in PARAGRAPHS.split(passage.text)))
        self.text.setObjectName("citationText")
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.text.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.button)
        layout.addWidget(self.text)

    def _toggle(self, shown: bool) -> None:
        self.text.setVisible(shown)
        if shown:
            self.clicked.emit(self.passage)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class AnswerCard(QFrame):
    """An answer: streamed Markdown, a footer (copy, regenerate, numbers) and its sources."""

    regenerate_requested = Signal()
    passage_clicked = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("answerCard")
        self.text = ""
        self.done = False
        self.view = MarkdownView()
        self.view.setPlaceholderText("…")
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("Copy the answer as Markdown")
        self.copy_button.clicked.connect(self.copy)
        self.regenerate_button = QPushButton("Regenerate")
        self.regenerate_button.setToolTip("Answer the same question again (Ctrl+R)")
        self.regenerate_button.clicked.connect(self.regenerate_requested)
        for button in (self.copy_button, self.regenerate_button):
            button.setFlat(True)
            button.setEnabled(False)
        self.info = QLabel()
        self.info.setObjectName("answerInfo")
        footer = QHBoxLayout()
        footer.setContentsMargins(0, 0, 0, 0)
        footer.addWidget(self.info, 1)
        footer.addWidget(self.copy_button)
        footer.addWidget(self.regenerate_button)
        self.sources = QWidget()
        self.sources_layout = QVBoxLayout(self.sources)
        self.sources_layout.setContentsMargins(0, 4, 0, 0)
        self.sources_layout.setSpacing(0)
        self.sources.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(14, 10, 14, 8)
        layout.setSpacing(4)
        layout.addWidget(self.view)
        layout.addWidget(self.sources)
        layout.addLayout(footer)
        self._render_timer = QTimer(self)
        self._render_timer.setSingleShot(True)
        self._render_timer.setInterval(RENDER_INTERVAL_MS)
        self._render_timer.timeout.connect(self._render)
        self.citations: tuple[Passage, ...] = ()
        self.question_holder: QWidget | None = None

    def append(self, text: str) -> None:
        self.text += text
        if not self._render_timer.isActive():
            self._render_timer.start()

    def _render(self) -> None:
        self.view.setMarkdown(self.text)

    def finish(self, answer: Answer | None = None, note: str = "") -> None:
        """Final render; `answer` brings the exact text, numbers and citations; `note` e.g. 'Stopped.'"""
        self._render_timer.stop()
        if answer is not None:
            self.text = answer.text or self.text
            self.info.setText(f"{answer.new_tokens:,} tokens · first token {answer.ttft_s:.1f} s · "
                              f"{answer.decode_tokens_per_s:.1f} tokens/s")
            self.set_citations(answer.citations)
        if note:
            self.info.setText(note)
        if not self.text.strip() and note:
            self.view.setPlaceholderText("(no answer)")
        self._render()
        self.done = True
        self.copy_button.setEnabled(bool(self.text.strip()))
        self.regenerate_button.setEnabled(True)

    def set_citations(self, citations: tuple[Passage, ...]) -> None:
        self.citations = tuple(citations)
        if not self.citations:
            return
        heading = QLabel("<b>Sources in the document</b>")
        heading.setObjectName("sourcesHeading")
        self.sources_layout.addWidget(heading)
        for passage in self.citations:
            item = CitationItem(passage)
            item.clicked.connect(self.passage_clicked)
            self.sources_layout.addWidget(item)
        self.sources.show()

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.text)
        self.info.setText("Copied to the clipboard.")


class ChatView(QScrollArea):
    """The conversation about one document, newest at the bottom."""

    regenerate_requested = Signal()
    passage_clicked = Signal(object)

    def __init__(self, doc_id: str, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.doc_id, self.title = doc_id, title
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setAcceptDrops(False)
        self.questions: list[str] = []
        self.cards: list[AnswerCard] = []
        body = QWidget()
        body.setObjectName("chatBody")
        self.column = QVBoxLayout(body)
        self.column.setContentsMargins(24, 16, 24, 16)
        self.column.setSpacing(10)
        self.intro = QLabel(f"<h3>{_escape(title)}</h3>Ask anything about this document: Folio reads all of it, "
                            "not snippets. Press Enter to send, Shift+Enter for a new line, Esc to stop.")
        self.intro.setObjectName("chatIntro")
        self.intro.setWordWrap(True)
        self.column.addWidget(self.intro)
        self.column.addStretch(1)
        self.setWidget(body)
        self.verticalScrollBar().rangeChanged.connect(self._follow)
        self._at_bottom = True
        self.verticalScrollBar().valueChanged.connect(self._remember_position)

    @property
    def last_card(self) -> AnswerCard | None:
        return self.cards[-1] if self.cards else None

    def add_question(self, question: str) -> AnswerCard:
        """Show `question` and an empty answer card that tokens stream into."""
        for card in self.cards:
            card.regenerate_button.setEnabled(False)
        bubble = QLabel(_escape(question).replace("\n", "<br>"))
        bubble.setObjectName("questionBubble")
        bubble.setWordWrap(True)
        bubble.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(bubble, 4)
        holder = QWidget()
        holder.setLayout(row)
        row.setContentsMargins(60, 0, 0, 0)
        card = AnswerCard()
        card.regenerate_requested.connect(self.regenerate_requested)
        card.passage_clicked.connect(self.passage_clicked)
        self.column.insertWidget(self.column.count() - 1, holder)
        self.column.insertWidget(self.column.count() - 1, card)
        card.question_holder = holder
        self.questions.append(question)
        self.cards.append(card)
        self._at_bottom = True
        return card

    def remove_last(self) -> str | None:
        """Take the last question and its answer away (for regenerate); returns the question."""
        if not self.cards:
            return None
        card = self.cards.pop()
        question = self.questions.pop()
        for widget in (card.question_holder, card):
            if widget is None:
                continue
            self.column.removeWidget(widget)
            widget.deleteLater()
        return question

    def clear_chat(self) -> None:
        while self.cards:
            self.remove_last()

    def _remember_position(self, value: int) -> None:
        bar = self.verticalScrollBar()
        self._at_bottom = value >= bar.maximum() - 8

    def _follow(self, _minimum: int, maximum: int) -> None:
        if self._at_bottom:
            self.verticalScrollBar().setValue(maximum)
