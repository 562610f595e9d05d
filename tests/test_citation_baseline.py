"""The citation baseline: found once per document (in the first answer that wants sources), reused by later questions,
kept in the library with the document's cache, and what answers' sources are ranked against."""

from __future__ import annotations

import hashlib

import pytest

import engine.session
from engine.citation_baseline import STAGE, baseline_key
from engine.config import EngineConfig
from engine.errors import CancelledError
from engine.events import CancelToken, Progress
from engine.generate import Finished
from engine.ingest import Document
from engine.session import DocumentSession
from engine.store import Store

TEXT = ("The island is small and has no trees.\n\nThe lighthouse was first lit in 1865 by Anders Brekke.\n\n"
        "The keepers recorded the weather three times a day.\n\nA storm in 1874 cut the island off for seven weeks.")
MODES = {"full": dict(attention="full"), "exact": dict(attention="exact", n_sink=4, n_window=16, top_k=32)}


def document(text: str = TEXT) -> Document:
    return Document(text=text, title="light", source=None, sha256=hashlib.sha256(text.encode()).hexdigest())


def config(mode: str) -> EngineConfig:
    return EngineConfig(**MODES[mode], max_new_tokens=6)


@pytest.fixture
def computed(monkeypatch):
    """The baselines computed (engine.citation_baseline.baseline_steps runs): the tokens their cache held at the
    start."""
    calls = []
    real = engine.session.baseline_steps

    def counting(*args, **kwargs):
        calls.append(args[2].get_seq_length())
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(engine.session, "baseline_steps", counting)
    return calls


def answer(events) -> tuple[Finished, list[str]]:
    """The Finished event and the progress stages seen before it."""
    events = list(events)
    return events[-1], [e.stage for e in events if isinstance(e, Progress)]


@pytest.mark.parametrize("mode", MODES)
def test_the_first_answer_finds_the_baseline_and_later_questions_reuse_it(tiny_loaded, computed, mode):
    session = DocumentSession(tiny_loaded, document(), config(mode))
    chat = session.chat()
    first, stages = answer(chat.ask("When was the light first lit?"))
    assert computed == [session.prefix_tokens] and STAGE in stages  # the document was prefilled first, on its own
    assert 0 < first.stats.citation_baseline_s <= first.stats.ttft_s
    assert first.stats.reused_tokens == 0 and first.stats.prefill_s > 0  # the document's prefill is the answer's
    second, stages = answer(chat.ask("What did the keepers record?"))
    other = session.chat()
    answer(other.ask("When was the storm?"))
    assert len(computed) == 1 and STAGE not in stages and second.stats.citation_baseline_s == 0
    assert second.stats.reused_tokens > first.stats.prompt_tokens  # the follow-up still prefills only itself
    for turn in (*chat.turns, *other.turns):
        sources = turn.answer.sources
        assert sources and all(p.text in TEXT and 0 < p.score <= 1 for p in sources)


@pytest.mark.parametrize("mode", MODES)
def test_the_baseline_is_kept_with_the_cached_document_and_a_reopen_does_not_compute_it(tiny_loaded, computed, mode):
    first = DocumentSession(tiny_loaded, document(), config(mode), store=Store())
    answer(first.chat().ask("When was the light first lit?"))
    assert len(computed) == 1
    reopened = DocumentSession(tiny_loaded, document(), config(mode), store=Store())
    finished, stages = answer(reopened.chat().ask("What did the keepers record?"))
    assert reopened.cached and len(computed) == 1 and STAGE not in stages
    assert reopened._baseline == pytest.approx(first._baseline)
    assert reopened.chats()[0].title == "What did the keepers record?"
    assert reopened.sources(finished)


def test_other_retrieval_settings_compute_their_own_baseline_and_a_removed_cache_takes_it_along(tiny_loaded,
                                                                                                computed):
    answer(DocumentSession(tiny_loaded, document(), config("exact"), store=Store()).chat().ask("Who lit it?"))
    wider = EngineConfig(**{**MODES["exact"], "top_k": 64}, max_new_tokens=6)
    session = DocumentSession(tiny_loaded, document(), wider, store=Store())
    answer(session.chat().ask("Who lit it?"))
    assert len(computed) == 2 and session.cached
    store = Store()
    assert store.db["citation_baselines"].count == 2
    store.delete_document(store.find_document(document().sha256))
    assert store.db["citation_baselines"].count == 0


def test_baseline_key_follows_what_chooses_the_attended_keys():
    base = EngineConfig(attention="retrieval")
    assert baseline_key("retrieval", base) != baseline_key("retrieval", EngineConfig(attention="retrieval", top_k=7))
    assert baseline_key("retrieval", base) != baseline_key("exact", base)
    assert baseline_key("full", base) == baseline_key("full", EngineConfig(top_k=7, n_window=64, temperature=0.5))


def test_a_one_off_question_does_not_compute_the_baseline_until_its_sources_are_asked(tiny_loaded, computed):
    session = DocumentSession(tiny_loaded, document(), config("full"))
    finished, stages = answer(session.ask("When was the light first lit?"))
    assert not computed and STAGE not in stages
    assert session.sources(finished) and len(computed) == 1
    again, _ = answer(session.ask("When was the light first lit?"))
    assert again.token_ids == finished.token_ids  # the cache was left holding the document alone


@pytest.mark.parametrize("mode", MODES)
def test_stopping_during_the_baseline_leaves_the_document_ready_for_the_next_question(tiny_loaded, mode):
    cancel = CancelToken()
    session = DocumentSession(tiny_loaded, document(), config(mode))
    chat = session.chat()
    with pytest.raises(CancelledError):
        for event in chat.ask("When was the light first lit?", cancel):
            if isinstance(event, Progress) and event.stage == STAGE and event.done == 2:
                cancel.cancel()
    assert not chat.turns and session._baseline is None
    cancel.reset()
    finished, stages = answer(chat.ask("When was the light first lit?", cancel))
    fresh, _ = answer(DocumentSession(tiny_loaded, document(), config(mode)).chat().ask("When was the light first "
                                                                                          "lit?"))
    assert STAGE in stages and finished.token_ids == fresh.token_ids and chat.turns[0].answer.sources
