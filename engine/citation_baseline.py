"""The citation baseline: where an answer about the document looks whatever was asked.

An answer's sources (engine.citations) are ranked by how much more of its attention a passage drew than of the
baseline's. The baseline is the token mass of a question-agnostic answer: the document asked NEUTRAL_QUESTION and
answered greedily for NEUTRAL_TOKENS tokens on the document's own cache and attention, its steps recorded exactly
as an answer's are (retrieval's trace of the static and retrieved keys, or full attention's probe). It costs one
short question's prefill and NEUTRAL_TOKENS decode steps (and under full attention the probe's pass over them),
once per document and attention setting: the session keeps it, and the library keeps it with the document's cache
(Store.citation_baseline), so a reopened document does not compute it again. docs/design.md (Citations) says why
this question and length; docs/benchmarks.md (sources) measures it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Generator

import numpy as np
from transformers import Cache, PreTrainedModel

from engine.attention_mode import FULL
from engine.attention_probe import full_attention_steps
from engine.cache import AttentionTrace
from engine.citations import TokenMass
from engine.config import EngineConfig
from engine.events import CancelToken, Progress, ProgressMeter
from engine.generate import SamplingOptions, TokenEvent, generate

NEUTRAL_QUESTION = "Summarize the document."
NEUTRAL_TOKENS = 16
STAGE = "citation baseline"
VERSION = 1  # counts changes to how a baseline is made (question, length, what a step records)
RETRIEVAL_FIELDS = ("n_sink", "n_window", "top_k", "attention_share", "search_effort")  # which keys a step sees


def baseline_key(mode: str, config: EngineConfig) -> str:
    """What decides a baseline besides its cache (whose id covers the model, the document and the dtypes): the
    attention mode that made it and, for the retrieval family, the settings that choose the keys it attends."""
    key = {"mode": mode, "question": NEUTRAL_QUESTION, "tokens": NEUTRAL_TOKENS, "version": VERSION}
    if mode != FULL:
        key |= {name: getattr(config, name) for name in RETRIEVAL_FIELDS}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def baseline_steps(model: PreTrainedModel, prompt_ids: list[int], cache: Cache, stop_ids: set[int],
                   max_positions: int, prefill_chunk: int, doc_span: tuple[int, int],
                   trace: AttentionTrace | None = None,
                   forward_kwargs: dict | None = None, cancel: CancelToken | None = None
                   ) -> Generator[Progress, None, list[list[tuple[int, float]]]]:
    """Answer prompt_ids (the document prefix + the neutral question) greedily for NEUTRAL_TOKENS tokens on `cache`,
    yielding STAGE progress per token; returns the answer's steps, [(prompt position, attention weight)] per token
    (``steps = yield from ...``). trace: retrieval's AttentionTrace on the cache (its steps are the answer's), else
    full attention's probe runs over the answer (doc_span: the document's prompt positions [start, end)). The cache
    then holds the prompt and (part of) the answer: the caller crops it back."""
    meter = ProgressMeter(STAGE, NEUTRAL_TOKENS, None, "tokens")
    yield meter.update(0)
    answer: list[int] = []
    options = SamplingOptions(max_new_tokens=NEUTRAL_TOKENS)
    for event in generate(model, prompt_ids, cache, decode_text=lambda _: "", stop_ids=stop_ids,
                          max_positions=max_positions, options=options, cancel=cancel, prefill_chunk=prefill_chunk,
                          forward_kwargs=forward_kwargs):
        if isinstance(event, TokenEvent):
            answer.append(event.token_id)
            yield meter.update(len(answer))
    if len(answer) < NEUTRAL_TOKENS:  # stopped early
        yield meter.update(NEUTRAL_TOKENS)
    if trace is not None:
        return trace.take()
    return full_attention_steps(model, cache, len(prompt_ids), answer, *doc_span)


def mass_to_arrays(mass: TokenMass) -> tuple[np.ndarray, np.ndarray]:
    """A token mass as (positions [n] int32, mass [n] float32), for the library."""
    return np.fromiter(mass.keys(), np.int32, len(mass)), np.fromiter(mass.values(), np.float32, len(mass))


def mass_from_arrays(positions: np.ndarray, mass: np.ndarray) -> dict[int, float]:
    return dict(zip(positions.tolist(), mass.tolist(), strict=True))

