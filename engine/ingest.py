"""Turn a file (PDF, text, Markdown) into one string, remembering which page each character is on,
and map the document's tokens back to pages and character ranges (for citations)."""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import DocumentError
from engine.untrusted_text import encode_plain, encode_plain_with_offsets

TEXT_SUFFIXES = (".txt", ".text", ".md", ".markdown", ".rst")
PDF_SUFFIXES = (".pdf",)
PAGE_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Document:
    """The whole text of a file; `page_starts[i]` is the offset in `text` where page i+1 begins."""

    text: str
    title: str
    source: Path
    sha256: str
    page_starts: tuple[int, ...] = (0,)

    @property
    def pages(self) -> int:
        return len(self.page_starts)

    def page_of(self, char_index: int) -> int:
        """1-based page number holding text[char_index]."""
        return bisect.bisect_right(self.page_starts, char_index)


def supported_suffixes() -> tuple[str, ...]:
    return TEXT_SUFFIXES + PDF_SUFFIXES


def read_document(path: str | Path) -> Document:
    """Read a supported file; every problem becomes a DocumentError that says what to do."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in supported_suffixes():
        raise DocumentError(
            f"{path.name}: files of type '{suffix or '(none)'}' are not supported.",
            f"Open a PDF or a text file ({', '.join(supported_suffixes())}).",
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise DocumentError(f"{path} does not exist.", "Check the path and try again.") from error
    except OSError as error:
        raise DocumentError(f"{path} cannot be read: {error.strerror}.", "Check its permissions.") from error
    if not data.strip():
        raise DocumentError(f"{path.name} is empty.", "Choose a file that contains text.")
    sha = hashlib.sha256(data).hexdigest()
    if suffix in PDF_SUFFIXES:
        text, page_starts, title = _read_pdf(data, path.name)
        return Document(text, title or path.stem, path, sha, page_starts)
    return Document(_decode_text(data, path.name), path.stem, path, sha)


def _decode_text(data: bytes, name: str) -> str:
    if b"\x00" in data[:8192]:
        raise DocumentError(f"{name} looks like a binary file, not text (it contains NUL bytes).",
                            "Open the document in the program that made it and export it as PDF or text.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DocumentError(
            f"{name} is not valid UTF-8 text: the byte 0x{data[error.start]:02x} at offset "
            f"{error.start:,} cannot be decoded.",
            "Save the file with UTF-8 encoding and open it again.",
        ) from error
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise DocumentError(f"{name} contains only whitespace.", "Choose a file that contains text.")
    return text


def _open_pdf(data: bytes, name: str):
    import pymupdf

    try:
        pdf = pymupdf.open(stream=data, filetype="pdf")
    except (pymupdf.FileDataError, RuntimeError, ValueError) as error:
        raise DocumentError(f"{name} is damaged or not a PDF ({error}).",
                            "Open it in a PDF viewer to check it, or export it again.") from error
    if pdf.needs_pass:
        raise DocumentError(f"{name} is encrypted with a password.",
                            "Folio cannot open encrypted PDFs: save an unencrypted copy and open that.")
    return pdf


def _read_pdf(data: bytes, name: str) -> tuple[str, tuple[int, ...], str]:
    """(text, page_starts, title) of a PDF."""
    pdf = _open_pdf(data, name)
    title = ((pdf.metadata or {}).get("title") or "").strip()
    parts: list[str] = []
    page_starts: list[int] = []
    offset = 0
    try:
        for page in pdf:
            page_text = page.get_text("text").replace("\r\n", "\n").strip()
            page_starts.append(offset)
            parts.append(page_text)
            offset += len(page_text) + len(PAGE_SEPARATOR)
    except RuntimeError as error:
        raise DocumentError(f"{name} is damaged: a page could not be read ({error}).",
                            "Open it in a PDF viewer to check it, or export it again.") from error
    finally:
        pdf.close()
    if not page_starts:
        raise DocumentError(f"{name} has no pages.", "Choose a PDF with content.")
    if not any(part.strip() for part in parts):
        raise DocumentError(f"{name} has no text layer (it is probably scanned images).",
                            "Folio does not do OCR: run OCR on it first (e.g. ocrmypdf) and open the result.")
    return PAGE_SEPARATOR.join(parts), tuple(page_starts), title


def token_spans(document: Document, tokenizer) -> np.ndarray:
    """[N, 3] int32 rows (page, char_start, char_end) for the N tokens of the document's text as the
    prompt holds them (engine.prompt tokenises ``text.strip()`` on its own, as plain text); character offsets index
    `document.text`, pages are 1-based. Needs a fast tokenizer (offset mapping); otherwise the spans
    are approximated from the decoded length of each token.
    """
    body = document.text.strip()
    shift = len(document.text) - len(document.text.lstrip())
    try:
        offsets = np.asarray(encode_plain_with_offsets(tokenizer, body)[1], dtype=np.int64).reshape(-1, 2)
    except (NotImplementedError, ValueError, KeyError):
        ids = encode_plain(tokenizer, body)
        ends = np.cumsum([len(tokenizer.decode([i])) for i in ids]).clip(max=len(body))
        offsets = np.stack([np.concatenate([[0], ends[:-1]]), ends], axis=1) if len(ids) else np.zeros((0, 2))
    starts = offsets[:, 0] + shift
    pages = np.searchsorted(np.asarray(document.page_starts), starts, side="right")
    return np.stack([pages, starts, offsets[:, 1] + shift], axis=1).astype(np.int32)
