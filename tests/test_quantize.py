"""8-bit and 4-bit weights (engine.quantize, bitsandbytes) on the CPU with the tiny Llama: logits close to the
full-precision model's, the memory the fit check counts, decoding through the retrieval cache, and the refusals."""

from __future__ import annotations

import pytest
import torch

from engine import quantize
from engine.cache import RetrievalSettings
from engine.errors import ModelError
from engine.model import load_model
from engine.sizing import weights_bytes
from tests.greedy_reference import full_attention_logits, retrieval_logits

pytest.importorskip("bitsandbytes")

# Stated tolerances, as a share of the largest |logit| over the sequence (about 30 for the tiny model):
# LLM.int8 keeps outliers in 16 bits and is near-exact; NF4 rounds each weight to one of 16 levels.
TOLERANCE = {"8bit": 0.01, "4bit": 0.03}
TOP1_AGREEMENT = {"8bit": 0.95, "4bit": 0.85}


@pytest.fixture(scope="module")
def quantized(tiny_model_dir):
    return {weights: load_model(str(tiny_model_dir), device="cpu", dtype="float32", weights=weights)
            for weights in ("8bit", "4bit")}


def test_linear_layers_are_quantized(quantized):
    import bitsandbytes as bnb

    attention = quantized["4bit"].model.model.layers[0].self_attn
    assert isinstance(attention.q_proj, bnb.nn.Linear4bit)
    assert isinstance(quantized["8bit"].model.model.layers[0].mlp.down_proj, bnb.nn.Linear8bitLt)
    assert not isinstance(quantized["4bit"].model.lm_head, bnb.nn.Linear4bit)  # the output head stays full


@pytest.mark.parametrize("weights", ["8bit", "4bit"])
def test_logits_close_to_full_precision(tiny_loaded, quantized, weights):
    ids = torch.randint(3, 390, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = tiny_loaded.model(ids).logits[0]
        got = quantized[weights].model(ids).logits[0]
    scale = reference.abs().max()
    assert (got - reference).abs().max() <= TOLERANCE[weights] * scale
    agreement = (got.argmax(-1) == reference.argmax(-1)).float().mean()
    assert agreement >= TOP1_AGREEMENT[weights]
    assert (got - reference).abs().max() > 0  # really quantized


@pytest.mark.parametrize("weights", ["full", "8bit", "4bit"])
def test_fit_check_counts_the_weights(tiny_model_dir, weights):
    """As loaded (on the CPU, bitsandbytes repacks 4-bit and 8-bit weights more tightly at the first forward). Full
    weights as float32: the fit check counts what loading needs, and int8 CPU weights are made from float32 ones."""
    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="float32", weights=weights, cpu_weights="full")
    counted = weights_bytes(loaded.shape, weights, dtype_bytes=4)
    assert abs(counted - quantize.held_bytes(loaded.model)) <= 0.01 * counted


def test_retrieval_decoding_on_quantized_weights_equals_its_full_attention(quantized):
    """The retrieval cache is exact on a quantized model as on any other: top-k covering the offloaded set."""
    model = quantized["4bit"].model
    prefix = torch.randint(3, 390, (200,), generator=torch.Generator().manual_seed(1))
    question = torch.randint(3, 390, (6,), generator=torch.Generator().manual_seed(2))
    reference = full_attention_logits(model, torch.cat([prefix, question]), steps=3)
    settings = RetrievalSettings(method="exact", n_sink=8, n_window=16, top_k=200, kv_dtype=torch.float32)
    logits, _ = retrieval_logits(model, prefix, question, 3, settings)
    for got, want in zip(logits, reference, strict=True):
        assert (got - want).abs().max() <= 1e-3
    model.set_attn_implementation("sdpa")


def test_quantized_weights_change_the_fingerprint(tiny_loaded, quantized):
    prints = {tiny_loaded.fingerprint, quantized["8bit"].fingerprint, quantized["4bit"].fingerprint}
    assert len(prints) == 3  # a cache made with other weights is never reused


def test_refused_without_the_library(monkeypatch, tiny_model_dir):
    monkeypatch.setattr(quantize, "quant_library_version", lambda: None)
    with pytest.raises(ModelError, match="4bit weights need the bitsandbytes library.*full weights"):
        load_model(str(tiny_model_dir), device="cpu", weights="4bit")


def test_refused_with_layers_on_disk(tiny_model_dir, tmp_path):
    with pytest.raises(ModelError, match="cannot be offloaded to disk"):
        load_model(str(tiny_model_dir), device="cpu", weights="8bit", max_memory={"cpu": 150_000},
                   offload_folder=tmp_path)
