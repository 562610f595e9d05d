"""Greedy decoding with full attention and with the retrieval cache, for tests that compare the two.

Imports only the engine's model-side modules, so the CUDA tests run on a machine without the PDF and SQLite
libraries.
"""

from contextlib import contextmanager

import torch
from transformers import DynamicCache

from engine.cache import RetrievalCache
from engine.events import run_steps
from engine.generate import prefill
from engine.layer_prefill import document_prefill_steps
from engine.retrieval import RETRIEVAL_ATTENTION


@torch.inference_mode()
def full_attention_logits(model, ids, steps, chunk=64):
    """Logits [vocab] of the last prompt token and of `steps` greedy decode steps, with full attention."""
    model.set_attn_implementation("sdpa")
    cache = DynamicCache(config=model.config)
    logits = [prefill(model, ids, cache, chunk=chunk)]
    for _ in range(steps):
        token = logits[-1].argmax().view(1, 1)
        logits.append(model(input_ids=token, cache=cache).logits[0, -1])
    return logits


@torch.inference_mode()
def retrieval_logits(model, prefix, question, steps, settings, chunk=64, layer_major=True, background_builds=None,
                     devices=None):
    """The same with the retrieval cache on the model's device (or on `devices`, one per layer): prefix prefilled and
    indexed (layer by layer as the app does, or chunk by chunk), then the question prefilled after it. Returns
    (logits, cache)."""
    model.set_attn_implementation(RETRIEVAL_ATTENTION)
    cache = RetrievalCache(model.config.num_hidden_layers, len(prefix), devices or model.device, settings)
    kwargs = {"folio_cache": cache}
    if layer_major:
        run_steps(document_prefill_steps(model, prefix, cache, chunk, background_builds=background_builds))
    else:
        prefill(model, prefix, cache, chunk=chunk, forward_kwargs=kwargs)
        list(cache.build_index_steps())
    logits = [prefill(model, question, cache, chunk=chunk, forward_kwargs=kwargs)]
    for _ in range(steps):
        token = logits[-1].argmax().view(1, 1)
        logits.append(model(input_ids=token, cache=cache, **kwargs).logits[0, -1])
    return logits, cache


@contextmanager
def keys_and_values_beyond_float16(model, layer=1, scale=1e6):
    """Layer `layer`'s key and value projections scaled so that its K/V reach far past float16's 65,504."""
    attention = model.model.layers[layer].self_attn
    originals = [attention.k_proj.weight.detach().clone(), attention.v_proj.weight.detach().clone()]
    with torch.no_grad():
        attention.k_proj.weight.mul_(scale)
        attention.v_proj.weight.mul_(scale)
    try:
        yield
    finally:
        with torch.no_grad():
            attention.k_proj.weight.copy_(originals[0])
            attention.v_proj.weight.copy_(originals[1])
