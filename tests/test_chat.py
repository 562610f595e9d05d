"""Chats: follow-up questions on the cached document prefix, versions, edits, the library, and bad input."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from engine.chat import Chat
from engine.chat_store import AnswerVersion, ChatTurn
from engine.config import EngineConfig
from engine.errors import (
    CancelledError,
    ChatError,
    ChatFullError,
    ContextTooLongError,
    EmptyQuestionError,
    QuestionTooLongError,
)
from engine.events import CancelToken
from engine.generate import Finished, TokenEvent
from engine.ingest import Document
from engine.prompt import Turn
from engine.session import DocumentSession
from engine.store import Store
from tests.greedy_reference import full_attention_logits

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("The lighthouse on the island was first lit in 1865. The keepers recorded the weather three times a day. "
        "A storm in 1874 cut the island off for seven weeks, but the light never failed. ") * 6
QUESTIONS = ["When was it lit?", "Who kept it?", "And what did you say about the storm?"]
# top_k covers every offloaded key and the K/V stay float32: retrieval must decode exactly like full attention
EXACT = dict(attention="exact", n_sink=4, n_window=16, top_k=4096, kv_dtype="float32", max_new_tokens=8)


def document(text: str = TEXT) -> Document:
    return Document(text=text, title="light", source=None, sha256=hashlib.sha256(text.encode()).hexdigest())


def finished(events) -> Finished:
    return [e for e in events if isinstance(e, Finished)][-1]


def greedy_from_scratch(loaded, prompt_ids: list[int], max_new: int) -> list[int]:
    """Full attention over the whole prompt prefilled at once (no cache reused), greedy."""
    logits = full_attention_logits(loaded.model, torch.tensor(prompt_ids), max_new - 1)
    tokens = [int(step.argmax()) for step in logits]
    for n, token in enumerate(tokens):
        if token in loaded.stop_token_ids:
            return tokens[:n]
    return tokens


def cache_file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "caches").rglob("*")) if p.is_file()}


def test_three_turn_chat_with_covering_top_k_decodes_like_full_attention(tiny_loaded):
    retrieval = DocumentSession(tiny_loaded, document(), EngineConfig(**EXACT)).chat()
    full = DocumentSession(tiny_loaded, document(), EngineConfig(**{**EXACT, "attention": "full"})).chat()
    for question in QUESTIONS:
        got = finished(retrieval.ask(question))
        want = finished(full.ask(question))
        assert got.token_ids == want.token_ids and got.token_ids, question
        assert got.stats.prompt_tokens == want.stats.prompt_tokens
    # the last turn's prompt (document + two earlier turns + question), prefilled from scratch, decodes the same
    prompt = retrieval.session.prompt
    turns = [Turn(t.question, t.answer.token_ids) for t in retrieval.turns[:2]]
    last_prompt = prompt.chat_ids(tiny_loaded.tokenizer, turns, QUESTIONS[2])
    assert len(last_prompt) == retrieval.turns[-1].answer.prompt_tokens
    assert greedy_from_scratch(tiny_loaded, last_prompt, 8) == list(retrieval.turns[-1].answer.token_ids)


@pytest.mark.parametrize("attention", ["exact", "full"])
def test_a_follow_up_prefills_only_its_own_tokens(tiny_loaded, attention):
    chat = DocumentSession(tiny_loaded, document(), EngineConfig(**{**EXACT, "attention": attention})).chat()
    first = finished(chat.ask(QUESTIONS[0]))
    second = finished(chat.ask(QUESTIONS[1]))
    held = first.stats.prompt_tokens + len(first.token_ids)  # the first prompt and its answer stay in the cache
    assert second.stats.reused_tokens == held
    new = len(chat.session.prompt.to_question_ids) + len(
        chat.session.prompt.question_ids(tiny_loaded.tokenizer, QUESTIONS[1]))
    assert second.stats.prefill_tokens == second.stats.prompt_tokens - held == new
    # the chat's own context: both turns and the template's way back to the user, ready for a third question
    assert chat.tokens_used == second.stats.prompt_tokens + len(second.token_ids) + len(
        chat.session.prompt.to_question_ids)


def test_new_chat_regenerate_and_edit_reuse_the_cache_and_leave_the_stored_document_untouched(tiny_loaded):
    store = Store()
    session = DocumentSession(tiny_loaded, document(), EngineConfig(**{**EXACT, "temperature": 1.0}), store=store)
    one = session.chat()
    finished(one.ask(QUESTIONS[0]))
    before = cache_file_hashes(store.root)
    assert before and session.cached is False
    finished(one.ask(QUESTIONS[1]))
    two = session.chat()  # another chat of the same document: back to the prefix, never the document again
    answer = finished(two.ask(QUESTIONS[2]))
    assert answer.stats.reused_tokens == session.prefix_tokens
    regenerated = finished(two.regenerate())  # the same prompt: only its last token is prefilled again
    assert regenerated.stats.prefill_tokens == 1
    assert len(two.turns) == 1 and len(two.turns[0].versions) == 2 and two.turns[0].selected == 1
    back = finished(one.ask("And then?"))  # chat one again: its turns are prefilled, the document is not
    assert back.stats.reused_tokens == session.prefix_tokens
    assert back.stats.prefill_tokens == back.stats.prompt_tokens - session.prefix_tokens
    edited = finished(one.edit(1, "Who lit it?"))  # the chat is cut at the edited question
    assert [t.question for t in one.turns] == [QUESTIONS[0], "Who lit it?"]
    assert edited.stats.reused_tokens >= one.turns[0].answer.prompt_tokens  # the first turn is still cached
    assert cache_file_hashes(store.root) == before


def test_regenerate_keeps_versions_and_the_selected_one_continues_the_chat(tiny_loaded):
    config = EngineConfig(**{**EXACT, "temperature": 5.0})  # sampling: versions differ
    chat = DocumentSession(tiny_loaded, document(), config, store=Store()).chat()
    finished(chat.ask(QUESTIONS[0]))
    for _ in range(2):
        finished(chat.regenerate())
    turn = chat.turns[0]
    assert len(turn.versions) == 3 and turn.selected == 2
    chat.select_version(0)
    follow = finished(chat.ask(QUESTIONS[1]))
    history = chat.session.prompt.prefix_ids + chat.session.prompt.question_ids(tiny_loaded.tokenizer, QUESTIONS[0])
    expected_prompt = len(history) + len(turn.versions[0].token_ids) + len(chat.session.prompt.to_question_ids)
    assert follow.stats.prompt_tokens == expected_prompt + len(
        chat.session.prompt.question_ids(tiny_loaded.tokenizer, QUESTIONS[1]))
    stored = DocumentSession(tiny_loaded, document(), config, store=Store()).chat(chat.id)
    assert [len(t.versions) for t in stored.turns] == [3, 1] and stored.turns[0].selected == 0
    assert stored.turns[0].versions[1].text == turn.versions[1].text


RELOAD = textwrap.dedent("""
    import json, sys
    from engine.config import EngineConfig
    from engine.ingest import Document
    from engine.model import load_model
    from engine.session import DocumentSession
    from engine.store import Store
    model_dir, text, chat_id = sys.argv[1], sys.argv[2], int(sys.argv[3])
    import hashlib
    doc = Document(text=text, title="light", source=None, sha256=hashlib.sha256(text.encode()).hexdigest())
    loaded = load_model(model_dir, device="cpu", dtype="float32", cpu_weights="full")  # as tiny_loaded
    session = DocumentSession(loaded, doc, EngineConfig(**json.loads(sys.argv[4])), store=Store())
    chat = session.chat(chat_id)
    turns = [{"question": t.question, "answers": [list(v.token_ids) for v in t.versions], "selected": t.selected,
              "pages": [[p.page for p in v.sources] for v in t.versions], "stop": t.answer.stop_reason,
              "settings": t.answer.settings["attention"]} for t in chat.turns]
    if len(sys.argv) > 5:  # continue it, and say what was prefilled
        events = list(chat.ask(sys.argv[5]))
        stats = events[-1].stats
        turns.append({"question": sys.argv[5], "answers": [list(events[-1].token_ids)],
                      "reused": stats.reused_tokens, "prefill": stats.prefill_tokens, "cached": session.cached})
    print(json.dumps({"title": chat.title, "turns": turns}))
""")
KILLED_MID_ANSWER = textwrap.dedent("""
    import hashlib, json, sys, time
    from engine.config import EngineConfig
    from engine.generate import TokenEvent
    from engine.ingest import Document
    from engine.model import load_model
    from engine.session import DocumentSession
    from engine.store import Store
    model_dir, text, chat_id = sys.argv[1], sys.argv[2], int(sys.argv[3])
    doc = Document(text=text, title="light", source=None, sha256=hashlib.sha256(text.encode()).hexdigest())
    loaded = load_model(model_dir, device="cpu", dtype="float32", cpu_weights="full")  # as tiny_loaded
    chat = DocumentSession(loaded, doc, EngineConfig(**json.loads(sys.argv[4])), store=Store()).chat(chat_id)
    for event in getattr(chat, sys.argv[5])(*[int(a) if a.isdigit() else a for a in sys.argv[6:]]):
        if isinstance(event, TokenEvent):
            print("ANSWERING", flush=True)
            time.sleep(120)
""")


def run_script(script: str, *args, **kwargs) -> subprocess.CompletedProcess | subprocess.Popen:
    command = [sys.executable, "-c", script, *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if kwargs.get("background"):
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def test_a_chat_round_trips_through_the_library_and_continues_in_a_new_process(tiny_loaded, tiny_model_dir):
    config = EngineConfig(**EXACT)
    session = DocumentSession(tiny_loaded, document(), config, store=Store())
    chat = session.chat()
    for question in QUESTIONS[:2]:
        finished(chat.ask(question))
    assert chat.id is not None and chat.title == QUESTIONS[0]
    options = json.dumps({k: v for k, v in EXACT.items()})
    reloaded = json.loads(run_script(RELOAD, tiny_model_dir, TEXT, chat.id, options, QUESTIONS[2]).stdout)
    assert reloaded["title"] == QUESTIONS[0]
    assert [t["question"] for t in reloaded["turns"]] == QUESTIONS
    for here, there in zip(chat.turns, reloaded["turns"], strict=False):
        assert there["answers"] == [list(v.token_ids) for v in here.versions]
        assert there["pages"] == [[p.page for p in v.sources] for v in here.versions]
        assert there["settings"] == "exact"
    follow = reloaded["turns"][2]
    # the reopened chat's document came from the library: only its turns and the new question were prefilled
    assert follow["cached"] is True and follow["reused"] == session.prefix_tokens
    live = finished(chat.ask(QUESTIONS[2]))  # the same follow-up in the live chat
    assert follow["answers"] == [live.token_ids]
    assert follow["prefill"] == live.stats.prompt_tokens - session.prefix_tokens


@pytest.mark.parametrize("action", ["ask", pytest.param("regenerate", marks=pytest.mark.slow),
                                    pytest.param("edit", marks=pytest.mark.slow)])
def test_kill_9_during_an_answer_leaves_the_chat_as_it_was_before_that_turn(tiny_loaded, tiny_model_dir, action):
    session = DocumentSession(tiny_loaded, document(), EngineConfig(**EXACT), store=Store())
    chat = session.chat()
    for question in QUESTIONS[:2]:
        finished(chat.ask(question))
    before = [(t.question, [v.token_ids for v in t.versions], t.selected) for t in chat.turns]
    args = {"ask": ["ask", "A new question?"], "regenerate": ["regenerate"], "edit": ["edit", "0", "Edited?"]}[action]
    process = run_script(KILLED_MID_ANSWER, tiny_model_dir, TEXT, chat.id, json.dumps(EXACT), *args, background=True)
    try:
        assert process.stdout.readline().strip() == "ANSWERING", process.stderr.read()
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    again = DocumentSession(tiny_loaded, document(), EngineConfig(**EXACT), store=Store()).chat(chat.id)
    assert [(t.question, [v.token_ids for v in t.versions], t.selected) for t in again.turns] == before
    assert finished(again.ask(QUESTIONS[2])).token_ids  # and it goes on


def test_a_stopped_answer_is_kept_as_far_as_it_got_and_the_chat_goes_on(tiny_loaded):
    config = EngineConfig(**{**EXACT, "max_new_tokens": 12})
    reference = DocumentSession(tiny_loaded, document(), config).chat()
    chat = DocumentSession(tiny_loaded, document(), config, store=Store()).chat()
    cancel = CancelToken()
    streamed = []
    with pytest.raises(CancelledError):
        for event in chat.ask(QUESTIONS[0], cancel):
            if isinstance(event, TokenEvent):
                streamed.append(event.token_id)
                if len(streamed) == 3:
                    cancel.cancel()
    assert len(chat.turns) == 1 and chat.turns[0].answer.stop_reason == "cancelled"
    assert list(chat.turns[0].answer.token_ids) == streamed == list(finished(reference.ask(QUESTIONS[0])).token_ids[:3])
    follow = finished(chat.ask(QUESTIONS[1]))  # the cache held all but the last streamed token: consistent
    assert follow.stats.reused_tokens == chat.turns[0].answer.prompt_tokens + 2
    assert DocumentSession(tiny_loaded, document(), config, store=Store()).chat(chat.id).turns[0].answer.stop_reason \
        == "cancelled"


def test_export_holds_every_turn_with_its_sources_and_pages(tiny_loaded):
    text = "The lighthouse was lit in 1865.\n\nPuffins nest on the cliffs below it.\n\n" * 8
    pages = Document(text=text, title="light", source=None, sha256="1" * 64, page_starts=(0, len(text) // 2))
    chat = DocumentSession(tiny_loaded, pages, EngineConfig(**{**EXACT, "n_window": 8}), store=Store()).chat()
    for question in QUESTIONS:
        finished(chat.ask(question))
    markdown = chat.to_markdown()
    assert markdown.startswith(f"# {QUESTIONS[0]}\n") and "Document: light (2 pages)" in markdown
    for number, turn in enumerate(chat.turns, start=1):
        assert f"## Question {number}\n\n> {turn.question}" in markdown
        assert turn.answer.text.strip() in markdown
        assert turn.answer.sources
        for passage in turn.answer.sources:
            assert f"- page {passage.page} (" in markdown
    assert markdown.count("## Question") == 3


def test_bad_questions_are_refused_with_what_to_do(tiny_loaded):
    session = DocumentSession(tiny_loaded, document(), EngineConfig(**{**EXACT, "max_new_tokens": 600}))
    chat = session.chat()
    for empty in ("", "   \n\t "):
        with pytest.raises(EmptyQuestionError, match="empty"):
            next(chat.ask(empty))
    with pytest.raises(QuestionTooLongError, match="shorter question") as too_long:
        next(chat.ask("why is that so? " * 400))
    assert isinstance(too_long.value, ContextTooLongError) and "document" not in too_long.value.fix
    long_answer = AnswerVersion("x", (200,) * 1000, "max_new_tokens")  # as if the model had said a lot
    chat.turns.append(ChatTurn("Tell me everything.", [long_answer]))
    with pytest.raises(ChatFullError) as full:
        next(chat.ask(QUESTIONS[1]))
    message = str(full.value)
    assert "This chat is full" in message and "earlier turns" in message and "new chat" in message
    assert f"at most {tiny_loaded.max_positions:,}" in message and full.value.needed > full.value.maximum
    assert f"lower the answer length to at most {600 - (full.value.needed - full.value.maximum):,}" in message
    next(session.chat().ask(QUESTIONS[1]))  # the same question in a new chat is not refused


def test_a_chat_of_a_removed_document_or_another_model_says_so(tiny_loaded):
    store = Store()
    session = DocumentSession(tiny_loaded, document(), EngineConfig(**EXACT), store=store)
    chat = session.chat()
    finished(chat.ask(QUESTIONS[0]))
    chat_id = chat.id
    other = session.chat()
    finished(other.ask(QUESTIONS[1]))
    store.db.execute("UPDATE chats SET model_fingerprint = 'another', model_name = 'OtherLM' WHERE id = ?",
                     [other.id])
    store.db.conn.commit()
    reopened = session.chat(other.id)
    assert "OtherLM" in reopened.problem and reopened.turns  # readable, not continuable
    with pytest.raises(ChatError, match="OtherLM.*new chat"):
        next(reopened.ask("More?"))
    assert store.delete_document(store.find_document(document().sha256))
    assert store.db.execute("SELECT count(*) FROM chats").fetchone()[0] == 0  # chats go with their document
    assert store.db.execute("SELECT count(*) FROM chat_answers").fetchone()[0] == 0
    with pytest.raises(ChatError, match="no longer in the library.*new chat"):
        next(chat.ask(QUESTIONS[1]))
    with pytest.raises(ChatError, match="no chat"):
        session.chat(chat_id)
    fresh = session.chat()  # the offered way out: a new chat (the document joins the library again)
    assert finished(fresh.ask(QUESTIONS[1])).token_ids and fresh.id is not None


def test_chats_rename_delete_and_list_per_document(tiny_loaded):
    store = Store()
    session = DocumentSession(tiny_loaded, document(), EngineConfig(**EXACT), store=store)
    first, second = session.chat(), session.chat()
    assert isinstance(first, Chat) and first.key != second.key and first.id is None
    assert session.chats() == []  # a chat is stored with its first answer
    finished(first.ask(QUESTIONS[0]))
    finished(second.ask(QUESTIONS[1]))
    first.rename("  Lighting   dates ")
    assert [(c.title, c.turns) for c in session.chats()] == [(QUESTIONS[1], 1), ("Lighting dates", 1)]
    second.delete()
    assert [c.key for c in session.chats()] == [first.key]
    assert session.chat(first.key).title == "Lighting dates"
    with pytest.raises(ChatError):
        first.rename("   ")


@pytest.mark.parametrize("attention", ["exact", "full"])
def test_a_question_on_a_ready_document_reports_reading_the_question_not_the_document(tiny_loaded, attention):
    session = DocumentSession(tiny_loaded, document(), EngineConfig(**{**EXACT, "attention": attention}))
    list(session.prepare())
    chat = session.chat()
    for question in QUESTIONS[:2]:  # the first question on the prepared document, then a follow-up
        stages = {e.stage for e in chat.ask(question) if hasattr(e, "stage")}
        assert stages - {"citation baseline"} == {"question"}, question  # the baseline: once, in the first answer
