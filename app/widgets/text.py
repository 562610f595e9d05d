"""Untrusted plain text (a document's words, a question, a title) made safe for a rich-text QLabel."""

from __future__ import annotations

import html
import re

LONG_RUN = re.compile(r"\S{24,}")  # a word a label cannot wrap (an address, a file name): give it places to break
PIECE = 12  # characters between the break places in a long word
ZERO_WIDTH_SPACE = "\u200b"


def rich_text(text: str) -> str:
    """`text` HTML-escaped, with a zero-width space every PIECE characters of a long word: a QLabel wraps only
    between words, so one long address would otherwise make the whole chat scroll sideways."""
    text = LONG_RUN.sub(lambda run: ZERO_WIDTH_SPACE.join(_pieces(run.group())), text)
    return html.escape(text, quote=False)


def source_share_words(score: float) -> str:
    """A source's score (engine.citations.top_passages: its part of the answer's attention to the document beyond
    what a plain summary draws) in words."""
    return f"{score:.0%} of what this answer drew from the document beyond a plain summary"


def _pieces(word: str) -> list[str]:
    return [word[start : start + PIECE] for start in range(0, len(word), PIECE)]
