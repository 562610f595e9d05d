"""The app's one door into the engine: the EngineBackend protocol, its result types, the real backend, and the
engine names the rest of the app uses (re-exported here, so that only this module and app/worker.py import
`engine`, and only through `engine.__all__`).

Qt-free. The backend runs entirely on the worker thread; the GUI only sees the plain dataclasses below,
never torch objects. Long calls report through `progress` (Progress) and stop at the next chunk/token/layer
once `cancel` is set (CancelledError).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

# Only names that do not import torch at module level: app/runtime/startup.py and app/frozen.py run before torch is
# imported (a downloaded CUDA build must come first). The model, the session and the store are imported where used.
from engine import (
    DTYPES,
    GIB,
    MAX_ANSWER_TOKENS,
    CancelledError,
    CancelToken,
    ConfigChange,
    Document,
    DocumentError,
    EngineConfig,
    FitReport,
    FolioError,
    LibraryConfig,
    ModelError,
    ModelShape,
    Passage,
    Progress,
    ProgressCallback,
    ProgressMeter,
    SpanMap,
    StoreError,
    default_model_gguf,
    estimate_fit,
    format_bytes,
    memory_in_use,
    read_document,
    supported_suffixes,
    top_passages,
    use_bundled_default_model,
)

if TYPE_CHECKING:
    from engine import DocumentSession, LoadedModel, Store

__all__ = [  # the engine names the app may use, besides this module's own
    "DTYPES", "GIB", "MAX_ANSWER_TOKENS", "CancelToken", "CancelledError", "ConfigChange", "Document",
    "EngineConfig", "FitReport", "FolioError", "LibraryConfig", "ModelError", "ModelShape", "Passage", "Progress",
    "ProgressCallback", "ProgressMeter", "SpanMap", "default_model_gguf", "estimate_fit", "format_bytes",
    "read_document", "supported_suffixes", "top_passages", "use_bundled_default_model",
]

TokenCallback = Callable[[str], None]


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
    attention: str = ""  # the mode that answered ("full", "retrieval", ...)
    attention_reason: str = ""  # why that mode (engine.attention_mode)

    @property
    def context_used(self) -> int:
        return self.prompt_tokens + self.new_tokens


class EngineBackend(Protocol):
    """The engine as the worker sees it. Every method runs on the worker thread."""

    def load_model(self, config: EngineConfig, library: LibraryConfig, progress: ProgressCallback) -> ModelInfo: ...

    def apply_settings(self, config: EngineConfig, library: LibraryConfig) -> None:
        """New generation settings; the caller reloads the model where needed (ConfigChange.reload_model)."""

    def open_document(self, path: str, progress: ProgressCallback, cancel: CancelToken) -> OpenedDocument:
        """Read, tokenise and fit-check `path` (stages "extract", "tokenize"); raise FolioError if unusable."""

    def prepare(self, doc_id: str, progress: ProgressCallback, cancel: CancelToken) -> PreparedDocument:
        """Build the document's cache (stages "prefill", "index", "saving")."""

    def ask(self, doc_id: str, question: str, on_token: TokenCallback, progress: ProgressCallback,
            cancel: CancelToken) -> Answer: ...

    def new_chat(self, doc_id: str) -> None: ...

    def forget(self, doc_id: str) -> None:
        """Remove the document (and its stored caches) from the library."""

    def library_entries(self) -> list[LibraryEntry]:
        """The persistent library's documents ([] without one)."""

    def memory_in_use(self) -> str:
        """Memory in use on the model's device, for the status bar ("1.2 GiB RAM", "5.1 GiB VRAM")."""


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
        self.loaded: LoadedModel | None = None
        self.sessions: dict[str, DocumentSession] = {}
        self.documents: dict[str, Document] = {}  # kept across model reloads
        self.prepared: set[str] = set()

    # -- model ---------------------------------------------------------------------------------------
    def load_model(self, config: EngineConfig, library: LibraryConfig, progress: ProgressCallback) -> ModelInfo:
        from engine import load_model

        self.config = config
        self.sessions.clear()
        self.prepared.clear()
        self.loaded = None
        started = time.perf_counter()
        self._open_store(library)
        self.loaded = load_model(config.model, config.device, config.dtype, progress)
        return ModelInfo(self.loaded.name, str(self.loaded.device), str(self.loaded.dtype).removeprefix("torch."),
                         self.loaded.max_positions, time.perf_counter() - started)

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
            self.sessions.clear()
            self.prepared.clear()
        try:
            self.store = Store(library.root)
            self.store.set_budget(library.budget_bytes)
            self.store_notice = "; ".join(self.store.notices)
        except StoreError as error:
            self.store, self.store_notice = None, f"Caches are kept in memory only: {error}"

    def library_entries(self) -> list[LibraryEntry]:
        if self.store is None:
            return []
        return [LibraryEntry(d.sha256, d.title, d.pages, d.tokens or 0, d.cached, d.cache_bytes, d.last_used_at,
                             d.source_path or "") for d in self.store.list_documents()]

    def apply_settings(self, config: EngineConfig, library: LibraryConfig) -> None:
        change = ConfigChange.between(self.config, config)
        self.config = config
        self._open_store(library)
        for doc_id, session in list(self.sessions.items()):
            if change.reopen_documents:  # a new session: its K/V come from the library where it holds them
                del self.sessions[doc_id]
                self.prepared.discard(doc_id)
                self._session(doc_id)
            else:
                session.config = config

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
            fit = loaded.fit(session.prefix_tokens, self.config, self.library.root, self.library.budget_bytes,
                             measure_free=False)
            return OpenedDocument(doc_id, document.title, document.pages, session.document_tokens, str(path), fit,
                                  cached=doc_id in self.prepared)
        progress(Progress("tokenize", 0, 1, "document"))
        tokens = len(loaded.tokenizer(document.text, add_special_tokens=False)["input_ids"])
        used = self.store.used_bytes() if self.store is not None else 0
        fit = loaded.fit(tokens, self.config, self.library.root, self.library.budget_bytes, used_disk_bytes=used)
        if not fit.fits:
            return OpenedDocument(doc_id, document.title, document.pages, tokens, str(path), fit)
        from engine import DocumentSession

        session = DocumentSession(loaded, document, self.config, store=self.store)  # checks the context too
        progress(Progress("tokenize", 1, 1, "document"))
        self.sessions[doc_id] = session
        self.documents[doc_id] = document
        return OpenedDocument(doc_id, document.title, document.pages, session.document_tokens, str(path), fit)

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

    def new_chat(self, doc_id: str) -> None:
        session = self.sessions.get(doc_id)
        if session is not None:
            session.new_chat()

    # -- questions -----------------------------------------------------------------------------------
    def ask(self, doc_id: str, question: str, on_token: TokenCallback, progress: ProgressCallback,
            cancel: CancelToken) -> Answer:
        from engine import Finished, TokenEvent

        session = self._session(doc_id)
        finished = None
        for event in session.ask(question, cancel):
            if isinstance(event, TokenEvent):
                on_token(event.text)
            elif isinstance(event, Progress):
                progress(event)
            elif isinstance(event, Finished):
                finished = event
        self.prepared.add(doc_id)
        assert finished is not None
        stats = finished.stats
        return Answer(finished.text, stats.prompt_tokens, stats.new_tokens, self._require_model().max_positions,
                      stats.ttft_s, stats.decode_tokens_per_s, stats.stop_reason,
                      tuple(session.sources(finished, question)), session.attention.mode, session.attention.reason)

    def memory_in_use(self) -> str:
        count, kind = memory_in_use(self.loaded.device if self.loaded is not None else None)
        return f"{format_bytes(count)} {kind}"
