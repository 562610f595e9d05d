"""Which document passages an answer drew on: attention mass per document token -> ranked passages.

Qt-free and torch-free. Input: for each answer token (decode step), the document token positions the
model attended to (in RetrievalAttention the static sinks and window and the retrieved keys, in full attention
the top attention positions) with their attention weight. The weights are summed per position over all steps,
positions are mapped to character spans of the document text through a token -> char span map, and the mass is
pooled per passage (a paragraph, or a slice of a long paragraph cut at sentence ends). The top passages come back
with their page number and text.

Question-specific ranking. Much of any answer's attention goes to the same places whatever was asked (the
document's opening, its last paragraphs, passages the model finds salient), so plain shares rank the same
passages first for every question. Given a `baseline` (the token mass of a question-agnostic answer about the same
document: engine.citation_baseline), passages are ranked by how much more of this answer's attention they drew
than of the baseline's: share - baseline share.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from engine.untrusted_text import encode_plain_with_offsets

Step = Iterable[tuple[int, float]]  # (document token position in the prompt, attention weight)
TokenMass = Mapping[int, float]  # prompt position -> attention mass summed over an answer's steps (token_mass)
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
    """A cited stretch of the document: text[start:end], on `page` (1-based), with its score (0..1): its share of
    the answer's attention on the document, or of the attention beyond the baseline's (top_passages)."""

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
    cuts = [m.end() for m in SENTENCE_END.finditer(text, start, end)] + [end]  # finditer(pos): absolute ends
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


def passage_shares(mass: TokenMass, span_map: SpanMap, passages: Sequence[tuple[int, int]]) -> list[float]:
    """Each passage's share (0..1, summing to 1 when any mass lands on the document) of the mass on document tokens.

    passages: split_passages' sorted (start, end) ranges. Positions outside the document are ignored; a token in
    the gap between two passages counts for the next one.
    """
    starts = [start for start, _ in passages]
    pooled = [0.0] * len(passages)
    for position, weight in mass.items():
        span = span_map.get(position)
        if span is None:
            continue
        index = bisect.bisect_right(starts, span[0]) - 1
        if index < 0:
            continue
        if span[0] >= passages[index][1] and index + 1 < len(passages):  # token in the gap between two passages
            index += 1
        pooled[index] += weight
    total = sum(pooled)
    return [p / total for p in pooled] if total > 0 else pooled


def top_passages(steps: Iterable[Step], span_map: SpanMap, text: str, page_of: Callable[[int], int],
                 top_n: int = 5, max_chars: int = 600, min_share: float = 0.02,
                 baseline: TokenMass | None = None) -> list[Passage]:
    """The top_n passages of `text` by attention mass over the answer, best first.

    Without a baseline: score is the passage's share of all mass that landed on document tokens (0..1).
    With one (the token mass of a question-agnostic answer, engine.citation_baseline): passages are ranked by their
    excess share, share - baseline share, and score is the passage's part of all positive excess (0..1): of the
    attention this answer paid the document beyond what an answer to no particular question pays, the part that
    went to this passage. Where nothing exceeds the baseline the plain shares are used.
    Passages scoring less than min_share are left out. Positions outside the document are ignored.
    """
    passages = split_passages(text, max_chars)
    if not passages:
        return []
    shares = passage_shares(token_mass(steps), span_map, passages)
    if not any(shares):
        return []
    scores = shares
    if baseline is not None:
        excess = [max(0.0, a - b) for a, b in zip(shares, passage_shares(baseline, span_map, passages), strict=True)]
        total = sum(excess)
        if total > 0:
            scores = [e / total for e in excess]
    ranked = sorted(range(len(passages)), key=lambda i: scores[i], reverse=True)
    result = []
    for i in ranked[:top_n]:
        if scores[i] < min_share:
            break
        start, end = passages[i]
        result.append(Passage(page_of(start), start, end, text[start:end], scores[i]))
    return result
