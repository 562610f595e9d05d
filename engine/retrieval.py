"""The "retrieval" attention, plugged into transformers through its attention and mask registries.

Use: `model.set_attn_implementation(RETRIEVAL_ATTENTION)` and pass the RetrievalCache both as
`cache=` and as the extra forward keyword `folio_cache=` (transformers hands extra forward keywords
to every attention call; that is how this function finds the layer's offloaded set and index).
"""

from __future__ import annotations

import time

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from engine.attention import merge_attention_states, partial_attention
from engine.cache import WINDOW_ONLY, RetrievalCache, RetrievalLayer
from engine.retrieved_cpu import retrieved_attention_cpu

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
        layer.record_queries(query[0])
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scale, dropout=dropout,
                                      **kwargs)
    q = query[0]
    o_static, lse_static = partial_attention(q, key[0], value[0], scale, causal_tail=q.shape[1])
    o_off, lse_off, retrieved = offloaded_attention(layer, q, scale, folio_cache)
    o, lse = merge_attention_states(o_static, lse_static, o_off.to(q.device), lse_off.to(q.device))
    if retrieved is not None and folio_cache.trace is not None:
        ids, weights = retrieved  # [H, 1, k] each; weights are shares of the retrieved part only
        share = weights * torch.exp(lse_off - lse.cpu()).unsqueeze(-1)
        valid = ids >= 0
        folio_cache.trace.add(module.layer_idx, (ids[valid] + layer.off_start).numpy(), share[valid].numpy())
    return o.to(query.dtype).transpose(0, 1).unsqueeze(0), None


def offloaded_attention(layer: RetrievalLayer, q: torch.Tensor, scale: float, cache: RetrievalCache):
    """Attention of q [H, m, D] over the layer's offloaded set, on the CPU.

    Returns (o [H, m, D], lse [H, m], retrieved): retrieved is (ids [H, m, k], weights [H, m, k]) when
    an index was searched, else None.

    One query per head (decoding): exact attention over the top_k keys the index retrieves (compiled, reading
    the retrieved rows in place).
    Several (a question prefilled after the cached document): exact attention over all of them, as
    the paper's prefill would. Window-only mode: the offloaded set is not attended at all.
    """
    n_heads, m, dim = q.shape
    if layer.n_offloaded == 0 or layer.settings.method == WINDOW_ONLY:
        empty = torch.full((n_heads, m), float("-inf"))
        return torch.zeros(n_heads, m, dim), empty, None
    q_cpu = q.detach().float().cpu()
    if m > 1:
        return (*partial_attention(q_cpu, layer.off_keys, layer.off_values, scale), None)
    started = time.perf_counter()
    found = layer.index.search(q_cpu.numpy(), layer.settings.top_k, layer.settings.effort)
    stats = cache.stats
    stats.search_s += time.perf_counter() - started
    stats.scanned += int(found.scanned.sum())
    stats.indexed += layer.n_offloaded * n_heads
    stats.searches += n_heads
    ids = torch.from_numpy(found.ids)
    o, lse, weights = retrieved_attention_cpu(q_cpu, layer.off_keys, layer.off_values, ids, scale)
    return o, lse, (ids, weights)


AttentionInterface.register(RETRIEVAL_ATTENTION, retrieval_attention)
AttentionMaskInterface.register(RETRIEVAL_ATTENTION, sdpa_mask)  # the causal mask of the exact prefill
