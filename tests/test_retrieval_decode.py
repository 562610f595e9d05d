"""RetrievalAttention end to end on the tiny Llama, against full attention as the exact reference."""

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from engine.cache import WINDOW_ONLY, AttentionTrace, RetrievalCache, RetrievalSettings
from engine.config import EngineConfig
from engine.errors import CancelledError
from engine.events import CancelToken, Progress
from engine.generate import Finished, prefill
from engine.index import IndexParams
from engine.ingest import Document
from engine.layer_prefill import document_prefill_steps
from engine.retrieval import RETRIEVAL_ATTENTION
from engine.session import DocumentSession
from tests.greedy_reference import full_attention_logits, keys_and_values_beyond_float16, retrieval_logits

PREFIX, QUESTION = 300, 6
ALL_METHODS = ["exact", "retrieval", "flat", "ivf", "hnsw"]


@pytest.fixture
def model(tiny_loaded):
    yield tiny_loaded.model
    tiny_loaded.model.set_attn_implementation("sdpa")


def tokens(n, seed):
    return torch.randint(3, 390, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("route", ["compiled", "device"])
@pytest.mark.parametrize("method", ALL_METHODS)
def test_top_k_covering_the_offloaded_set_equals_full_attention(model, method, route, monkeypatch):
    """Both decode routes: the CPU's one-pass kernel, and the one a GPU host takes (static part on the device,
    retrieved part on the CPU, merged), forced here by offering the kernel no dtype."""
    if route == "device":
        monkeypatch.setattr("engine.retrieval.SUPPORTED_KV_DTYPES", ())
    prefix, question = tokens(PREFIX, 0), tokens(QUESTION, 1)
    reference = full_attention_logits(model, torch.cat([prefix, question]), steps=4)
    settings = RetrievalSettings(method=method, n_sink=16, n_window=32, top_k=PREFIX, effort=PREFIX,
                                 kv_dtype=torch.float32)
    logits, cache = retrieval_logits(model, prefix, question, 4, settings)
    assert cache.layers[0].n_offloaded == PREFIX - 48
    for got, want in zip(logits, reference, strict=True):
        assert (got - want).abs().max() <= 1e-4
    assert cache.stats.searches > 0


def test_small_top_k_is_approximate_and_window_only_differs_more(model):
    prefix, question = tokens(PREFIX, 0), tokens(QUESTION, 1)
    reference = full_attention_logits(model, torch.cat([prefix, question]), steps=3)[-1]
    errors = {}
    for name, method, top_k in (("top-8", "exact", 8), ("window", WINDOW_ONLY, 8)):
        settings = RetrievalSettings(method=method, n_sink=4, n_window=16, top_k=top_k)
        errors[name] = (retrieval_logits(model, prefix, question, 3, settings)[0][-1] - reference).abs().max()
    assert 0 < errors["top-8"] < errors["window"]


def test_graph_search_scans_a_fraction_of_the_keys(model):
    prefix, question = tokens(PREFIX, 0), tokens(QUESTION, 1)
    settings = RetrievalSettings(method="retrieval", n_sink=4, n_window=16, top_k=10, effort=16,
                                 index_params=IndexParams(effort=16))
    _, cache = retrieval_logits(model, prefix, question, 3, settings)
    assert 0 < cache.stats.scanned_fraction < 0.9


def document(text):
    return Document(text=text, title="t", source=None, sha256="0" * 64)


def ask(session, question, cancel=None):
    return [e for e in session.ask(question, cancel) if isinstance(e, Finished)][-1]


def test_session_with_covering_top_k_answers_like_full_attention(tiny_loaded):
    text = "the keepers recorded the weather three times a day " * 30
    full = ask(DocumentSession(tiny_loaded, document(text), EngineConfig(attention="full", max_new_tokens=10)), "why?")
    config = EngineConfig(attention="retrieval", n_sink=8, n_window=32, top_k=1000, search_effort=1000,
                          max_new_tokens=10, kv_dtype="float32")
    session = DocumentSession(tiny_loaded, document(text), config)
    first = ask(session, "why?")
    assert first.token_ids == full.token_ids
    assert first.stats.reused_tokens == 0 and first.stats.index_build_s > 0
    again = ask(session, "why?")  # the same prompt again: all but its last token are still in the cache
    assert again.token_ids == full.token_ids
    assert again.stats.reused_tokens == again.stats.prompt_tokens - 1
    other = ask(session, "How?")  # another question: back to the indexed prefix, this question prefilled only
    assert other.stats.reused_tokens == session.prefix_tokens


def test_cancel_during_index_build_then_ask_again(tiny_loaded):
    text = "the quick brown fox jumps over the lazy dog " * 30
    config = EngineConfig(attention="exact", n_sink=8, n_window=32, max_new_tokens=4)
    session = DocumentSession(tiny_loaded, document(text), config)
    cancel = CancelToken()
    with pytest.raises(CancelledError):
        for event in session.ask("what?", cancel):
            if isinstance(event, Progress) and event.stage == "index" and event.done == 1:
                cancel.cancel()
    assert not session.cache.indexed
    finished = ask(session, "what?")
    assert session.cache.indexed and finished.stats.new_tokens > 0


def test_float16_kv_stays_close_to_full_attention(model):
    prefix, question = tokens(PREFIX, 0), tokens(QUESTION, 1)
    reference = full_attention_logits(model, torch.cat([prefix, question]), steps=2)
    settings = RetrievalSettings(method="exact", n_sink=16, n_window=32, top_k=PREFIX, kv_dtype=torch.float16)
    logits, _ = retrieval_logits(model, prefix, question, 2, settings)
    for got, want in zip(logits, reference, strict=True):
        assert (got - want).abs().max() <= 0.05
        assert got.argmax() == want.argmax()



def test_float16_offloaded_keys_are_held_once(model):
    """The offloaded keys stay in float16 and the graph index searches that very memory (no float32 copy)."""
    prefix, question = tokens(PREFIX, 0), tokens(QUESTION, 1)
    settings = RetrievalSettings(method="retrieval", n_sink=16, n_window=32, top_k=8, kv_dtype=torch.float16)
    _, cache = retrieval_logits(model, prefix, question, 1, settings)
    for layer in cache.layers:
        assert layer.off_keys.dtype == torch.float16
        assert np.shares_memory(layer.index.keys, layer.off_keys.numpy())

def cpu_tensor_bytes(layer) -> int:
    """Bytes of the distinct CPU storages the layer's tensor attributes hold, besides the device's static set (here
    the device is the CPU too)."""
    storages = {id(t): t.untyped_storage() for name, t in vars(layer).items()
                if isinstance(t, torch.Tensor) and t.device.type == "cpu" and name not in ("static_k", "static_v")}
    return sum({s.data_ptr(): s.nbytes() for s in storages.values()}.values())


def test_cpu_memory_holds_each_key_once_and_saving_gets_the_prefix_back(model):
    """After the build a layer keeps its K/V in CPU memory once (the offloaded keys, the values, a small copy of the
    static keys, the training queries), and prefix_arrays() rebuilds exactly the K/V the prefill computed."""
    prefix = tokens(PREFIX, 0)
    with torch.inference_mode():
        full = DynamicCache(config=model.config)
        prefill(model, prefix, full, chunk=64)
    settings = RetrievalSettings(method="retrieval", n_sink=16, n_window=32, top_k=8, kv_dtype=torch.float16)
    _, cache = retrieval_logits(model, prefix, tokens(QUESTION, 1), 1, settings)
    for number, layer in enumerate(cache.layers):
        saved = layer.prefix_arrays()
        assert torch.equal(saved.keys, full.layers[number].keys[0].to(torch.float16))
        assert torch.equal(saved.values, full.layers[number].values[0].to(torch.float16))
        kv_bytes = saved.keys.nbytes + saved.values.nbytes
        assert cpu_tensor_bytes(layer) == kv_bytes + saved.queries.nbytes


def test_the_ram_estimate_bounds_the_prefill_store_and_the_built_cache(model):
    """The fit check (engine.sizing) must not underestimate the RAM a retrieval cache takes on a CPU host, in the
    prefill (the float32 store and the hidden states between layers) or after the build (K/V once, queries, graph),
    nor overstate it more than 3x."""
    from engine.sizing import ModelShape, estimate_fit

    config = model.config
    settings = RetrievalSettings(method="retrieval", n_sink=16, n_window=32, top_k=8, kv_dtype=torch.float16)
    model.set_attn_implementation(RETRIEVAL_ATTENTION)
    cache = RetrievalCache(config.num_hidden_layers, PREFIX, torch.device("cpu"), settings)
    in_prefill = 0
    for event in document_prefill_steps(model, tokens(PREFIX, 0), cache, 64):
        if event.stage == "prefill" and event.done == event.total:  # the prefill's last step, before any build
            in_prefill = cache.layer_major.hidden.nbytes + sum(layer.store_k.nbytes + layer.store_v.nbytes
                                                               for layer in cache.layers)
    assert in_prefill
    built = sum(cpu_tensor_bytes(layer) + layer.static_k.nbytes + layer.static_v.nbytes
                + sum(a.nbytes for a in layer.index.to_arrays().values()) for layer in cache.layers)
    shape = ModelShape(layers=config.num_hidden_layers, kv_heads=config.num_key_value_heads,
                       query_heads=config.num_attention_heads, head_dim=config.head_dim, max_positions=4096)
    estimate = estimate_fit(shape, PREFIX, 0, "retrieval", 16, 32, device_is_cpu=True, data_folder=".",
                            disk_budget_bytes=10**12, available_ram=10**12)
    assert max(in_prefill, built) <= estimate.ram_bytes <= 3 * max(in_prefill, built)


def test_the_ram_estimate_counts_the_float32_prefill_store_of_a_cpu_host():
    """Llama-3-8B's shape, 100K tokens: on a CPU (float32 weights) the prefill holds the K/V in float32, twice the
    float16 cache that stays; with 16-bit weights the store is that float16 copy already."""
    from engine.sizing import ModelShape, estimate_fit

    tokens_ = 100_000
    kv_values = 2 * 32 * 8 * 128 * tokens_
    for weight_bytes in (4, 2):
        shape = ModelShape(layers=32, kv_heads=8, query_heads=32, head_dim=128, max_positions=131072,
                           weight_bytes_per_value=weight_bytes)
        fit = estimate_fit(shape, tokens_, 0, "retrieval", 128, 512, device_is_cpu=False, data_folder=".",
                           disk_budget_bytes=10**15, available_ram=10**15)
        assert kv_values * weight_bytes <= fit.ram_bytes <= kv_values * weight_bytes * 1.5


def test_the_device_estimate_counts_the_layer_by_layer_prefill_and_the_builds_beside_it():
    """Llama-3-8B's shape on a GPU at 130K tokens: the prefill keeps every token's hidden state on the device (4,096
    bf16 values each) and the K/V of the layer it runs, far more than the static set kept for decoding; meanwhile
    one exact top-k of a graph build (float32 keys, its 4 query heads' 8,125 training queries each, 512 x 130K
    scores) runs on the device too. Other indexes build on the CPU."""
    from engine.sizing import ModelShape, estimate_fit

    tokens_ = 130_000
    shape = ModelShape(layers=32, kv_heads=8, query_heads=32, head_dim=128, max_positions=131072,
                       weight_bytes_per_value=2, hidden_size=4096)
    in_prefill = tokens_ * 4096 * 2 + 2 * 8 * 128 * tokens_ * 2
    graph_knn = 4 * 128 * (tokens_ + 4 * 8125) + 4 * 512 * tokens_
    fits = {attention: estimate_fit(shape, tokens_, 1000, attention, 128, 512, device_is_cpu=False, data_folder=".",
                                    disk_budget_bytes=10**15, available_ram=10**15)
            for attention in ("retrieval", "ivf")}
    assert in_prefill + graph_knn <= fits["retrieval"].device_bytes <= 1.2 * (in_prefill + graph_knn)
    assert in_prefill <= fits["ivf"].device_bytes <= 1.2 * in_prefill


def test_the_estimates_count_the_training_queries_kept():
    """One prefill query in 8 to one in 16 per query head is kept in float16 (RetrievalCache.train_stride): at 128K
    tokens 8,192 per head, 2 GiB for Llama-3-8B's 32 x 32 heads, which the RAM and disk estimates include."""
    from engine.cache import RetrievalCache
    from engine.sizing import ModelShape, attention_curve_bytes, estimate_fit

    shape = ModelShape(layers=32, kv_heads=8, query_heads=32, head_dim=128, max_positions=131072,
                       weight_bytes_per_value=2)
    for tokens_ in (3_500, 131_072):
        stride = RetrievalCache(1, tokens_, torch.device("cpu"), RetrievalSettings()).layers[0].train_stride
        kept = 32 * 32 * -(-tokens_ // stride) * 128 * 2
        fits = {attention: estimate_fit(shape, tokens_, 0, attention, 128, 512, device_is_cpu=False,
                                        data_folder=".", disk_budget_bytes=10**15, available_ram=10**15)
                for attention in ("retrieval", "full")}  # full attention keeps only the K/V
        graphs, curves = 32 * 8 * tokens_ * 32 * 4, attention_curve_bytes(32, 32, tokens_)  # the index beside them
        assert fits["retrieval"].disk_bytes - fits["full"].disk_bytes == kept + graphs + curves


@torch.inference_mode()
def prefill_with_full_and_retrieval_cache(model):
    """Prefill PREFIX tokens with full attention and through a RetrievalCache (default settings, the model's dtype).
    Returns (full attention's last logits, the cache route's, the cache)."""
    prefix = tokens(PREFIX, 0)
    model.set_attn_implementation("sdpa")
    want = prefill(model, prefix, DynamicCache(config=model.config), chunk=64)
    model.set_attn_implementation(RETRIEVAL_ATTENTION)
    cache = RetrievalCache(model.config.num_hidden_layers, PREFIX, torch.device("cpu"), RetrievalSettings(),
                           model.dtype)
    got = prefill(model, prefix, cache, chunk=64, forward_kwargs={"folio_cache": cache})
    return want, got, cache


def test_a_bfloat16_model_keeps_its_prefill_k_v_in_float16_and_prefills_exactly(tiny_loaded):
    """bfloat16 K/V fit float16 (more mantissa bits, over float16's normal range), so the prefill store is already the
    cache's float16 CPU copy, and the prefill through it gives full attention's logits bit for bit."""
    model = tiny_loaded.model.to(torch.bfloat16)
    try:
        want, got, cache = prefill_with_full_and_retrieval_cache(model)
        assert cache.layers[0].store_k.dtype == torch.float16
        assert torch.equal(got, want)
    finally:
        model.to(torch.float32).set_attn_implementation("sdpa")


def test_a_layer_whose_k_v_leave_float16_keeps_them_in_float32_and_answers_like_full_attention(model):
    """A float32 model: the store is float32 and is converted at the build. Layer 1's K/V would become inf in
    float16 (then NaN answers), so that layer alone keeps float32; saving and reopening keeps it too."""
    prefix, question = tokens(PREFIX, 0), tokens(QUESTION, 1)
    with keys_and_values_beyond_float16(model):
        reference = full_attention_logits(model, torch.cat([prefix, question]), steps=2)
        settings = RetrievalSettings(method="exact", n_sink=16, n_window=32, top_k=PREFIX, kv_dtype=torch.float16)
        logits, cache = retrieval_logits(model, prefix, question, 2, settings)
        assert [layer.off_keys.dtype for layer in cache.layers] == [torch.float16, torch.float32]
        assert cache.layers[1].off_keys.abs().max() > 65504 and cache.layers[1].off_values.abs().max() > 65504
        for got, want in zip(logits, reference, strict=True):
            assert torch.isfinite(got).all()
            assert (got - want).abs().max() <= 0.05 and got.argmax() == want.argmax()
        prefixes = [layer.prefix_arrays() for layer in cache.layers]
        assert [p.keys.dtype for p in prefixes] == [torch.float16, torch.float32]
        restored = RetrievalCache.restore(prefixes, torch.device("cpu"), settings, torch.float32)
        model.set_attn_implementation(RETRIEVAL_ATTENTION)
        with torch.inference_mode():
            again = prefill(model, question, restored, chunk=64, forward_kwargs={"folio_cache": restored})
        assert torch.equal(again, logits[0])


def test_a_bfloat16_layer_beyond_float16_widens_its_prefill_store_and_still_prefills_exactly(tiny_loaded):
    """A bfloat16 model's store starts in float16; the first chunk of layer 1 that float16 cannot hold turns that
    layer's store into float32 (what it held so far copied exactly), and the prefill stays bit for bit."""
    model = tiny_loaded.model.to(torch.bfloat16)
    try:
        with keys_and_values_beyond_float16(model), torch.inference_mode():
            want, got, cache = prefill_with_full_and_retrieval_cache(model)
            assert [layer.store_k.dtype for layer in cache.layers] == [torch.float16, torch.float32]
            assert torch.isfinite(cache.layers[1].store_k).all() and cache.layers[1].store_k.abs().max() > 65504
            assert torch.equal(got, want)
            list(cache.build_index_steps())
            assert [layer.off_values.dtype for layer in cache.layers] == [torch.float16, torch.float32]
    finally:
        model.to(torch.float32).set_attn_implementation("sdpa")


@pytest.mark.parametrize("method", ALL_METHODS)
def test_restored_cache_decodes_exactly_like_the_original(model, method):
    prefix, question = tokens(PREFIX, 0), tokens(QUESTION, 1)
    settings = RetrievalSettings(method=method, n_sink=8, n_window=16, top_k=20, effort=32)
    original, cache = retrieval_logits(model, prefix, question, 3, settings)
    prefixes = [layer.prefix_arrays() for layer in cache.layers]
    indexes = [layer.index.to_arrays() for layer in cache.layers]
    model.set_attn_implementation(RETRIEVAL_ATTENTION)
    for saved_indexes in (indexes, None):  # with the saved index, and rebuilt from the saved queries
        restored = RetrievalCache.restore(prefixes, torch.device("cpu"), settings, torch.float32, saved_indexes)
        kwargs = {"folio_cache": restored}
        with torch.inference_mode():
            logits = [prefill(model, question, restored, chunk=64, forward_kwargs=kwargs)]
            for _ in range(3):
                token = logits[-1].argmax().view(1, 1)
                logits.append(model(input_ids=token, cache=restored, **kwargs).logits[0, -1])
        for got, want in zip(logits, original, strict=True):
            assert torch.equal(got, want)


@pytest.mark.parametrize("route", ["compiled", "device"])
def test_trace_records_each_prefix_keys_share_of_full_attention(model, route, monkeypatch):
    """With top_k covering the offloaded set, the trace holds, per decode step, what full attention gives every
    prefix position (summed over layers and heads): the static sinks and window as well as the retrieved keys."""
    if route == "device":
        monkeypatch.setattr("engine.retrieval.SUPPORTED_KV_DTYPES", ())
    prefix, question, answer = tokens(PREFIX, 0), tokens(QUESTION, 1), torch.tensor([5, 6, 7])
    settings = RetrievalSettings(method="exact", n_sink=8, n_window=16, top_k=PREFIX, kv_dtype=torch.float32)
    model.set_attn_implementation(RETRIEVAL_ATTENTION)
    cache = RetrievalCache(model.config.num_hidden_layers, PREFIX, torch.device("cpu"), settings)
    kwargs = {"folio_cache": cache}
    with torch.inference_mode():
        prefill(model, prefix, cache, chunk=64, forward_kwargs=kwargs)
        list(cache.build_index_steps())
        prefill(model, question, cache, chunk=64, forward_kwargs=kwargs)
        cache.trace = AttentionTrace(PREFIX, top=PREFIX)
        for token in answer:
            model(input_ids=token.view(1, 1), cache=cache, **kwargs)
        steps = cache.trace.take()
        model.set_attn_implementation("eager")
        attentions = model(input_ids=torch.cat([prefix, question, answer]).view(1, -1),
                           output_attentions=True).attentions
    reference = sum(a[0, :, -len(answer):, :PREFIX].sum(0) for a in attentions)  # [answer, PREFIX]
    assert len(steps) == len(answer)
    for step, want in zip(steps, reference, strict=True):
        got = torch.zeros(PREFIX)
        for position, weight in step:
            got[position] += weight
        assert (got - want).abs().max() <= 1e-4
        assert got[:8].sum() > 0 and got[PREFIX - 16:].sum() > 0 and got[8:PREFIX - 16].sum() > 0


def test_session_answer_carries_the_retrieved_positions_for_citations(tiny_loaded):
    text = "the keepers recorded the weather three times a day " * 30
    config = EngineConfig(attention="exact", n_sink=8, n_window=32, top_k=16, max_new_tokens=6)
    session = DocumentSession(tiny_loaded, document(text), config)
    finished = [e for e in session.ask("why?", sources=True) if isinstance(e, Finished)][-1]
    steps = finished.attention_steps
    assert steps and len(steps) <= finished.stats.new_tokens
    # prompt prefix positions only (the static sinks and window and the retrieved keys), never the question's
    positions = {p for step in steps for p, w in step if w > 0}
    assert all(0 <= p < session.prefix_tokens for p in positions)
    assert any(p >= session.prefix_tokens - 32 for p in positions) and any(8 <= p < session.prefix_tokens - 32
                                                                           for p in positions)


def test_an_answer_without_sources_in_mind_pays_no_trace_and_decodes_the_same(tiny_loaded):
    text = "the keepers recorded the weather three times a day " * 30
    config = EngineConfig(attention="exact", n_sink=8, n_window=32, top_k=16, max_new_tokens=6)
    session = DocumentSession(tiny_loaded, document(text), config)
    plain = ask(session, "why?")
    assert plain.attention_steps is None and session.cache.trace is None
    with pytest.raises(ValueError, match="sources=True"):
        session.sources(plain)
    traced = [e for e in session.ask("why?", sources=True) if isinstance(e, Finished)][-1]
    assert traced.token_ids == plain.token_ids and session.sources(traced)
