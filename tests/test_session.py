"""A document session: context check before any work, and the prefix reused across questions."""

import pytest

from engine.config import EngineConfig
from engine.errors import ContextTooLongError
from engine.generate import Finished
from engine.ingest import Document
from engine.session import DocumentSession


def document(text):
    return Document(text=text, title="t", source=None, sha256="0" * 64)


def answer(session, question):
    return [e for e in session.ask(question) if isinstance(e, Finished)][-1]


def test_second_question_prefills_only_its_own_tokens(tiny_loaded):
    session = DocumentSession(tiny_loaded, document("the quick brown fox " * 20), EngineConfig(max_new_tokens=8))
    first = answer(session, "what jumps?")
    second = answer(session, "what jumps?")
    assert first.stats.reused_tokens == 0
    assert second.stats.reused_tokens == session.prefix_tokens
    assert second.token_ids == first.token_ids  # the reused prefix gives the same answer


def test_a_document_longer_than_the_context_is_refused_with_counts(tiny_loaded):
    long_text = "lighthouse keepers recorded the weather " * 400
    with pytest.raises(ContextTooLongError, match=r"need [\d,]+ tokens .* at most 2,048") as info:
        DocumentSession(tiny_loaded, document(long_text), EngineConfig(max_new_tokens=16))
    assert info.value.needed > info.value.maximum == 2048


def test_question_that_overflows_is_refused_before_prefill(tiny_loaded):
    session = DocumentSession(tiny_loaded, document("short document"), EngineConfig(max_new_tokens=1800))
    with pytest.raises(ContextTooLongError):
        next(session.ask("why? " * 300))
