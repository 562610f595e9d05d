"""One stored K/V serves both attention modes.

A document's stored cache holds every key and value of its prefix (engine.persist), so full attention starts from it
too: `full_attention_cache` turns a RetrievalCache (freshly prefilled, or restored from the library) into
transformers' DynamicCache holding the whole prefix, which then decodes with ordinary attention. Full attention
prefills the document the way retrieval does (engine.layer_prefill, into a cache of `kv_only_settings`: no index),
so its K/V are stored and a reopen in either mode skips the prefill; retrieval builds its index from the stored
queries when it first opens such a cache.
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import DynamicCache, PretrainedConfig

from engine.cache import WINDOW_ONLY, RetrievalCache, RetrievalSettings
from engine.full_cache import growing_cache


def kv_only_settings(settings: RetrievalSettings) -> RetrievalSettings:
    """settings for a cache that keeps and stores the K/V and the training queries but builds no index (the
    window-only method): what full attention prefills into and opens. The K/V's identity is the same as under
    `settings` (engine.persist.CacheIdentity does not depend on the method)."""
    return dataclasses.replace(settings, method=WINDOW_ONLY)


def full_attention_cache(cache: RetrievalCache, config: PretrainedConfig, device: torch.device,
                         dtype: torch.dtype, extra_tokens: int = 0) -> DynamicCache:
    """A DynamicCache (engine.full_cache, with room for extra_tokens more) holding every layer's prefix keys/values
    [1, H_kv, T, D] of the indexed `cache`, on `device` in the model's `dtype` (the stored K/V are in kv_dtype:
    float16 by default)."""
    if not cache.indexed:
        raise ValueError("full attention starts from a prefilled cache: prefill the document first")
    full = growing_cache(config, cache.prefix_len + extra_tokens)
    for number, layer in enumerate(cache.layers):
        prefix = layer.prefix_arrays()
        keys = prefix.keys.to(device=device, dtype=dtype)[None]
        values = prefix.values.to(device=device, dtype=dtype)[None]
        full.update(keys, values, number)
    return full
