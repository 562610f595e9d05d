"""One document open on one model: its prompt prefix is prefilled once and reused by every question."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import torch
from transformers import Cache, DynamicCache

from engine.cache import WINDOW_ONLY, RetrievalCache, RetrievalSettings
from engine.config import EngineConfig
from engine.errors import CancelledError, ContextTooLongError
from engine.events import CancelToken
from engine.generate import Event, Finished, SamplingOptions, generate, prefill_steps
from engine.index import IndexParams
from engine.ingest import Document
from engine.model import LoadedModel
from engine.prompt import DocumentPrompt, build_document_prompt
from engine.retrieval import RETRIEVAL_ATTENTION

FULL_ATTENTION = "sdpa"


def retrieval_settings(config: EngineConfig, device: torch.device | None = None) -> RetrievalSettings:
    """The cache settings for a retrieval-family attention mode of `config` on a model on `device`."""
    method = WINDOW_ONLY if config.attention == "window" else config.attention
    params = IndexParams(effort=config.search_effort, knn_device=device.type if device else "cpu")
    return RetrievalSettings(method=method, n_sink=config.n_sink, n_window=config.n_window, top_k=config.top_k,
                             effort=config.search_effort, index_params=params,
                             kv_dtype=getattr(torch, config.kv_dtype))


class DocumentSession:
    """Ask questions about `document`; after the first, only the question's tokens are prefilled.

    attention "full": ordinary attention with transformers' DynamicCache. Every other mode prefills
    the document with exact attention into a RetrievalCache, builds the key indexes, then answers with
    the static set + retrieved keys (engine.retrieval).
    """

    def __init__(self, loaded: LoadedModel, document: Document, config: EngineConfig) -> None:
        self.loaded, self.document, self.config = loaded, document, config
        self.prompt: DocumentPrompt = build_document_prompt(loaded.tokenizer, document.text)
        self._cache: Cache | None = None
        self.check_fits(len(self.prompt.prefix_ids))

    @property
    def prefix_tokens(self) -> int:
        return len(self.prompt.prefix_ids)

    @property
    def uses_retrieval(self) -> bool:
        return self.config.attention != "full"

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
            if self._cache is None:
                self._cache = self._make_cache()
            forward_kwargs = {"folio_cache": self._cache} if self.uses_retrieval else None
            prepare_s = index_s = 0.0
            if self.uses_retrieval and not self._cache.indexed:
                yield from self._prefill_document(cancel)
                prepare_s = time.perf_counter() - started
                index_s = self._cache.index_build_s
            for event in generate(
                model, prompt_ids, self._cache,
                decode_text=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                stop_ids=self.loaded.stop_token_ids, max_positions=self.loaded.max_positions or 1 << 62,
                options=options, cancel=cancel, prefill_chunk=self.config.prefill_chunk,
                forward_kwargs=forward_kwargs,
            ):
                if isinstance(event, Finished) and prepare_s:
                    event = _with_document_prefill(event, prepare_s, index_s)
                yield event
        except CancelledError:
            raise  # cancelling happens between chunks/tokens/layers: the cache stays consistent
        except BaseException:
            self._cache = None  # a failure mid-forward may leave layers out of step: start over
            raise

    def _prefill_document(self, cancel: CancelToken | None) -> Iterator[Event]:
        """Prefill the whole document prefix with exact attention, then build the indexes."""
        cache = self._cache
        done = cache.get_seq_length()  # resume after a cancel
        if done < self.prefix_tokens:
            ids = torch.tensor(self.prompt.prefix_ids[done:], dtype=torch.long)
            yield from prefill_steps(self.loaded.model, ids, cache, self.config.prefill_chunk, cancel,
                                     {"folio_cache": cache})
        yield from cache.build_index_steps(cancel)

    def _make_cache(self) -> Cache:
        config = self.loaded.model.config
        if not self.uses_retrieval:
            return DynamicCache(config=config)
        return RetrievalCache(config.num_hidden_layers, self.prefix_tokens, self.loaded.device,
                              retrieval_settings(self.config, self.loaded.device), self.loaded.dtype)


def _with_document_prefill(event: Finished, prepare_s: float, index_s: float) -> Finished:
    """Count the document prefill and index build (done before generate) in the answer's stats."""
    stats = event.stats
    stats = dataclasses.replace(stats, reused_tokens=0, prefill_s=stats.prefill_s + prepare_s - index_s,
                                ttft_s=stats.ttft_s + prepare_s, index_build_s=index_s)
    return dataclasses.replace(event, stats=stats)
