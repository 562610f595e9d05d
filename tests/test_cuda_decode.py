"""RetrievalAttention on a CUDA device: the static set on the GPU, the offloaded set and its index in CPU memory.

Skipped without CUDA (CI has none); packaging/gpu_check.sh runs it first on a GPU machine. Imports only the
engine's model-side modules, so it runs on a machine with torch, transformers, numba and faiss alone.
"""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from engine.cache import RetrievalSettings
from engine.index import IndexParams
from tests.greedy_reference import full_attention_logits, keys_and_values_beyond_float16, retrieval_logits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
PREFIX, QUESTION, STEPS = 700, 6, 4


@pytest.fixture(scope="module")
def model():
    config = LlamaConfig(vocab_size=400, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to("cuda", torch.float32).eval()


@pytest.mark.parametrize("layer_major", [True, False])
@pytest.mark.parametrize("method", ["retrieval", "exact"])
def test_retrieval_on_cuda_equals_full_attention_when_top_k_covers_the_offloaded_set(model, method, layer_major):
    """Prefilled layer by layer (each layer's K/V kept on the device during its pass, indexes built on a thread
    meanwhile) or chunk by chunk (the stored prefix sent back to the device at every chunk)."""
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, 400, (PREFIX,), generator=gen)
    question = torch.randint(0, 400, (QUESTION,), generator=gen)
    reference = full_attention_logits(model, torch.cat([prefix, question]), STEPS, chunk=256)
    settings = RetrievalSettings(method=method, n_sink=16, n_window=32, top_k=PREFIX, effort=PREFIX,
                                 kv_dtype=torch.float32, index_params=IndexParams(knn_device="cuda"))
    logits, cache = retrieval_logits(model, prefix, question, STEPS, settings, chunk=256, layer_major=layer_major)
    layer = cache.layers[0]
    assert layer.static_k.device.type == "cuda" and layer.off_keys.device.type == "cpu"
    assert all(layer._live_k is None for layer in cache.layers)  # no layer's prefix K/V left on the device
    assert cache.stats.searches > 0
    for got, want in zip(logits, reference, strict=True):
        assert got.device.type == "cuda"
        assert (got - want).abs().max() <= 1e-4


def test_prefill_sends_the_stored_prefix_to_the_device_head_by_head():
    from engine.cache import prefix_on

    store = torch.randn(3, 50, 8).pin_memory()
    got = prefix_on(store, 20, torch.device("cuda"), torch.bfloat16)  # sent as stored, then in the model's dtype
    torch.cuda.synchronize()
    assert got.shape == (1, 3, 20, 8) and got.device.type == "cuda"
    assert got.dtype == torch.bfloat16 and torch.equal(got.cpu()[0], store[:, :20].to(torch.bfloat16))
    assert prefix_on(store, 20, torch.device("cpu"), store.dtype).data_ptr() == store.data_ptr()  # a view on the CPU


def test_a_bfloat16_layer_beyond_float16_widens_its_pinned_store_on_cuda(model):
    """The GPU route of the float16-range check: K/V computed on the device, checked there, the layer's pinned
    float16 store widened to a pinned float32 one, and the prefill still matches full attention."""
    from engine.cache import RetrievalCache
    from engine.generate import prefill
    from engine.retrieval import RETRIEVAL_ATTENTION

    prefix = torch.randint(0, 400, (PREFIX,), generator=torch.Generator().manual_seed(1))
    model.to(torch.bfloat16)
    try:
        with keys_and_values_beyond_float16(model), torch.inference_mode():
            want = full_attention_logits(model, prefix, 0, chunk=256)[0]
            model.set_attn_implementation(RETRIEVAL_ATTENTION)
            cache = RetrievalCache(2, PREFIX, torch.device("cuda"), RetrievalSettings(), torch.bfloat16)
            got = prefill(model, prefix, cache, chunk=256, forward_kwargs={"folio_cache": cache})
        assert [layer.store_k.dtype for layer in cache.layers] == [torch.float16, torch.float32]
        assert cache.layers[1].store_k.is_pinned() and torch.isfinite(cache.layers[1].store_k).all()
        assert torch.isfinite(got).all() and (got.float() - want.float()).abs().max() <= 0.05 * want.abs().max()
    finally:
        model.to(torch.float32).set_attn_implementation("sdpa")


def test_bfloat16_prefill_attention_groups_heads_in_flash_attention_without_copies():
    """On Ampere or newer, a bfloat16 chunk over a longer prefix goes to flash attention with its KV heads as they are
    (no per-head K/V copy, no mask tensor) and equals attention over K/V copied per query head."""
    from engine.attention import causal_prefill_attention, gqa_without_copies

    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 8, 256, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(1, 2, 1024, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    if torch.cuda.get_device_capability() >= (8, 0):
        assert gqa_without_copies(q, k, v)
    mask = torch.arange(1024, device="cuda").view(1, -1) <= torch.arange(768, 1024, device="cuda").view(-1, 1)
    want = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float().repeat_interleave(4, 1), v.float().repeat_interleave(4, 1), attn_mask=mask)
    got = causal_prefill_attention(q, k, v, 128**-0.5)
    torch.testing.assert_close(got.float(), want.transpose(1, 2), atol=2e-2, rtol=0)


def test_the_retrieval_budget_is_calibrated_on_the_device_and_every_key_equals_full_attention(model):
    """The attention curves are computed where the index build's k-NN runs (the GPU here) and match the CPU's; an
    attention share of 1 retrieves every offloaded key, whatever top_k is, and decodes like full attention."""
    import numpy as np

    from engine.index.budget import attention_curves, calibration_positions

    gen = torch.Generator().manual_seed(2)
    prefix = torch.randint(0, 400, (PREFIX,), generator=gen)
    question = torch.randint(0, 400, (QUESTION,), generator=gen)
    reference = full_attention_logits(model, torch.cat([prefix, question]), STEPS, chunk=256)
    settings = RetrievalSettings(method="retrieval", n_sink=16, n_window=32, top_k=4, attention_share=1.0,
                                 kv_dtype=torch.float32, index_params=IndexParams(knn_device="cuda"))
    logits, cache = retrieval_logits(model, prefix, question, STEPS, settings, chunk=256)
    assert all((layer.budget == layer.n_offloaded).all() for layer in cache.layers)
    for got, want in zip(logits, reference, strict=True):
        assert (got - want).abs().max() <= 1e-4
    layer = cache.layers[1]
    prefix_arrays = layer.prefix_arrays()
    positions = np.arange(prefix_arrays.queries.shape[1]) * layer.train_stride
    chosen = calibration_positions(positions, PREFIX - 32)
    curves = {device: attention_curves(prefix_arrays.queries[:, chosen], positions[chosen], prefix_arrays.keys, 16,
                                       PREFIX - 32, layer.scale, device) for device in ("cpu", "cuda")}
    np.testing.assert_allclose(curves["cuda"].left_out, curves["cpu"].left_out, atol=1e-5)
    np.testing.assert_allclose(curves["cuda"].left_out, layer.curves.left_out, atol=1e-5)
