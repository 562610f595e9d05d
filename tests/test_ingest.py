"""Reading documents: text and PDF, page tracking, and a clear message for every bad file."""

import pymupdf
import pytest

from engine.errors import DocumentError
from engine.ingest import read_document


def make_pdf(path, pages, encrypt=False):
    pdf = pymupdf.open()
    for text in pages:
        page = pdf.new_page()
        if text:
            page.insert_text((72, 72), text)
    options = {"encryption": pymupdf.PDF_ENCRYPT_AES_256, "user_pw": "secret", "owner_pw": "o"} if encrypt else {}
    pdf.save(path, **options)
    return path


def test_text_file_is_read_with_normalised_newlines(tmp_path):
    path = tmp_path / "notes.md"
    path.write_bytes("\ufeffFirst line\r\nSecond line é\n".encode())
    doc = read_document(path)
    assert doc.text == "First line\nSecond line é\n"
    assert doc.title == "notes" and doc.pages == 1 and doc.page_of(5) == 1
    assert len(doc.sha256) == 64


def test_undecodable_text_names_the_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9 au lait")
    with pytest.raises(DocumentError, match=r"0xe9 at offset 3.*UTF-8"):
        read_document(path)


def test_pdf_text_keeps_the_page_of_every_character(tmp_path):
    path = make_pdf(tmp_path / "three.pdf", ["Alpha page one", "Beta page two", "Gamma page three"])
    doc = read_document(path)
    assert doc.pages == 3
    for word, page in (("Alpha", 1), ("Beta", 2), ("Gamma", 3)):
        start = doc.text.index(word)
        assert doc.page_of(start) == page
        assert doc.page_of(start + len(word) - 1) == page


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", b"", "is empty"),
        ("blank.md", b"   \n\n  ", "is empty"),
        ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00IHDR", "binary"),
        ("sheet.xlsx", b"PK\x03\x04", "not supported"),
        ("broken.pdf", b"%PDF-1.7 this is not really a pdf", "damaged or not a PDF"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DocumentError, match=message) as info:
        read_document(path)
    assert info.value.fix, "every document error also says what to do"


def test_missing_file(tmp_path):
    with pytest.raises(DocumentError, match="does not exist"):
        read_document(tmp_path / "nowhere.txt")


def test_encrypted_pdf_is_refused_clearly(tmp_path):
    path = make_pdf(tmp_path / "locked.pdf", ["secret text"], encrypt=True)
    with pytest.raises(DocumentError, match="encrypted"):
        read_document(path)


def test_pdf_without_text_layer_says_no_ocr(tmp_path):
    path = make_pdf(tmp_path / "scan.pdf", ["", ""])
    with pytest.raises(DocumentError, match="no text layer.*OCR"):
        read_document(path)


def test_every_document_token_maps_to_its_page_and_characters(tmp_path, tiny_loaded):
    from engine.ingest import token_spans
    from engine.prompt import build_document_prompt

    path = make_pdf(tmp_path / "three.pdf", ["Alpha page one", "Beta page two", "Gamma page three"])
    doc = read_document(path)
    spans = token_spans(doc, tiny_loaded.tokenizer)
    prompt = build_document_prompt(tiny_loaded.tokenizer, doc.text)
    ids = prompt.prefix_ids[prompt.doc_token_start:prompt.doc_token_end]
    assert spans.shape == (len(ids), 3) and spans.dtype.name == "int32"
    for token, (page, start, end) in zip(ids, spans, strict=True):
        assert tiny_loaded.tokenizer.decode([token]) == doc.text[start:end]
        assert page == doc.page_of(start)
    gamma = doc.text.index("Gamma")
    assert {int(p) for p, s, e in spans if gamma <= s < gamma + 5} == {3}
    assert spans[-1, 0] == 3 and spans[0, 0] == 1


def test_spans_index_the_original_text_when_it_starts_with_whitespace(tiny_loaded):
    from engine.ingest import Document, token_spans

    doc = Document("\n\n  fox jumps", "t", None, "0" * 64)
    spans = token_spans(doc, tiny_loaded.tokenizer)
    assert "".join(doc.text[s:e] for _, s, e in spans) == "fox jumps"
