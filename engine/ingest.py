"""Turn a file (PDF, text, Markdown) into one string, remembering which page each character is on,
and map the document's tokens back to pages and character ranges (for citations)."""

from __future__ import annotations

import bisect
import hashlib
import itertools
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import DocumentError
from engine.units import format_bytes
from engine.untrusted_text import encode_plain, encode_plain_with_offsets

TEXT_SUFFIXES = (".txt", ".text", ".md", ".markdown", ".rst")
PDF_SUFFIXES = (".pdf",)
PAGE_SEPARATOR = "\n\n"
# The most bytes Folio reads from one file: far more text than any model's context holds (a million-token context
# is a few MiB of text), and PDFs' images make them larger. Checked before reading, so a huge file costs nothing.
MAX_TEXT_BYTES = 128 * 2**20
MAX_PDF_BYTES = 2**30
MAX_CONTROL_SHARE = 0.1  # above this share of control characters a "text" file is binary data
# C0 and C1 control characters other than the whitespace ones (tab, newlines, vertical tab, form feed).
_CONTROLS = dict.fromkeys([*range(0x00, 0x09), *range(0x0E, 0x20), *range(0x7F, 0xA0)])
_BOMS = ((b"\xff\xfe\x00\x00", "utf-32-le", "UTF-32"), (b"\x00\x00\xfe\xff", "utf-32-be", "UTF-32"),
         (b"\xef\xbb\xbf", "utf-8", "UTF-8"), (b"\xff\xfe", "utf-16-le", "UTF-16"),
         (b"\xfe\xff", "utf-16-be", "UTF-16"))
_OPEN_FIX = "Open it in a PDF viewer to check it, or export it again."


@dataclass(frozen=True)
class Document:
    """The whole text of a file; `page_starts[i]` is the offset in `text` where page i+1 begins.

    warnings: what reading the file could not do fully, for the user (a damaged PDF that MuPDF repaired, with the
    pages that came out without text); the text is still usable.
    """

    text: str
    title: str
    source: Path
    sha256: str
    page_starts: tuple[int, ...] = (0,)
    warnings: tuple[str, ...] = ()

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
    is_pdf = suffix in PDF_SUFFIXES
    data = _read_regular_file(path, MAX_PDF_BYTES if is_pdf else MAX_TEXT_BYTES)
    if not data.strip():
        raise DocumentError(f"{path.name} is empty.", "Choose a file that contains text.")
    sha = hashlib.sha256(data).hexdigest()
    if is_pdf:
        text, page_starts, title, warnings = _read_pdf(data, path.name)
        return Document(text, title or path.stem, path, sha, page_starts, warnings)
    return Document(_decode_text(data, path.name), path.stem, path, sha)


def _read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of `path`, which must be a regular file (not a pipe, device or folder) of at most `limit` bytes."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise DocumentError(f"{path.name} is not a regular file (it is {_file_kind(info.st_mode)}).",
                                "Open the document file itself.")
        _check_size(path.name, info.st_size, limit)
        # Non-blocking: should the path have become a FIFO since stat(), opening it must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise DocumentError(f"{path.name} is not a regular file.", "Open the document file itself.")
            data = handle.read(limit + 1)
    except FileNotFoundError as error:
        raise DocumentError(f"{path} does not exist.", "Check the path and try again.") from error
    except OSError as error:
        raise DocumentError(f"{path} cannot be read: {error.strerror}.", "Check its permissions.") from error
    _check_size(path.name, len(data), limit)
    return data


def _check_size(name: str, size: int, limit: int) -> None:
    if size > limit:
        raise DocumentError(f"{name} is too large: {format_bytes(size)}, more than Folio reads from one file "
                            f"({format_bytes(limit)}).", "Split it into smaller documents and open the part you need.")


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a pipe"), (stat.S_ISCHR, "a device"),
             (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), "not a file")


def _decode_text(data: bytes, name: str) -> str:
    """UTF-8 (with or without a byte-order mark), UTF-16 (with a mark, or without one when its NUL bytes show it)
    or UTF-32 with a mark; binary data and undecodable bytes become DocumentErrors that say what to do."""
    encoding, label, body = _text_encoding(data)
    if encoding == "utf-8" and b"\x00" in body:
        raise _binary_error(name, "it contains NUL bytes")
    try:
        text = body.decode(encoding)
    except UnicodeDecodeError as error:
        if label != "UTF-8":
            raise DocumentError(f"{name} looks like {label} text, but the bytes at offset {error.start:,} cannot be "
                                "decoded.", f"Convert it to UTF-8 (e.g. `iconv -f {label} -t UTF-8`) and open it "
                                "again.") from error
        raise DocumentError(
            f"{name} is not valid UTF-8 text: the byte 0x{body[error.start]:02x} at offset "
            f"{error.start:,} cannot be decoded.",
            "Save the file with UTF-8 encoding and open it again.",
        ) from error
    if "\x00" in text:
        raise _binary_error(name, "it contains NUL characters")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise DocumentError(f"{name} contains only whitespace.", "Choose a file that contains text.")
    controls = len(text) - len(text.translate(_CONTROLS))
    if controls > MAX_CONTROL_SHARE * len(text):
        raise _binary_error(name, f"{controls / len(text):.0%} of its characters are control characters")
    return text


def _text_encoding(data: bytes) -> tuple[str, str, bytes]:
    """(Python codec, name for people, the bytes after any byte-order mark) of a text file's bytes."""
    for bom, encoding, label in _BOMS:
        if data.startswith(bom):
            return encoding, label, data[len(bom):]
    if len(data) % 2 == 0 and len(data) >= 4:  # UTF-16 without a mark: mostly-ASCII text has NULs on one side
        sample = data[: 1 << 16]
        half = len(sample) // 2
        even, odd = sample[0::2].count(0), sample[1::2].count(0)
        if odd > 0.3 * half and even < 0.05 * half:
            return "utf-16-le", "UTF-16", data
        if even > 0.3 * half and odd < 0.05 * half:
            return "utf-16-be", "UTF-16", data
    return "utf-8", "UTF-8", data


def _binary_error(name: str, evidence: str) -> DocumentError:
    return DocumentError(f"{name} looks like a binary file, not text ({evidence}).",
                         "Open the document in the program that made it and export it as PDF or text.")


def pymupdf_quiet():
    """pymupdf, set up once so that MuPDF's messages never reach stdout: they are collected (and become the
    document's warnings), and pymupdf's own messages go to the `pymupdf` logger."""
    import pymupdf

    if not getattr(pymupdf_quiet, "configured", False):
        pymupdf.TOOLS.mupdf_display_errors(False)
        pymupdf.TOOLS.mupdf_display_warnings(False)
        pymupdf.set_messages(pylogging=True)
        pymupdf_quiet.configured = True
    return pymupdf


def _pdf_errors(pymupdf) -> tuple[type[BaseException], ...]:
    """What pymupdf raises for a bad file: MuPDF's own errors (pymupdf.mupdf.FzErrorBase, not RuntimeErrors) and
    pymupdf's RuntimeErrors and ValueErrors."""
    return (pymupdf.mupdf.FzErrorBase, RuntimeError, ValueError)


def _mupdf_reason(error: BaseException) -> str:
    """MuPDF's own words for `error` (pymupdf wraps them as "Failed to open stream"), without its code."""
    cause = error.__cause__ if error.__cause__ is not None else error
    return re.sub(r"^code=\d+: ", "", str(cause).strip()) or type(cause).__name__


def _open_pdf(pymupdf, data: bytes, name: str):
    try:
        pdf = pymupdf.open(stream=data, filetype="pdf")
    except _pdf_errors(pymupdf) as error:
        raise DocumentError(f"{name} is damaged or not a PDF ({_mupdf_reason(error)}).", _OPEN_FIX) from error
    if pdf.needs_pass:
        raise DocumentError(f"{name} is encrypted with a password.",
                            "Folio cannot open encrypted PDFs: save an unencrypted copy and open that.")
    return pdf


def _read_pdf(data: bytes, name: str) -> tuple[str, tuple[int, ...], str, tuple[str, ...]]:
    """(text, page_starts, title, warnings) of a PDF."""
    pymupdf = pymupdf_quiet()
    pymupdf.TOOLS.reset_mupdf_warnings()
    pdf = _open_pdf(pymupdf, data, name)
    parts: list[str] = []
    page_problems: dict[int, str] = {}  # page number -> MuPDF's first error while reading it
    try:
        repaired = pdf.is_repaired
        title = ((pdf.metadata or {}).get("title") or "").strip()
        pymupdf.TOOLS.reset_mupdf_warnings()  # the repair's own messages: is_repaired says it
        for number in range(pdf.page_count):
            parts.append(pdf.load_page(number).get_text("text").replace("\r\n", "\n").strip())
            errors = [m for m in pymupdf.TOOLS.mupdf_warnings().splitlines() if "error" in m]
            if errors:
                page_problems[number + 1] = errors[0]
    except _pdf_errors(pymupdf) as error:
        where = "its page tree is broken" if "page tree" in str(error) else "a page could not be read"
        raise DocumentError(f"{name} is damaged: {where} ({_mupdf_reason(error)}).", _OPEN_FIX) from error
    finally:
        pdf.close()
    if not parts:
        raise DocumentError(f"{name} has no pages.", "Choose a PDF with content.")
    if not any(parts):
        raise DocumentError(f"{name} has no text layer (it is probably scanned images).",
                            "Folio does not do OCR: run OCR on it first (e.g. ocrmypdf) and open the result.")
    page_starts = tuple(itertools.accumulate((len(p) + len(PAGE_SEPARATOR) for p in parts[:-1]), initial=0))
    empty = [number for number, part in enumerate(parts, 1) if not part]
    warning = _damage_warning(name, repaired, empty if repaired else [], page_problems)
    return PAGE_SEPARATOR.join(parts), page_starts, title, (warning,) if warning else ()


def _damage_warning(name: str, repaired: bool, lost: list[int], page_problems: dict[int, str]) -> str | None:
    """What a damaged PDF lost, in words for people; None when it is intact. A broken page tree is said as such
    (MuPDF found the pages another way, so some may be missing); other errors are named with their pages."""
    tree = next((problem for problem in page_problems.values() if "page tree" in problem), None)
    page_problems = {number: problem for number, problem in page_problems.items() if "page tree" not in problem}
    if not (repaired or tree or page_problems):
        return None
    text = f"{name} is damaged; MuPDF repaired it" if repaired else f"{name} is damaged"
    if lost:
        text += f", but {_pages(lost)} came out with no text (probably lost in the damage)"
    if tree:
        text += f"; its page tree is broken ({tree}), so pages may be missing"
    if page_problems:
        first = min(page_problems)
        text += (f"; {_pages(sorted(page_problems))} could not be read completely "
                 f"(page {first}: {page_problems[first]})")
    return text + ". Check answers against the original, or export the PDF again."


def _pages(numbers: list[int]) -> str:
    """[2, 3, 4, 7] -> "pages 2–4, 7"; [5] -> "page 5"."""
    runs: list[str] = []
    for _, group in itertools.groupby(enumerate(numbers), lambda item: item[1] - item[0]):
        run = [number for _, number in group]
        runs.append(f"{run[0]}–{run[-1]}" if len(run) > 1 else str(run[0]))
    return ("page " if len(numbers) == 1 else "pages ") + ", ".join(runs)


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
