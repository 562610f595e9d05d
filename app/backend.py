"""The app's one door into the engine: the EngineBackend protocol, its result types, the real backend, and the
engine names the rest of the app uses (re-exported here, so that only this module and app/worker.py import
`engine`, and only through `engine.__all__`).

Qt-free. The backend runs entirely on the worker thread; the GUI only sees the plain dataclasses below,
never torch objects. Long calls report through `progress` (Progress) and stop at the next chunk/token/layer
once `cancel` is set (CancelledError).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

# Only names that do not import torch at module level: app/runtime/startup.py and app/frozen.py run before torch is
# imported (a downloaded CUDA build must come first). The model, the session and the store are imported where used.
from engine import (
    CPU_WEIGHTS,
    DTYPES,
    GIB,
    MAX_ANSWER_TOKENS,
    WEIGHTS,
    CancelledError,
    CancelToken,
    ChatError,
    Document,
    DocumentError,
    EngineConfig,
    FitReport,
    FolioError,
    LibraryConfig,
    LibraryDamagedError,
    Machine,
    ModelChoice,
    ModelError,
    ModelFit,
    ModelShape,
    Passage,
    PdfPages,
    Progress,
    ProgressCallback,
    ProgressMeter,
    SpanMap,
    StoreError,
    UnsupportedFact,
    card,
    check_text_length,
    default_model_gguf,
    estimate_fit,
    find_entry,
    format_bytes,
    gated_error,
    is_pdf,
    memory_in_use,
    model_choices,
    read_document,
    reset_damaged_library,
    supported_suffixes,
    text_excerpt,
    top_passages,
    unsupported_facts,
    use_bundled_default_model,
)

if TYPE_CHECKING:
    from engine import AnswerVersion, Chat, ChatRecord, DocumentSession, LoadedModel, SettingsCost, Store

__all__ = [  # the engine names the app may use, besides this module's own
    "CPU_WEIGHTS", "DTYPES", "GIB", "MAX_ANSWER_TOKENS", "WEIGHTS", "CancelToken", "CancelledError", "ChatError",
    "Document", "EngineConfig", "FitReport", "FolioError", "LibraryConfig", "Machine", "ModelChoice", "ModelError",
    "ModelFit", "ModelShape", "Passage", "PdfPages", "Progress", "ProgressCallback", "ProgressMeter",
    "SpanMap", "UnsupportedFact", "card", "default_model_gguf", "estimate_fit", "find_entry",
    "format_bytes", "gated_error", "is_pdf", "model_choices", "read_document", "supported_suffixes", "text_excerpt",
    "top_passages", "unsupported_facts", "use_bundled_default_model",
]

TokenCallback = Callable[[str], None]


def model_words(spec: str) -> str:
    """A model setting ("default", a catalog id, a hub id, a folder) as a reader knows the model: its catalog name,
    else the hub id, else the folder's name."""
    if entry := find_entry(spec):
        return entry.name
    return spec if spec.count("/") == 1 and not Path(spec).exists() else Path(spec).name or spec


@dataclass(frozen=True)
class LibraryEntry:
    """One document of the library, as the side panel lists it."""

    id: str
    title: str
    pages: int
    tokens: int
    cached: bool = False
    cache_bytes: int = 0
    last_used: float = 0.0  # time.time()
    source: str = ""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    device: str
    dtype: str
    max_positions: int
    load_s: float = 0.0
    weights: str = "full"  # EngineConfig.weights the model was loaded with
    library_damaged: str = ""  # the library's database is damaged: the message (the window offers a new library)
    device_words: str = ""  # the device in words: "the CPU", "the GPU (NVIDIA …)"


@dataclass(frozen=True)
class OpenedDocument:
    """A document read and tokenised, with its fit check; nothing heavy done yet."""

    id: str
    title: str
    pages: int
    tokens: int
    source: str
    fit: FitReport
    cached: bool = False  # its cache is already built (reopening): ready at once
    warnings: tuple[str, ...] = ()  # what reading the file could not do fully (a damaged PDF's lost pages)


@dataclass(frozen=True)
class PreparedDocument:
    id: str
    cache_bytes: int
    seconds: float
    from_cache: bool
    notice: str = ""  # e.g. "cache rebuilt: model changed"


@dataclass(frozen=True)
class Answer:
    """A finished answer: text, the numbers for the status bar, and its citations."""

    text: str
    prompt_tokens: int
    new_tokens: int
    context_max: int
    ttft_s: float
    decode_tokens_per_s: float
    stop_reason: str
    citations: tuple[Passage, ...] = field(default_factory=tuple)
    notice: str = ""  # e.g. "chat not saved: ..."
    attention: str = ""  # the mode that answered ("full", "retrieval", ...)
    attention_reason: str = ""  # why that mode (engine.attention_mode)

    @property
    def speed_words(self) -> str:
        return f"first token {self.ttft_s:.1f} s · {self.decode_tokens_per_s:.1f} tokens/s"

    @property
    def context_used(self) -> int:
        return self.prompt_tokens + self.new_tokens


@dataclass(frozen=True)
class TurnState:
    """One question of a chat and its answer versions; `selected` is the one the chat continues from."""

    question: str
    answers: tuple[Answer, ...]
    selected: int = 0

    @property
    def answer(self) -> Answer:
        return self.answers[self.selected]


@dataclass(frozen=True)
class ChatState:
    """A chat as the window shows it. key: its stable id; tokens_used of context_max: the status bar's "N of M";
    problem: why it cannot be continued (another model made it), with the offer of a new chat; "" when it can."""

    key: str
    doc_id: str
    title: str
    turns: tuple[TurnState, ...] = ()
    tokens_used: int = 0
    context_max: int = 0
    problem: str = ""
    stored: bool = False


@dataclass(frozen=True)
class ChatListing:
    """A chat in the chat list of a document."""

    key: str
    title: str
    turns: int
    updated_at: float
    stored: bool = True


def settings_cost(old: EngineConfig, new: EngineConfig) -> SettingsCost:
    """What changing the engine's settings costs the model and each open document (engine.change_cost): the app's
    one source for what a change rebuilds. Imports torch on first use."""
    from engine import settings_cost as cost

    return cost(old, new)


class EngineBackend(Protocol):
    """The engine as the worker sees it. Every method runs on the worker thread."""

    def load_model(self, config: EngineConfig, library: LibraryConfig, progress: ProgressCallback) -> ModelInfo: ...

    def describe_device(self, spec: str) -> str:
        """The device `spec` ("auto", "cpu", "cuda") means here, in words: "the CPU", "the GPU (NVIDIA …)"."""

    def apply_settings(self, config: EngineConfig, library: LibraryConfig) -> None:
        """New settings; the caller reloads the model where needed (`settings_cost(...).reloads_model`). Open
        documents take what keeps their K/V and index in place; the others are opened again."""

    def open_document(self, path: str, progress: ProgressCallback, cancel: CancelToken) -> OpenedDocument:
        """Read, tokenise and fit-check `path` (stages "extract", "tokenize"); raise FolioError if unusable."""

    def prepare(self, doc_id: str, progress: ProgressCallback, cancel: CancelToken) -> PreparedDocument:
        """Build the document's cache (stages "prefill", "index", "saving")."""

    def chats(self, doc_id: str) -> list[ChatListing]:
        """The document's chats, most recent first: those in the library and the new ones not stored yet."""

    def open_chat(self, doc_id: str, key: str | None) -> ChatState:
        """The chat `key`, or a new (empty) chat when key is None."""

    def ask(self, doc_id: str, key: str, question: str, on_token: TokenCallback, progress: ProgressCallback,
            cancel: CancelToken) -> Answer:
        """A new turn at the end of chat `key` (a stopped answer is kept: CancelledError)."""

    def regenerate(self, doc_id: str, key: str, on_token: TokenCallback, progress: ProgressCallback,
                   cancel: CancelToken) -> Answer:
        """Answer the chat's last question again, keeping the earlier answers as versions."""

    def edit(self, doc_id: str, key: str, turn: int, question: str, on_token: TokenCallback,
             progress: ProgressCallback, cancel: CancelToken) -> Answer:
        """Replace question `turn` (0-based) and answer it; the turns after it are dropped."""

    def select_version(self, doc_id: str, key: str, version: int) -> ChatState:
        """Continue the chat from another version of its last answer."""

    def rename_chat(self, doc_id: str, key: str, title: str) -> None: ...

    def delete_chat(self, doc_id: str, key: str) -> None: ...

    def export_chat(self, doc_id: str, key: str, path: str) -> str:
        """Write the chat as Markdown to `path`; returns the path."""

    def forget(self, doc_id: str) -> None:
        """Remove the document (and its stored caches) from the library."""

    def reset_library(self) -> str:
        """Start a new library in place of a damaged one (a copy of the damaged file is kept); says what was done."""

    def library_entries(self) -> list[LibraryEntry]:
        """The persistent library's documents ([] without one)."""

    def memory_in_use(self) -> str:
        """Memory in use on the model's device, for the status bar ("1.2 GiB RAM", "5.1 GiB VRAM")."""

    # The model picker's calls run on the model thread (app.worker.ModelController), beside the engine's jobs.
    def model_choices(self) -> tuple[str, list[ModelChoice]]:
        """(this machine in words, every catalog model's ModelChoice: installed, fit, recommended)."""

    def pull_model(self, spec: str, progress: ProgressCallback, cancel: CancelToken) -> str:
        """Download a catalog model (stages "download", "verify", in bytes); returns its folder."""

    def remove_model(self, spec: str) -> int:
        """Delete a downloaded model; returns the bytes freed."""

    def save_hub_token(self, token: str) -> None:
        """Store the hub access token (user-only permissions; "" removes it)."""

    def has_hub_token(self) -> bool: ...


class RealBackend:
    """The engine: one model loaded once, one DocumentSession per open document, the engine's Store as library.

    Document ids are the sha256 of the file (what the Store keys documents by).
    """

    offers_gpu_runtime = True  # the window checks for an NVIDIA GPU and fetches the CUDA runtime (app.runtime)

    def __init__(self) -> None:
        self.config = EngineConfig()
        self.library = LibraryConfig()
        self.store: Store | None = None  # opened on the worker thread
        self.store_notice = ""
        self.library_damaged = ""  # the message when the library's database is damaged
        self.loaded: LoadedModel | None = None
        self.sessions: dict[str, DocumentSession] = {}
        self.documents: dict[str, Document] = {}  # kept across model reloads
        self.prepared: set[str] = set()
        self.live_chats: dict[str, Chat] = {}  # chat key -> the chat open in this run (stored or not yet)
        # chats not in the library whose session was let go: key -> (document id, the chat's record)
        self.unsaved: dict[str, tuple[str, ChatRecord]] = {}

    # -- model ---------------------------------------------------------------------------------------
    def describe_device(self, spec: str) -> str:
        from engine import describe_device

        return describe_device(spec)

    def load_model(self, config: EngineConfig, library: LibraryConfig, progress: ProgressCallback) -> ModelInfo:
        from engine import describe_device, load_model

        self.config = config
        self._drop_sessions()
        self.loaded = None
        started = time.perf_counter()
        self._open_store(library)
        self.loaded = load_model(config.model, config.device, config.dtype, progress, weights=config.weights,
                            cpu_weights=config.cpu_weights)
        return ModelInfo(self.loaded.name, str(self.loaded.device), str(self.loaded.dtype).removeprefix("torch."),
                         self.loaded.max_positions, time.perf_counter() - started, self.loaded.weights,
                         self.library_damaged, describe_device(str(self.loaded.device)))

    def _open_store(self, library: LibraryConfig) -> None:
        """Open (or reopen, when the data folder changed) the document library; without it, caches stay in memory."""
        from engine import Store

        self.library = library
        if self.store is not None and self.store.root == library.root:
            self.store.set_budget(library.budget_bytes)
            return
        if self.store is not None:
            self.store.close()
            self.store = None
            self._drop_sessions()
        self.library_damaged = ""
        try:
            self.store = Store(library.root)
            self.store.set_budget(library.budget_bytes)
            self.store_notice = "; ".join(self.store.notices)
        except StoreError as error:
            self.store, self.store_notice = None, f"Caches are kept in memory only: {error}"
            if isinstance(error, LibraryDamagedError):
                self.library_damaged = str(error)

    def reset_library(self) -> str:
        copy = reset_damaged_library(self.library.root)
        self.store = None
        self._drop_sessions()
        self._open_store(self.library)
        kept = f"; the damaged file is kept in {copy}" if copy else ""
        return f"Started a new library in {self.library.root}{kept}."

    def library_entries(self) -> list[LibraryEntry]:
        if self.store is None:
            return []
        return [LibraryEntry(d.sha256, d.title, d.pages, d.tokens or 0, d.cached, d.cache_bytes, d.last_used_at,
                             d.source_path or "") for d in self.store.list_documents()]

    def apply_settings(self, config: EngineConfig, library: LibraryConfig) -> None:
        self.config = config
        self._open_store(library)
        for doc_id, session in list(self.sessions.items()):
            if not session.use_config(config):  # a new session: its K/V come from the library where it holds them
                self._drop_sessions(doc_id)
                self._session(doc_id)

    def _session(self, doc_id: str) -> DocumentSession:
        """The document's session, made again (cache empty) after a model or attention change."""
        from engine import DocumentSession

        if doc_id not in self.sessions:
            if doc_id not in self.documents and self.store is not None:
                store_id = self.store.find_document(doc_id)
                if store_id is not None:
                    self.documents[doc_id] = self.store.load_document(store_id)
            if doc_id not in self.documents:
                raise DocumentError("This document is no longer open.", "Open the file again (Ctrl+O).")
            self.sessions[doc_id] = DocumentSession(self._require_model(), self.documents[doc_id], self.config,
                                                    store=self.store)
        return self.sessions[doc_id]

    def _drop_sessions(self, doc_id: str | None = None) -> None:
        """Let go of the document's session (every one when None) and its cache. Its chats follow the next session:
        stored ones come back from the library, the others keep their turns here."""
        for key, chat in list(self.live_chats.items()):
            if doc_id is None or chat.session.document.sha256 == doc_id:
                if chat.id is None:
                    self.unsaved[key] = (chat.session.document.sha256, chat.record)
                del self.live_chats[key]
        for dropped in list(self.sessions) if doc_id is None else [doc_id]:
            self.sessions.pop(dropped, None)
            self.prepared.discard(dropped)

    def _require_model(self) -> LoadedModel:
        if self.loaded is None:
            raise ModelError("No model is loaded.", "Check the model in Settings (Ctrl+,) and apply it again.")
        return self.loaded

    # -- documents -----------------------------------------------------------------------------------
    def open_document(self, path: str, progress: ProgressCallback, cancel: CancelToken) -> OpenedDocument:
        loaded = self._require_model()
        progress(Progress("extract", 0, 1, "file"))
        document = read_document(path)
        progress(Progress("extract", 1, 1, "file"))
        cancel.raise_if_cancelled()
        doc_id = document.sha256
        if doc_id in self.documents:
            session = self._session(doc_id)
            fit = loaded.fit(session.document_tokens, self.config, self.library.root, self.library.budget_bytes,
                             measure_free=False)
            return OpenedDocument(doc_id, document.title, document.pages, session.document_tokens, str(path), fit,
                                  cached=doc_id in self.prepared, warnings=document.warnings)
        progress(Progress("tokenize", 0, 1, "document"))
        check_text_length(document.text, loaded.tokenizer, loaded.max_positions, self.config.max_new_tokens)
        from engine import document_ids

        tokens = len(document_ids(loaded.tokenizer, document.text))  # as the session and the library count them
        used = self.store.used_bytes() if self.store is not None else 0
        fit = loaded.fit(tokens, self.config, self.library.root, self.library.budget_bytes, used_disk_bytes=used)
        if not fit.fits:
            return OpenedDocument(doc_id, document.title, document.pages, tokens, str(path), fit,
                                  warnings=document.warnings)
        from engine import DocumentSession

        session = DocumentSession(loaded, document, self.config, store=self.store)  # checks the context too
        progress(Progress("tokenize", 1, 1, "document"))
        self.sessions[doc_id] = session
        self.documents[doc_id] = document
        return OpenedDocument(doc_id, document.title, document.pages, session.document_tokens, str(path), fit,
                              warnings=document.warnings)

    def prepare(self, doc_id: str, progress: ProgressCallback, cancel: CancelToken) -> PreparedDocument:
        """Prefill the document prefix (and build the indexes) now, so the first question is quick."""
        started = time.perf_counter()
        session = self._session(doc_id)
        if doc_id in self.prepared:
            return PreparedDocument(doc_id, session.cache_size_bytes(), time.perf_counter() - started, True)
        for event in session.prepare(cancel):
            progress(event)
        self.prepared.add(doc_id)
        notice = "; ".join(filter(None, [self.store_notice, session.cache_notice]))
        self.store_notice = ""
        return PreparedDocument(doc_id, session.cache_size_bytes(), time.perf_counter() - started, session.cached,
                                notice)

    def forget(self, doc_id: str) -> None:
        self.sessions.pop(doc_id, None)
        self.documents.pop(doc_id, None)
        if self.store is not None and (store_id := self.store.find_document(doc_id)) is not None:
            self.store.delete_document(store_id)
        self.prepared.discard(doc_id)
        self._drop_sessions(doc_id)
        self.unsaved = {key: kept for key, kept in self.unsaved.items() if kept[0] != doc_id}

    # -- chats ---------------------------------------------------------------------------------------
    def chats(self, doc_id: str) -> list[ChatListing]:
        session = self._session(doc_id)
        listed = [ChatListing(c.key, c.title, c.turns, c.updated_at) for c in session.chats()]
        stored = {c.key for c in listed}
        live = [(key, chat.record) for key, chat in self.live_chats.items() if chat.session.document.sha256 == doc_id]
        live += [(key, record) for key, (doc, record) in self.unsaved.items() if doc == doc_id]
        unsaved = [ChatListing(key, record.title, len(record.turns), record.updated_at, stored=False)
                   for key, record in live if key not in stored]
        return sorted(unsaved + listed, key=lambda c: c.updated_at, reverse=True)

    def open_chat(self, doc_id: str, key: str | None) -> ChatState:
        if key is None:
            session = self._session(doc_id)
            for old_key, chat in list(self.live_chats.items()):  # at most one empty new chat per document
                if chat.session.document.sha256 == doc_id and chat.id is None and not chat.turns:
                    del self.live_chats[old_key]
            chat = session.chat()
            self.live_chats[chat.key] = chat
            return self._state(doc_id, chat)
        return self._state(doc_id, self._chat(doc_id, key))

    def ask(self, doc_id: str, key: str, question: str, on_token: TokenCallback, progress: ProgressCallback,
            cancel: CancelToken) -> Answer:
        chat = self._chat(doc_id, key)
        return self._stream(doc_id, chat, chat.ask(question, cancel), on_token, progress)

    def regenerate(self, doc_id: str, key: str, on_token: TokenCallback, progress: ProgressCallback,
                   cancel: CancelToken) -> Answer:
        chat = self._chat(doc_id, key)
        return self._stream(doc_id, chat, chat.regenerate(cancel), on_token, progress)

    def edit(self, doc_id: str, key: str, turn: int, question: str, on_token: TokenCallback,
             progress: ProgressCallback, cancel: CancelToken) -> Answer:
        chat = self._chat(doc_id, key)
        return self._stream(doc_id, chat, chat.edit(turn, question, cancel), on_token, progress)

    def select_version(self, doc_id: str, key: str, version: int) -> ChatState:
        chat = self._chat(doc_id, key)
        chat.select_version(version)
        return self._state(doc_id, chat)

    def rename_chat(self, doc_id: str, key: str, title: str) -> None:
        self._chat(doc_id, key).rename(title)

    def delete_chat(self, doc_id: str, key: str) -> None:
        self._chat(doc_id, key).delete()
        self.live_chats.pop(key, None)

    def export_chat(self, doc_id: str, key: str, path: str) -> str:
        from pathlib import Path

        target = Path(path).expanduser()
        try:
            target.write_text(self._chat(doc_id, key).to_markdown(), encoding="utf-8")
        except OSError as error:
            raise ChatError(f"The chat could not be written to {target} ({error.strerror or error}).",
                            "Choose another folder or file name.") from error
        return str(target)

    def chat_state(self, doc_id: str, key: str) -> ChatState:
        return self._state(doc_id, self._chat(doc_id, key))

    def _chat(self, doc_id: str, key: str) -> Chat:
        """The live chat `key` on the document's session: after the session was made again (model or settings
        changed) a chat not in the library keeps its turns, and a stored chat comes back from the library."""
        from engine import Chat

        session = self._session(doc_id)
        if (chat := self.live_chats.get(key)) is not None:
            return chat
        chat = Chat(session, self.unsaved.pop(key)[1]) if key in self.unsaved else session.chat(key)
        self.live_chats[key] = chat
        return chat

    def _stream(self, doc_id: str, chat: Chat, events, on_token: TokenCallback, progress: ProgressCallback) -> Answer:
        from engine import Finished, TokenEvent

        finished = None
        for event in events:
            if isinstance(event, TokenEvent):
                on_token(event.text)
            elif isinstance(event, Progress):
                progress(event)
            elif isinstance(event, Finished):
                finished = event
        self.prepared.add(doc_id)
        assert finished is not None
        notice = "; ".join(chat.notices)
        chat.notices.clear()
        return dataclasses.replace(self._answer(chat.turns[-1].answer), notice=notice)

    def _answer(self, version: AnswerVersion) -> Answer:
        return Answer(version.text, version.prompt_tokens, version.new_tokens, self._require_model().max_positions,
                      version.ttft_s, version.decode_tokens_per_s, version.stop_reason, tuple(version.sources),
                      attention=version.settings.get("attention_used", ""),
                      attention_reason=version.settings.get("attention_reason", ""))

    def _state(self, doc_id: str, chat: Chat) -> ChatState:
        turns = tuple(TurnState(t.question, tuple(self._answer(v) for v in t.versions), t.selected)
                      for t in chat.turns)
        return ChatState(chat.key, doc_id, chat.title, turns, chat.tokens_used, chat.context_max,
                         chat.problem or "", chat.id is not None)

    def memory_in_use(self) -> str:
        count, kind = memory_in_use(self.loaded.device if self.loaded is not None else None)
        return f"{format_bytes(count)} {kind}"

    # -- models (on the model thread) ----------------------------------------------------------------
    def model_choices(self) -> tuple[str, list[ModelChoice]]:
        from engine import machine_now, model_choices

        machine = machine_now()
        return machine.name, model_choices(machine)

    def pull_model(self, spec: str, progress: ProgressCallback, cancel: CancelToken) -> str:
        from engine import ensure_default_model, find_entry, pull_model

        entry = find_entry(spec)
        if entry is not None and entry.bundled:
            return str(ensure_default_model(progress))
        return str(pull_model(entry.hub_id if entry is not None else spec, progress, cancel))

    def remove_model(self, spec: str) -> int:
        from engine import find_entry, remove_model

        entry = find_entry(spec)
        if entry is not None and entry.bundled:
            raise ModelError("The bundled model cannot be removed: it is what Folio runs offline.",
                             "Remove a downloaded model instead.")
        return remove_model(entry.hub_id if entry is not None else spec)

    def save_hub_token(self, token: str) -> None:
        from engine import save_hub_token

        save_hub_token(token)

    def has_hub_token(self) -> bool:
        from engine import stored_hub_token

        return stored_hub_token() is not None
