"""One document open on one model: its prompt prefix is prefilled once and reused by every question."""

from __future__ import annotations

from collections.abc import Iterator

from transformers import Cache, DynamicCache

from engine.config import EngineConfig
from engine.errors import CancelledError, ContextTooLongError
from engine.events import CancelToken
from engine.generate import Event, SamplingOptions, generate
from engine.ingest import Document
from engine.model import LoadedModel
from engine.prompt import DocumentPrompt, build_document_prompt


class DocumentSession:
    """Ask questions about `document`; after the first, only the question's tokens are prefilled."""

    def __init__(self, loaded: LoadedModel, document: Document, config: EngineConfig) -> None:
        self.loaded, self.document, self.config = loaded, document, config
        self.prompt: DocumentPrompt = build_document_prompt(loaded.tokenizer, document.text)
        self._cache: Cache | None = None
        self.check_fits(len(self.prompt.prefix_ids))

    @property
    def prefix_tokens(self) -> int:
        return len(self.prompt.prefix_ids)

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
        """Stream the answer to `question` (Progress, TokenEvent..., Finished)."""
        tokenizer = self.loaded.tokenizer
        prompt_ids = self.prompt.prompt_ids(tokenizer, question)
        self.check_fits(len(prompt_ids))
        self.new_chat()
        if self._cache is None:
            self._cache = self._make_cache()
        options = SamplingOptions(self.config.max_new_tokens, self.config.temperature, self.config.top_p)
        try:
            yield from generate(
                self.loaded.model, prompt_ids, self._cache,
                decode_text=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                stop_ids=self.loaded.stop_token_ids, max_positions=self.loaded.max_positions or 1 << 62,
                options=options, cancel=cancel, prefill_chunk=self.config.prefill_chunk,
            )
        except CancelledError:
            raise  # cancelling happens between chunks/tokens: the cache stays consistent
        except BaseException:
            self._cache = None  # a failure mid-forward may leave layers out of step: start over
            raise

    def _make_cache(self) -> Cache:
        return DynamicCache(config=self.loaded.model.config)
