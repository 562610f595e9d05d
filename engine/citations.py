"""Which document passages an answer drew on: attention mass per document token -> ranked passages.

Qt-free and torch-free. Input: for each answer token (decode step), the document token positions the
model attended to (retrieved keys in RetrievalAttention, the top attention positions in full attention)
with their attention weight. The weights are summed per position over all steps, positions are mapped
to character spans of the document text through a token -> char span map, and the mass is pooled per
passage (a paragraph, or a slice of a long paragraph cut at sentence ends). The top passages come back
with their page number and text.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from engine.untrusted_text import encode_plain_with_offsets

Step = Iterable[tuple[int, float]]  # (document token position in the prompt, attention weight)
PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class SpanMap:
    """Token position -> (start, end) character range in the document text.

    first_position: the prompt position of the document's first token; spans[i] belongs to position
    first_position + i. Positions outside the document (template, question, answer) map to None.
    """

    first_position: int
    spans: Sequence[tuple[int, int]]

    def get(self, position: int) -> tuple[int, int] | None:
        index = position - self.first_position
        return self.spans[index] if 0 <= index < len(self.spans) else None

    def __len__(self) -> int:
        return len(self.spans)


@dataclass(frozen=True)
class Passage:
    """A cited stretch of the document: text[start:end], on `page` (1-based), with its share of the mass."""

    page: int
    start: int
    end: int
    text: str
    score: float


def document_span_map(tokenizer, document_text: str, first_position: int) -> SpanMap:
    """The SpanMap of a document tokenised the way engine.prompt does it (stripped, as plain text).

    `tokenizer` is a transformers fast tokenizer (anything returning offset_mapping).
    """
    body = document_text.strip()
    lead = len(document_text) - len(document_text.lstrip())
    spans = [(lead + start, lead + end) for start, end in encode_plain_with_offsets(tokenizer, body)[1]]
    return SpanMap(first_position, spans)


def split_passages(text: str, max_chars: int = 600) -> list[tuple[int, int]]:
    """Cut text into passages: paragraphs, long ones split at sentence ends into <= max_chars pieces.

    Returns sorted, non-overlapping (start, end) ranges with surrounding whitespace trimmed.
    """
    passages: list[tuple[int, int]] = []
    start = 0
    for match in [*PARAGRAPH_BREAK.finditer(text), None]:
        end = match.start() if match else len(text)
        passages.extend(_split_long(text, start, end, max_chars))
        if match:
            start = match.end()
    return passages


def _split_long(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    start, end = _trim(text, start, end)
    if start >= end:
        return []
    if end - start <= max_chars:
        return [(start, end)]
    pieces: list[tuple[int, int]] = []
    piece_start = start
    cuts = [m.end() for m in SENTENCE_END.finditer(text, start, end)] + [end]  # positions in text
    last_cut = start
    for cut in cuts:
        if cut - piece_start > max_chars and last_cut > piece_start:
            pieces.append(_trim(text, piece_start, last_cut))
            piece_start = last_cut
        while cut - piece_start > max_chars:  # one sentence longer than max_chars: hard cut
            pieces.append(_trim(text, piece_start, piece_start + max_chars))
            piece_start += max_chars
        last_cut = cut
    if piece_start < end:
        pieces.append(_trim(text, piece_start, end))
    return [p for p in pieces if p[0] < p[1]]


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def token_mass(steps: Iterable[Step]) -> dict[int, float]:
    """Attention weight summed per position over all steps (each step normalised to sum 1)."""
    mass: dict[int, float] = {}
    for step in steps:
        pairs = [(int(p), float(w)) for p, w in step if w > 0]
        total = sum(w for _, w in pairs)
        if total <= 0:
            continue
        for position, weight in pairs:
            mass[position] = mass.get(position, 0.0) + weight / total
    return mass


def top_passages(steps: Iterable[Step], span_map: SpanMap, text: str, page_of: Callable[[int], int],
                 top_n: int = 5, max_chars: int = 600, min_share: float = 0.02) -> list[Passage]:
    """The top_n passages of `text` by attention mass over the answer, best first.

    score: the passage's share of all mass that landed on document tokens (0..1). Passages with less
    than min_share are left out. Positions outside the document are ignored.
    """
    passages = split_passages(text, max_chars)
    if not passages:
        return []
    starts = [start for start, _ in passages]
    pooled = [0.0] * len(passages)
    total = 0.0
    for position, weight in token_mass(steps).items():
        span = span_map.get(position)
        if span is None:
            continue
        index = bisect.bisect_right(starts, span[0]) - 1
        if index < 0:
            continue
        _, p_end = passages[index]
        if span[0] >= p_end and index + 1 < len(passages):  # token in the gap between two passages
            index += 1
        pooled[index] += weight
        total += weight
    if total <= 0:
        return []
    ranked = sorted(range(len(passages)), key=lambda i: pooled[i], reverse=True)
    result = []
    for i in ranked[:top_n]:
        share = pooled[i] / total
        if share < min_share:
            break
        start, end = passages[i]
        result.append(Passage(page_of(start), start, end, text[start:end], share))
    return result
