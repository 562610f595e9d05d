"""The retrieval budget that follows the attention: its curves against the exact attention, its budgets, and decoding
with it against full attention and against a fixed top-k."""

import dataclasses

import numpy as np
import pytest
import torch

from engine.cache import RetrievalCache, RetrievalSettings
from engine.generate import prefill
from engine.index import build_layer_index
from engine.index.budget import AttentionCurves, attention_curves, budget_grid, calibration_positions
from engine.persist import index_identity
from engine.retrieval import RETRIEVAL_ATTENTION, attention_scale
from tests.greedy_reference import full_attention_logits, retrieval_logits

PREFIX, QUESTION = 300, 6


def tokens(n, seed):
    return torch.randint(3, 390, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def model(tiny_loaded):
    yield tiny_loaded.model
    tiny_loaded.model.set_attn_implementation("sdpa")


def test_the_grid_starts_at_none_ends_at_every_key_and_grows_by_about_a_fifth():
    grid = budget_grid(7488)
    assert grid[0] == 0 and grid[-1] == 7488 and np.all(np.diff(grid) > 0)
    inner = grid[(grid >= 16) & (grid < 7488)]
    assert np.all(inner[1:] / inner[:-1] <= 1.25)
    assert list(budget_grid(1)) == [0, 1] and list(budget_grid(0)) == [0]


def test_curves_are_the_exact_share_of_attention_left_out():
    """The calibration's mass estimate against the exact mass: for every calibration query and grid k, the share of
    its attention (causal, over the whole prefix) on the offloaded keys it ranks below its top k."""
    rng = np.random.default_rng(0)
    n_kv, group, n_tokens, dim, off_start, off_end = 2, 3, 400, 16, 20, 300
    keys = torch.from_numpy(rng.standard_normal((n_kv, n_tokens, dim)).astype(np.float32) * 1.5)
    positions = np.array([250, 320, 360, 399])  # the first sees only part of the offloaded set
    queries = torch.from_numpy(rng.standard_normal((n_kv * group, len(positions), dim)).astype(np.float32) * 1.5)
    curves = attention_curves(queries, positions, keys, off_start, off_end, scale=0.3)
    assert curves.grid[-1] == off_end - off_start and curves.left_out.shape == (6, 4, len(curves.grid))
    for h in range(6):
        for i, pos in enumerate(positions):
            scores = (queries[h, i].double() @ keys[h // group, : pos + 1].double().T) * 0.3
            shares = torch.softmax(scores, dim=0)[off_start:off_end].numpy()
            ranked = np.sort(shares)[::-1]
            want = [ranked[k:].sum() for k in curves.grid]
            np.testing.assert_allclose(curves.left_out[h, i], want, rtol=1e-5, atol=1e-7)
    assert (curves.left_out[..., -1] == 0).all()


def curves_of(left_out_at_grid: list[list[list[float]]], grid: list[int]) -> AttentionCurves:
    return AttentionCurves(np.array(grid), np.array(left_out_at_grid, dtype=np.float32))


def test_budgets_take_the_quantile_of_the_needs_between_floor_and_cap():
    grid = [0, 10, 100, 1000, 5000]
    curves = curves_of([
        [[0.5, 0.2, 0.04, 0.0, 0.0], [0.5, 0.3, 0.2, 0.01, 0.0], [0.3, 0.01, 0.0, 0.0, 0.0]],  # diffuse head
        [[0.01, 0.0, 0.0, 0.0, 0.0], [0.02, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]],  # offloaded set ~unused
    ], grid)
    np.testing.assert_array_equal(curves.needed(0.95), [[100, 1000, 10], [0, 0, 0]])
    np.testing.assert_array_equal(curves.budgets(0.95, quantile=1.0, floor=20), [1000, 20])
    np.testing.assert_array_equal(curves.budgets(0.95, quantile=0.5, floor=20), [100, 20])
    np.testing.assert_array_equal(curves.budgets(0.95, quantile=1.0, floor=20, cap=500), [500, 20])
    np.testing.assert_array_equal(curves.budgets(1.0, quantile=0.5, floor=20), [5000, 5000])  # every key
    np.testing.assert_array_equal(curves.budgets(0.95, quantile=1.0, floor=20, cap=20), [20, 20])  # a fixed top-k
    np.testing.assert_array_equal(curves.budgets(0.95, quantile=1.0, floor=9000), [5000, 5000])  # at most N
    np.testing.assert_allclose(curves.left_out_at(np.array([100, 20])), [[0.04, 0.2, 0.0], [0.0, 0.0, 0.0]])


def test_calibration_queries_are_the_latest_past_the_offloaded_set():
    positions = np.arange(0, 1000, 8)
    chosen = calibration_positions(positions, window_start=900)
    assert positions[chosen].min() >= 900 and chosen[-1] == len(positions) - 1
    few = calibration_positions(positions, window_start=990)  # one query past it: the latest 8 instead
    assert len(few) == 8 and few[-1] == len(positions) - 1


def test_budgets_hold_for_queries_the_calibration_did_not_see():
    """Calibrated on some queries, a head's budget holds the target share for most other queries of the same kind:
    the exact left-out share at the budget, from an exact top-k, against the estimate's quantile."""
    rng = np.random.default_rng(1)
    n_tokens, dim, off_start, off_end = 1200, 16, 16, 1100
    keys = rng.standard_normal((1, n_tokens, dim)).astype(np.float32)
    spread = np.array([0.3, 1.0, 2.5])[:, None, None]  # diffuse, medium and focused heads
    queries = (rng.standard_normal((3, 96, dim)) * spread).astype(np.float32)
    positions = np.full(96, n_tokens - 1)
    curves = attention_curves(torch.from_numpy(queries[:, :64]), positions[:64], torch.from_numpy(keys), off_start,
                              off_end, scale=1.0)
    budgets = curves.budgets(0.9, quantile=0.9, floor=1)
    assert budgets[0] > budgets[1] > budgets[2]  # the diffuse head gets the most keys
    index = build_layer_index("exact", keys[:, off_start:off_end], queries)
    held_out = queries[:, 64:]
    found = index.search(held_out, budgets).ids
    scores = np.einsum("hmd,td->hmt", held_out.astype(np.float64), keys[0].astype(np.float64))
    shares = np.exp(scores - scores.max(-1, keepdims=True))
    shares /= shares.sum(-1, keepdims=True)
    offloaded = shares[:, :, off_start:off_end]
    taken = np.take_along_axis(offloaded, np.maximum(found, 0), axis=-1) * (found >= 0)
    left_out = offloaded.sum(-1) - taken.sum(-1)  # [H, 32]
    assert (left_out <= 0.1 + 1e-9).mean(axis=1).min() >= 0.75


def test_a_target_of_every_key_equals_full_attention(model):
    """attention_share 1 retrieves every offloaded key whatever top_k is: the graph index answers like full
    attention."""
    prefix, question = tokens(PREFIX, 0), tokens(QUESTION, 1)
    reference = full_attention_logits(model, torch.cat([prefix, question]), steps=4)
    settings = RetrievalSettings(method="retrieval", n_sink=16, n_window=32, top_k=4, attention_share=1.0,
                                 kv_dtype=torch.float32)
    logits, cache = retrieval_logits(model, prefix, question, 4, settings)
    assert all((layer.budget == PREFIX - 48).all() for layer in cache.layers)
    for got, want in zip(logits, reference, strict=True):
        assert (got - want).abs().max() <= 1e-4
    assert cache.stats.retrieved_per_search == PREFIX - 48


def test_a_cap_at_top_k_is_the_fixed_top_k(model):
    prefix, question = tokens(PREFIX, 0), tokens(QUESTION, 1)
    fixed = RetrievalSettings(method="retrieval", n_sink=8, n_window=16, top_k=10, effort=16)
    capped = dataclasses.replace(fixed, attention_share=0.99, budget_cap=10)
    want, _ = retrieval_logits(model, prefix, question, 3, fixed)
    got, cache = retrieval_logits(model, prefix, question, 3, capped)
    assert all((layer.budget == 10).all() for layer in cache.layers)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_the_budget_retrieves_more_where_attention_is_spread_and_switches_without_a_rebuild(model):
    prefix, question = tokens(PREFIX, 0), tokens(QUESTION, 1)
    settings = RetrievalSettings(method="retrieval", n_sink=8, n_window=16, top_k=10, effort=16, attention_share=0.95)
    _, cache = retrieval_logits(model, prefix, question, 2, settings)
    budgets = np.stack([layer.budget for layer in cache.layers])
    assert budgets.min() >= 10 and budgets.max() > 10 and budgets.max() <= PREFIX - 24
    index = cache.layers[0].index
    cache.use_search_settings(dataclasses.replace(settings, attention_share=0.0, top_k=5))
    assert cache.layers[0].index is index and all(layer.budget is None for layer in cache.layers)
    with pytest.raises(ValueError, match="other indexes"):
        cache.use_search_settings(dataclasses.replace(settings, n_window=32))
    assert index_identity("c", settings) == index_identity("c", dataclasses.replace(settings, attention_share=0.5,
                                                                                        top_k=7, budget_cap=9))


def test_restored_budget_from_saved_curves_decodes_like_the_original(model):
    prefix, question = tokens(PREFIX, 0), tokens(QUESTION, 1)
    settings = RetrievalSettings(method="exact", n_sink=8, n_window=16, top_k=10, attention_share=0.9)
    original, cache = retrieval_logits(model, prefix, question, 3, settings)
    prefixes = [dataclasses.replace(layer.prefix_arrays(), queries=None) for layer in cache.layers]
    indexes = [layer.index_arrays() for layer in cache.layers]
    assert all("budget_left_out" in arrays for arrays in indexes)
    model.set_attn_implementation(RETRIEVAL_ATTENTION)
    restored = RetrievalCache.restore(prefixes, torch.device("cpu"), settings, torch.float32, indexes,
                                      attention_scale(model))
    for a, b in zip(restored.layers, cache.layers, strict=True):
        np.testing.assert_array_equal(a.budget, b.budget)
    kwargs = {"folio_cache": restored}
    with torch.inference_mode():
        logits = [prefill(model, question, restored, chunk=64, forward_kwargs=kwargs)]
        for _ in range(3):
            token = logits[-1].argmax().view(1, 1)
            logits.append(model(input_ids=token, cache=restored, **kwargs).logits[0, -1])
    for got, want in zip(logits, original, strict=True):
        assert torch.equal(got, want)


def test_the_attention_scale_is_read_from_the_model(model):
    assert attention_scale(model) == pytest.approx(16 ** -0.5)


def test_a_stored_document_answers_with_another_share_without_rebuilding_its_index(tiny_loaded, tmp_path):
    """The attention curves are stored with the index: reopening with another attention share or top-k loads the
    index (no build), and the budgets follow the new share."""
    from engine.config import EngineConfig
    from engine.generate import Finished
    from engine.ingest import Document
    from engine.session import DocumentSession
    from engine.store import Store

    text = "The light was first lit in 1865 by Anders Brekke. " * 30
    document = Document(text=text, title="t", source=None, sha256="1" * 64)
    store = Store(tmp_path / "library")

    def ask(config):
        session = DocumentSession(tiny_loaded, document, config, store=store)
        finished = [e for e in session.ask("When?") if isinstance(e, Finished)][-1]
        return session, finished

    base = EngineConfig(attention="retrieval", n_sink=8, n_window=32, top_k=4, max_new_tokens=3)
    first, finished = ask(base)
    assert not first.cached and finished.stats.index_build_s > 0
    for share in (0.9, 1.0):
        session, finished = ask(dataclasses.replace(base, attention_share=share, top_k=2))
        assert session.cached and finished.stats.index_build_s == 0
        layers = session.cache.layers
        assert all(layer.budget is not None and (layer.budget >= 2).all() for layer in layers)
    assert all((layer.budget == layer.n_offloaded).all() for layer in layers)  # share 1: every key
