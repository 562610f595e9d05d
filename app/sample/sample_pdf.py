"""The sample document as a PDF (A4, set in Times by MuPDF from resources/sample.md), for the screenshot of a source
shown on its page. Made when needed, so the repository holds one sample, in one format.

The base-14 Times font has no ligature glyphs, so the text layer reads "first", not "ﬁrst", as the sample does."""

from __future__ import annotations

import re
from pathlib import Path

from app.resources import resource_path
from app.sample.run import SAMPLE_DOCUMENT

A4 = (595, 842)  # points
LEFT, TOP, RIGHT, BOTTOM = 72, 72, 523, 770
STYLES = {  # kind -> (base-14 font, size in points, space before, space after)
    "h1": ("tibo", 20, 0, 10), "h2": ("tibo", 13.5, 10, 4), "em": ("tiit", 11, 0, 8), "p": ("tiro", 11, 0, 8)}
LINE_HEIGHT = 1.3


def blocks_of(markdown: str) -> list[tuple[str, str]]:
    """(kind, text) for each block of the sample's Markdown: headings, a whole-line *emphasis*, paragraphs (inline
    emphasis marks dropped)."""
    blocks = []
    for block in re.split(r"\n\s*\n", markdown.strip()):
        text = " ".join(block.split())
        heading = re.match(r"(#{1,2}) (.*)", text)
        if heading:
            blocks.append((f"h{len(heading[1])}", heading[2]))
        elif re.fullmatch(r"\*[^*]+\*", text):
            blocks.append(("em", text[1:-1]))
        else:
            blocks.append(("p", text.replace("*", "")))
    return blocks


def write_sample_pdf(path: str | Path, source: str | Path | None = None) -> Path:
    """Set `source` (the sample document by default) as the PDF `path`; returns `path`."""
    import pymupdf

    source = Path(source) if source else resource_path(SAMPLE_DOCUMENT)
    blocks = blocks_of(source.read_text(encoding="utf-8"))
    pdf = pymupdf.open()
    page, y = None, BOTTOM
    for kind, text in blocks:
        font_name, size, before, after = STYLES[kind]
        font = pymupdf.Font(font_name)
        y += before
        while text:
            if page is None or y + 2 * size * LINE_HEIGHT > BOTTOM:  # no heading or first line alone at a page's foot
                page, y = pdf.new_page(width=A4[0], height=A4[1]), TOP
            writer = pymupdf.TextWriter(page.rect)
            rest = writer.fill_textbox(pymupdf.Rect(LEFT, y, RIGHT, BOTTOM), text, font=font, fontsize=size,
                                       lineheight=LINE_HEIGHT)
            writer.write_text(page)
            y = writer.last_point.y + size * (LINE_HEIGHT - 1) + after
            text = " ".join(line.strip() for line, _ in rest)
            if text:
                page = None
    pdf.set_metadata({"title": blocks[0][1]})  # what a reader shows, and what Folio's library lists
    pdf.save(path)
    return Path(path)
