"""engine.page_render: a cited passage's rectangles on its PDF page and a text file's excerpt, from the stored path,
including files that changed or vanished after they were read (no Qt)."""

from __future__ import annotations

import pymupdf
import pytest

from engine.errors import DocumentError
from engine.ingest import read_document
from engine.page_render import PdfPages, text_excerpt

LINES = "The keeper lit the lamp in 1865.\nHe kept a log of every ship.\nPuffins nest on the cliffs."


def write_pdf(path, text: str) -> None:
    pdf = pymupdf.open()
    pdf.new_page().insert_text((72, 90), "A heading line")
    pdf.new_page().insert_text((72, 90), text)
    pdf.save(path)


def boxes(path, phrase: str) -> list[tuple[float, ...]]:
    with pymupdf.open(path) as pdf:
        return [tuple(r) for r in pdf[1].search_for(phrase)]


def covered(rects, box) -> bool:
    return any(r[0] <= box[0] + 1 and r[1] <= box[1] + 1 and r[2] >= box[2] - 1 and r[3] >= box[3] - 1 for r in rects)


def test_the_passage_is_covered_line_by_line_and_the_page_renders_at_its_zoom(tmp_path):
    path = tmp_path / "log.pdf"
    write_pdf(path, LINES)
    with PdfPages(path) as pages:
        rects = pages.passage_rects(2, "The keeper lit the lamp in 1865. He kept a log of every ship.")
        assert len(rects) == 2
        assert covered(rects, boxes(path, "The keeper lit the lamp in 1865.")[0])
        assert covered(rects, boxes(path, "He kept a log of every ship.")[0])
        assert not any(r[3] > boxes(path, "Puffins")[0][1] + 1 for r in rects)
        one, two = pages.render(2, 1.0), pages.render(2, 2.0)
        assert (two.width, two.height) == (2 * one.width, 2 * one.height) == (1190, 1684)  # A4: 595 x 842 points
        assert len(two.samples) == two.stride * two.height


def test_a_changed_page_highlights_the_sentences_still_there(tmp_path):
    path = tmp_path / "log.pdf"
    write_pdf(path, LINES.replace("He kept a log of every ship.", "He kept no log at all."))
    with PdfPages(path) as pages:
        rects = pages.passage_rects(2, "The keeper lit the lamp in 1865. He kept a log of every ship.")
        assert len(rects) == 1 and covered(rects, boxes(path, "The keeper lit the lamp in 1865.")[0])
        assert pages.passage_rects(2, "Nothing of this is on the page at all.") == []
        with pytest.raises(DocumentError, match="no page 7"):
            pages.render(7, 1.0)


def test_a_vanished_file_names_the_problem_and_the_fix(tmp_path):
    with pytest.raises(DocumentError) as error:
        PdfPages(tmp_path / "gone.pdf")
    assert str(tmp_path / "gone.pdf") in str(error.value) and "moved, renamed or deleted" in str(error.value)
    assert "Ctrl+O" in error.value.fix
    with pytest.raises(DocumentError, match="no longer there"):
        text_excerpt(tmp_path / "gone.md", 0, 4, "text")


def test_a_text_excerpt_finds_the_passage_where_the_file_moved_it_and_refuses_when_it_is_gone(tmp_path):
    path = tmp_path / "notes.md"
    path.write_text("Intro.\n\nThe keeper lit the lamp.\n\nEnd.\n", encoding="utf-8")
    text = read_document(path).text
    start = text.index("The keeper")
    excerpt = text_excerpt(path, start, start + 24, "The keeper lit the lamp.")
    assert excerpt.text[excerpt.start:excerpt.end] == "The keeper lit the lamp." and excerpt.text == text
    path.write_text("A new first paragraph.\n\nIntro.\n\nThe keeper  lit\nthe lamp.\n\nEnd.\n", encoding="utf-8")
    moved = text_excerpt(path, start, start + 24, "The keeper lit the lamp.")
    assert moved.text[moved.start:moved.end] == "The keeper  lit\nthe lamp."
    path.write_text("Intro.\n\nEnd.\n", encoding="utf-8")
    with pytest.raises(DocumentError, match="no longer contains the cited text"):
        text_excerpt(path, start, start + 24, "The keeper lit the lamp.")


def test_a_long_text_is_cut_around_the_passage_at_line_ends(tmp_path):
    path = tmp_path / "long.txt"
    lines = [f"line {i:05d}" for i in range(20_000)]
    path.write_text("\n".join(lines), encoding="utf-8")
    text = read_document(path).text
    start = text.index("line 10000")
    excerpt = text_excerpt(path, start, start + 10, "line 10000", context=1_000)
    assert excerpt.cut_before and excerpt.cut_after and excerpt.text[excerpt.start:excerpt.end] == "line 10000"
    assert excerpt.text.startswith("line ") and excerpt.text.endswith(tuple("0123456789"))
    assert 2_000 <= len(excerpt.text) <= 2_100
