"""One document open on one model: its prompt prefix is prefilled once and reused by every question."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator, Iterator

import torch
from transformers import Cache

import engine.chat_store as chat_store
from engine.attention_mode import FULL, AttentionChoice, choose_attention
from engine.attention_probe import full_attention_steps
from engine.cache import WINDOW_ONLY, AttentionTrace, RetrievalCache, RetrievalSettings
from engine.chat import Chat
from engine.chat_store import ChatSummary
from engine.citation_baseline import (
    NEUTRAL_QUESTION,
    baseline_key,
    baseline_steps,
    mass_from_arrays,
    mass_to_arrays,
)
from engine.citations import Passage, SpanMap, Step, TokenMass, document_span_map, token_mass, top_passages
from engine.config import EngineConfig
from engine.errors import CancelledError, ChatError, ContextTooLongError, StoreError
from engine.events import CancelToken, Progress, run_steps
from engine.full_cache import growing_cache
from engine.generate import Event, Finished, SamplingOptions, TokenEvent, generate, prefill_steps
from engine.index import IndexParams
from engine.ingest import Document, token_spans
from engine.layer_prefill import document_prefill_steps
from engine.memory import available_ram, device_free
from engine.model import LoadedModel
from engine.persist import CacheIdentity, load_cache_steps, save_cache_steps
from engine.prompt import DocumentPrompt, build_document_prompt
from engine.retrieval import RETRIEVAL_ATTENTION, attention_scale
from engine.shared_kv import full_attention_cache, kv_only_settings
from engine.sizing import check_text_length
from engine.store import Store
from engine.warmup import start_kernel_warmup

FULL_ATTENTION = "sdpa"


def retrieval_settings(config: EngineConfig, device: torch.device | None = None, mode: str | None = None
                       ) -> RetrievalSettings:
    """The cache settings for a retrieval-family attention `mode` (default: config.attention) on `device`."""
    mode = mode or config.attention
    method = WINDOW_ONLY if mode == "window" else mode
    params = IndexParams(effort=config.search_effort, knn_device=device.type if device else "cpu")
    return RetrievalSettings(method=method, n_sink=config.n_sink, n_window=config.n_window, top_k=config.top_k,
                             effort=config.search_effort, attention_share=config.attention_share,
                             index_params=params, kv_dtype=getattr(torch, config.kv_dtype))


def cache_settings(config: EngineConfig, device: torch.device | None, mode: str) -> RetrievalSettings:
    """The settings of a document's RetrievalCache under the attention `mode` that answers it (resolved, not "auto"):
    the retrieval mode's, or for full attention the K/V alone (no index; engine.shared_kv)."""
    settings = retrieval_settings(config, device, mode)
    return settings if mode != FULL else kv_only_settings(settings)


class DocumentSession:
    """Ask questions about `document`; after the first, only the question's tokens are prefilled.

    config.attention "auto" is resolved once per session (`attention`: the mode and why, engine.attention_mode).
    Full attention answers with a DynamicCache (engine.full_cache). Every other mode prefills the document with exact
    attention into a RetrievalCache, builds the key indexes, then answers with the static set + retrieved keys
    (engine.retrieval).

    store: a document library (engine.store). With it, the document's saved K/V (and, for retrieval, its index)
    are opened instead of prefilling (`cached` is then True), and saved after a prefill. Both modes share the
    stored K/V (engine.shared_kv). `cache_notices` says why a stored cache was rebuilt or not saved.
    """

    def __init__(self, loaded: LoadedModel, document: Document, config: EngineConfig,
                 store: Store | None = None) -> None:
        self.loaded, self.document, self.config, self.store = loaded, document, config, store
        check_text_length(document.text, loaded.tokenizer, loaded.max_positions, config.max_new_tokens)
        self.prompt: DocumentPrompt = build_document_prompt(loaded.tokenizer, document.text)
        self._cache: Cache | None = None
        self.check_fits(len(self.prompt.prefix_ids))
        self.attention: AttentionChoice = self._choose_attention()
        if self.uses_retrieval and loaded.device.type == "cpu":  # the first token need not wait for the kernels
            start_kernel_warmup(getattr(torch, config.kv_dtype), loaded.dtype, self.attention.mode)
        self.cached = False  # the document's prefill was skipped: its cache came from the store
        self.cache_bytes = 0  # bytes of this document's cache (K/V + index) on disk, 0 when not stored
        self.cache_notices: list[str] = []
        self.cache_save_s = 0.0
        self._saved = False
        self._doc_id: int | None = None
        self._cache_id: str | None = None  # the document's cache in the library (CacheIdentity.cache_id)
        self._span_map: SpanMap | None = None
        self._baseline: TokenMass | None = None  # where a question-agnostic answer looks (engine.citation_baseline)
        self._known_ids: list[int] = list(self.prompt.prefix_ids)  # the cache holds _known_ids[:its length]

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
        if isinstance(self._cache, RetrievalCache):
            return self._cache.indexed and self.uses_retrieval
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
        return self.attention.mode != FULL

    def _choose_attention(self) -> AttentionChoice:
        """config.attention, or for "auto" the mode that suits this document on this device (engine.attention_mode)."""
        device = self.loaded.device
        free = device_free(device) if device.type == "cuda" else available_ram()
        return choose_attention(self.config.attention, device.type, free,
                                self.prefix_tokens + self.config.max_new_tokens, self.loaded.shape)

    def use_config(self, config: EngineConfig) -> bool:
        """Answer with `config` from now on where it keeps this session's attention mode, K/V and index (another top_k,
        search effort, attention share, answer length, temperature...): True. False where a new session is needed
        (its K/V and index then come from the library where it holds them; engine.change_cost says which)."""
        if config.attention != self.config.attention:
            return False
        settings, current = cache_settings(config, self.loaded.device, self.attention.mode), self._cache_settings()
        if not self.uses_retrieval:  # full attention decodes with every key: the static set's size does not matter
            current = dataclasses.replace(current, n_sink=settings.n_sink, n_window=settings.n_window)
        if not current.search_only_change(settings):
            return False
        if self.uses_retrieval and isinstance(self._cache, RetrievalCache):
            self._cache.use_search_settings(settings)
        self.config = config
        return True

    def _cache_settings(self) -> RetrievalSettings:
        return cache_settings(self.config, self.loaded.device, self.attention.mode)

    def _decoding_cache(self) -> Cache:
        """The cache to decode with: the RetrievalCache, or for full attention a DynamicCache of its whole prefix."""
        if self.uses_retrieval or not isinstance(self._cache, RetrievalCache):
            return self._cache
        return full_attention_cache(self._cache, self.loaded.config, self.loaded.device, self.loaded.dtype,
                                    self._answer_room())

    def _answer_room(self) -> int:
        """Tokens a full-attention cache makes room for beyond the document: a question and the longest answer."""
        return self.config.max_new_tokens + 256

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

    def chat(self, chat: int | str | None = None) -> Chat:
        """A new chat about the document (None), or the library's chat with that id or key (ChatError if it has
        none). A new chat is stored with its first answer, when the session has a library."""
        if chat is None:
            return Chat(self)
        chat_id = chat_store.find_chat(self.store, chat) if self.store is not None else None
        if chat_id is None:
            raise ChatError(f"The library has no chat {chat}: it was deleted, or its document was removed.",
                            "Start a new chat on this document.")
        record = chat_store.load_chat(self.store, chat_id)
        stored = self.store.load_document(record.document_id)
        if stored.sha256 != self.document.sha256:
            raise ChatError(f"Chat {chat_id} is about another document ({stored.title}).",
                            f"Open that document to continue it: `ask @{record.document_id} ... --chat {chat_id}`.")
        return Chat(self, record)

    def chats(self) -> list[ChatSummary]:
        """The library's chats about this document, most recently updated first ([] without a library)."""
        if self.store is None or (doc_id := self.store.find_document(self.document.sha256)) is None:
            return []
        return chat_store.list_chats(self.store, doc_id)

    def ask(self, question: str, cancel: CancelToken | None = None, sources: bool = False) -> Iterator[Event]:
        """Stream the answer to `question` on its own (Progress..., TokenEvent..., Finished): a one-off chat that is
        not stored. sources: as in `answer` (needed for `sources(finished)` under retrieval attention)."""
        yield from Chat(self, persist=False, sources=sources).ask(question, cancel)

    def answer(self, prompt_ids: list[int], cancel: CancelToken | None = None, sources: bool = False
               ) -> Iterator[Event]:
        """Stream the answer to a whole prompt (Progress..., TokenEvent..., Finished) that starts with the document
        prefix (engine.prompt builds it). Opens the document's stored cache or prefills the document first. Only
        what the cache does not hold of prompt_ids is prefilled: the cache is cropped back to the longest prefix it
        shares with prompt_ids (never into the document prefix), less one token so that there is one to prefill.

        sources: the answer's sources will be asked for (`sources`): retrieval attention records where each decode
        step looked (Finished.attention_steps; about 3% of a step, so only then), and where the document's citation
        baseline is not known yet, it is found first (from the library, or computed: stage "citation baseline"),
        its time counted in the answer's time to first token (stats.citation_baseline_s)."""
        tokenizer = self.loaded.tokenizer
        model = self.loaded.model
        model.set_attn_implementation(RETRIEVAL_ATTENTION if self.uses_retrieval else FULL_ATTENTION)
        options = SamplingOptions(self.config.max_new_tokens, self.config.temperature, self.config.top_p)
        started = time.perf_counter()
        answering = False  # from the question's tokens on, the cache holds a prefix of _known_ids between steps
        try:
            load_s = 0.0
            if self._cache is None:
                self._cache = yield from self._open_cache()
                self._known_ids = list(self.prompt.prefix_ids)
                load_s = time.perf_counter() - started if self.cached else 0.0
            prepare_s = 0.0
            if isinstance(self._cache, RetrievalCache) and not self._cache.indexed:
                yield from self._prefill_document(cancel)
                prepare_s = time.perf_counter() - started
                yield from self._save_to_store(cancel)
            elif load_s:
                prepare_s = load_s
            self._cache = self._decoding_cache()
            baseline_s = 0.0
            if sources and self._baseline is None:
                if not isinstance(self._cache, RetrievalCache) and self._cache.get_seq_length() < self.prefix_tokens:
                    prefill_started = time.perf_counter()  # the document first: its prefill is no part of the baseline
                    yield from self._prefill_prefix(cancel)
                    prepare_s += time.perf_counter() - prefill_started
                baseline_s = yield from self._find_baseline(cancel)
            forward_kwargs = {"folio_cache": self._cache} if self.uses_retrieval else None
            if self.uses_retrieval:
                self._cache.trace = AttentionTrace(self.prefix_tokens) if sources else None
            self._crop_to_shared(prompt_ids)
            self._known_ids = list(prompt_ids)
            answering = True
            for event in generate(
                model, prompt_ids, self._cache,
                decode_text=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                stop_ids=self.loaded.stop_token_ids, max_positions=self.loaded.max_positions or 1 << 62,
                options=options, cancel=cancel, prefill_chunk=self.prefill_chunk,
                forward_kwargs=forward_kwargs, decode_threads=self.config.decode_threads,
            ):
                if isinstance(event, TokenEvent):  # a stopped answer: the cache holds a prefix of these
                    self._known_ids.append(event.token_id)
                elif isinstance(event, Finished):
                    self._known_ids = list(prompt_ids) + list(event.token_ids)
                if isinstance(event, Finished) and prepare_s:
                    event = _with_document_prefill(event, prepare_s, self._cache, self.cache_save_s,
                                                   reused=bool(load_s))
                if isinstance(event, Finished) and baseline_s:
                    event = dataclasses.replace(event, stats=dataclasses.replace(
                        event.stats, ttft_s=event.stats.ttft_s + baseline_s, citation_baseline_s=baseline_s))
                if isinstance(event, Finished) and self.uses_retrieval and sources:
                    event = dataclasses.replace(event, attention_steps=self._cache.trace.take())
                yield event
        except CancelledError:
            raise  # cancelling happens between chunks/tokens/layers: the cache holds a prefix of _known_ids
        except GeneratorExit:  # the caller stopped reading: it happens at a yield, between steps
            if not answering:  # the document's preparation may have work in flight: start it over
                self._cache = None
            raise
        except BaseException:
            self._cache = None  # a failure mid-forward may leave layers out of step: start over
            raise

    def _crop_to_shared(self, prompt_ids: list[int]) -> None:
        """Crop the cache to the longest prefix its tokens share with prompt_ids, leaving at least one to prefill."""
        held = self._cache.get_seq_length()
        shared = 0
        for known, wanted in zip(self._known_ids[:held], prompt_ids, strict=False):
            if known != wanted:
                break
            shared += 1
        keep = min(shared, len(prompt_ids) - 1)
        if keep < held:
            self._cache.crop(keep - held)

    def prepare(self, cancel: CancelToken | None = None) -> Iterator[Event]:
        """Make the document ready for questions without asking one (Progress events): open its stored cache, or
        prefill the prefix (and, for retrieval, build its indexes and store them). Resumes after a cancel; after any
        other failure the next call starts over."""
        model = self.loaded.model
        model.set_attn_implementation(RETRIEVAL_ATTENTION if self.uses_retrieval else FULL_ATTENTION)
        try:
            if self._cache is None:
                self._cache = yield from self._open_cache()
            if not isinstance(self._cache, RetrievalCache):
                yield from self._prefill_prefix(cancel)
            elif not self._cache.indexed:
                yield from self._prefill_document(cancel)
                yield from self._save_to_store(cancel)
            self._cache = self._decoding_cache()
        except CancelledError:
            raise
        except BaseException:
            self._cache = None
            raise

    def sources(self, finished: Finished) -> list[Passage]:
        """The document passages an answer drew on, best first (`rank_passages` of its `attention_steps`): ranked
        by how much more of the answer's attention they drew than of the document's citation baseline (computed now
        where the answer did not find it first: `answer(..., sources=True)`)."""
        return self.rank_passages(self.attention_steps(finished))

    def attention_steps(self, finished: Finished) -> list[Step]:
        """Where each answer token looked in the document: the keys retrieval attention attended at each decode
        step (the static sinks and window and the retrieved keys, weighted by their attention), or under full
        attention the top attention positions of one extra pass over the answer (which reuses the cached prompt, so
        ask before the cache moves on to another prompt)."""
        steps = finished.attention_steps
        if steps is None and self.uses_retrieval and finished.token_ids:
            raise ValueError("retrieval attention records an answer's steps only when asked with sources=True")
        if steps is None and finished.token_ids:
            steps = full_attention_steps(self.loaded.model, self._cache, finished.stats.prompt_tokens,
                                         finished.token_ids, self.prompt.doc_token_start, self.prompt.doc_token_end)
        return steps or []

    def rank_passages(self, steps: list[Step], question_specific: bool = True, top_n: int = 5) -> list[Passage]:
        """The top_n passages by the attention in `steps` (engine.citations.top_passages), best first.
        question_specific: against the document's citation baseline (found or computed now if not known yet); else
        by plain shares of the attention."""
        if not steps:
            return []
        if question_specific and self._baseline is None:
            run_steps(self.citation_baseline())
        if self._span_map is None:
            self._span_map = document_span_map(self.loaded.tokenizer, self.document.text, self.prompt.doc_token_start)
        return top_passages(steps, self._span_map, self.document.text, self.document.page_of, top_n,
                            baseline=self._baseline if question_specific else None)

    def citation_baseline(self, cancel: CancelToken | None = None) -> Iterator[Progress]:
        """Make the document's citation baseline known without answering (Progress events): prepare the document if
        needed, then find the baseline in the library or compute it (engine.citation_baseline). The cache is left
        holding the document prefix alone."""
        if self._baseline is not None:
            return
        yield from self.prepare(cancel)  # also sets the model's attention
        try:
            yield from self._find_baseline(cancel)
        except CancelledError:
            raise
        except BaseException:
            self._cache = None
            raise

    def _find_baseline(self, cancel: CancelToken | None) -> Generator[Progress, None, float]:
        """Set _baseline from the library, or compute it on the prepared cache; returns the seconds spent
        (``seconds = yield from ...``). The cache is cropped back to the document prefix either way."""
        started = time.perf_counter()
        key = baseline_key(self.attention.mode, self.config)
        stored = self.store.citation_baseline(self._cache_id, key) if self._library_cache_ready() else None
        if stored is not None:
            self._baseline = mass_from_arrays(*stored)
            return time.perf_counter() - started
        ids = self.prompt.prefix_ids + self.prompt.question_ids(self.loaded.tokenizer, NEUTRAL_QUESTION)
        trace = AttentionTrace(self.prefix_tokens) if self.uses_retrieval else None
        if trace is not None:
            self._cache.trace = trace
        self._crop_to_shared(ids)
        self._known_ids = list(ids)
        try:
            steps = yield from baseline_steps(
                self.loaded.model, ids, self._cache, self.loaded.stop_token_ids,
                self.loaded.max_positions or 1 << 62, self.prefill_chunk,
                (self.prompt.doc_token_start, self.prompt.doc_token_end), trace,
                {"folio_cache": self._cache} if self.uses_retrieval else None, cancel)
        finally:
            self._known_ids = list(self.prompt.prefix_ids)
            if (extra := self._cache.get_seq_length() - self.prefix_tokens) > 0:
                self._cache.crop(-extra)
        self._baseline = token_mass(steps)
        if self._library_cache_ready():
            try:
                self.store.save_citation_baseline(self._cache_id, key, *mass_to_arrays(self._baseline))
            except StoreError as error:
                self.cache_notices.append(f"citation baseline not saved: {error.problem}")
        return time.perf_counter() - started

    def _library_cache_ready(self) -> bool:
        """The library holds this document's cache (ready): what a citation baseline is kept with."""
        if self.store is None or self._cache_id is None:
            return False
        row = self.store.get_cache(self._cache_id)
        return row is not None and row["status"] == "ready"

    def _prefill_prefix(self, cancel: CancelToken | None) -> Iterator[Event]:
        """Prefill what a full-attention cache (not a RetrievalCache) lacks of the document prefix."""
        done = self._cache.get_seq_length()
        ids = torch.tensor(self.prompt.prefix_ids[done:], dtype=torch.long)
        if len(ids):
            yield from prefill_steps(self.loaded.model, ids, self._cache, self.prefill_chunk, cancel)

    def _prefill_document(self, cancel: CancelToken | None) -> Iterator[Event]:
        """Prefill the whole document prefix with exact attention and build the indexes (resumes after a cancel)."""
        ids = torch.tensor(self.prompt.prefix_ids, dtype=torch.long)
        model = self.loaded.model
        model.set_attn_implementation(RETRIEVAL_ATTENTION)  # records the K/V and training queries, also for full
        try:
            yield from document_prefill_steps(model, ids, self._cache, self.prefill_chunk, cancel)
        finally:
            model.set_attn_implementation(RETRIEVAL_ATTENTION if self.uses_retrieval else FULL_ATTENTION)

    def _open_cache(self) -> Iterator[Event]:
        """A restored cache from the store when there is a valid one (``cache = yield from ...``), else a new one."""
        if self.store is None:
            return self._make_cache()
        settings = self._cache_settings()
        try:
            self._doc_id = self.store.add_document(self.document, self.prompt.doc_token_end
                                                   - self.prompt.doc_token_start)
            identity = CacheIdentity.of(self.loaded, self.prompt.prefix_ids, settings)
            self._cache_id = identity.cache_id
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
        if self.store is None or self._saved or not isinstance(self._cache, RetrievalCache):
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
            if self.store.document_exists(self._doc_id):
                self.cache_notices.append(f"cache not saved: {error}")
            else:
                self.cache_notices.append("cache not saved: the document was removed from the library while it was "
                                          "being read")
        self._saved = True
        self.cache_save_s = time.perf_counter() - started

    def _make_cache(self) -> Cache:
        config = self.loaded.model.config
        if not self.uses_retrieval and self.store is None:
            return growing_cache(config, self.prefix_tokens + self._answer_room())
        return RetrievalCache(config.num_hidden_layers, self.prefix_tokens, self.loaded.cache_devices,
                              self._cache_settings(), self.loaded.dtype, attention_scale(self.loaded.model))


def _with_document_prefill(event: Finished, prepare_s: float, cache: Cache, save_s: float = 0.0,
                           reused: bool = False) -> Finished:
    """Count the document prefill, index build and cache save (done before generate) in the answer's
    stats; reused: the prefix came from the store (prepare_s is then the load time, not a prefill).
    The prefill's time is prepare_s less the index build time that the prefill did not hide."""
    build_s, wait_s = getattr(cache, "index_build_s", 0.0), getattr(cache, "index_wait_s", 0.0)  # 0 under full
    stats = dataclasses.replace(event.stats, index_build_s=build_s, index_wait_s=wait_s)
    if reused:
        stats = dataclasses.replace(stats, ttft_s=stats.ttft_s + prepare_s)
    else:
        stats = dataclasses.replace(stats, reused_tokens=0, prefill_s=stats.prefill_s + prepare_s - wait_s,
                                    ttft_s=stats.ttft_s + prepare_s + save_s)
    return dataclasses.replace(event, stats=stats)
