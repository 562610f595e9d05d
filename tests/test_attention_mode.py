"""Auto attention: the mode chosen per device and document, and one stored K/V serving both modes (full attention
started from the stored cache decodes what a fresh full-attention prefill decodes)."""

import pytest
import torch

from engine.attention_mode import CPU_RETRIEVAL_FROM_TOKENS, choose_attention, full_kv_bytes
from engine.config import EngineConfig
from engine.generate import Finished
from engine.ingest import Document
from engine.session import DocumentSession
from engine.sizing import ModelShape
from engine.store import Store

GIB = 1 << 30
LLAMA3_8B = ModelShape(layers=32, kv_heads=8, query_heads=32, head_dim=128, max_positions=131072,
                       weight_bytes_per_value=2, kv_bytes_per_value=2, hidden_size=4096)
SMOLLM2 = ModelShape(layers=30, kv_heads=3, query_heads=9, head_dim=64, max_positions=8192,
                     weight_bytes_per_value=4, kv_bytes_per_value=2, hidden_size=576)


def test_an_explicit_mode_is_kept_whatever_the_document():
    for mode in ("full", "retrieval", "window", "ivf"):
        choice = choose_attention(mode, "cpu", 1 << 40, 500_000, LLAMA3_8B)
        assert choice.mode == mode and "settings" in choice.reason


def test_auto_on_a_cpu_takes_full_attention_below_the_crossover_and_retrieval_from_it():
    short = choose_attention("auto", "cpu", 20 * GIB, 3_500, SMOLLM2)
    assert short.mode == "full" and "3,500 tokens" in short.reason
    long = choose_attention("auto", "cpu", 20 * GIB, CPU_RETRIEVAL_FROM_TOKENS, SMOLLM2)
    assert long.mode == "retrieval"


def test_auto_takes_retrieval_where_the_whole_kv_does_not_fit():
    kv = full_kv_bytes(LLAMA3_8B, 131072)
    assert kv == 16 * GIB  # 128K tokens of Llama-3-8B in bfloat16
    on_a_24gb_card = choose_attention("auto", "cuda", 8 * GIB, 131072, LLAMA3_8B)  # 15 GiB of weights loaded
    assert on_a_24gb_card.mode == "retrieval" and "does not fit" in on_a_24gb_card.reason
    on_a_big_card = choose_attention("auto", "cuda", 120 * GIB, 131072, LLAMA3_8B)
    assert on_a_big_card.mode == "full" and "fits" in on_a_big_card.reason
    short_but_no_ram = choose_attention("auto", "cpu", GIB // 2, 4096, LLAMA3_8B)  # 0.5 GiB of K/V, as much free
    assert short_but_no_ram.mode == "retrieval"


def test_the_default_setting_is_auto():
    assert EngineConfig().attention == "auto"


TEXT = "the keepers recorded the weather three times a day and the light never failed. " * 30


def _document():
    return Document(text=TEXT, title="doc", source=None, sha256="a" * 64)


def _answer(session):
    finished = [e for e in session.ask("what did the keepers record?") if isinstance(e, Finished)][-1]
    return finished


def test_auto_session_on_a_cpu_answers_a_short_document_with_full_attention(tiny_loaded):
    session = DocumentSession(tiny_loaded, _document(), EngineConfig(max_new_tokens=4))
    assert session.attention.mode == "full" and "CPU" in session.attention.reason
    assert not session.uses_retrieval


@pytest.mark.parametrize("kv_dtype", ["float32", "float16"])
def test_full_attention_from_the_stored_cache_decodes_what_a_fresh_full_prefill_decodes(tiny_loaded, kv_dtype):
    config = EngineConfig(attention="full", max_new_tokens=12, kv_dtype=kv_dtype, n_sink=8, n_window=32, top_k=16)
    fresh = _answer(DocumentSession(tiny_loaded, _document(), config))  # no library: transformers' own prefill
    store = Store()
    first = DocumentSession(tiny_loaded, _document(), config, store)
    first_answer = _answer(first)
    assert not first.cached and first.cache_bytes > 0  # full attention's K/V are stored too
    reopened = DocumentSession(tiny_loaded, _document(), config, store)
    reopened_answer = _answer(reopened)
    assert reopened.cached and reopened_answer.stats.reused_tokens == first.prefix_tokens
    assert len(fresh.token_ids) == 12
    assert first_answer.token_ids == fresh.token_ids
    assert reopened_answer.token_ids == fresh.token_ids


def test_one_stored_kv_serves_both_modes(tiny_loaded):
    """A cache stored by retrieval attention opens in full attention without a prefill, and the other way round."""
    settings = dict(max_new_tokens=10, kv_dtype="float32", n_sink=8, n_window=32, top_k=16)
    store = Store()
    retrieval = DocumentSession(tiny_loaded, _document(), EngineConfig(attention="retrieval", **settings), store)
    _answer(retrieval)
    full = DocumentSession(tiny_loaded, _document(), EngineConfig(attention="full", **settings), store)
    full_answer = _answer(full)
    assert full.cached and full_answer.stats.reused_tokens == full.prefix_tokens
    fresh = _answer(DocumentSession(tiny_loaded, _document(), EngineConfig(attention="full", **settings)))
    assert full_answer.token_ids == fresh.token_ids

    other = Store(store.root.parent / "other-library")
    first_full = DocumentSession(tiny_loaded, _document(), EngineConfig(attention="full", **settings), other)
    _answer(first_full)
    then_retrieval = DocumentSession(tiny_loaded, _document(), EngineConfig(attention="exact", **settings), other)
    exact_answer = _answer(then_retrieval)
    assert then_retrieval.cached and exact_answer.stats.reused_tokens == then_retrieval.prefix_tokens
    assert exact_answer.token_ids  # the index was built from the stored queries, and it answers


def test_full_attention_cache_holds_every_stored_key_and_value(tiny_loaded):
    from engine.shared_kv import full_attention_cache

    config = EngineConfig(attention="exact", max_new_tokens=2, kv_dtype="float32", n_sink=8, n_window=32, top_k=16)
    session = DocumentSession(tiny_loaded, _document(), config)
    list(session.prepare())
    full = full_attention_cache(session.cache, tiny_loaded.config, tiny_loaded.device, torch.float32)
    assert full.get_seq_length() == session.prefix_tokens
    for layer, retrieval_layer in zip(full.layers, session.cache.layers, strict=True):
        prefix = retrieval_layer.prefix_arrays()
        torch.testing.assert_close(layer.keys[0], prefix.keys, rtol=0, atol=0)
        torch.testing.assert_close(layer.values[0], prefix.values, rtol=0, atol=0)
