"""One chat about a document: questions (each with Edit), streaming Markdown answers with Copy, Regenerate and ←/→
between answer versions, and citations."""

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

from app.backend import Answer, ChatState, Passage
from app.widgets.grounding_notice import GroundingNotice, grounding_notice
from app.widgets.text import rich_text

PARAGRAPHS = re.compile(r"\n\s*\n")
RENDER_INTERVAL_MS = 40  # coalesce streamed tokens: re-render the Markdown at most 25 times a second
BUTTON_PADDING = 12  # pixels each side of a citation button's text (the theme's padding and a margin)
NOTE_MS = 2500  # how long "Copied to the clipboard." stands in for the answer's numbers


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
        self.button_text = f"p. {passage.page}  ·  {passage.score:.0%}   “{preview}”"
        self.button = QPushButton(self.button_text)
        self.button.setObjectName("citationButton")
        self.button.setToolTip(f"Show the passage on page {passage.page}")
        self.button.setCheckable(True)
        self.button.setFlat(True)
        # Ignored: the button takes the card's width, not its text's, so a narrow window does not scroll sideways
        self.button.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.button.setMinimumWidth(120)
        self.button.toggled.connect(self._toggle)
        self.text = QLabel(f"<b>Page {passage.page}</b> — characters {passage.start:,}–{passage.end:,}<br>"
                           + "<br><br>".join(rich_text(" ".join(p.split())) for p in PARAGRAPHS.split(passage.text)))
        self.text.setObjectName("citationText")
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.text.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.button)
        layout.addWidget(self.text)

    def resizeEvent(self, event) -> None:
        """The button's text ends in "…" where the card is narrower than it (not cut off mid-letter)."""
        super().resizeEvent(event)
        room = self.button.width() - 2 * BUTTON_PADDING
        self.button.setText(self.button.fontMetrics().elidedText(self.button_text, Qt.TextElideMode.ElideRight, room))

    def _toggle(self, shown: bool) -> None:
        self.text.setVisible(shown)
        if shown:
            self.clicked.emit(self.passage)


class AnswerCard(QFrame):
    """An answer: streamed Markdown, a footer (versions, copy, regenerate, numbers) and its sources."""

    regenerate_requested = Signal()
    passage_clicked = Signal(object)
    version_requested = Signal(int)  # 0-based answer version to continue from

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
        self.previous_button = QPushButton("←")
        self.previous_button.setToolTip("The previous answer to this question")
        self.next_button = QPushButton("→")
        self.next_button.setToolTip("The next answer to this question")
        self.version_label = QLabel()
        self.version_label.setObjectName("answerVersion")
        self.previous_button.clicked.connect(lambda: self.version_requested.emit(self.version - 1))
        self.next_button.clicked.connect(lambda: self.version_requested.emit(self.version + 1))
        for button in (self.copy_button, self.regenerate_button, self.previous_button, self.next_button):
            button.setFlat(True)
            button.setEnabled(False)
        for button in (self.previous_button, self.next_button):
            button.setFixedWidth(28)
        self.version, self.versions = 0, 1
        self._show_versions()
        self.info = QLabel()
        self.info.setObjectName("answerInfo")
        self.info.setWordWrap(True)
        footer = QHBoxLayout()
        footer.setContentsMargins(0, 0, 0, 0)
        footer.addWidget(self.previous_button)
        footer.addWidget(self.version_label)
        footer.addWidget(self.next_button)
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
        self._note_timer = QTimer(self)  # then the info line gets its numbers back
        self._note_timer.setSingleShot(True)
        self._note_timer.timeout.connect(self._end_note)
        self._info_kept = ""
        self.citations: tuple[Passage, ...] = ()
        self.grounding: GroundingNotice | None = None  # the answer's numbers/names its sources lack, if any
        self.question_holder: QWidget | None = None

    def append(self, text: str) -> None:
        self.text += text
        if not self._render_timer.isActive():
            self._render_timer.start()

    def _render(self) -> None:
        self.view.setMarkdown(self.text)

    def set_versions(self, version: int, versions: int, selectable: bool) -> None:
        """Show "version of versions" with ←/→ (enabled where `selectable`: the chat's last answer, when idle)."""
        self.version, self.versions = version, versions
        self._show_versions(selectable)

    def _show_versions(self, selectable: bool = False) -> None:
        several = self.versions > 1
        for widget in (self.previous_button, self.version_label, self.next_button):
            widget.setVisible(several)
        self.version_label.setText(f"{self.version + 1}/{self.versions}")
        self.previous_button.setEnabled(selectable and self.version > 0)
        self.next_button.setEnabled(selectable and self.version < self.versions - 1)

    def finish(self, answer: Answer | None = None, note: str = "") -> None:
        """Final render; `answer` brings the exact text, numbers and citations; `note` e.g. 'Stopped.'"""
        self._render_timer.stop()
        self._note_timer.stop()
        if answer is not None:
            self.text = answer.text or self.text
            self.info.setText(f"{answer.new_tokens:,} tokens · {answer.speed_words}")
            if answer.stop_reason == "cancelled":
                note = note or "Stopped."
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
        self.grounding = grounding_notice(self.text, self.citations)
        if self.grounding is not None:  # right under the answer, before its sources
            self.layout().insertWidget(self.layout().indexOf(self.view) + 1, self.grounding)

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.text)
        if not self._note_timer.isActive():
            self._info_kept = self.info.text()
        self.info.setText("Copied to the clipboard.")
        self._note_timer.start(NOTE_MS)

    def _end_note(self) -> None:
        self.info.setText(self._info_kept)


class QuestionBubble(QWidget):
    """A question, right-aligned, with Edit (edit and resend: the chat is cut there)."""

    edit_requested = Signal()

    def __init__(self, question: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.question = question
        self.label = QLabel(rich_text(question).replace("\n", "<br>"))
        self.label.setObjectName("questionBubble")
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.edit_button = QPushButton("Edit")
        self.edit_button.setFlat(True)
        self.edit_button.setToolTip("Edit this question and send it again: the answers after it are dropped")
        self.edit_button.clicked.connect(self.edit_requested)
        row = QHBoxLayout(self)
        row.setContentsMargins(60, 0, 0, 0)
        row.addStretch(1)
        row.addWidget(self.edit_button, 0, Qt.AlignmentFlag.AlignTop)
        row.addWidget(self.label, 4)


class ChatView(QScrollArea):
    """One chat about a document, newest turn at the bottom. `load` shows a ChatState; `add_question`,
    `truncate` and `restart_last` prepare the card an answer streams into."""

    regenerate_requested = Signal()
    passage_clicked = Signal(object)
    edit_requested = Signal(int)  # 0-based turn
    version_requested = Signal(int)  # 0-based version of the last answer
    new_chat_requested = Signal()

    def __init__(self, key: str, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.key, self.title = key, title
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setAcceptDrops(False)
        self.questions: list[QuestionBubble] = []
        self.cards: list[AnswerCard] = []
        body = QWidget()
        body.setObjectName("chatBody")
        self.column = QVBoxLayout(body)
        self.column.setContentsMargins(24, 16, 24, 16)
        self.column.setSpacing(10)
        self.intro = QLabel(f"<h3>{rich_text(title)}</h3>Ask anything about this document: Folio reads all of it, "
                            "not snippets, and follow-up questions see the earlier answers. Press Enter to send, "
                            "Shift+Enter for a new line, Esc to stop.")
        self.intro.setObjectName("chatIntro")
        self.intro.setWordWrap(True)
        self.problem = QLabel()
        self.problem.setObjectName("chatProblem")
        self.problem.setWordWrap(True)
        self.new_chat_button = QPushButton("Start a new chat")
        self.new_chat_button.clicked.connect(self.new_chat_requested)
        problem_row = QHBoxLayout()
        problem_row.addWidget(self.problem, 1)
        problem_row.addWidget(self.new_chat_button, 0, Qt.AlignmentFlag.AlignTop)
        self.problem_bar = QFrame()
        self.problem_bar.setObjectName("errorBanner")
        self.problem_bar.setLayout(problem_row)
        self.problem_bar.hide()
        self.column.addWidget(self.intro)
        self.column.addWidget(self.problem_bar)
        self.column.addStretch(1)
        self.setWidget(body)
        self.verticalScrollBar().rangeChanged.connect(self._follow)
        self._at_bottom = True
        self.verticalScrollBar().valueChanged.connect(self._remember_position)
        self.state: ChatState | None = None

    @property
    def last_card(self) -> AnswerCard | None:
        return self.cards[-1] if self.cards else None

    def load(self, state: ChatState, idle: bool = True) -> None:
        """Show the chat's turns (each question with the answer version it continues from)."""
        self.state = state
        kept = 0  # the turns shown already (a streamed answer among them) stay as they are
        for bubble, card, turn in zip(self.questions, self.cards, state.turns, strict=False):
            if bubble.question != turn.question or card.text.strip() != turn.answer.text.strip():
                break
            if not card.done:
                card.finish(turn.answer)
            kept += 1
        self.truncate(kept)
        for turn in state.turns[kept:]:
            self.add_question(turn.question).finish(turn.answer)
        for card, turn in zip(self.cards, state.turns, strict=True):
            card.set_versions(turn.selected, len(turn.answers), selectable=False)
        self.problem.setText(state.problem)
        self.problem_bar.setVisible(bool(state.problem))
        self.set_idle(idle)

    def set_idle(self, idle: bool) -> None:
        """Regenerate, ←/→ and Edit work only while no job runs; regenerate and versions only on the last answer."""
        for position, (bubble, card) in enumerate(zip(self.questions, self.cards, strict=True)):
            last = position == len(self.cards) - 1
            bubble.edit_button.setEnabled(idle and card.done)
            card.regenerate_button.setEnabled(idle and last and card.done)
            card.regenerate_button.setVisible(last)
            card.set_versions(card.version, card.versions, selectable=idle and last)

    def add_question(self, question: str) -> AnswerCard:
        """Show `question` and an empty answer card that tokens stream into."""
        bubble = QuestionBubble(question)
        position = len(self.questions)
        bubble.edit_requested.connect(lambda: self.edit_requested.emit(position))
        card = AnswerCard()
        card.regenerate_requested.connect(self.regenerate_requested)
        card.passage_clicked.connect(self.passage_clicked)
        card.version_requested.connect(self.version_requested)
        self.column.insertWidget(self.column.count() - 1, bubble)
        self.column.insertWidget(self.column.count() - 1, card)
        card.question_holder = bubble
        self.questions.append(bubble)
        self.cards.append(card)
        self.set_idle(False)
        self._at_bottom = True
        return card

    def truncate(self, position: int) -> None:
        """Take away the turns from `position` on (an edited question is sent again from there)."""
        while len(self.cards) > position:
            card, bubble = self.cards.pop(), self.questions.pop()
            for widget in (bubble, card):
                self.column.removeWidget(widget)
                widget.deleteLater()

    def restart_last(self) -> AnswerCard:
        """A fresh card for the last question (regenerate): the versions so far stay in the chat."""
        question = self.questions[-1].question
        self.truncate(len(self.cards) - 1)
        return self.add_question(question)

    def _remember_position(self, value: int) -> None:
        bar = self.verticalScrollBar()
        self._at_bottom = value >= bar.maximum() - 8

    def _follow(self, _minimum: int, maximum: int) -> None:
        if self._at_bottom:
            self.verticalScrollBar().setValue(maximum)
