"""The fault matrix, documents: every file a user can drop ends in a Document or a DocumentError that names the
problem and the fix; MuPDF never writes to stdout; repaired PDFs carry a warning naming what was lost."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import pytest

from engine.errors import DocumentError
from engine.ingest import read_document
from tests.faults import ASK_OPTIONS, one_page_objects, raw_pdf, text_pdf

TEXT = "The light was first lit in 1865 by Anders Brekke.\n" * 10


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _link(path: Path, target: str) -> Path:
    path.symlink_to(target)
    return path


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# (case, file name, how to make it, what the message says). Each is one row of docs/reliability.md.
BAD_FILES = [
    ("missing file", "nowhere.txt", None, r"does not exist"),
    ("unsupported type", "sheet.xlsx", lambda p: _write(p, b"PK\x03\x04"), r"not supported"),
    ("empty text", "empty.txt", lambda p: _write(p, b""), r"is empty"),
    ("whitespace only", "blank.md", lambda p: _write(p, b"  \n\n \t"), r"is empty"),
    ("binary named .txt", "image.txt", lambda p: _write(p, b"\x89PNG\r\n\x1a\n\0\0\0IHDR"), r"binary"),
    ("NUL byte after 8 KB", "late-nul.txt", lambda p: _write(p, TEXT.encode() * 30 + b"\0tail"), r"binary.*NUL"),
    ("random control characters", "controls.txt",
     lambda p: _write(p, bytes((i * 7) % 32 for i in range(4000)).replace(b"\0", b"\x01")), r"control characters"),
    ("non-UTF-8 text", "latin1.txt", lambda p: _write(p, b"caf\xe9 au lait"), r"0xe9 at offset 3.*UTF-8"),
    ("a FIFO named .txt", "pipe.txt", _fifo, r"not a regular file"),
    ("a link to /dev/zero named .txt", "zero.txt", lambda p: _link(p, "/dev/zero"), r"not a regular file"),
    ("a folder named .pdf", "folder.pdf", lambda p: p.mkdir() or p, r"not a regular file"),
    ("a text file larger than any context", "huge.txt", lambda p: _sparse(p, 1 << 30), r"too large"),
    ("empty PDF (0 bytes)", "empty.pdf", lambda p: _write(p, b""), r"is empty"),
    ("not a PDF", "broken.pdf", lambda p: _write(p, b"%PDF-1.7 this is not really a pdf"), r"damaged or not a PDF"),
    ("encrypted PDF", "locked.pdf", lambda p: _write(p, text_pdf(["secret"], encrypt=True)), r"encrypted"),
    ("image-only PDF", "scan.pdf", lambda p: _write(p, text_pdf(["", ""])), r"no text layer.*OCR"),
    ("PDF without pages", "nopages.pdf", lambda p: _write(p, raw_pdf([b"<< /Type /Catalog >>"])), r"has no pages"),
    ("PDF page tree with a cycle", "cycle.pdf", lambda p: _write(p, raw_pdf(one_page_objects(kids=b"[2 0 R]"))),
     r"damaged.*page tree"),
    ("PDF page tree that is not an array", "kids.pdf", lambda p: _write(p, raw_pdf(one_page_objects(kids=b"5"))),
     r"damaged"),
]


@pytest.mark.parametrize(("case", "name", "make", "message"), BAD_FILES, ids=[row[0] for row in BAD_FILES])
def test_a_bad_file_is_refused_with_a_message_and_a_fix(tmp_path, capfd, case, name, make, message):
    path = tmp_path / name
    if make is not None:
        make(path)
    with pytest.raises(DocumentError, match=message) as info:
        read_within(path, seconds=20)
    assert info.value.fix, "every document error also says what to do"
    assert capfd.readouterr().out == "", "nothing but answers and JSON goes to stdout"


def read_within(path: Path, seconds: float):
    """read_document(path), failing the test if it has not returned within `seconds` (a FIFO would block forever:
    then it is opened for writing and closed, which ends the blocked read)."""
    outcome: dict = {}

    def work():
        try:
            outcome["value"] = read_document(path)
        except BaseException as error:  # handed to the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if path.is_fifo():
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"reading {path.name} did not return within {seconds:.0f} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.mark.parametrize(("encoding", "bom"), [("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff"),
                                               ("utf-16-le", b""), ("utf-16-be", b""), ("utf-8", b"\xef\xbb\xbf")])
def test_utf16_and_utf8_text_is_read_with_or_without_a_byte_order_mark(tmp_path, encoding, bom):
    text = "Keepers' log — the light was lit in 1865.\nÉté: calm sea.\n" * 5
    path = tmp_path / "log.txt"
    path.write_bytes(bom + text.encode(encoding))
    assert read_document(path).text == text


def test_undecodable_utf16_says_it_is_utf16_and_how_to_convert_it(tmp_path):
    path = tmp_path / "odd.txt"
    path.write_bytes(b"\xff\xfe" + "fine text ".encode("utf-16-le") + b"\x00\xd8\x41\x00")  # a lone surrogate
    with pytest.raises(DocumentError, match=r"UTF-16.*cannot be decoded") as info:
        read_document(path)
    assert "UTF-8" in info.value.fix


def test_text_with_a_few_control_characters_is_still_text(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text("\x1b[1mBold\x1b[0m heading\n" + TEXT + "\f")
    assert "Bold" in read_document(path).text


def test_a_pdf_cut_in_half_is_repaired_with_a_warning_naming_the_lost_pages(tmp_path, capfd):
    whole = text_pdf(["Alpha page one", "Beta page two", "Gamma page three"])
    path = tmp_path / "half.pdf"
    path.write_bytes(whole[: len(whole) // 2])
    doc = read_document(path)
    assert "Alpha" in doc.text and "Beta" not in doc.text  # what MuPDF could recover
    (warning,) = doc.warnings
    assert re.search(r"half\.pdf is damaged.*repaired.*pages 2.3.*no text", warning), warning
    assert capfd.readouterr().out == ""


def test_a_pdf_whose_page_tree_loops_below_its_page_is_read_with_a_warning(tmp_path, capfd):
    path = tmp_path / "loop.pdf"
    path.write_bytes(raw_pdf(one_page_objects("Hello from page one", kids=b"[3 0 R 2 0 R]")))
    doc = read_document(path)
    assert doc.text == "Hello from page one"
    (warning,) = doc.warnings
    assert re.search(r"loop\.pdf is damaged; its page tree is broken \(.*cycle in page tree\).*pages may be missing",
                     warning), warning
    assert capfd.readouterr().out == ""


def test_an_intact_pdf_has_no_warnings(tmp_path):
    path = tmp_path / "fine.pdf"
    path.write_bytes(text_pdf(["Alpha", "", "Gamma"]))  # a blank page in an intact PDF is not a loss
    assert read_document(path).warnings == ()


def test_ask_json_on_a_repaired_pdf_prints_valid_json_with_the_warning(tiny_model_dir, tmp_path, capfd):
    from engine.cli import main

    whole = text_pdf(["The light was first lit in 1865 by Anders Brekke. " * 5, "Second page text", "Third"])
    path = tmp_path / "half.pdf"
    # Cut after the last whole object in the first half: MuPDF's bytes differ from run to run (ids, dates), and a
    # cut inside an object header ("9 0 obj" and no more) is one it cannot repair, once in about 200 PDFs.
    path.write_bytes(whole[: whole.rindex(b"endobj\n", 0, len(whole) // 2) + len(b"endobj\n")])
    capfd.readouterr()
    assert main(["ask", str(path), "When was it lit?", "--model", str(tiny_model_dir), *ASK_OPTIONS, "--json"]) == 0
    out, err = capfd.readouterr()  # the file descriptors themselves: MuPDF's C-level output would show here
    answer = json.loads(out)  # MuPDF's messages on stdout would make this invalid
    assert answer["answer"] is not None
    (warning,) = answer["document_warnings"]
    assert "repaired" in warning and "pages 2" in warning
    assert main(["ask", str(path), "When was it lit?", "--model", str(tiny_model_dir), *ASK_OPTIONS]) == 0
    out, err = capfd.readouterr()
    assert "MuPDF" not in out and "damaged" not in out
    assert "warning: half.pdf is damaged; MuPDF repaired it" in err


def test_a_text_far_longer_than_the_context_is_refused_before_it_is_tokenized(tiny_loaded):
    """A 20 MB text against a 2,048-token model: refused from its length alone (the tokenizer would take seconds
    and gigabytes first)."""
    import dataclasses

    from engine.config import EngineConfig
    from engine.errors import ContextTooLongError
    from engine.ingest import Document
    from engine.session import DocumentSession

    class NoLongTexts:
        """The tiny tokenizer, refusing to tokenize anything long."""

        def __init__(self, tokenizer):
            self._tokenizer = tokenizer

        def __getattr__(self, name):
            return getattr(self._tokenizer, name)

        def __call__(self, text, *args, **kwargs):
            assert len(text) < 100_000, "the whole text was tokenized"
            return self._tokenizer(text, *args, **kwargs)

        def apply_chat_template(self, *args, **kwargs):
            raise AssertionError("the whole text was put into the prompt")

    loaded = dataclasses.replace(tiny_loaded, tokenizer=NoLongTexts(tiny_loaded.tokenizer))
    text = "the keepers recorded the weather three times a day. " * 400_000  # 20.8 MB
    with pytest.raises(ContextTooLongError, match=r"at least [\d,]+ tokens.*at most 2,048"):
        DocumentSession(loaded, Document(text, "big", None, "0" * 64), EngineConfig(attention="exact"))


def test_a_text_too_short_to_be_refused_is_checked_without_reading_the_vocabulary(tiny_loaded):
    """Reading a 49K-entry vocabulary costs tens of milliseconds of every reopen; a text that no vocabulary could make
    too long needs none of it. A text at the limit still reads it, and one far over still fails."""
    from engine.errors import ContextTooLongError
    from engine.sizing import NORMALIZER_MARGIN, check_text_length

    class CountedVocabulary:
        def __init__(self, tokenizer):
            self.tokenizer, self.reads = tokenizer, 0

        def get_vocab(self):
            self.reads += 1
            return self.tokenizer.get_vocab()

    tokenizer = CountedVocabulary(tiny_loaded.tokenizer)
    check_text_length("x" * (NORMALIZER_MARGIN * 1_000), tokenizer, max_positions=2_048, reserved=48)
    assert tokenizer.reads == 0
    with pytest.raises(ContextTooLongError):
        check_text_length("x" * 10_000_000, tokenizer, max_positions=2_048, reserved=48)
    assert tokenizer.reads == 1
