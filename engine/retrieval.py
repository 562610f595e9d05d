"""The "retrieval" attention, plugged into transformers through its attention and mask registries.

Use: `model.set_attn_implementation(RETRIEVAL_ATTENTION)` and pass the RetrievalCache both as
`cache=` and as the extra forward keyword `folio_cache=` (transformers hands extra forward keywords
to every attention call; that is how this function finds the layer's offloaded set and index).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from engine.attention import causal_prefill_attention, merge_attention_states, partial_attention
from engine.cache import WINDOW_ONLY, AttentionTrace, RetrievalCache, RetrievalLayer
from engine.cpu_decode import SUPPORTED_KV_DTYPES, decode_attention_cpu, retrieved_attention_cpu

RETRIEVAL_ATTENTION = "folio_retrieval"


def retrieval_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                        folio_cache: RetrievalCache | None = None, **kwargs):
    """query [1, H, m, D]; key/value [1, H_kv, n, D] as returned by the cache layer's update.

    Returns (output [1, m, H, D], None) like transformers' other attention functions.
    """
    if folio_cache is None:
        raise ValueError("retrieval attention needs the RetrievalCache passed as folio_cache=... to forward")
    layer: RetrievalLayer = folio_cache.layers[module.layer_idx]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if not layer.indexed:  # document prefill: exact attention, and remember queries for the index
        layer.record_queries(query[0], scale)
        if attention_mask is None:  # plain causal: the layer-major prefill, or transformers' first chunk
            return causal_prefill_attention(query, key, value, scale), None
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scale, dropout=dropout,
                                      **kwargs)
    q = query[0]
    compiled = q.device.type == "cpu" and q.shape[1] == 1 and key.dtype in SUPPORTED_KV_DTYPES
    # On a GPU the static part is queued first, so that the device computes it while the CPU searches.
    static = None if compiled else partial_attention(q, key[0], value[0], scale, causal_tail=q.shape[1])
    ids = search_offloaded(layer, q, folio_cache)
    if static is None and ids is not None:  # a CPU decode step: static, retrieved and merge in one pass
        o, lse, lse_off, weights = decode_attention_cpu(q, key[0], value[0], layer.off_keys, layer.off_values, ids,
                                                        scale)
    else:
        o_static, lse_static = static or partial_attention(q, key[0], value[0], scale, causal_tail=q.shape[1])
        o_off, lse_off, weights = offloaded_attention(layer, q, scale, ids)
        o, lse = merge_attention_states(o_static, lse_static, o_off.to(q.device), lse_off.to(q.device))
    if folio_cache.trace is not None and q.shape[1] == 1:
        trace_step(folio_cache.trace, module.layer_idx, layer, q, key[0], scale, lse, ids, lse_off, weights)
    return o.to(query.dtype).transpose(0, 1).unsqueeze(0), None


def trace_step(trace: AttentionTrace, layer_idx: int, layer: RetrievalLayer, q: torch.Tensor,
               static_k: torch.Tensor, scale: float, lse: torch.Tensor, ids: torch.Tensor | None,
               lse_off: torch.Tensor, weights: torch.Tensor | None) -> None:
    """Record where a decode query q [H, 1, D] looked in the document prefix (for citations): each prefix key's
    share of the head's whole attention (exp(score - lse), lse [H, 1] over static + retrieved keys), for the
    static prefix keys (first n_sink, last n_window: static_k [H_kv, S, D], its first n_static_prefix rows) and the
    retrieved ones (ids [H, 1, k] into the offloaded set, weights their softmax among themselves, lse_off theirs).
    Summed over heads; the question and answer tokens that follow the prefix are left out."""
    n_kv = static_k.shape[0]
    qg = q.float().reshape(n_kv, q.shape[0] // n_kv, -1)  # [H_kv, G, D]: query head h reads KV head h // G
    keys = static_k[:, : layer.n_static_prefix].float()
    lse_g = lse.float().reshape(n_kv, -1, 1)
    static = torch.exp(torch.baddbmm(-lse_g, qg, keys.mT, alpha=scale)).sum((0, 1)).cpu().numpy()  # [S]
    positions, masses = [layer.static_prefix_positions], [static]
    if ids is not None:  # weights: each retrieved key's share of the retrieved part alone
        ids_np = ids.numpy()
        valid = ids_np >= 0
        share = weights.numpy() * np.exp(lse_off.numpy() - lse.float().cpu().numpy())[..., None]
        positions.append(ids_np[valid] + layer.off_start)
        masses.append(share[valid])
    trace.add(layer_idx, np.concatenate(positions), np.concatenate(masses))


def search_offloaded(layer: RetrievalLayer, q: torch.Tensor, cache: RetrievalCache) -> torch.Tensor | None:
    """The ids [H, 1, k] (int64, CPU, -1 for none) of the offloaded keys the layer's index retrieves for a decode
    query q [H, 1, D] (k: top_k, or the most any head's budget asks), or None where nothing is searched: window-only
    mode, an empty offloaded set, or several queries per head (a question prefilled after the cached document,
    attended exactly)."""
    n_heads, m, _ = q.shape
    if m != 1 or layer.n_offloaded == 0 or layer.settings.method == WINDOW_ONLY:
        return None
    started = time.perf_counter()
    found = layer.index.search(q.detach().float().cpu().numpy(), layer.search_k(), layer.settings.effort)
    stats = cache.stats
    stats.search_s += time.perf_counter() - started
    stats.scanned += int(found.scanned.sum())
    stats.indexed += layer.n_offloaded * n_heads
    stats.searches += n_heads
    stats.retrieved += int((found.ids >= 0).sum())
    return torch.from_numpy(found.ids)


def attention_scale(model: torch.nn.Module) -> float | None:
    """The softmax scale of the model's attention (the `scaling` its transformers attention modules hold), or None
    where they hold none (the cache then takes 1/sqrt(head_dim))."""
    for module in model.modules():
        if hasattr(module, "layer_idx") and isinstance(getattr(module, "scaling", None), float):
            return module.scaling
    return None


def offloaded_attention(layer: RetrievalLayer, q: torch.Tensor, scale: float, ids: torch.Tensor | None):
    """Attention of q [H, m, D] over the layer's offloaded set, on the CPU, given search_offloaded's ids.

    Returns (o [H, m, D], lse [H, m], weights [H, m, k] or None): with ids, exact attention over those keys
    (compiled, reading the rows in place; weights are the softmax over them). Without: exact attention over all
    offloaded keys for several queries, as the paper's prefill would, and nothing in window-only mode.
    """
    n_heads, m, dim = q.shape
    if ids is None and (layer.n_offloaded == 0 or layer.settings.method == WINDOW_ONLY):
        empty = torch.full((n_heads, m), float("-inf"))
        return torch.zeros(n_heads, m, dim), empty, None
    q_cpu = q.detach().float().cpu()
    if ids is None:
        return (*partial_attention(q_cpu, layer.off_keys, layer.off_values, scale), None)
    return retrieved_attention_cpu(q_cpu, layer.off_keys, layer.off_values, ids, scale)


AttentionInterface.register(RETRIEVAL_ATTENTION, retrieval_attention)
# The mask of a chunk-by-chunk prefill (the layer-major one passes none: it is plain causal there). Models with
# sliding-window layers (Gemma 3's local layers) get theirs this way.
AttentionMaskInterface.register(RETRIEVAL_ATTENTION, sdpa_mask)
