"""Chats in the document library: chats, turns, answer versions, their sources, timings and settings (SQLite).

The tables come from engine.store's migration 2. A chat row is written with its first turn; each turn (a new
question, a regenerated answer, an edited question with the turns after it dropped) is one transaction written
after its answer is complete, so a process killed mid-answer leaves the chat exactly as it was before that turn.
Deleting a document deletes its chats (ON DELETE CASCADE). No torch.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from engine.citations import Passage
from engine.errors import ChatError, StoreError
from engine.ingest import Document
from engine.store import Store


@dataclass(frozen=True)
class AnswerVersion:
    """One answer to a turn's question, as made: text, token ids, why it stopped, sources, timings, settings."""

    text: str
    token_ids: tuple[int, ...]
    stop_reason: str  # stop_token, max_new_tokens, context_full or cancelled
    sources: tuple[Passage, ...] = ()
    prompt_tokens: int = 0
    reused_tokens: int = 0  # of the prompt, already in the cache (not prefilled again)
    new_tokens: int = 0
    prefill_s: float = 0.0
    ttft_s: float = 0.0
    decode_s: float = 0.0
    settings: dict = field(default_factory=dict)  # the EngineConfig fields it was made with
    created_at: float = 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first, per second (as GenerationStats counts them)."""
        return (self.new_tokens - 1) / self.decode_s if self.new_tokens > 1 and self.decode_s > 0 else 0.0


@dataclass
class ChatTurn:
    """A question and its answer versions; `selected` is the version the chat continues from."""

    question: str
    versions: list[AnswerVersion]
    selected: int = 0

    @property
    def answer(self) -> AnswerVersion:
        return self.versions[self.selected]


@dataclass
class ChatRecord:
    """A chat as stored. id is None until its first turn is saved; key is stable from creation on."""

    key: str
    title: str
    model_name: str
    model_fingerprint: str
    tokenizer_fingerprint: str
    turns: list[ChatTurn] = field(default_factory=list)
    id: int | None = None
    document_id: int | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ChatSummary:
    """A chat as a list shows it."""

    id: int
    key: str
    document_id: int
    title: str
    turns: int
    model_name: str
    model_fingerprint: str
    created_at: float
    updated_at: float


def new_key() -> str:
    return uuid.uuid4().hex


def save_turn(store: Store, record: ChatRecord, document: Document, document_tokens: int, position: int,
              turn: ChatTurn) -> None:
    """Write `turn` at `position` of the chat in one transaction: the chat row (first turn), the turn, its selected
    answer version with its sources; turns after `position` are dropped (an edited question). `turn.versions`
    holds every version; versions already stored are kept. Sets record.id and record.document_id."""
    now = time.time()
    try:
        with store.transaction() as db:
            doc_id = store.add_document(document, document_tokens)  # the document may have been removed meanwhile
            if record.id is not None and _chat_row(db, record.id) is None:
                raise ChatError("This chat was deleted from the library meanwhile, so its new answer is not saved.",
                                "Start a new chat.")
            if record.id is None:
                record.id = int(db["chats"].insert({
                    "key": record.key, "document_id": doc_id, "title": record.title,
                    "model_name": record.model_name, "model_fingerprint": record.model_fingerprint,
                    "tokenizer_fingerprint": record.tokenizer_fingerprint, "created_at": record.created_at,
                    "updated_at": now}).last_pk)
            record.document_id = doc_id
            db.execute("DELETE FROM chat_turns WHERE chat_id = ? AND position > ?", [record.id, position])
            stored = db.execute("SELECT count(*) FROM chat_answers WHERE chat_id = ? AND position = ?",
                                [record.id, position]).fetchone()[0]
            if stored > len(turn.versions) - 1 or (stored and _turn_question(db, record.id, position) != turn.question):
                db.execute("DELETE FROM chat_turns WHERE chat_id = ? AND position = ?", [record.id, position])
                stored = 0
            db["chat_turns"].upsert({"chat_id": record.id, "position": position, "question": turn.question,
                                     "selected_version": turn.selected}, pk=("chat_id", "position"))
            for version in range(stored, len(turn.versions)):
                _insert_answer(db, record.id, position, version, turn.versions[version])
            db.execute("UPDATE chats SET updated_at = ? WHERE id = ?", [now, record.id])
    except sqlite3.Error as error:
        raise StoreError(f"The chat could not be saved ({error}).", "The answer is shown but not kept; check the "
                         "disk and try again.") from error
    record.updated_at = now


def select_version(store: Store, chat_id: int, position: int, version: int) -> None:
    with store.transaction() as db:
        db.execute("UPDATE chat_turns SET selected_version = ? WHERE chat_id = ? AND position = ?",
                   [version, chat_id, position])


def rename(store: Store, chat_id: int, title: str) -> None:
    with store.transaction() as db:
        db.execute("UPDATE chats SET title = ? WHERE id = ?", [title, chat_id])  # the order stays by last answer


def delete(store: Store, chat_id: int) -> bool:
    """Remove a chat with its turns, answers and sources. False if it did not exist."""
    with store.transaction() as db:
        return bool(db.execute("DELETE FROM chats WHERE id = ?", [chat_id]).rowcount)


def list_chats(store: Store, document_id: int | None = None) -> list[ChatSummary]:
    """The library's chats (of one document when given), most recently updated first."""
    where, params = ("WHERE c.document_id = ?", [document_id]) if document_id is not None else ("", [])
    rows = store.db.execute(f"""
        SELECT c.id, c.key, c.document_id, c.title,
               (SELECT count(*) FROM chat_turns t WHERE t.chat_id = c.id),
               c.model_name, c.model_fingerprint, c.created_at, c.updated_at
        FROM chats c {where} ORDER BY c.updated_at DESC, c.id DESC""", params).fetchall()
    return [ChatSummary(*row) for row in rows]


def find_chat(store: Store, chat: int | str) -> int | None:
    """The id of the chat with id or key `chat`, None when the library has none."""
    column = "id" if isinstance(chat, int) else "key"
    row = store.db.execute(f"SELECT id FROM chats WHERE {column} = ?", [chat]).fetchone()
    return int(row[0]) if row else None


def load_chat(store: Store, chat_id: int) -> ChatRecord:
    """The stored chat with its turns, versions and sources (passage text read from the stored document)."""
    row = _chat_row(store.db, chat_id)
    if row is None:
        raise ChatError(f"The library has no chat {chat_id}: it was deleted, or its document was removed.",
                        "List the chats with `python -m engine library chats DOCUMENT_ID`, or start a new chat.")
    document = store.load_document(row["document_id"])
    record = ChatRecord(row["key"], row["title"], row["model_name"], row["model_fingerprint"],
                        row["tokenizer_fingerprint"], id=row["id"], document_id=row["document_id"],
                        created_at=row["created_at"], updated_at=row["updated_at"])
    sources: dict[tuple[int, int], list[Passage]] = {}
    for position, version, page, start, end, share in store.db.execute(
            "SELECT position, version, page, char_start, char_end, share FROM chat_sources WHERE chat_id = ? "
            "ORDER BY position, version, rank", [chat_id]):
        sources.setdefault((position, version), []).append(Passage(page, start, end, document.text[start:end], share))
    answers: dict[int, list[AnswerVersion]] = {}
    for answer in store.db.query("SELECT * FROM chat_answers WHERE chat_id = ? ORDER BY position, version",
                                 [chat_id]):
        key = (answer["position"], answer["version"])
        answers.setdefault(answer["position"], []).append(AnswerVersion(
            answer["text"], tuple(np.frombuffer(answer["token_ids"], dtype=np.int32).tolist()), answer["stop_reason"],
            tuple(sources.get(key, ())), answer["prompt_tokens"], answer["reused_tokens"], answer["new_tokens"],
            answer["prefill_s"], answer["ttft_s"], answer["decode_s"], json.loads(answer["settings"]),
            answer["created_at"]))
    for turn in store.db.query("SELECT * FROM chat_turns WHERE chat_id = ? ORDER BY position", [chat_id]):
        versions = answers.get(turn["position"], [])
        if not versions:  # cannot happen through save_turn; never show a turn without an answer
            break
        record.turns.append(ChatTurn(turn["question"], versions, min(turn["selected_version"], len(versions) - 1)))
    return record


def _insert_answer(db, chat_id: int, position: int, version: int, answer: AnswerVersion) -> None:
    db["chat_answers"].insert({
        "chat_id": chat_id, "position": position, "version": version, "text": answer.text,
        "token_ids": np.asarray(answer.token_ids, dtype=np.int32).tobytes(), "stop_reason": answer.stop_reason,
        "prompt_tokens": answer.prompt_tokens, "reused_tokens": answer.reused_tokens,
        "new_tokens": answer.new_tokens, "prefill_s": answer.prefill_s, "ttft_s": answer.ttft_s,
        "decode_s": answer.decode_s, "settings": json.dumps(answer.settings, sort_keys=True),
        "created_at": answer.created_at})
    db["chat_sources"].insert_all([
        {"chat_id": chat_id, "position": position, "version": version, "rank": rank, "page": passage.page,
         "char_start": passage.start, "char_end": passage.end, "share": passage.score}
        for rank, passage in enumerate(answer.sources)])


def _chat_row(db, chat_id: int) -> dict | None:
    rows = list(db.query("SELECT * FROM chats WHERE id = ?", [chat_id]))
    return rows[0] if rows else None


def _turn_question(db, chat_id: int, position: int) -> str | None:
    row = db.execute("SELECT question FROM chat_turns WHERE chat_id = ? AND position = ?",
                     [chat_id, position]).fetchone()
    return row[0] if row else None
