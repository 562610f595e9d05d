"""engine.grounding: an answer's numbers, codes and names checked against the passages it cites (no Qt, no model)."""

from __future__ import annotations

from engine.grounding import NAME, NUMBER, answer_facts, unsupported_facts

CITED = ["The island is small.\n\nThe light was first lit in 1865 by Anders Brekke, the first head keeper. He served "
         "until 1891.", "The fog signal cost 12,400 kroner. Its code on the charts was FS-21."]


def texts(answer: str, passages=CITED) -> list[str]:
    return [fact.text for fact in unsupported_facts(answer, passages)]


def test_a_year_the_passages_lack_is_unsupported_with_the_cited_year_nearest():
    [fact] = unsupported_facts("The light was first lit in 1863.", CITED)
    assert (fact.text, fact.kind) == ("1863", NUMBER)
    assert CITED[fact.passage][fact.start:fact.end] == ("The light was first lit in 1865 by Anders Brekke, the first "
                                                        "head keeper.")
    assert texts("The light was first lit in 1865.") == []


def test_names_must_be_in_the_passages_word_by_word():
    assert texts("The first head keeper was Anders Holm.") == ["Anders Holm"]
    assert texts("The first head keeper was Anders Brekke.") == []
    assert texts("Brekke's post was head keeper.") == []  # a possessive, one word of the name
    assert texts("Head keeper ANDERS  BREKKE lit it.") == []  # case and whitespace do not matter
    assert texts("Ingrid Solberg designed it.") == ["Ingrid Solberg"]


def test_numbers_are_compared_without_thousands_separators_and_codes_without_dashes():
    assert texts("It cost 12400 kroner.") == []
    assert texts("It cost 12\u202f400 kroner, charted as FS21.") == []
    assert texts("It cost 12,500 kroner, charted as FS-22.") == ["12,500", "FS-22"]
    assert texts("He served until 189.") == ["189"]  # not a piece of 1891


def test_common_sentence_starters_page_references_and_list_numbers_are_not_facts():
    answer = ("According to the document, **the answer** is on page 3. It explains the point:\n\n"
              "1. First, the main fact;\n2. Second, its context.")
    assert answer_facts(answer) == []
    assert [f.text for f in answer_facts("However, Brekke lit it in the 1860s.")] == ["Brekke", "1860"]
    assert answer_facts("Brekke lit it.")[0].kind == NAME


def test_small_numbers_may_be_written_as_words_and_nothing_is_checked_without_sources():
    assert texts("It is 1 island.", ["It is one island."]) == []
    assert texts("The light was first lit in 1863.", []) == []


def test_the_nearest_sentence_of_a_pdf_passage_runs_over_its_line_ends():
    passage = ("The keepers lived there. They\nkept a log.\nThe keepers\nThe first head keeper was Anders Brekke, a "
               "former\nmate from Bergen. He left.")
    [fact] = unsupported_facts("The first head keeper was Anders Holm.", [passage])
    assert passage[fact.start:fact.end] == "The first head keeper was Anders Brekke, a former\nmate from Bergen."
