"""The document prefill into a RetrievalCache, layer by layer, with each finished layer's index built meanwhile.

Chunk by chunk (engine.generate.prefill_steps), every chunk runs through every layer, so on a GPU each layer's whole
prefix K/V come back from CPU memory at every chunk (~283 GB at 128K tokens for Llama-3-8B) and all layers finish
together, so no index can be built before the prefill ends. Layer by layer, one layer runs over the whole prefix,
chunk by chunk, before the next starts: its K/V stay on the device during its pass and go to CPU memory once, and
its index can be built on a CPU thread while the next layers run on the device. The results are the same
computations in another order (same decoder-layer calls, same registered attention).

Only the decoder stacks of the Llama family (`model.model` with embed_tokens, rotary_emb and layers, every layer
full attention) are driven this way; other models prefill chunk by chunk, then build their indexes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Generator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from engine.cache import RetrievalCache, RetrievalLayer
from engine.events import CancelToken, Progress, ProgressMeter
from engine.generate import prefill_steps

LAYER_MAJOR_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
MAX_CONCURRENT_BUILDS = 4
CANCEL_POLL_S = 0.1  # how often a wait for background index builds looks at the cancel flag


@dataclass
class LayerMajorState:
    """Where a layer-major prefill stands; kept on the cache (`cache.layer_major`) so a cancelled one resumes.

    hidden [1, T, d] on the model's device: layer `layer`'s outputs before position `start`, its inputs from there.
    """

    hidden: torch.Tensor
    layer: int = 0
    start: int = 0


def supports_layer_major(model: PreTrainedModel) -> bool:
    """Whether `model` has a Llama-family decoder stack that document_prefill_steps can run layer by layer: every
    layer full causal attention (no sliding window, which the layer-major prefill does not mask)."""
    config, inner = model.config, getattr(model, "model", None)
    layer_types = getattr(config, "layer_types", None)
    full_attention = (all(kind == "full_attention" for kind in layer_types) if layer_types
                      else getattr(config, "sliding_window", None) is None)
    return (config.model_type in LAYER_MAJOR_MODEL_TYPES and full_attention
            and all(hasattr(inner, name) for name in ("embed_tokens", "rotary_emb", "layers")))


def document_prefill_steps(model: PreTrainedModel, ids: torch.Tensor, cache: RetrievalCache, chunk: int,
                           cancel: CancelToken | None = None, background_builds: bool | None = None
                           ) -> Generator[Progress, None, None]:
    """Prefill the document prefix ids [T] into `cache` with exact attention and build every layer's index.

    Yields Progress for the stages "prefill" and "index"; checks `cancel` between chunks and between layers, and a
    cancelled call resumes where it stopped when called again with the same cache and ids. The model must be set
    to the retrieval attention. background_builds: build each layer's index on a thread while the next layers
    prefill (default: when the model is not on the CPU, whose cores the prefill already uses).
    """
    if not _runs_layer_major(model, ids, cache):
        yield from prefix_prefill_steps(model, ids, cache, chunk, cancel)
        yield from cache.build_index_steps(cancel)
        return
    if background_builds is None:
        background_builds = model.device.type != "cpu"
    builds = BackgroundIndexBuilds(cache, concurrent_builds(model, cache)) if background_builds else None
    try:
        yield from _layer_major_steps(model, ids, cache, chunk, cancel, builds)
        if builds:
            yield from builds.finish_steps(cancel)
    finally:
        if builds:
            builds.stop()
    if not cache.indexed:  # every layer without background builds; those a cancel left out
        yield from cache.build_index_steps(cancel)


def prefix_prefill_steps(model: PreTrainedModel, ids: torch.Tensor, cache: RetrievalCache, chunk: int,
                         cancel: CancelToken | None = None) -> Generator[Progress, None, None]:
    """document_prefill_steps without the index builds, in the same order (layer by layer where the model allows):
    for benchmarks that build several kinds of index from one prefill. Yields Progress "prefill"; resumable."""
    if _runs_layer_major(model, ids, cache):
        yield from _layer_major_steps(model, ids, cache, chunk, cancel, None)
        return
    done = cache.get_seq_length()  # chunk by chunk (also to finish a cache begun that way)
    if done < len(ids):
        yield from prefill_steps(model, ids[done:], cache, chunk, cancel, {"folio_cache": cache})


def _runs_layer_major(model: PreTrainedModel, ids: torch.Tensor, cache: RetrievalCache) -> bool:
    """Whether the prefix ids [T] go into `cache` layer by layer (raises if the cache was made for another length)."""
    if len(ids) != cache.prefix_len:
        raise ValueError(f"the cache holds a {cache.prefix_len}-token prefix, not {len(ids)} tokens")
    return supports_layer_major(model) and not (cache.layer_major is None and cache.get_seq_length() > 0)


def _layer_major_steps(model: PreTrainedModel, ids: torch.Tensor, cache: RetrievalCache, chunk: int,
                       cancel: CancelToken | None, builds: BackgroundIndexBuilds | None
                       ) -> Generator[Progress, None, None]:
    """The prefill itself: layer after layer, `chunk` tokens at a time (Progress counts token-layers)."""
    inner, total, n_layers = model.model, len(ids), len(cache.layers)
    if cache.layers[-1].filled == total:
        return
    if cache.layer_major is None:
        with torch.inference_mode():
            cache.layer_major = LayerMajorState(inner.embed_tokens(ids.view(1, -1).to(model.device)))
    state = cache.layer_major
    meter = ProgressMeter("prefill", n_layers * total, None, "token-layers")
    yield meter.update(state.layer * total + state.start)
    while state.layer < n_layers:
        layer: RetrievalLayer = cache.layers[state.layer]
        layer.prefill_on_device = keeps_layer_on_device(layer.device)
        while state.start < total:
            if cancel:
                cancel.raise_if_cancelled()
            start, stop = state.start, min(state.start + chunk, total)
            with torch.inference_mode():
                _run_layer_chunk(inner, state.layer, state.hidden, start, stop, cache)
            state.start = stop
            yield meter.update(state.layer * total + stop)
        layer.prefill_on_device = False
        if builds:
            builds.submit(layer)
        state.layer, state.start = state.layer + 1, 0
    cache.layer_major = None  # lets go of the hidden states


def _run_layer_chunk(inner, number: int, hidden: torch.Tensor, start: int, stop: int, cache: RetrievalCache) -> None:
    """Decoder layer `number` on positions [start, stop) of hidden [1, T, d], in place, its K/V into the cache."""
    piece = hidden[:, start:stop]
    positions = torch.arange(start, stop, device=hidden.device).view(1, -1)
    out = inner.layers[number](piece, attention_mask=None,  # the retrieval attention's prefill is causal itself
                               position_ids=positions, position_embeddings=inner.rotary_emb(piece, positions),
                               cache=cache, use_cache=True, folio_cache=cache)
    hidden[:, start:stop] = out


def keeps_layer_on_device(device: torch.device) -> bool:
    """Whether a layer's prefix K/V stay on the device during its pass (off the CPU: on the CPU the store is the
    prefix already, so a second copy would only cost memory)."""
    return device.type != "cpu"


def concurrent_builds(model: PreTrainedModel, cache: RetrievalCache) -> int:
    """How many layers' indexes to build at once: a layer's build runs its graphs (one per KV head by default) on a
    thread each, so enough layers to give every core a graph (Llama-3-8B's 8 KV heads on 16 cores: 2), at most 4."""
    config = model.config
    per_kv_head = cache.settings.index_params.graph_per_kv_head
    graphs = getattr(config, "num_key_value_heads", None) if per_kv_head else None
    graphs = graphs or config.num_attention_heads
    return max(1, min(MAX_CONCURRENT_BUILDS, (os.cpu_count() or 1) // graphs))


class BackgroundIndexBuilds:
    """Builds finished layers' indexes on worker threads (the graph build's own kernels use several cores and release
    the GIL), so that the prefill of the following layers goes on meanwhile."""

    def __init__(self, cache: RetrievalCache, workers: int = 1) -> None:
        self.cache = cache
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="folio-index")
        self.pending: list[Future] = []
        self.lock = threading.Lock()  # for the build time the workers add up

    def submit(self, layer: RetrievalLayer) -> None:
        """Queue the layer's build; first raise the error of any build that failed (no use prefilling on)."""
        for future in self.pending:
            if future.done():
                future.result()
        self.pending.append(self.executor.submit(self._build, layer))

    def _build(self, layer: RetrievalLayer) -> None:
        started = time.perf_counter()
        layer.build_index()
        with self.lock:
            self.cache.index_build_s += time.perf_counter() - started

    def finish_steps(self, cancel: CancelToken | None) -> Generator[Progress, None, None]:
        """Wait for the submitted builds, yielding Progress "index" (layers indexed) and raising their errors."""
        started = time.perf_counter()
        meter = ProgressMeter("index", len(self.cache.layers), None, "layers")
        indexed = sum(layer.indexed for layer in self.cache.layers)
        yield meter.update(indexed)
        while self.pending:
            if cancel:
                cancel.raise_if_cancelled()
            done, _ = wait(self.pending, timeout=CANCEL_POLL_S, return_when=FIRST_COMPLETED)
            for future in done:
                self.pending.remove(future)
                future.result()
            if done:
                indexed = sum(layer.indexed for layer in self.cache.layers)
                yield meter.update(indexed)
        self.cache.index_wait_s += time.perf_counter() - started

    def stop(self) -> None:
        """Drop the builds not started (a cancel or an error); wait for those running, so no thread is left writing
        to the cache. Layers left without an index are built on the next call."""
        for future in self.pending:
            future.cancel()
        self.executor.shutdown(wait=True)
