"""engine.citations: attention mass per document token -> ranked passages with pages (no Qt, no model)."""

from __future__ import annotations

import re

import pytest

from engine.citations import SpanMap, document_span_map, passage_shares, split_passages, token_mass, top_passages

TEXT = ("The island is small.\n\nThe lighthouse was built in 1863 by Ingrid Solberg.\n\n"
        "Keepers recorded the weather three times a day.")


def word_spans(text: str, first_position: int = 10) -> SpanMap:
    return SpanMap(first_position, [(m.start(), m.end()) for m in re.finditer(r"\S+", text)])


def position_of(spans: SpanMap, text: str, word: str) -> int:
    for i, (start, end) in enumerate(spans.spans):
        if text[start:end].strip(".") == word:
            return spans.first_position + i
    raise AssertionError(word)


def test_split_passages_paragraphs_and_long_ones_at_sentences():
    assert [TEXT[s:e] for s, e in split_passages(TEXT)] == TEXT.split("\n\n")
    long = " ".join(f"Sentence number {i} is here." for i in range(40))
    pieces = split_passages(long, max_chars=120)
    assert all(e - s <= 120 for s, e in pieces)
    assert "".join(long[s:e] for s, e in pieces).replace(" ", "") == long.replace(" ", "")


def test_split_passages_cuts_a_later_long_paragraph_at_its_sentence_ends():
    long = " ".join(f"Sentence number {i} is here." for i in range(40))
    text = f"A short first paragraph.\n\n{long}\n\nThe end."
    pieces = [text[s:e] for s, e in split_passages(text, max_chars=120)]
    assert pieces[0] == "A short first paragraph." and pieces[-1] == "The end."
    assert all(len(p) <= 120 and p.startswith("Sentence") and p.endswith("here.") for p in pieces[1:-1])
    assert " ".join(pieces[1:-1]) == long


def test_token_mass_normalises_each_step():
    mass = token_mass([[(1, 2.0), (2, 2.0)], [(1, 10.0)], [(3, 0.0)]])
    assert mass == pytest.approx({1: 1.5, 2: 0.5})


def test_top_passages_ranks_by_mass_and_maps_pages():
    spans = word_spans(TEXT)
    built, solberg, weather = (position_of(spans, TEXT, w) for w in ("built", "Solberg", "weather"))
    steps = [[(built, 0.5), (solberg, 0.3), (weather, 0.1), (2, 5.0)]] * 3  # position 2: not the document
    page_starts = [0, TEXT.index("Keepers")]

    def page_of(char: int) -> int:
        return 2 if char >= page_starts[1] else 1

    passages = top_passages(steps, spans, TEXT, page_of, top_n=5)
    assert [p.text for p in passages] == ["The lighthouse was built in 1863 by Ingrid Solberg.",
                                          "Keepers recorded the weather three times a day."]
    assert passages[0].page == 1 and passages[1].page == 2
    assert passages[0].score == pytest.approx(0.8 / 0.9)
    assert TEXT[passages[1].start:passages[1].end] == passages[1].text


def test_a_baseline_puts_the_questions_own_passage_above_one_every_answer_attends_to():
    spans = word_spans(TEXT)
    island, built, weather = (position_of(spans, TEXT, w) for w in ("island", "built", "weather"))
    # every answer looks at the opening paragraph the most; this one also at the passage that answers it
    steps = [[(island, 0.6), (built, 0.3), (weather, 0.1)]] * 4
    baseline = token_mass([[(island, 0.8), (built, 0.1), (weather, 0.1)]] * 8)  # a question-agnostic answer

    plain = top_passages(steps, spans, TEXT, lambda _: 1)
    assert plain[0].text == "The island is small."
    specific = top_passages(steps, spans, TEXT, lambda _: 1, baseline=baseline)
    assert [p.text for p in specific] == ["The lighthouse was built in 1863 by Ingrid Solberg."]
    assert specific[0].score == pytest.approx(1.0)  # all of the attention beyond the baseline's went there


def test_baseline_scores_are_parts_of_the_excess_and_equal_attention_falls_back_to_shares():
    spans = word_spans(TEXT)
    island, built, weather = (position_of(spans, TEXT, w) for w in ("island", "built", "weather"))
    steps = [[(island, 0.2), (built, 0.5), (weather, 0.3)]]
    baseline = {island: 0.6, built: 0.2, weather: 0.2}
    passages = top_passages(steps, spans, TEXT, lambda _: 1, baseline=baseline)
    assert [p.text[:4] for p in passages] == ["The ", "Keep"]
    assert [p.score for p in passages] == pytest.approx([0.3 / 0.4, 0.1 / 0.4])
    same = top_passages(steps, spans, TEXT, lambda _: 1, baseline=token_mass(steps))
    assert [p.score for p in same] == pytest.approx([0.5, 0.3, 0.2])


def test_passage_shares_pool_document_tokens_only():
    spans = word_spans(TEXT)
    built = position_of(spans, TEXT, "built")
    passages = split_passages(TEXT)
    assert passage_shares({built: 2.0, 3: 5.0}, spans, passages) == [0.0, 1.0, 0.0]
    assert passage_shares({3: 5.0}, spans, passages) == [0.0, 0.0, 0.0]


def test_top_passages_empty_and_outside_document():
    spans = word_spans(TEXT)
    assert top_passages([], spans, TEXT, lambda _: 1) == []
    assert top_passages([[(0, 1.0), (10_000, 1.0)]], spans, TEXT, lambda _: 1) == []


def test_document_span_map_matches_prompt_tokenisation():
    class Tokenizer:  # offsets like a fast tokenizer over the stripped body
        chat_template, added_tokens_decoder = None, {}

        def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False, split_special_tokens=False):
            matches = list(re.finditer(r"\S+", text))
            return {"input_ids": list(range(len(matches))),
                    "offset_mapping": [(m.start(), m.end()) for m in matches]}

    text = "\n  Hello lighthouse world\n"
    spans = document_span_map(Tokenizer(), text, first_position=7)
    assert spans.get(6) is None and spans.get(10) is None
    start, end = spans.get(8)
    assert text[start:end] == "lighthouse"


def test_document_span_map_with_a_real_tokenizer(tiny_loaded):
    from engine.prompt import build_document_prompt

    text = "The quick brown fox jumps over the lazy dog. A lighthouse stands on the island."
    prompt = build_document_prompt(tiny_loaded.tokenizer, text)
    spans = document_span_map(tiny_loaded.tokenizer, text, prompt.doc_token_start)
    assert len(spans) == prompt.doc_token_end - prompt.doc_token_start
    joined = "".join(text[s:e] for s, e in (spans.get(p) for p in range(prompt.doc_token_start, prompt.doc_token_end)))
    assert joined.replace(" ", "") == text.replace(" ", "")
