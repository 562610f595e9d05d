"""The sample document as a PDF (A4, typeset by MuPDF from resources/sample.md), for the screenshot of a source shown
on its page. Made when needed, so the repository holds one sample, in one format."""

from __future__ import annotations

import html
import re
from pathlib import Path

from app.resources import resource_path
from app.sample.run import SAMPLE_DOCUMENT

PAGE = (0, 0, 595, 842)  # A4, in points
MARGINS = (72, 64, 72, 64)  # left, top, right, bottom
STYLE = ("body { font-family: serif; font-size: 11pt; line-height: 1.35; } h1 { font-size: 20pt; } "
         "h2 { font-size: 14pt; }")


def markdown_to_html(markdown: str) -> str:
    """The sample's Markdown (headings, paragraphs, *emphasis*) as HTML; anything else is kept as text."""
    blocks = []
    for block in re.split(r"\n\s*\n", markdown.strip()):
        text = html.escape(" ".join(block.split()), quote=False)
        text = re.sub(r"\*([^*]+)\*", r"<i>\1</i>", text)
        heading = re.match(r"(#{1,3}) (.*)", text)
        blocks.append(f"<h{len(heading[1])}>{heading[2]}</h{len(heading[1])}>" if heading else f"<p>{text}</p>")
    return "\n".join(blocks)


def write_sample_pdf(path: str | Path, source: str | Path | None = None) -> Path:
    """Typeset `source` (the sample document by default) into the PDF `path`; returns `path`."""
    import pymupdf

    source = Path(source) if source else resource_path(SAMPLE_DOCUMENT)
    story = pymupdf.Story(markdown_to_html(source.read_text(encoding="utf-8")), user_css=STYLE)
    page, (left, top, right, bottom) = pymupdf.Rect(PAGE), MARGINS
    where = pymupdf.Rect(page.x0 + left, page.y0 + top, page.x1 - right, page.y1 - bottom)
    writer = pymupdf.DocumentWriter(str(path))
    more = True
    while more:
        device = writer.begin_page(page)
        more, _ = story.place(where)
        story.draw(device)
        writer.end_page()
    writer.close()
    with pymupdf.open(path) as pdf:  # the title a reader shows (and Folio's library lists)
        pdf.set_metadata({**pdf.metadata, "title": source.read_text(encoding="utf-8").splitlines()[0].lstrip("# ")})
        pdf.saveIncr()
    return Path(path)
