"""Show a cited passage where it stands in its file: a PDF page rendered with pymupdf together with the rectangles
that cover the passage's text on it, or a text file's passage in its surrounding text.

Qt-free: the app turns the pixels into an image and paints the highlight. Everything works from the document's
path; a file that has moved, vanished or changed raises a DocumentError that names the problem and the fix.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import Path

from engine.errors import DocumentError
from engine.ingest import PDF_SUFFIXES, pymupdf_quiet, read_document

Rect = tuple[float, float, float, float]  # x0, y0, x1, y1 in PDF points (72 per inch), origin top left
CONTEXT_CHARS = 20_000  # a text file shows this much text on each side of the passage
MIN_FRAGMENT = 12  # shorter fragments of a passage are not looked for on their own (too likely to match elsewhere)
FRAGMENT_BREAK = re.compile(r"(?<=[.!?;:])\s+|\n")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class PageImage:
    """One rendered PDF page: RGB pixels, `height` rows of `stride` bytes; `zoom` pixels per PDF point."""

    page: int  # 1-based
    width: int
    height: int
    stride: int
    samples: bytes
    zoom: float


@dataclass(frozen=True)
class TextExcerpt:
    """A stretch of a text document around a passage: text[start:end] is the passage."""

    text: str
    start: int
    end: int
    cut_before: bool  # the document goes on before `text`
    cut_after: bool  # ... and after it


def is_pdf(path: str | Path) -> bool:
    return Path(path).suffix.lower() in PDF_SUFFIXES


def check_source(path: str | Path) -> Path:
    """The document's path, when its file is still there; else a DocumentError saying what happened and what to do."""
    path = Path(path).expanduser()
    if not str(path) or str(path) == ".":
        raise DocumentError("Folio does not know where this document's file is.",
                            "Open the file again (Ctrl+O) to see the passages on their pages.")
    if not path.exists():
        raise DocumentError(f"The file {path} is no longer there: it was moved, renamed or deleted after Folio read "
                            "it.", "Put it back there, or open it from its new place (Ctrl+O); the cited text is "
                                   "shown below.")
    if not path.is_file():
        raise DocumentError(f"{path} is no longer a file.", "Open the document again from where it is now (Ctrl+O).")
    return path


class PdfPages:
    """An open PDF whose pages can be rendered and searched; close() it (or use it in a `with`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = check_source(path)
        pymupdf = pymupdf_quiet()
        try:
            self._pdf = pymupdf.open(self.path, filetype="pdf")
        except Exception as error:  # pymupdf raises its own error types (FileDataError, FzErrorBase...)
            raise DocumentError(f"{self.path.name} cannot be opened any more ({error}).",
                                "Check the file in a PDF viewer, or open it again (Ctrl+O).") from error
        if self._pdf.needs_pass:
            self._pdf.close()
            raise DocumentError(f"{self.path.name} is now password-protected.",
                                "Open an unprotected copy (Ctrl+O).")

    @property
    def pages(self) -> int:
        return self._pdf.page_count

    def page_size(self, page: int) -> tuple[float, float]:
        """(width, height) of 1-based `page`, in points."""
        rect = self._page(page).rect
        return rect.width, rect.height

    def render(self, page: int, zoom: float) -> PageImage:
        """Page `page` (1-based) at `zoom` pixels per point, without alpha."""
        pymupdf = pymupdf_quiet()
        pixmap = self._page(page).get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False)
        return PageImage(page, pixmap.width, pixmap.height, pixmap.stride, bytes(pixmap.samples), zoom)

    def passage_rects(self, page: int, text: str) -> list[Rect]:
        """Rectangles covering `text` on page `page`, one per line of the page it runs over; [] when it is not there.

        The passage came from this page's text layer, so it is looked for character by character, ignoring
        whitespace (line ends and the spaces MuPDF puts between blocks differ from the extracted text). When the
        whole passage is not there (the file changed since it was read), each sentence or line of it that is found
        is highlighted instead.
        """
        chars = self._chars(page)
        page_text = "".join(c for c, _, _ in chars)
        wanted = _SPACE.sub("", text)
        if not wanted:
            return []
        found = page_text.find(wanted)
        if found >= 0:
            return _line_rects(chars[found:found + len(wanted)])
        rects: list[Rect] = []
        position = 0
        for fragment in FRAGMENT_BREAK.split(text):
            piece = _SPACE.sub("", fragment)
            if len(piece) < MIN_FRAGMENT:
                continue
            found = page_text.find(piece, position)
            if found < 0:
                found = page_text.find(piece)
            if found >= 0:
                rects += _line_rects(chars[found:found + len(piece)])
                position = found + len(piece)
        return rects

    def _chars(self, page: int) -> list[tuple[str, Rect, int]]:
        """The page's non-space characters in reading order: (character, box, line number)."""
        pymupdf = pymupdf_quiet()
        raw = self._page(page).get_text("rawdict", flags=pymupdf.TEXTFLAGS_TEXT)
        chars = []
        line_number = 0
        for block in raw.get("blocks", ()):
            for line in block.get("lines", ()):
                for span in line["spans"]:
                    chars += [(c["c"], tuple(c["bbox"]), line_number) for c in span["chars"] if not c["c"].isspace()]
                line_number += 1
        return chars

    def _page(self, page: int):
        if not 1 <= page <= self.pages:
            raise DocumentError(f"{self.path.name} has no page {page} any more (it has {self.pages}).",
                                "The file changed since Folio read it: open it again (Ctrl+O).")
        return self._pdf.load_page(page - 1)

    def close(self) -> None:
        self._pdf.close()

    def __enter__(self) -> PdfPages:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def _line_rects(chars: list[tuple[str, Rect, int]]) -> list[Rect]:
    """One rectangle per line: the union of that line's character boxes."""
    rects: dict[int, list[float]] = {}
    for _, (x0, y0, x1, y1), line in chars:
        box = rects.setdefault(line, [x0, y0, x1, y1])
        box[:] = min(box[0], x0), min(box[1], y0), max(box[2], x1), max(box[3], y1)
    return [tuple(box) for box in rects.values()]


def text_excerpt(path: str | Path, start: int, end: int, passage: str, context: int = CONTEXT_CHARS) -> TextExcerpt:
    """The passage text[start:end] of the text file at `path` with up to `context` characters around it, cut at line
    ends. Where the file changed and the passage moved, it is found by its text; where it is gone, a DocumentError."""
    text = read_document(check_source(path)).text
    if text[start:end] != passage:
        moved = _find_loosely(text, passage, near=start)
        if moved is None:
            raise DocumentError(f"{Path(path).name} no longer contains the cited text: it changed after Folio read it.",
                                "Open it again (Ctrl+O) to ask about the current version; the cited text is shown "
                                "below.")
        start, end = moved
    first = text.rfind("\n", 0, max(0, start - context)) + 1 if start > context else 0
    last = text.find("\n", end + context) if len(text) - end > context else -1
    last = len(text) if last < 0 else last
    return TextExcerpt(text[first:last], start - first, end - first, first > 0, last < len(text))


def _find_loosely(text: str, passage: str, near: int) -> tuple[int, int] | None:
    """(start, end) of `passage` in `text` with any whitespace between its words, the match nearest `near`."""
    words = passage.split()
    if not words:
        return None
    pattern = re.compile(r"\s+".join(map(re.escape, words)))
    matches = [(m.start(), m.end()) for m in pattern.finditer(text)]
    if not matches:
        return None
    starts = [s for s, _ in matches]
    index = bisect.bisect_left(starts, near)
    candidates = matches[max(0, index - 1):index + 1]
    return min(candidates, key=lambda m: abs(m[0] - near))
