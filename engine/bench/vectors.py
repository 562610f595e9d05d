"""Capture real post-RoPE query and key vectors from a model's prefill, for index benchmarks.

Plugs in through transformers' attention registry: a "folio_capture" attention records what it is
given and then runs ordinary sdpa, so the model's output is unchanged. A long capture (minutes of
prefill) can be kept in a folder of .npy files and reused by every suite that asks for the same one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

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


_wanted: set[int] | None = None
_queries: dict[int, list[torch.Tensor]] = {}
_keys: dict[int, torch.Tensor] = {}


def _capture_attention(module, query, key, value, attention_mask, **kwargs):
    """query [1, H, q, D], key/value [1, H_kv, kv, D]: record this chunk's queries and the keys so far."""
    if _wanted is None or module.layer_idx in _wanted:
        _queries.setdefault(module.layer_idx, []).append(query[0].float().cpu())
        _keys[module.layer_idx] = key[0]  # the cache after this chunk: the last chunk's holds every key
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(CAPTURE_ATTENTION, _capture_attention)
AttentionMaskInterface.register(CAPTURE_ATTENTION, sdpa_mask)


@torch.inference_mode()
def capture_qk(model: PreTrainedModel, input_ids: torch.Tensor, chunk: int = 2048,
               layers: Collection[int] | None = None) -> dict[int, LayerVectors]:
    """Prefill input_ids [T] (in chunks) and return the queries and keys of `layers` (default: all).

    Returns {layer: LayerVectors(queries [H, T, D], keys [H_kv, T, D])}; a sliding-window layer's keys
    are the ones its cache still holds at the end.
    """
    from transformers import DynamicCache

    global _wanted
    previous = model.config._attn_implementation
    model.set_attn_implementation(CAPTURE_ATTENTION)
    _wanted = None if layers is None else set(layers)
    _queries.clear()
    _keys.clear()
    try:
        cache = DynamicCache(config=model.config)
        ids = input_ids.view(1, -1).to(model.device)
        for start in range(0, ids.shape[1], chunk):
            model(input_ids=ids[:, start : start + chunk], cache=cache, use_cache=True, logits_to_keep=1)
        return {
            layer: LayerVectors(torch.cat(_queries[layer], dim=1).numpy(),
                                _keys[layer].float().cpu().contiguous().numpy())
            for layer in sorted(_queries)
        }
    finally:
        _wanted = None
        _queries.clear()
        _keys.clear()
        model.set_attn_implementation(previous)


@dataclass
class Capture:
    """Some layers' vectors of one prefill: layers {layer: LayerVectors}, the model's n_layers, prefill_s."""

    layers: dict[int, LayerVectors]
    n_layers: int
    prefill_s: float


def prefill_vectors(model_spec: str, text: str, tokens: int, layers: Collection[int] | None = None,
                    rope_scale: float = 1.0, cache_dir: Path | None = None) -> Capture:
    """The vectors of `layers` (default all) in a prefill of the first `tokens` tokens of `text` by the bench model
    `model_spec` (RoPE stretched linearly by rope_scale, see load_bench_model).

    With cache_dir, a capture of the same model, scale and token ids that holds those layers is loaded from
    <cache_dir>/capture-<key>/ (meta.json, q<L>.npy, k<L>.npy) instead of prefilling again, and a new
    capture is stored there: written to a temporary folder and renamed, so a killed run leaves no half capture.
    """
    from transformers import AutoTokenizer

    from engine.bench.gemma import load_bench_model, resolve_bench_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_bench_model(model_spec), trust_remote_code=False)
    ids = tokenizer(text, return_tensors="pt").input_ids[0][:tokens]
    identity = {"model": model_spec, "rope_scale": rope_scale, "tokens": int(ids.shape[0]),
                "ids_sha256": hashlib.sha256(ids.numpy().astype(np.int64).tobytes()).hexdigest()}
    folder = None
    if cache_dir is not None:
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        folder = Path(cache_dir) / f"capture-{key}"
        if (folder / "meta.json").exists():
            meta = json.loads((folder / "meta.json").read_text())
            wanted = set(range(meta["n_layers"])) if layers is None else set(layers)
            if wanted <= set(meta["layers"]):
                print(f"  vectors from {folder}", flush=True)
                loaded = {layer: LayerVectors(np.load(folder / f"q{layer}.npy"), np.load(folder / f"k{layer}.npy"))
                          for layer in sorted(wanted)}
                return Capture(loaded, meta["n_layers"], meta["prefill_s"])
    model = load_bench_model(model_spec, rope_scale)
    started = time.perf_counter()
    vectors = capture_qk(model, ids, layers=layers)
    result = Capture(vectors, model.config.get_text_config().num_hidden_layers, time.perf_counter() - started)
    if folder is not None:
        staging = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for layer, layer_vectors in vectors.items():
            np.save(staging / f"q{layer}.npy", layer_vectors.queries)
            np.save(staging / f"k{layer}.npy", layer_vectors.keys)
        meta = identity | {"layers": sorted(vectors), "n_layers": result.n_layers, "prefill_s": result.prefill_s}
        (staging / "meta.json").write_text(json.dumps(meta, indent=1))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
    return result
