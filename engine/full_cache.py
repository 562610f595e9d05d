"""Full attention's KV cache: transformers' DynamicCache whose full-attention layers grow in place.

DynamicCache's layers append each token by concatenation, which copies the layer's whole K/V at every decode step
(at 7K tokens of SmolLM2: about 320 MB per token over the 30 layers). `GrowingLayer` keeps a buffer with room to
spare, writes each step's K/V into it and hands attention views of the filled part: the same tensors' values, no
copy per step, and a geometric regrowth when full (docs/benchmarks.md, profile of a decode token). Sliding-window
layers stay transformers' own.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import DynamicLayer

MIN_GROWTH = 256  # tokens added at least when a layer's buffer is full


class GrowingLayer(DynamicLayer):
    """A DynamicLayer over a preallocated buffer [B, H_kv, capacity, D]; keys/values are views of its filled part."""

    def __init__(self, capacity: int = 0) -> None:
        super().__init__()
        self.capacity_hint = capacity
        self.filled = 0
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.filled = 0
        self._k = self._v = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """key_states/value_states [B, H_kv, n, D] -> all keys/values so far [B, H_kv, filled + n, D] (views)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if self._k is None or self.filled + n > self._k.shape[-2]:
            self._grow(key_states, value_states, self.filled + n)
        self._k[..., self.filled : self.filled + n, :] = key_states
        self._v[..., self.filled : self.filled + n, :] = value_states
        self.filled += n
        self.keys, self.values = self._k[..., : self.filled, :], self._v[..., : self.filled, :]
        return self.keys, self.values

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, needed: int) -> None:
        old = 0 if self._k is None else self._k.shape[-2]
        capacity = max(needed, self.capacity_hint, old + max(old // 2, MIN_GROWTH))
        k = key_states.new_empty((*key_states.shape[:-2], capacity, key_states.shape[-1]))
        v = value_states.new_empty((*value_states.shape[:-2], capacity, value_states.shape[-1]))
        if self.filled:
            k[..., : self.filled, :] = self._k[..., : self.filled, :]
            v[..., : self.filled, :] = self._v[..., : self.filled, :]
        self._k, self._v = k, v

    def get_seq_length(self) -> int:
        return self.filled if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last -tokens_to_remove tokens (transformers' convention: a negative count)."""
        if tokens_to_remove > 0:
            raise ValueError("crop takes minus the number of tokens to drop")
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        self.filled = max(0, self.filled + tokens_to_remove)
        self.keys, self.values = self._k[..., : self.filled, :], self._v[..., : self.filled, :]

    def reset(self) -> None:
        self.filled = 0
        self._k = self._v = None
        super().reset()


def growing_cache(config: PretrainedConfig, capacity: int = 0) -> DynamicCache:
    """A DynamicCache for `config` whose full-attention layers are GrowingLayers (room for `capacity` tokens at
    first: the prompt plus the answer, when known)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
