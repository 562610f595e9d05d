"""Our own prefill + decode loop (no `model.generate`): chunked, cancellable, streaming events.

The model and its cache are given; this module only drives them (gpt-fast's model/generate split).
Whatever attention the model was set to (full, retrieval, ...) works the same way here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import Cache, PreTrainedModel

from engine.events import CancelToken, Progress, ProgressMeter, run_steps


@dataclass(frozen=True)
class SamplingOptions:
    """Greedy when temperature is 0; else temperature + nucleus (top_p) sampling, seeded if asked."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class TokenEvent:
    """One decoded token and the text it added to the answer (may be "" mid-character)."""

    token_id: int
    text: str


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int  # tokens in the whole prompt
    reused_tokens: int  # of those, already in the cache (not prefilled again)
    prefill_s: float
    ttft_s: float  # from the start of generation to the first answer token
    new_tokens: int
    decode_s: float  # from the first answer token to the last
    stop_reason: str  # "stop_token", "max_new_tokens" or "context_full"
    index_build_s: float = 0.0  # retrieval attention: building the key indexes, summed over layers
    index_wait_s: float = 0.0  # of that, the part not hidden behind the prefill (part of ttft_s)
    citation_baseline_s: float = 0.0  # finding the document's citation baseline first (part of ttft_s)

    @property
    def prefill_tokens(self) -> int:
        return self.prompt_tokens - self.reused_tokens

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first, per second (the first one's time is in ttft_s)."""
        return (self.new_tokens - 1) / self.decode_s if self.new_tokens > 1 and self.decode_s > 0 else 0.0


@dataclass(frozen=True)
class Finished:
    token_ids: list[int]
    text: str
    stats: GenerationStats
    # RetrievalAttention: per decode step, [(prompt prefix position, attention share)] attended (static and retrieved)
    attention_steps: list[list[tuple[int, float]]] | None = None


Event = Progress | TokenEvent | Finished


class IncrementalText:
    """Turns a growing list of token ids into text deltas, holding back half-decoded characters.

    Each token decodes only the ids since the last emitted delta's start (a window of a few tokens, as text
    generation servers do), not the whole answer: constant work per token instead of work growing with the answer.
    The deltas join to the whole answer's decoding; `flush` checks that and adds what is missing.
    """

    MAX_HELD = 4  # a UTF-8 character spans at most 4 byte-level tokens

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.text = ""
        self.held = 0
        self._start = 0  # ids[_start:_done] decode to the end of the text emitted so far
        self._done = 0

    def add(self, token: int) -> str:
        """Append a token; return the text it completes ("" while a character is incomplete)."""
        self.ids.append(token)
        before = self.decode(self.ids[self._start : self._done])
        window = self.decode(self.ids[self._start :])
        if window.endswith("\ufffd") and self.held < self.MAX_HELD:
            self.held += 1
            return ""
        self.held = 0
        delta = window[len(before) :] if window.startswith(before) else window
        self._start, self._done = self._done, len(self.ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """Whatever is still held back, at the end of the answer (the whole answer decoded once)."""
        whole = self.decode(self.ids)
        delta = whole[len(self.text) :] if whole.startswith(self.text) else ""
        self.text, self.held = whole, 0
        return delta


def prefill_steps(model: PreTrainedModel, ids: torch.Tensor, cache: Cache, chunk: int,
                  cancel: CancelToken | None = None, forward_kwargs: dict | None = None, stage: str = "prefill"
                  ) -> Generator[Progress, None, torch.Tensor]:
    """Run ids [n] through the model into `cache`, `chunk` tokens at a time.

    Yields a Progress event of `stage` after every chunk and returns the logits [vocab] after the last token
    (``logits = yield from prefill_steps(...)``). Checks `cancel` before every chunk.
    forward_kwargs: extra keywords for every forward (e.g. folio_cache for the retrieval attention).
    """
    if len(ids) == 0:
        raise ValueError("prefill needs at least one token")
    meter = ProgressMeter(stage, len(ids), None, "tokens")
    yield meter.update(0)
    for start in range(0, len(ids), chunk):
        if cancel:
            cancel.raise_if_cancelled()
        piece = ids[start : start + chunk].view(1, -1).to(model.device)
        with torch.inference_mode():
            logits = model(input_ids=piece, cache=cache, use_cache=True, logits_to_keep=1,
                           **(forward_kwargs or {})).logits
        yield meter.update(min(start + chunk, len(ids)))
    return logits[0, -1]


def prefill(model: PreTrainedModel, ids: torch.Tensor, cache: Cache, chunk: int = 512,
            forward_kwargs: dict | None = None) -> torch.Tensor:
    """prefill_steps without events: returns the logits [vocab] after the last of ids [n]."""
    return run_steps(prefill_steps(model, ids, cache, chunk, forward_kwargs=forward_kwargs))


def sample(logits: torch.Tensor, options: SamplingOptions, generator: torch.Generator | None) -> int:
    """Pick the next token id from logits [vocab]."""
    if options.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / options.temperature, dim=-1)
    if options.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < options.top_p
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with `threads` torch CPU threads (0: unchanged), then restore the previous count."""
    previous = torch.get_num_threads()
    if threads and threads != previous:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads and threads != previous:
            torch.set_num_threads(previous)


def generate(model: PreTrainedModel, prompt_ids: list[int], cache: Cache,
             decode_text: Callable[[list[int]], str], stop_ids: set[int], max_positions: int,
             options: SamplingOptions = SamplingOptions(), cancel: CancelToken | None = None,
             prefill_chunk: int = 512, forward_kwargs: dict | None = None, decode_threads: int = 0
             ) -> Iterator[Event]:
    """Prefill what `cache` does not hold yet of prompt_ids, then decode; yield events as they happen.

    decode_threads: torch's CPU threads for the decode steps (0: as set), restored after each step.

    The cache must hold exactly prompt_ids[:cache.get_seq_length()] (a reused prefix) or nothing.
    Yields Progress ("prefill", or "question" when the cache holds a prefix already), one TokenEvent per answer
    token, then one Finished.
    Raises CancelledError when `cancel` is set (between prefill chunks and between tokens).
    """
    started = time.perf_counter()
    reused = cache.get_seq_length()
    ids = torch.tensor(prompt_ids[reused:], dtype=torch.long)
    logits = yield from prefill_steps(model, ids, cache, prefill_chunk, cancel, forward_kwargs,
                                      stage="question" if reused else "prefill")
    prefill_s = time.perf_counter() - started
    generator = torch.Generator().manual_seed(options.seed) if options.seed is not None else None

    answer: list[int] = []
    text = IncrementalText(decode_text)
    stop_reason = "max_new_tokens"
    first_token_at = None
    with torch.inference_mode():
        while len(answer) < options.max_new_tokens:
            token = sample(logits, options, generator)
            if first_token_at is None:
                first_token_at = time.perf_counter()
            if token in stop_ids:
                stop_reason = "stop_token"
                break
            answer.append(token)
            yield TokenEvent(token, text.add(token))
            if len(prompt_ids) + len(answer) >= max_positions:
                stop_reason = "context_full"
                break
            if cancel:
                cancel.raise_if_cancelled()
            step = torch.tensor([[token]], device=model.device)
            with torch_threads(decode_threads):
                logits = model(input_ids=step, cache=cache, use_cache=True, **(forward_kwargs or {})).logits[0, -1]
    finished_at = time.perf_counter()
    first_token_at = first_token_at or finished_at
    if rest := text.flush():
        yield TokenEvent(answer[-1], rest)
    stats = GenerationStats(
        prompt_tokens=len(prompt_ids), reused_tokens=reused, prefill_s=prefill_s,
        ttft_s=first_token_at - started, new_tokens=len(answer), decode_s=finished_at - first_token_at,
        stop_reason=stop_reason,
    )
    yield Finished(answer, text.text, stats)
