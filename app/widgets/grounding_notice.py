"""Under an answer whose numbers or names its cited passages do not contain: a notice naming them, followed by the
cited text with the nearest sentence marked, so the user sees e.g. the answer's "1863" next to the cited "1865"."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QLabel, QVBoxLayout, QWidget

from app.backend import Passage, UnsupportedFact, unsupported_facts
from app.widgets.text import rich_text

MAX_SHOWN_PASSAGES = 3
MAX_CONTEXT = 220  # characters of the passage kept on each side of the nearest sentence


def grounding_notice(answer: str, citations: tuple[Passage, ...]) -> GroundingNotice | None:
    """The notice for `answer`, or None when every number and name of it is in its cited passages."""
    facts = unsupported_facts(answer, [p.text for p in citations])
    return GroundingNotice(facts, citations) if facts else None


class GroundingNotice(QFrame):
    """"1863 does not appear in the cited passages — compare:" and the cited text (document text, escaped)."""

    def __init__(self, facts: list[UnsupportedFact], citations: tuple[Passage, ...],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("groundingNotice")
        names = [f"<b>{rich_text(fact.text)}</b>" for fact in facts]
        verb = "does" if len(names) == 1 else "do"
        self.heading = QLabel(f"⚠ {_join(names)} {verb} not appear in the cited passages — compare:")
        self.heading.setObjectName("groundingHeading")
        self.heading.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 6, 10, 6)
        layout.setSpacing(4)
        layout.addWidget(self.heading)
        self.quotes: list[QLabel] = []
        shown: dict[int, list[tuple[int, int]]] = {}
        for fact in facts:
            if fact.passage >= 0 and (fact.passage in shown or len(shown) < MAX_SHOWN_PASSAGES):
                spans = shown.setdefault(fact.passage, [])
                if (fact.start, fact.end) not in spans:
                    spans.append((fact.start, fact.end))
        for index, spans in shown.items():
            passage = citations[index]
            quote = QLabel(f"<i>p. {passage.page}:</i> " + _marked(passage.text, spans))
            quote.setObjectName("groundingQuote")
            quote.setWordWrap(True)
            quote.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            layout.addWidget(quote)
            self.quotes.append(quote)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _marked(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` escaped, the `spans` (the nearest sentences) marked, long stretches around them shortened with …"""
    spans = sorted(spans)
    first, last = max(0, spans[0][0] - MAX_CONTEXT), min(len(text), spans[-1][1] + MAX_CONTEXT)
    while 0 < first < spans[0][0] and not text[first - 1].isspace():  # whole words only
        first += 1
    while spans[-1][1] < last < len(text) and not text[last].isspace():
        last -= 1
    parts, position = ["…" if first else ""], first
    for start, end in spans:
        if start < position:
            continue
        parts += [_plain(text[position:start]), f"<span style='background-color:#ffe066; color:#000000'>"
                  f"{_plain(text[start:end])}</span>"]
        position = end
    parts += [_plain(text[position:last]), "…" if last < len(text) else ""]
    return "".join(parts)


def _plain(text: str) -> str:
    """Escaped, whitespace runs as single spaces (a passage's line breaks are the PDF's, not the author's)."""
    words = " ".join(text.split())
    if not words:
        return " " if text else ""
    return rich_text((" " if text[0].isspace() else "") + words + (" " if text[-1].isspace() else ""))
