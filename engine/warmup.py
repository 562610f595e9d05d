"""Load the compiled kernels of a CPU retrieval decode step ahead of the first answer token.

numba keeps the compiled search and decode kernels on disk (cache=True), but a fresh process still loads each one at
its first call: a reopened document's first token would wait for them. `start_kernel_warmup` runs one decode step
of a tiny layer through the engine's own path (the registered attention, a loaded graph index, the compiled step),
with the cache's dtypes and array layouts, on a background thread while the document's cache is read
(docs/benchmarks.md, reopen profile). Nothing it computes is kept.
"""

from __future__ import annotations

import contextlib
import threading
from types import SimpleNamespace

import numpy as np
import torch

_STARTED: set[tuple] = set()
_LOCK = threading.Lock()


def warm_decode_step(kv_dtype: torch.dtype, model_dtype: torch.dtype, method: str) -> None:
    """One decode step of a 4-head, 2-KV-head, 8-dim layer of 64 prefix tokens with `method`'s index ("retrieval"
    or "qgraph": loaded chain graphs; other methods only warm the compiled attention step). Two KV heads, so that
    the views of the static set and the offloaded values have the strided layouts of a real layer's."""
    from engine.cache import PrefixArrays, RetrievalCache, RetrievalSettings
    from engine.index import IndexParams
    from engine.retrieval import retrieval_attention

    n_heads, n_kv, dim, tokens = 4, 2, 8, 64
    generator = torch.Generator().manual_seed(0)
    keys = torch.randn(n_kv, tokens, dim, generator=generator).to(kv_dtype)
    values = torch.randn(n_kv, tokens, dim, generator=generator).to(kv_dtype)
    queries = torch.randn(n_heads, 4, dim, generator=generator).to(torch.float16)
    settings = RetrievalSettings(method=method if method in ("retrieval", "qgraph") else "exact", n_sink=4,
                                 n_window=8, top_k=4, effort=8, index_params=IndexParams(effort=8, threads=1),
                                 kv_dtype=kv_dtype)
    cache = RetrievalCache(1, tokens, torch.device("cpu"), settings, model_dtype)
    layer = cache.layers[0]
    layer.filled, layer.is_initialized = tokens, True
    n_off = tokens - 4 - 8
    arrays = None
    if settings.method != "exact":
        chain = np.arange(1, n_off + 1, dtype=np.int32) % n_off  # key i links to key i + 1
        offsets = np.arange(n_off + 1, dtype=np.int64)
        arrays = {"indptr": np.stack([offsets, offsets + n_off]), "indices": np.concatenate([chain, chain]),
                  "entries": np.zeros((n_kv, 1), dtype=np.int64),
                  "graph_of": np.arange(n_heads, dtype=np.int64) // (n_heads // n_kv)}
        if settings.method == "qgraph":
            arrays |= {"codes": np.zeros((n_kv * n_off, dim), dtype=np.int8),
                       "scales": np.ones((n_kv, dim), dtype=np.float32)}
    layer.install(PrefixArrays(keys, values, queries), arrays)
    new = torch.randn(1, n_kv, 1, dim, generator=generator, dtype=model_dtype)
    key, value = layer.update(new, new)
    query = torch.randn(1, n_heads, 1, dim, generator=generator, dtype=model_dtype)
    with torch.inference_mode():
        retrieval_attention(SimpleNamespace(layer_idx=0), query, key, value, None, folio_cache=cache)


def start_kernel_warmup(kv_dtype: torch.dtype, model_dtype: torch.dtype, method: str) -> threading.Thread | None:
    """warm_decode_step on a daemon thread, once per process and kind of step; None when already started."""
    kind = (kv_dtype, model_dtype, method)
    with _LOCK:
        if kind in _STARTED:
            return None
        _STARTED.add(kind)
    thread = threading.Thread(target=_quietly, args=kind, name="folio-kernel-warmup", daemon=True)
    thread.start()
    return thread


def _quietly(kv_dtype: torch.dtype, model_dtype: torch.dtype, method: str) -> None:
    """A warm-up that fails changes nothing: the real step then loads the kernels itself."""
    with contextlib.suppress(Exception):
        warm_decode_step(kv_dtype, model_dtype, method)
