"""Capture real post-RoPE query and key vectors from a model's prefill, for index benchmarks.

Plugs in through transformers' attention registry: a "folio_capture" attention records what it is
given and then runs ordinary sdpa, so the model's output is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

CAPTURE_ATTENTION = "folio_capture"


@dataclass
class LayerVectors:
    """queries [H, T, D] and keys [H_kv, T, D], float32, post-RoPE, for the T prompt tokens."""

    queries: np.ndarray
    keys: np.ndarray


_captured: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}


def _capture_attention(module, query, key, value, attention_mask, **kwargs):
    """query [1, H, q, D], key/value [1, H_kv, kv, D]: record this chunk's queries and all keys."""
    _captured.setdefault(module.layer_idx, []).append((query[0].float().cpu(), key[0].float().cpu()))
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(CAPTURE_ATTENTION, _capture_attention)
AttentionMaskInterface.register(CAPTURE_ATTENTION, sdpa_mask)


@torch.inference_mode()
def capture_qk(model: PreTrainedModel, input_ids: torch.Tensor, chunk: int = 2048) -> list[LayerVectors]:
    """Prefill input_ids [T] (in chunks) and return every layer's queries and keys.

    Returns one LayerVectors per layer: queries [H, T, D], keys [H_kv, T, D].
    """
    from transformers import DynamicCache

    previous = model.config._attn_implementation
    model.set_attn_implementation(CAPTURE_ATTENTION)
    _captured.clear()
    try:
        cache = DynamicCache(config=model.config)
        ids = input_ids.view(1, -1).to(model.device)
        for start in range(0, ids.shape[1], chunk):
            model(input_ids=ids[:, start : start + chunk], cache=cache, use_cache=True, logits_to_keep=1)
        layers = []
        for layer in sorted(_captured):
            chunks = _captured[layer]
            queries = torch.cat([q for q, _ in chunks], dim=1)
            keys = chunks[-1][1]  # the last chunk sees the whole cache
            layers.append(LayerVectors(queries.numpy(), keys.contiguous().numpy()))
        return layers
    finally:
        _captured.clear()
        model.set_attn_implementation(previous)
