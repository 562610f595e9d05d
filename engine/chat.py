"""A conversation about one document: follow-up questions on the cached document prefix, kept in the library.

A Chat belongs to a DocumentSession, which owns the document's cache. The cache holds the document prefix and,
while a chat is live, that chat's turns: a follow-up prefills only its own tokens. Another chat of the same
document, a regenerated answer or an edited question crops the cache back to what they share (never into the
document prefix) and prefills the rest. A chat reopened from the library prefills its turns once, on its first
follow-up. Each finished (or stopped) answer is saved as one transaction (engine.chat_store).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Iterator
from typing import Protocol

import engine.chat_store as chat_store
from engine.chat_store import AnswerVersion, ChatRecord, ChatTurn, new_key
from engine.citations import Passage
from engine.config import EngineConfig
from engine.errors import CancelledError, ChatError, ChatFullError, EmptyQuestionError, FolioError, QuestionTooLongError
from engine.events import CancelToken
from engine.generate import Event, Finished, TokenEvent
from engine.ingest import Document
from engine.model import LoadedModel
from engine.prompt import DocumentPrompt, Turn
from engine.store import Store

DEFAULT_TITLE = "New chat"
TITLE_CHARS = 60


class DocumentSession(Protocol):
    """What a chat needs of its document's session (engine.session.DocumentSession)."""

    loaded: LoadedModel
    document: Document
    config: EngineConfig
    store: Store | None
    prompt: DocumentPrompt
    cache_notices: list[str]

    @property
    def prefix_tokens(self) -> int: ...

    @property
    def document_tokens(self) -> int: ...

    def answer(self, prompt_ids: list[int], cancel: CancelToken | None = None, sources: bool = False
               ) -> Iterator[Event]: ...

    def sources(self, finished: Finished) -> list[Passage]: ...


class Chat:
    """Questions and answers about the session's document. `ask`, `regenerate` and `edit` stream the same events as
    DocumentSession.ask (Progress..., TokenEvent..., Finished); the turn is in `turns` (and in the library, when the
    chat is kept there) once Finished is yielded. A stopped answer (CancelledError) is kept as far as it got.

    persist: keep the chat: its answers' sources are found, and it is saved in the session's library (when it has
        one).
    sources: answer with sources in mind (DocumentSession.answer's `sources`); by default when the chat is kept.
    """

    def __init__(self, session: DocumentSession, record: ChatRecord | None = None, persist: bool = True,
                 sources: bool | None = None) -> None:
        loaded = session.loaded
        self.session = session
        self.record = record or ChatRecord(new_key(), DEFAULT_TITLE, loaded.name, loaded.fingerprint,
                                           loaded.tokenizer_fingerprint)
        self.persist = persist
        self.wants_sources = persist if sources is None else sources
        self.notices: list[str] = []  # what went wrong while saving, for the user

    # -- what the chat is -------------------------------------------------------------------------------
    @property
    def id(self) -> int | None:
        """The chat's id in the library; None until its first turn is saved (or when it is not kept)."""
        return self.record.id

    @property
    def key(self) -> str:
        return self.record.key

    @property
    def title(self) -> str:
        return self.record.title

    @property
    def turns(self) -> list[ChatTurn]:
        return self.record.turns

    @property
    def problem(self) -> str | None:
        """Why the chat cannot take another question (shown with the offer of a new chat), or None."""
        return self._refusal(len(self.turns))

    def _refusal(self, position: int) -> str | None:
        """Why a question at turn `position` cannot be answered in this chat, or None."""
        loaded = self.session.loaded
        if self.record.model_fingerprint != loaded.fingerprint:
            if self.record.model_name == loaded.name:  # the same model with other weights computes other K/V
                return (f"This chat was made with {loaded.name} in other weights (another weights or CPU "
                        "weights setting). Its answers stay readable, but it can be continued only with the weights "
                        "that made it.")
            return (f"This chat was made with the model {self.record.model_name}, and the current model is "
                    f"{loaded.name}. Its answers stay readable, but it cannot be continued on another model.")
        if position > 0 and self.session.prompt.to_question_ids is None:
            return f"Follow-up questions are not possible: {self.session.prompt.follow_up_problem}."
        return None

    @property
    def tokens_used(self) -> int:
        """The chat's context: the document prefix and every turn so far (as the next question's prompt starts)."""
        return len(self.session.prompt.prefix_ids) + len(self._history_ids(len(self.turns)))

    @property
    def context_max(self) -> int:
        return self.session.loaded.max_positions

    # -- asking -----------------------------------------------------------------------------------------
    def ask(self, question: str, cancel: CancelToken | None = None) -> Iterator[Event]:
        """A new turn at the end of the chat."""
        yield from self._answer(len(self.turns), question, cancel, new_version=False)

    def regenerate(self, cancel: CancelToken | None = None) -> Iterator[Event]:
        """Answer the last question again; the earlier answers stay as versions (select_version)."""
        if not self.turns:
            raise ChatError("This chat has no answer to regenerate yet.", "Ask a question first.")
        yield from self._answer(len(self.turns) - 1, self.turns[-1].question, cancel, new_version=True)

    def edit(self, position: int, question: str, cancel: CancelToken | None = None) -> Iterator[Event]:
        """Replace turn `position`'s question and answer it; the turns after it are dropped."""
        if not 0 <= position < len(self.turns):
            raise ChatError(f"This chat has no question {position + 1}.", "Choose one of its questions to edit.")
        yield from self._answer(position, question, cancel, new_version=False)

    def select_version(self, version: int) -> None:
        """Continue the chat from another version of the last answer."""
        if not self.turns or not 0 <= version < len(self.turns[-1].versions):
            raise ChatError("That answer version does not exist.", "Choose one of the versions shown.")
        self.turns[-1].selected = version
        if self._stored():
            chat_store.select_version(self.session.store, self.id, len(self.turns) - 1, version)

    def rename(self, title: str) -> None:
        title = " ".join(title.split())
        if not title:
            raise ChatError("A chat needs a name.", "Type a name for the chat.")
        self.record.title = title
        if self._stored():
            chat_store.rename(self.session.store, self.id, title)

    def delete(self) -> None:
        """Remove the chat from the library (its turns stay in this object)."""
        if self._stored():
            chat_store.delete(self.session.store, self.id)
        self.record.id = None

    def to_markdown(self) -> str:
        """The chat as Markdown (chat_markdown)."""
        return chat_markdown(self.record, self.session.document)

    # -- internals ----------------------------------------------------------------------------------------
    def _stored(self) -> bool:
        return self.persist and self.id is not None and self.session.store is not None

    def _history_ids(self, position: int) -> list[int]:
        turns = [Turn(t.question, t.answer.token_ids) for t in self.turns[:position]]
        return self.session.prompt.turn_ids(self.session.loaded.tokenizer, turns)

    def _answer(self, position: int, question: str, cancel: CancelToken | None, new_version: bool) -> Iterator[Event]:
        question = question.strip()
        if not question:
            raise EmptyQuestionError()
        if (problem := self._refusal(position)) is not None:
            raise ChatError(problem, "Start a new chat on this document.")
        self._check_still_stored()
        session = self.session
        tokenizer = session.loaded.tokenizer
        history = self._history_ids(position)
        question_ids = session.prompt.question_ids(tokenizer, question)
        prompt_ids = session.prompt.prefix_ids + history + question_ids
        self._check_fits(len(history), len(question_ids))
        streamed: list[int] = []
        try:
            for event in session.answer(prompt_ids, cancel, sources=self.wants_sources):
                if isinstance(event, Finished):
                    # a one-off question (persist=False, DocumentSession.ask) leaves the sources to its caller
                    sources = session.sources(event) if self.persist else []
                    self._keep(position, question, new_version, self._version(event, sources))
                elif isinstance(event, TokenEvent):
                    streamed.append(event.token_id)
                yield event
        except CancelledError:
            if streamed:  # a stopped answer is kept as far as it got (the flush event only comes at the end)
                text = tokenizer.decode(streamed, skip_special_tokens=True)
                version = AnswerVersion(text, tuple(streamed), "cancelled", prompt_tokens=len(prompt_ids),
                                        new_tokens=len(streamed), settings=_settings(session),
                                        created_at=time.time())
                self._keep(position, question, new_version, version)
            raise

    def _version(self, finished: Finished, sources) -> AnswerVersion:
        stats = finished.stats
        return AnswerVersion(finished.text, tuple(finished.token_ids), stats.stop_reason, tuple(sources),
                             stats.prompt_tokens, stats.reused_tokens, stats.new_tokens, stats.prefill_s,
                             stats.ttft_s, stats.decode_s, _settings(self.session), time.time())

    def _keep(self, position: int, question: str, new_version: bool, version: AnswerVersion) -> None:
        """Put the answer into the chat (in memory, then in the library in one transaction)."""
        if new_version:
            turn = self.turns[position]
            turn = ChatTurn(turn.question, [*turn.versions, version], len(turn.versions))
        else:
            turn = ChatTurn(question, [version], 0)
        del self.turns[position:]
        self.turns.append(turn)
        if position == 0 and not new_version and self.record.title == DEFAULT_TITLE:
            self.record.title = _title_from(question)
        if not (self.persist and self.session.store is not None):
            return
        try:
            chat_store.save_turn(self.session.store, self.record, self.session.document,
                                 self.session.document_tokens, position, turn)
        except FolioError as error:
            self.notices.append(f"chat not saved: {error}")
            if isinstance(error, ChatError):  # deleted elsewhere: the chat lives on in memory only
                self.record.id = None

    def _check_still_stored(self) -> None:
        if not self._stored():
            return
        if chat_store.find_chat(self.session.store, self.id) is None:
            self.record.id = None
            raise ChatError("This chat is no longer in the library: it was deleted, or its document was removed.",
                            "Start a new chat on this document.")

    def _check_fits(self, history_tokens: int, question_tokens: int) -> None:
        session = self.session
        maximum = session.loaded.max_positions
        reserved = session.config.max_new_tokens
        prefix = session.prefix_tokens
        needed = prefix + history_tokens + question_tokens + reserved
        if not maximum or needed <= maximum:
            return
        if prefix + question_tokens + reserved > maximum:
            raise QuestionTooLongError(prefix + question_tokens + reserved, maximum, prefix, question_tokens, reserved)
        raise ChatFullError(needed, maximum, prefix, history_tokens, question_tokens, reserved)


def chat_markdown(record: ChatRecord, document: Document) -> str:
    """A chat as Markdown: every turn's question, the answer version it continues from, and its sources with pages."""
    made = dt.datetime.fromtimestamp(record.created_at).strftime("%Y-%m-%d %H:%M")
    lines = [f"# {record.title}", "",
             f"Document: {document.title} ({document.pages} page{'s' if document.pages != 1 else ''}) · "
             f"model: {record.model_name} · started {made}", ""]
    for number, turn in enumerate(record.turns, start=1):
        answer = turn.answer
        version = f" (version {turn.selected + 1} of {len(turn.versions)})" if len(turn.versions) > 1 else ""
        lines += [f"## Question {number}", "", _quote(turn.question), "", f"### Answer{version}", "",
                  answer.text.strip() or "(no answer)", ""]
        if answer.stop_reason == "cancelled":
            lines += ["*(stopped)*", ""]
        if answer.sources:
            lines += ["Sources:", ""]
            for passage in answer.sources:
                preview = " ".join(passage.text.split())
                preview = preview if len(preview) <= 200 else preview[:197].rstrip() + "…"
                lines.append(f"- page {passage.page} ({passage.score:.0%}): “{preview}”")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _settings(session: DocumentSession) -> dict:
    """The EngineConfig fields an answer was made with, and the attention mode that answered it and why (for
    config.attention "auto" the session's choice, engine.attention_mode)."""
    return {**dataclasses.asdict(session.config), "attention_used": session.attention.mode,
            "attention_reason": session.attention.reason}


def _title_from(question: str) -> str:
    title = " ".join(question.split())
    return title if len(title) <= TITLE_CHARS else title[: TITLE_CHARS - 1].rstrip() + "…"


def _quote(text: str) -> str:
    return "\n".join("> " + line if line.strip() else ">" for line in text.strip().splitlines())
