"""The layer-major document prefill (engine.layer_prefill) against the chunk-major one and full attention."""

import threading
import time

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, MistralConfig, Qwen2Config, Qwen3Config

from engine.cache import RetrievalCache, RetrievalLayer, RetrievalSettings
from engine.errors import CancelledError
from engine.events import CancelToken, Progress, run_steps
from engine.generate import prefill
from engine.layer_prefill import document_prefill_steps, prefix_prefill_steps, supports_layer_major
from engine.retrieval import RETRIEVAL_ATTENTION
from tests.greedy_reference import full_attention_logits, retrieval_logits

PREFIX, QUESTION, CHUNK = 300, 6, 64
TINY = {"vocab_size": 400, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 2048}
EXACT = RetrievalSettings(method="exact", n_sink=16, n_window=32, top_k=PREFIX, kv_dtype=torch.float32)


@pytest.fixture
def model(tiny_loaded):
    tiny_loaded.model.set_attn_implementation(RETRIEVAL_ATTENTION)
    yield tiny_loaded.model
    tiny_loaded.model.set_attn_implementation("sdpa")


def tokens(n, seed):
    return torch.randint(3, 390, (n,), generator=torch.Generator().manual_seed(seed))


def new_cache(model, settings=EXACT):
    return RetrievalCache(model.config.num_hidden_layers, PREFIX, model.device, settings)


def chunk_major_cache(model, ids, settings=EXACT):
    cache = new_cache(model, settings)
    prefill(model, ids, cache, chunk=CHUNK, forward_kwargs={"folio_cache": cache})
    list(cache.build_index_steps())
    return cache


def assert_same_prefixes(got: RetrievalCache, want: RetrievalCache, atol: float) -> None:
    for got_layer, want_layer in zip(got.layers, want.layers, strict=True):
        got_arrays, want_arrays = got_layer.prefix_arrays(), want_layer.prefix_arrays()
        for name in ("keys", "values", "queries"):
            torch.testing.assert_close(getattr(got_arrays, name), getattr(want_arrays, name), atol=atol, rtol=0)


def test_layer_major_stores_what_chunk_major_stores(model):
    """Same K/V and training queries per layer, only computed in another order."""
    ids = tokens(PREFIX, 0)
    cache = new_cache(model)
    events = list(document_prefill_steps(model, ids, cache, CHUNK))
    assert cache.indexed and cache.layer_major is None
    assert_same_prefixes(cache, chunk_major_cache(model, ids), atol=1e-5)
    prefill_events = [e for e in events if e.stage == "prefill"]
    assert prefill_events[-1].done == prefill_events[-1].total == PREFIX * model.config.num_hidden_layers
    assert [e.done for e in events if e.stage == "index"][-1] == model.config.num_hidden_layers


def test_the_prefix_alone_is_prefilled_layer_by_layer_and_left_for_any_index(model):
    """What the fidelity suite uses: one prefill, copied, then each method's index built on it."""
    ids, cache = tokens(PREFIX, 0), new_cache(model)
    events = list(prefix_prefill_steps(model, ids, cache, CHUNK))
    assert {e.stage for e in events} == {"prefill"}
    assert events[-1].total == PREFIX * model.config.num_hidden_layers  # token-layers: the layer-major order
    assert not cache.indexed and not any(layer.indexed for layer in cache.layers)
    finish = list(document_prefill_steps(model, ids, cache, CHUNK))  # builds what is missing: the indexes
    assert cache.indexed and {e.stage for e in finish} == {"index"}
    assert_same_prefixes(cache, chunk_major_cache(model, ids), atol=1e-5)


def test_a_layer_kept_on_the_device_during_its_pass_gives_the_same_prefix(model, monkeypatch):
    """The GPU route (each layer's K/V held on the device during its pass, let go at its end), run on the CPU."""
    monkeypatch.setattr("engine.layer_prefill.keeps_layer_on_device", lambda device: True)
    ids, cache = tokens(PREFIX, 0), new_cache(model)
    run_steps(document_prefill_steps(model, ids, cache, CHUNK))
    assert all(layer._live_k is None and not layer.prefill_on_device for layer in cache.layers)
    assert_same_prefixes(cache, chunk_major_cache(model, ids), atol=1e-5)


FULL_ATTENTION_FAMILY = [Qwen2Config(**TINY), Qwen3Config(**TINY), MistralConfig(**TINY, sliding_window=None)]


@pytest.mark.parametrize("config", FULL_ATTENTION_FAMILY)
def test_other_llama_family_models_prefill_layer_by_layer_exactly(config):
    """Qwen2, Qwen3 and Mistral run the same way, and decode equal to full attention when top_k covers everything."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    assert supports_layer_major(model)
    prefix, question = tokens(PREFIX, 0), tokens(QUESTION, 1)
    reference = full_attention_logits(model, torch.cat([prefix, question]), steps=3)
    logits, cache = retrieval_logits(model, prefix, question, 3, EXACT)
    assert cache.layers[0].n_offloaded == PREFIX - 48
    for got, want in zip(logits, reference, strict=True):
        assert (got - want).abs().max() <= 1e-4


SLIDING = [Qwen2Config(**TINY, use_sliding_window=True, sliding_window=64, max_window_layers=0),
           MistralConfig(**TINY, sliding_window=64)]


@pytest.mark.parametrize("config", SLIDING)
def test_sliding_window_models_prefill_chunk_by_chunk_with_their_window(config):
    """The layer-major prefill masks nothing, so sliding-window models keep transformers' masks, chunk by chunk: the
    prefilled K/V equal the model's own forward's (with the window) at every layer, over the last 32 positions (its
    cache keeps only the window's)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    assert not supports_layer_major(model)
    ids = tokens(PREFIX, 0)
    model.set_attn_implementation("sdpa")
    with torch.inference_mode():
        want = model(input_ids=ids.view(1, -1), use_cache=True).past_key_values
    model.set_attn_implementation(RETRIEVAL_ATTENTION)
    cache = new_cache(model)
    run_steps(document_prefill_steps(model, ids, cache, CHUNK))
    for number, layer in enumerate(cache.layers):
        got = layer.prefix_arrays().values[:, -32:]
        torch.testing.assert_close(got, want.layers[number].values[0, :, -32:], atol=1e-5, rtol=0)


def test_a_cancelled_layer_major_prefill_resumes_where_it_stopped(model):
    ids = tokens(PREFIX, 0)
    cancel, cache = CancelToken(), new_cache(model)
    with pytest.raises(CancelledError):
        for event in document_prefill_steps(model, ids, cache, CHUNK, cancel):
            if event.stage == "prefill" and event.done >= PREFIX + PREFIX // 2:  # halfway through layer 1
                cancel.cancel()
    layer, start = cache.layer_major.layer, cache.layer_major.start
    assert layer == 1 and 0 < start < PREFIX and not cache.indexed
    cancel.reset()
    resumed = [e for e in document_prefill_steps(model, ids, cache, CHUNK, cancel) if e.stage == "prefill"]
    assert resumed[0].done == PREFIX + start  # went on from there, not from the start
    assert cache.indexed
    assert_same_prefixes(cache, chunk_major_cache(model, ids), atol=1e-5)


@pytest.mark.parametrize("workers", [1, 2])
def test_background_index_builds_give_the_same_indexes(model, workers, monkeypatch):
    """Built on worker threads while the next layers prefill (what a GPU host does), the graphs are the ones
    built after the prefill: the same keys come back for the same queries."""
    monkeypatch.setattr("engine.layer_prefill.concurrent_builds", lambda model, cache: workers)
    ids = tokens(PREFIX, 0)
    settings = RetrievalSettings(method="retrieval", n_sink=16, n_window=32, top_k=8, kv_dtype=torch.float32)
    caches = {}
    for background in (True, False):
        caches[background] = new_cache(model, settings)
        run_steps(document_prefill_steps(model, ids, caches[background], CHUNK, background_builds=background))
    queries = np.random.default_rng(0).standard_normal((4, 5, 16)).astype(np.float32)
    for with_thread, after in zip(caches[True].layers, caches[False].layers, strict=True):
        np.testing.assert_array_equal(with_thread.index.search(queries, 8).ids, after.index.search(queries, 8).ids)
    assert 0 <= caches[True].index_wait_s <= caches[True].index_build_s


def test_concurrent_builds_give_each_core_a_graph(model, monkeypatch):
    from engine.layer_prefill import concurrent_builds

    cache = new_cache(model)  # the tiny Llama: 2 KV heads, so 2 graphs per layer
    for cores, layers_at_once in ((2, 1), (5, 2), (16, 4), (64, 4)):
        monkeypatch.setattr("os.cpu_count", lambda cores=cores: cores)
        assert concurrent_builds(model, cache) == layers_at_once


def slow_builds(monkeypatch, seconds=0.2, fail_layer=None):
    build = RetrievalLayer.build_index

    def slow(layer):
        time.sleep(seconds)
        if fail_layer is not None and layer is fail_layer():
            raise RuntimeError("build failed")
        build(layer)

    monkeypatch.setattr(RetrievalLayer, "build_index", slow)


def index_threads():
    return [t for t in threading.enumerate() if t.name.startswith("folio-index")]


def test_cancel_while_background_builds_run_then_resume(model, monkeypatch):
    slow_builds(monkeypatch)
    ids, cancel, cache = tokens(PREFIX, 0), CancelToken(), new_cache(model)
    with pytest.raises(CancelledError):
        for event in document_prefill_steps(model, ids, cache, CHUNK, cancel, background_builds=True):
            if event.stage == "index":
                cancel.cancel()
    assert not index_threads() and not cache.indexed  # no thread left writing to the cache
    cancel.reset()
    run_steps(document_prefill_steps(model, ids, cache, CHUNK, cancel, background_builds=True))
    assert cache.indexed
    assert_same_prefixes(cache, chunk_major_cache(model, ids), atol=1e-5)


def test_a_failed_background_build_raises_and_stops_the_worker(model, monkeypatch):
    cache = new_cache(model)
    slow_builds(monkeypatch, seconds=0, fail_layer=lambda: cache.layers[0])
    with pytest.raises(RuntimeError, match="build failed"):
        run_steps(document_prefill_steps(model, tokens(PREFIX, 0), cache, CHUNK, background_builds=True))
    assert not index_threads()


def test_progress_counts_every_layer_once(model):
    events = list(document_prefill_steps(model, tokens(PREFIX, 0), new_cache(model), CHUNK))
    prefill_done = [e.done for e in events if isinstance(e, Progress) and e.stage == "prefill"]
    assert prefill_done == sorted(prefill_done) and prefill_done[0] == 0
    chunks_per_layer = -(-PREFIX // CHUNK)
    assert len(prefill_done) == 1 + chunks_per_layer * model.config.num_hidden_layers
