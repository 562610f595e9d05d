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
    second = answer(session, "Is it lazy?")
    again = answer(session, "what jumps?")
    assert first.stats.reused_tokens == 0
    assert second.stats.reused_tokens == session.prefix_tokens  # the earlier question is not part of this one
    assert again.token_ids == first.token_ids  # the reused prefix gives the same answer


@pytest.mark.parametrize("attention", ["full", "retrieval"])
def test_a_caller_that_stops_reading_keeps_the_document_ready(tiny_loaded, attention):
    """Leaving the events unread after the answer (or mid-answer, as a caller that has what it needs may) closes the
    generator between steps: the document's cache stays, so the next question prefills only itself."""
    session = DocumentSession(tiny_loaded, document("the quick brown fox " * 60),
                              EngineConfig(attention=attention, max_new_tokens=8))
    for event in session.ask("what jumps?"):
        if isinstance(event, Finished):
            break  # the generator is closed while it waits at its last yield
    events = session.ask("Is it lazy?")
    next(events)  # one event, then dropped mid-answer
    events.close()
    third = answer(session, "what jumps?")
    assert third.stats.reused_tokens == session.prefix_tokens


def test_a_document_longer_than_the_context_is_refused_with_counts(tiny_loaded):
    long_text = "lighthouse keepers recorded the weather " * 400
    with pytest.raises(ContextTooLongError, match=r"need [\d,]+ tokens .* at most 2,048") as info:
        DocumentSession(tiny_loaded, document(long_text), EngineConfig(max_new_tokens=16))
    assert info.value.needed > info.value.maximum == 2048


def test_question_that_overflows_is_refused_before_prefill(tiny_loaded):
    session = DocumentSession(tiny_loaded, document("short document"), EngineConfig(max_new_tokens=1800))
    with pytest.raises(ContextTooLongError):
        next(session.ask("why? " * 300))


@pytest.mark.parametrize("attention", ["full", "exact"])
def test_prepare_readies_the_prefix_so_the_first_question_prefills_only_itself(tiny_loaded, attention):
    config = EngineConfig(attention=attention, n_sink=4, n_window=16, max_new_tokens=6)
    text = "the keeper lit the lamp every night " * 12
    prepared = DocumentSession(tiny_loaded, document(text), config)
    assert not prepared.ready and prepared.cache_size_bytes() == 0
    events = list(prepared.prepare())
    assert events and prepared.ready and prepared.cache_size_bytes() > 0
    first = answer(prepared, "who lit it?")
    assert first.stats.reused_tokens == prepared.prefix_tokens
    assert first.token_ids == answer(DocumentSession(tiny_loaded, document(text), config), "who lit it?").token_ids


def test_a_retrieval_cache_counts_each_tensor_storage_once(tiny_loaded):
    session = DocumentSession(tiny_loaded, document("puffins nest on the cliffs " * 30),
                              EngineConfig(attention="exact", n_sink=4, n_window=16, kv_dtype="float32"))
    list(session.prepare())
    layer = session.cache.layers[0]
    # float32 K/V [H_kv, T, D]: the values once (the offloaded values are a view of them), the offloaded keys, the
    # static keys on the device and their CPU copy, and the float16 training queries
    per_layer = (layer.prefix_values.nbytes + layer.off_keys.nbytes + layer.static_k.nbytes + layer.static_v.nbytes
                 + layer.static_prefix_k.nbytes + layer.train_queries.nbytes)
    assert session.cache.nbytes() == per_layer * len(session.cache.layers) == session.cache_size_bytes()


def test_sources_point_at_the_document_for_both_attentions(tiny_loaded):
    text = "The lighthouse was lit in 1865.\n\nPuffins nest on the cliffs below it."
    for attention in ("full", "exact"):
        session = DocumentSession(tiny_loaded, document(text), EngineConfig(attention=attention, n_sink=2,
                                                                              n_window=4, max_new_tokens=4))
        finished = [e for e in session.ask("When was it lit?", sources=True) if isinstance(e, Finished)][-1]
        sources = session.sources(finished)
        assert sources and all(p.text in text and 0 < p.score <= 1 for p in sources), attention
