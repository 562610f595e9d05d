"""One document open on one model: its prompt prefix is prefilled once and reused by every question."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import torch
from transformers import Cache, DynamicCache

from engine.attention_probe import full_attention_steps
from engine.cache import WINDOW_ONLY, AttentionTrace, RetrievalCache, RetrievalSettings
from engine.citations import Passage, SpanMap, document_span_map, top_passages
from engine.config import EngineConfig
from engine.errors import CancelledError, ContextTooLongError, StoreError
from engine.events import CancelToken
from engine.generate import Event, Finished, SamplingOptions, generate, prefill_steps
from engine.index import IndexParams
from engine.ingest import Document, token_spans
from engine.layer_prefill import document_prefill_steps
from engine.model import LoadedModel
from engine.persist import CacheIdentity, load_cache_steps, save_cache_steps
from engine.prompt import DocumentPrompt, build_document_prompt
from engine.retrieval import RETRIEVAL_ATTENTION, attention_scale
from engine.store import Store

FULL_ATTENTION = "sdpa"


def retrieval_settings(config: EngineConfig, device: torch.device | None = None) -> RetrievalSettings:
    """The cache settings for a retrieval-family attention mode of `config` on a model on `device`."""
    method = WINDOW_ONLY if config.attention == "window" else config.attention
    params = IndexParams(effort=config.search_effort, knn_device=device.type if device else "cpu")
    return RetrievalSettings(method=method, n_sink=config.n_sink, n_window=config.n_window, top_k=config.top_k,
                             effort=config.search_effort, attention_share=config.attention_share,
                             index_params=params, kv_dtype=getattr(torch, config.kv_dtype))


class DocumentSession:
    """Ask questions about `document`; after the first, only the question's tokens are prefilled.

    attention "full": ordinary attention with transformers' DynamicCache. Every other mode prefills
    the document with exact attention into a RetrievalCache, builds the key indexes, then answers with
    the static set + retrieved keys (engine.retrieval).

    store: a document library (engine.store). With it, retrieval-family modes open the document's
    saved K/V and index instead of prefilling (`cached` is then True), and save them after a prefill.
    Full attention is never stored. `cache_notices` says why a stored cache was rebuilt or not saved.
    """

    def __init__(self, loaded: LoadedModel, document: Document, config: EngineConfig,
                 store: Store | None = None) -> None:
        self.loaded, self.document, self.config, self.store = loaded, document, config, store
        self.prompt: DocumentPrompt = build_document_prompt(loaded.tokenizer, document.text)
        self._cache: Cache | None = None
        self.check_fits(len(self.prompt.prefix_ids))
        self.cached = False  # the document's prefill was skipped: its cache came from the store
        self.cache_bytes = 0  # bytes of this document's cache (K/V + index) on disk, 0 when not stored
        self.cache_notices: list[str] = []
        self.cache_save_s = 0.0
        self._saved = False
        self._doc_id: int | None = None
        self._span_map: SpanMap | None = None

    @property
    def cache_notice(self) -> str | None:
        """E.g. "cache rebuilt: model changed"; None when nothing happened worth saying."""
        return "; ".join(self.cache_notices) or None

    @property
    def prefix_tokens(self) -> int:
        return len(self.prompt.prefix_ids)

    @property
    def document_tokens(self) -> int:
        """The document's own tokens (as the library lists them), without the chat template around them."""
        return self.prompt.doc_token_end - self.prompt.doc_token_start

    @property
    def ready(self) -> bool:
        """The document prefix is prefilled (and indexed): a question prefills only its own tokens."""
        if self._cache is None:
            return False
        if self.uses_retrieval:
            return self._cache.indexed
        return self._cache.get_seq_length() >= self.prefix_tokens

    def cache_size_bytes(self) -> int:
        """The bytes of this document's cache: on disk when the library holds it, else its tensors in memory."""
        if self.cache_bytes:
            return self.cache_bytes
        if self._cache is None:
            return 0
        if isinstance(self._cache, RetrievalCache):
            return self._cache.nbytes()
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in self._cache.layers
                   if getattr(layer, "keys", None) is not None)

    @property
    def uses_retrieval(self) -> bool:
        return self.config.attention != "full"

    @property
    def prefill_chunk(self) -> int:
        """Tokens per prefill step on the model's device (EngineConfig.prefill_chunk_for)."""
        return self.config.prefill_chunk_for(self.loaded.model.device.type)

    @property
    def cache(self) -> Cache | None:
        return self._cache

    def check_fits(self, prompt_tokens: int) -> None:
        """Raise ContextTooLongError (with the counts) unless prompt + answer fit the model."""
        reserved = self.config.max_new_tokens
        maximum = self.loaded.max_positions
        if maximum and prompt_tokens + reserved > maximum:
            raise ContextTooLongError(prompt_tokens + reserved, maximum, prompt_tokens, reserved)

    def new_chat(self) -> None:
        """Forget the questions and answers; keep the document's prefilled prefix."""
        if self._cache is not None:
            extra = self._cache.get_seq_length() - self.prefix_tokens
            if extra > 0:
                self._cache.crop(-extra)  # transformers' crop takes minus the number of tokens to drop

    def ask(self, question: str, cancel: CancelToken | None = None) -> Iterator[Event]:
        """Stream the answer to `question` (Progress..., TokenEvent..., Finished)."""
        tokenizer = self.loaded.tokenizer
        prompt_ids = self.prompt.prompt_ids(tokenizer, question)
        self.check_fits(len(prompt_ids))
        self.new_chat()
        model = self.loaded.model
        model.set_attn_implementation(RETRIEVAL_ATTENTION if self.uses_retrieval else FULL_ATTENTION)
        options = SamplingOptions(self.config.max_new_tokens, self.config.temperature, self.config.top_p)
        started = time.perf_counter()
        try:
            load_s = 0.0
            if self._cache is None:
                self._cache = yield from self._open_cache()
                load_s = time.perf_counter() - started if self.cached else 0.0
            forward_kwargs = {"folio_cache": self._cache} if self.uses_retrieval else None
            if self.uses_retrieval:
                self._cache.trace = AttentionTrace(self.prefix_tokens)
            prepare_s = 0.0
            if self.uses_retrieval and not self._cache.indexed:
                yield from self._prefill_document(cancel)
                prepare_s = time.perf_counter() - started
                yield from self._save_to_store(cancel)
            elif load_s:
                prepare_s = load_s
            for event in generate(
                model, prompt_ids, self._cache,
                decode_text=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                stop_ids=self.loaded.stop_token_ids, max_positions=self.loaded.max_positions or 1 << 62,
                options=options, cancel=cancel, prefill_chunk=self.prefill_chunk,
                forward_kwargs=forward_kwargs,
            ):
                if isinstance(event, Finished) and prepare_s:
                    event = _with_document_prefill(event, prepare_s, self._cache, self.cache_save_s,
                                                   reused=bool(load_s))
                if isinstance(event, Finished) and self.uses_retrieval:
                    event = dataclasses.replace(event, attention_steps=self._cache.trace.take())
                yield event
        except CancelledError:
            raise  # cancelling happens between chunks/tokens/layers: the cache stays consistent
        except BaseException:
            self._cache = None  # a failure mid-forward may leave layers out of step: start over
            raise

    def prepare(self, cancel: CancelToken | None = None) -> Iterator[Event]:
        """Make the document ready for questions without asking one (Progress events): open its stored cache, or
        prefill the prefix (and, for retrieval, build its indexes and store them). Resumes after a cancel; after any
        other failure the next call starts over."""
        model = self.loaded.model
        model.set_attn_implementation(RETRIEVAL_ATTENTION if self.uses_retrieval else FULL_ATTENTION)
        try:
            if self._cache is None:
                self._cache = yield from self._open_cache()
            if not self.uses_retrieval:
                done = self._cache.get_seq_length()
                ids = torch.tensor(self.prompt.prefix_ids[done:], dtype=torch.long)
                if len(ids):
                    yield from prefill_steps(model, ids, self._cache, self.prefill_chunk, cancel)
            elif not self._cache.indexed:
                yield from self._prefill_document(cancel)
                yield from self._save_to_store(cancel)
        except CancelledError:
            raise
        except BaseException:
            self._cache = None
            raise

    def sources(self, finished: Finished, question: str) -> list[Passage]:
        """The document passages an answer drew on, best first: from the keys retrieval attention retrieved for each
        answer token (weighted by their attention), or under full attention from one extra pass over the answer with
        attention weights (which reuses the cached prompt)."""
        steps = finished.attention_steps
        if steps is None and not self.uses_retrieval and finished.token_ids:
            prompt_len = len(self.prompt.prompt_ids(self.loaded.tokenizer, question))
            steps = full_attention_steps(self.loaded.model, self._cache, prompt_len, finished.token_ids,
                                         self.prompt.doc_token_start, self.prompt.doc_token_end)
        if not steps:
            return []
        if self._span_map is None:
            self._span_map = document_span_map(self.loaded.tokenizer, self.document.text, self.prompt.doc_token_start)
        return top_passages(steps, self._span_map, self.document.text, self.document.page_of)

    def _prefill_document(self, cancel: CancelToken | None) -> Iterator[Event]:
        """Prefill the whole document prefix with exact attention and build the indexes (resumes after a cancel)."""
        ids = torch.tensor(self.prompt.prefix_ids, dtype=torch.long)
        yield from document_prefill_steps(self.loaded.model, ids, self._cache, self.prefill_chunk, cancel)

    def _open_cache(self) -> Iterator[Event]:
        """A restored cache from the store when there is a valid one (``cache = yield from ...``), else a new one."""
        if self.store is None or not self.uses_retrieval:
            return self._make_cache()
        settings = retrieval_settings(self.config, self.loaded.device)
        try:
            self._doc_id = self.store.add_document(self.document, self.prompt.doc_token_end
                                                   - self.prompt.doc_token_start)
            identity = CacheIdentity.of(self.loaded, self.prompt.prefix_ids, settings)
            result = yield from load_cache_steps(self.store, self._doc_id, identity, settings, self.loaded)
        except StoreError as error:
            self.cache_notices.append(f"library not used: {error.problem}")
            self.store = None
            return self._make_cache()
        self.cache_notices += self.store.notices + result.notices
        self.store.notices.clear()
        if result.cache is None:
            return self._make_cache()
        self.cached = self._saved = True
        self.cache_bytes = self.store.cache_bytes(identity.cache_id)
        return result.cache

    def _save_to_store(self, cancel: CancelToken | None) -> Iterator[Event]:
        """Save the freshly indexed cache (progress stage "saving"); a failure becomes a notice."""
        if self.store is None or self._saved or not self.uses_retrieval:
            return
        started = time.perf_counter()
        identity = CacheIdentity.of(self.loaded, self.prompt.prefix_ids, self._cache.settings)
        try:
            if self.store.token_spans(self._doc_id, self.loaded.tokenizer_fingerprint) is None:
                spans = token_spans(self.document, self.loaded.tokenizer)
                if len(spans) == self.prompt.doc_token_end - self.prompt.doc_token_start:
                    self.store.save_token_spans(self._doc_id, self.loaded.tokenizer_fingerprint, spans)
            notices = yield from save_cache_steps(self.store, self._doc_id, identity, self.prompt.prefix_ids,
                                                  self._cache, cancel)
            self.cache_notices += notices
            self.cache_bytes = self.store.cache_bytes(identity.cache_id)
        except StoreError as error:
            self.cache_notices.append(f"cache not saved: {error}")
        self._saved = True
        self.cache_save_s = time.perf_counter() - started

    def _make_cache(self) -> Cache:
        config = self.loaded.model.config
        if not self.uses_retrieval:
            return DynamicCache(config=config)
        return RetrievalCache(config.num_hidden_layers, self.prefix_tokens, self.loaded.device,
                              retrieval_settings(self.config, self.loaded.device), self.loaded.dtype,
                              attention_scale(self.loaded.model))


def _with_document_prefill(event: Finished, prepare_s: float, cache: RetrievalCache, save_s: float = 0.0,
                           reused: bool = False) -> Finished:
    """Count the document prefill, index build and cache save (done before generate) in the answer's
    stats; reused: the prefix came from the store (prepare_s is then the load time, not a prefill).
    The prefill's time is prepare_s less the index build time that the prefill did not hide."""
    stats = dataclasses.replace(event.stats, index_build_s=cache.index_build_s, index_wait_s=cache.index_wait_s)
    if reused:
        stats = dataclasses.replace(stats, ttft_s=stats.ttft_s + prepare_s)
    else:
        stats = dataclasses.replace(stats, reused_tokens=0, prefill_s=stats.prefill_s + prepare_s - cache.index_wait_s,
                                    ttft_s=stats.ttft_s + prepare_s + save_s)
    return dataclasses.replace(event, stats=stats)
