"""What the worker thread drives: the EngineBackend protocol, its result types, and the real backend.

Qt-free. The backend runs entirely on the worker thread; the GUI only sees the plain dataclasses below,
never torch objects. Long calls report through `progress` (engine.events.Progress) and stop at the next
chunk/token/layer once `cancel` is set (engine.errors.CancelledError).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from app.fit import FitReport
from app.library import LibraryEntry
from app.settings import AppSettings
from engine.citations import Passage
from engine.events import CancelToken, ProgressCallback

TokenCallback = Callable[[str], None]


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

    @property
    def context_used(self) -> int:
        return self.prompt_tokens + self.new_tokens


class EngineBackend(Protocol):
    """The engine as the worker sees it. Every method runs on the worker thread."""

    def load_model(self, settings: AppSettings, progress: ProgressCallback) -> ModelInfo: ...

    def apply_settings(self, settings: AppSettings) -> None:
        """New generation settings; the caller reloads the model / forgets documents where needed."""

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
        """Memory in use on the model's device, for the status bar ("1.2 GB RAM", "5.1 GB VRAM")."""


class RealBackend:
    """The engine: one model loaded once, one DocumentSession per open document, engine.store as library.

    Document ids are the sha256 of the file (what engine.store keys documents by).
    """

    offers_gpu_runtime = True  # the window checks for an NVIDIA GPU and fetches the CUDA runtime (app.runtime)

    def __init__(self) -> None:
        self.settings = AppSettings()
        self.store = None  # engine.store.Store, opened on the worker thread
        self.store_notice = ""
        self.loaded = None  # engine.model.LoadedModel
        self.sessions: dict = {}  # doc id -> engine.session.DocumentSession
        self.documents: dict = {}  # doc id -> engine.ingest.Document (kept across model reloads)
        self.prepared: set[str] = set()
        self.span_maps: dict = {}

    # -- model ---------------------------------------------------------------------------------------
    def load_model(self, settings: AppSettings, progress: ProgressCallback) -> ModelInfo:
        from engine.model import load_model

        self.settings = settings
        self.sessions.clear()
        self.prepared.clear()
        self.span_maps.clear()
        self.loaded = None
        started = time.perf_counter()
        self._open_store(settings)
        self.loaded = load_model(settings.model, settings.device, settings.dtype, progress)
        return ModelInfo(self.loaded.name, str(self.loaded.device), str(self.loaded.dtype).removeprefix("torch."),
                         self.loaded.max_positions, time.perf_counter() - started)

    def _open_store(self, settings: AppSettings) -> None:
        """Open (or reopen, when the data folder changed) the document library; without it, caches stay in memory."""
        from engine.errors import StoreError
        from engine.store import Store

        root = str(Path(settings.data_folder).expanduser())
        if self.store is not None and str(self.store.root) == root:
            self.store.set_budget(int(settings.disk_budget_gb * 1e9))
            return
        if self.store is not None:
            self.store.close()
            self.store = None
            self.sessions.clear()
            self.prepared.clear()
        try:
            self.store = Store(root)
            self.store.set_budget(int(settings.disk_budget_gb * 1e9))
            self.store_notice = "; ".join(self.store.notices)
        except StoreError as error:
            self.store, self.store_notice = None, f"Caches are kept in memory only: {error}"

    def library_entries(self) -> list[LibraryEntry]:
        if self.store is None:
            return []
        shas = dict(self.store.db.execute("SELECT id, sha256 FROM documents").fetchall())
        return [LibraryEntry(shas[d.id], d.title, d.pages, d.tokens or 0, d.cached, d.cache_bytes, d.last_used_at,
                             d.source_path or "") for d in self.store.list_documents() if d.id in shas]

    def apply_settings(self, settings: AppSettings) -> None:
        import dataclasses

        old, self.settings = self.settings, settings
        self._open_store(settings)
        config = settings.engine_config()
        for session in self.sessions.values():
            session.config = dataclasses.replace(session.config, max_new_tokens=config.max_new_tokens,
                                                 temperature=config.temperature)
        if (old.attention, old.n_sink, old.n_window, old.top_k, old.search_effort) != (
                settings.attention, settings.n_sink, settings.n_window, settings.top_k, settings.search_effort):
            for doc_id in list(self.sessions):
                self._rebuild_session(doc_id)

    def _rebuild_session(self, doc_id: str) -> None:
        self.sessions.pop(doc_id, None)
        self.prepared.discard(doc_id)
        self._session(doc_id)

    def _session(self, doc_id: str):
        """The document's session, made again (cache empty) after a model or attention change."""
        from engine.errors import DocumentError
        from engine.session import DocumentSession

        if doc_id not in self.sessions:
            if doc_id not in self.documents and self.store is not None:
                store_id = self.store.find_document(doc_id)
                if store_id is not None:
                    self.documents[doc_id] = self.store.load_document(store_id)
            if doc_id not in self.documents:
                raise DocumentError("This document is no longer open.", "Open the file again (Ctrl+O).")
            self.sessions[doc_id] = DocumentSession(self._require_model(), self.documents[doc_id],
                                                    self.settings.engine_config(), store=self.store)
        return self.sessions[doc_id]

    def _require_model(self):
        from engine.errors import ModelError

        if self.loaded is None:
            raise ModelError("No model is loaded.", "Check the model in Settings (Ctrl+,) and apply it again.")
        return self.loaded

    def model_shape(self):
        from app.fit import ModelShape

        config = self._require_model().model.config.get_text_config()
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return ModelShape(layers=config.num_hidden_layers, kv_heads=getattr(config, "num_key_value_heads", heads),
                          query_heads=heads, head_dim=head_dim, max_positions=self.loaded.max_positions,
                          weight_bytes_per_value=self.loaded.dtype.itemsize, kv_bytes_per_value=2,
                          hidden_size=config.hidden_size)

    # -- documents -----------------------------------------------------------------------------------
    def open_document(self, path: str, progress: ProgressCallback, cancel: CancelToken) -> OpenedDocument:
        from app.fit import estimate_fit
        from engine.events import Progress
        from engine.ingest import read_document
        from engine.session import DocumentSession

        loaded = self._require_model()
        progress(Progress("extract", 0, 1, "file"))
        document = read_document(path)
        progress(Progress("extract", 1, 1, "file"))
        cancel.raise_if_cancelled()
        doc_id = document.sha256
        if doc_id in self.documents:
            session = self._session(doc_id)
        else:
            progress(Progress("tokenize", 0, 1, "document"))
            config = self.settings.engine_config()
            tokens = len(loaded.tokenizer(document.text, add_special_tokens=False)["input_ids"])
            shape = self.model_shape()
            fit = estimate_fit(shape, tokens, config.max_new_tokens, config.attention, config.n_sink,
                               config.n_window, loaded.device.type == "cpu", self.settings.data_folder,
                               int(self.settings.disk_budget_gb * 1e9), used_disk_bytes=self._used_disk(),
                               available_device=self._free_device())
            if not fit.fits:
                return OpenedDocument(doc_id, document.title, document.pages, tokens, str(path), fit)
            # tokenises the prompt and checks the context
            session = DocumentSession(loaded, document, config, store=self.store)
            progress(Progress("tokenize", 1, 1, "document"))
            self.sessions[doc_id] = session
            self.documents[doc_id] = document
            return OpenedDocument(doc_id, document.title, document.pages, _document_tokens(session), str(path), fit)
        return OpenedDocument(doc_id, document.title, document.pages, _document_tokens(session), str(path),
                              self._fit_for(session), cached=doc_id in self.prepared)

    def _fit_for(self, session) -> FitReport:
        from app.fit import estimate_fit

        config = session.config
        return estimate_fit(self.model_shape(), session.prefix_tokens, config.max_new_tokens, config.attention,
                            config.n_sink, config.n_window, self.loaded.device.type == "cpu",
                            self.settings.data_folder, int(self.settings.disk_budget_gb * 1e9),
                            available_ram=0, available_device=0)

    def _used_disk(self) -> int:
        return self.store.used_bytes() if self.store is not None else 0

    def _free_device(self) -> int | None:
        import torch

        if self.loaded is not None and self.loaded.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.loaded.device)
            return int(free)
        return None

    def prepare(self, doc_id: str, progress: ProgressCallback, cancel: CancelToken) -> PreparedDocument:
        """Prefill the document prefix (and build the indexes) now, so the first question is quick."""
        started = time.perf_counter()
        session = self._session(doc_id)
        if doc_id in self.prepared:
            return PreparedDocument(doc_id, self._cache_bytes(session), time.perf_counter() - started, True)
        own_prepare = getattr(session, "prepare", None) if session.uses_retrieval else None
        try:
            steps = own_prepare(cancel) if own_prepare else self._prepare_steps(session, cancel)
            for event in steps:
                progress(event)
        except BaseException as error:
            from engine.errors import CancelledError

            if not isinstance(error, CancelledError):
                session._cache = None
            raise
        self.prepared.add(doc_id)
        notice = "; ".join(filter(None, [self.store_notice, getattr(session, "cache_notice", None)]))
        self.store_notice = ""
        return PreparedDocument(doc_id, self._cache_bytes(session), time.perf_counter() - started,
                                bool(getattr(session, "cached", False)), notice)

    def _prepare_steps(self, session, cancel: CancelToken):
        """What DocumentSession.ask does before its first answer, done ahead of the question."""
        import torch

        from engine.generate import prefill_steps
        from engine.retrieval import RETRIEVAL_ATTENTION
        from engine.session import FULL_ATTENTION

        model = session.loaded.model
        model.set_attn_implementation(RETRIEVAL_ATTENTION if session.uses_retrieval else FULL_ATTENTION)
        if session._cache is None:
            session._cache = session._make_cache()
        if session.uses_retrieval:
            yield from session._prefill_document(cancel)
            return
        done = session._cache.get_seq_length()
        ids = torch.tensor(session.prompt.prefix_ids[done:], dtype=torch.long)
        if len(ids):
            yield from prefill_steps(model, ids, session._cache, session.prefill_chunk, cancel)

    @staticmethod
    def _cache_bytes(session) -> int:
        """Bytes on disk when the store holds the cache, else the bytes of its tensors in memory."""
        if getattr(session, "cache_bytes", 0):
            return session.cache_bytes
        cache = session.cache
        if cache is None:
            return 0
        total = 0
        for layer in getattr(cache, "layers", []):
            for value in vars(layer).values():
                if hasattr(value, "element_size") and hasattr(value, "nelement"):
                    total += value.element_size() * value.nelement()
        return total

    def forget(self, doc_id: str) -> None:
        self.sessions.pop(doc_id, None)
        self.documents.pop(doc_id, None)
        if self.store is not None and (store_id := self.store.find_document(doc_id)) is not None:
            self.store.delete_document(store_id)
        self.prepared.discard(doc_id)
        self.span_maps.pop(doc_id, None)

    def new_chat(self, doc_id: str) -> None:
        session = self.sessions.get(doc_id)
        if session is not None:
            session.new_chat()

    # -- questions -----------------------------------------------------------------------------------
    def ask(self, doc_id: str, question: str, on_token: TokenCallback, progress: ProgressCallback,
            cancel: CancelToken) -> Answer:
        from engine.events import Progress
        from engine.generate import Finished, TokenEvent

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
        citations = self._citations(doc_id, session, finished, question)
        return Answer(finished.text, stats.prompt_tokens, stats.new_tokens, self.loaded.max_positions, stats.ttft_s,
                      stats.decode_tokens_per_s, stats.stop_reason, tuple(citations))

    def _citations(self, doc_id: str, session, finished, question: str) -> list[Passage]:
        """Top passages from the attention record the engine attaches to Finished, or a full-attention probe."""
        from engine.citations import document_span_map, top_passages

        steps = getattr(finished, "attention_steps", None)  # per answer token: [(position, weight), ...]
        if steps is None and not session.uses_retrieval and finished.token_ids:
            from app.attention_probe import full_attention_steps

            prompt_len = len(session.prompt.prompt_ids(session.loaded.tokenizer, question))
            steps = full_attention_steps(session.loaded.model, session.cache, prompt_len, finished.token_ids,
                                         session.prompt.doc_token_start, session.prompt.doc_token_end)
        if not steps:
            return []
        if doc_id not in self.span_maps:
            self.span_maps[doc_id] = document_span_map(session.loaded.tokenizer, session.document.text,
                                                       session.prompt.doc_token_start)
        document = session.document
        return top_passages(steps, self.span_maps[doc_id], document.text, document.page_of)

    def memory_in_use(self) -> str:
        from app.library import format_bytes

        if self.loaded is not None and self.loaded.device.type == "cuda":
            import torch

            return f"{format_bytes(torch.cuda.memory_allocated(self.loaded.device))} VRAM"
        return f"{format_bytes(process_rss())} RAM"


def process_rss() -> int:
    """Resident memory of this process (bytes); 0 where unknown."""
    try:
        with open("/proc/self/statm") as handle:
            import os

            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    except (ImportError, OSError):
        return 0


def _document_tokens(session) -> int:
    """The document's own tokens (as the library lists them), without the chat template around them."""
    return session.prompt.doc_token_end - session.prompt.doc_token_start
